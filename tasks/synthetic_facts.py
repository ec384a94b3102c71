"""seqio Tasks for the synthetic controlled-generalisation data (fiat_jax/data/synthetic.py).

``synthetic_docs_<lang>``: the training documents (train split; inputs "Document:", targets the text).
``synthetic_facts_<lang>``: the test items as generative multiple choice (validation/test = every item; the
``kind`` feature says rephrase / reversal / two_hop / held_out), accuracy on the chosen option.
``synthetic_facts_mc_<lang>``: one row per option (inputs = the question, targets = the option, ``label`` 1 on the
right one), scored by likelihood. Mixtures ``synthetic_docs`` and ``synthetic_facts`` cover all languages.
"""

from __future__ import annotations

import functools

import seqio
import tensorflow as tf

import tasks.common as common
from fiat_jax.data import metrics, preprocessors, synthetic


def _docs_fn(split: str, shuffle_files: bool = False, seed: int | None = None, *, lang: str, gen_seed: int):
    del shuffle_files, seed
    docs = [d for d in synthetic.generate(seed=gen_seed).documents if d["language"] == lang]
    return tf.data.Dataset.from_tensor_slices({
        "id": [d["id"] for d in docs], "language": [lang] * len(docs),
        "inputs": ["Document:"] * len(docs), "targets": [d["text"] for d in docs]})


def _items_fn(split: str, shuffle_files: bool = False, seed: int | None = None, *, lang: str, gen_seed: int):
    del shuffle_files, seed
    items = [i for i in synthetic.generate(seed=gen_seed).items if i["language"] == lang]
    inputs = [i["question"] + " …\n" + "\n".join(f"- {o}" for o in i["options"]) + "\nAnswer:" for i in items]
    return tf.data.Dataset.from_tensor_slices({
        "id": [i["id"] for i in items], "language": [lang] * len(items), "kind": [i["kind"] for i in items],
        "inputs": inputs, "targets": [i["options"][i["answer"]] for i in items]})


def _option_rows_fn(split: str, shuffle_files: bool = False, seed: int | None = None, *, lang: str,
                    gen_seed: int):
    del shuffle_files, seed
    items = [i for i in synthetic.generate(seed=gen_seed).items if i["language"] == lang]
    rows = [(i, k) for i in items for k in range(len(i["options"]))]
    return tf.data.Dataset.from_tensor_slices({
        "id": [i["id"] for i, _ in rows], "language": [lang] * len(rows), "kind": [i["kind"] for i, _ in rows],
        "inputs": [i["question"] for i, _ in rows], "targets": [i["options"][k] for i, k in rows],
        "label": [int(k == i["answer"]) for i, k in rows]})


def register(*, seed: int, languages: tuple[str, ...] = tuple(synthetic.TEMPLATES)) -> list[str]:
    names_docs, names_items = [], []
    num_options = len(synthetic.generate(seed=seed).items[0]["options"])
    for lang in languages:
        common.add_task(f"synthetic_docs_{lang}", source=seqio.FunctionDataSource(
            functools.partial(_docs_fn, lang=lang, gen_seed=seed), splits=("train",)),
            output_features=common.output_features(), preprocessors=common.tokenize_steps())
        common.add_task(f"synthetic_facts_{lang}", source=seqio.FunctionDataSource(
            functools.partial(_items_fn, lang=lang, gen_seed=seed), splits=("validation", "test")),
            output_features=common.output_features(), preprocessors=common.tokenize_steps(),
            metric_fns=[metrics.accuracy])
        common.add_task(f"synthetic_facts_mc_{lang}", source=seqio.FunctionDataSource(
            functools.partial(_option_rows_fn, lang=lang, gen_seed=seed), splits=("validation", "test")),
            output_features=common.output_features(), preprocessors=common.tokenize_steps(),
            postprocess_fn=preprocessors.label_postprocess, metric_fns=[metrics.mc_accuracy_for(num_options)])
        names_docs.append(f"synthetic_docs_{lang}")
        names_items += [f"synthetic_facts_{lang}", f"synthetic_facts_mc_{lang}"]
    common.add_mixture("synthetic_docs", names_docs)
    common.add_mixture("synthetic_facts", [n for n in names_items if "_mc_" not in n])
    return names_docs + names_items
