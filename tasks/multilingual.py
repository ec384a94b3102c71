"""seqio Tasks and Mixtures for the published multilingual data sets (read through the TFDS builders).

Names end with the language (the sweep reads ``<family>_<lang>`` as family and language): ``mgsm_<lang>``,
``xcopa_<lang>`` (+ ``xcopa_mc_<lang>``, two rows per item scored by likelihood), ``tydiqa_goldp_<lang>``,
``alpaca_scored``, ``xor_attriqa_<lang>`` (+ ``xor_attriqa_scored_<lang>``: targets always "yes", for AUC-PR),
``xtreme_up_qa_in_lang_<lang>``, ``xtreme_up_qa_cross_lang_<lang>``. All-language mixtures take the family name
(``mgsm``, ``xcopa``, ...); per-language mixtures are ``lang_<lang>`` (every family that has the language).

Splits: single-split sources (MGSM, TyDi QA GoldP dev, Alpaca-scored) are cut into seeded train/validation/test
(50% / 10% / 40%, a repeated item kept once) plus ``full`` (the whole set, train included); XCOPA publishes
validation (100) and test (500) only, so a seeded carve-out of its validation set makes ``train`` (80) and
``validation`` (20), and ``test`` is the published 500; XOR-AttriQA and XTREME-UP QA keep their published
train/validation/test. Preparing a task refuses when a validation or test example is also in train (by id or by
normalised content), see ``fiat_jax.data.tfds_builders.build_splits``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping

import seqio

import tasks.common as common
from fiat_jax.data import metrics, preprocessors, sources, splits, tfds_builders

CUT_SPLITS = {s: s for s in ("train", "validation", "test", "full")}
NATIVE_SPLITS = {s: s for s in ("train", "validation", "test")}


def _mgsm_format(ds, *, data_dir: str, lang: str, num_exemplars: int):
    # Exemplars are read when a dataset is built, never at registration or import.
    prefix = (preprocessors.few_shot_prefix(sources.mgsm_exemplars(data_dir, lang), k=num_exemplars)
              if num_exemplars else "")
    return preprocessors.mgsm_to_text(ds, prefix=prefix)


def register(*, data_dir: str, tfds_dir: str, seed: int, split_fractions: Mapping[str, float],
             num_train_examples: int | None, strict: bool, mgsm_num_exemplars: int,
             chat_template: str | None, xtreme_up_languages: tuple[str, ...] | None) -> list[str]:
    """Register every task and mixture; returns the task names."""
    prepared_by_source: dict[str, str] = {}

    def prepared(source: str) -> str:
        # Keyed by the contents of the source's files: an edited data file is prepared again.
        if source not in prepared_by_source:
            fingerprint = tfds_builders.source_fingerprint(data_dir, sources.SOURCES[source], memo_dir=tfds_dir)
            prepared_by_source[source] = tfds_builders.prepared_dir(
                tfds_dir, source_dir=data_dir, seed=seed, split_fractions=split_fractions, strict=strict,
                fingerprint=fingerprint)
        return prepared_by_source[source]

    builder_kwargs = {"source_dir": data_dir, "seed": seed, "split_fractions": dict(split_fractions),
                      "strict": strict}
    names: list[str] = []
    chat = [functools.partial(preprocessors.chat_format, template=chat_template)] if chat_template else []
    cap = [splits.cap_filter(num_train_examples)]
    families: dict[str, list[str]] = {}
    missing: list[str] = []  # registered (using one names the missing file) but left out of mixtures

    def add(family: str, source: str, lang: str, split_map, fmt, *, name: str | None = None, **task_kwargs):
        builder = tfds_builders.BUILDERS[source]
        name = name or f"{source}_{lang}"
        common.add_task(
            name,
            source=seqio.TfdsDataSource(tfds_name=f"{builder.name}/{lang}:{tfds_builders.BUILDER_VERSION}",
                                        tfds_data_dir=prepared(source), splits=split_map,
                                        tfds_builder_kwargs=builder_kwargs),
            output_features=common.output_features(),
            preprocessors=cap + fmt + chat + common.tokenize_steps(), **task_kwargs)
        names.append(name)
        if os.path.isfile(sources.SOURCES[source].probe(data_dir, lang)):
            families.setdefault(family, []).append(name)
        else:
            missing.append(name)

    for lang in sources.MGSM_LANGUAGES:
        add("mgsm", "mgsm", lang, CUT_SPLITS,
            [functools.partial(_mgsm_format, data_dir=data_dir, lang=lang, num_exemplars=mgsm_num_exemplars)],
            metric_fns=[metrics.numeric_exact_match])
    for lang in sources.XCOPA_LANGUAGES:
        add("xcopa", "xcopa", lang, NATIVE_SPLITS, [preprocessors.xcopa_to_text], metric_fns=[metrics.accuracy])
        add("xcopa_mc", "xcopa", lang, NATIVE_SPLITS, [preprocessors.xcopa_to_options], name=f"xcopa_mc_{lang}",
            postprocess_fn=preprocessors.label_postprocess, metric_fns=[metrics.mc_accuracy_score_fn])
    for lang in sources.TYDIQA_LANGUAGES:
        add("tydiqa_goldp", "tydiqa_goldp", lang, CUT_SPLITS, [preprocessors.qa_to_text],
            postprocess_fn=preprocessors.qa_postprocess, metric_fns=[metrics.squad_for(lang)])
    add("alpaca_scored", "alpaca_scored", "en", CUT_SPLITS, [preprocessors.alpaca_to_text], name="alpaca_scored")
    for lang in sources.XOR_ATTRIQA_LANGUAGES:
        add("xor_attriqa", "xor_attriqa", lang, NATIVE_SPLITS, [preprocessors.attribution_to_text],
            metric_fns=[metrics.accuracy])
        add("xor_attriqa_scored", "xor_attriqa", lang, NATIVE_SPLITS,
            [functools.partial(preprocessors.attribution_to_text, always_yes=True)],
            name=f"xor_attriqa_scored_{lang}", postprocess_fn=preprocessors.label_postprocess,
            metric_fns=[metrics.auc_pr])
    for setting in ("qa_in_lang", "qa_cross_lang"):
        for lang in xtreme_up_languages or _xtreme_up_languages(data_dir, setting):
            add(f"xtreme_up_{setting}", f"xtreme_up_{setting}", lang, NATIVE_SPLITS, [preprocessors.qa_to_text],
                postprocess_fn=preprocessors.qa_postprocess, metric_fns=[metrics.squad_for(lang)])

    if missing:
        logging.getLogger(__name__).info("no data under %s for %d tasks (registered, not in mixtures): %s",
                                         data_dir, len(missing), ", ".join(missing[:8]))
    by_language: dict[str, list[str]] = {}
    for family, members in families.items():
        if members != [family]:  # a family of one task named like it (alpaca_scored) is that task, not a mixture
            common.add_mixture(family, members)
        if family in ("xcopa_mc", "xor_attriqa_scored"):
            continue
        for name in members:
            by_language.setdefault(name.rsplit("_", 1)[-1] if family != "alpaca_scored" else "en", []).append(name)
    for lang, lang_tasks in by_language.items():
        common.add_mixture(f"lang_{lang}", lang_tasks)
    return names


def _xtreme_up_languages(data_dir: str, setting: str) -> tuple[str, ...]:
    """Languages with a test file on disk; the in-language QA set when the release is not there."""
    test_dir = os.path.join(data_dir, "xtreme_up", setting, "test")
    known = {c.name for c in tfds_builders.FiatXtremeUpQaInLang.BUILDER_CONFIGS}
    if os.path.isdir(test_dir):
        found = sorted(f[:-len(".jsonl")] for f in os.listdir(test_dir) if f.endswith(".jsonl"))
        unknown = [lang for lang in found if lang not in known]
        if unknown:
            logging.getLogger(__name__).warning(
                "%s: no builder config for languages %s (add them to tfds_builders); not registered",
                test_dir, unknown)
        return tuple(lang for lang in found if lang in known)
    return sources.XTREME_UP_QA_LANGUAGES
