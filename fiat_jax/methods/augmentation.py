"""Augmented fine-tuning (Lampinen et al. 2025, arXiv 2505.00661): fine-tuning on documents plus what a teacher
infers from them in context, so that facts learnt by weights generalise like facts held in context (e.g. the
reversal "B is the child of A" of a trained "A is the parent of B").

- local augmentation: each sentence, with its document as context, rephrased and reversed by the teacher;
- global augmentation: the whole document in context, the teacher writes the inferences that follow from it;
- sentence splitting (independent: each sentence alone; cumulative: growing prefixes of the document);
- :class:`RuleBasedAugmenter`: an exact, teacher-shaped augmenter for the synthetic facts data (tests use it in
  place of an LLM teacher);
- evaluation by multiple-choice likelihood: each option's statement scored by the student, argmax per item.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import gin

from fiat_jax.data import synthetic
from fiat_jax.data import documents as documents_lib
from fiat_jax.data.text import split_sentences
from fiat_jax.errors import UserError
from fiat_jax.methods import results as results_lib
from fiat_jax.methods import student as student_lib
from fiat_jax.methods.common import teacher_identity
from fiat_jax.methods.student import StudentSpec
from fiat_jax.data.examples import training_set_size_policy
from fiat_jax.teachers import materialise as materialise_lib, recipes

_log = logging.getLogger(__name__)

# The teacher's prompts are recipe files (fiat_jax/teachers/recipes/augment_local.txt, augment_global.txt).
LOCAL_RECIPE = "augment_local"
GLOBAL_RECIPE = "augment_global"


def sentence_split_augmentation(document: str, *, mode: str = "independent") -> list[str]:
    """Sentence splitting as augmentation: ``independent`` = each sentence alone, ``cumulative`` = the first 1, 2,
    ... n-1 sentences (the whole document is the plain example, so it is not repeated)."""
    sentences = split_sentences(document)
    if mode == "independent":
        return sentences if len(sentences) > 1 else []
    if mode == "cumulative":
        return [" ".join(sentences[:k]) for k in range(1, len(sentences))]
    raise UserError(f"sentence splitting mode {mode!r}: choose 'independent' or 'cumulative'")


def parse_statements(reply: str) -> list[str]:
    """One statement per non-empty line of a teacher reply, list bullets and numbering removed (the recipes'
    ``lines`` parser; no statement is an empty list)."""
    try:
        return recipes.parse_lines(reply).splitlines()
    except recipes.ParseError:
        return []


def teacher_augment(teacher: Any, documents: Sequence[str], *, local: bool = True, global_: bool = True,
                    max_new_tokens: int = 128, ids: Sequence[str] | None = None, out_dir: str | None = None,
                    task: str = "documents") -> list[list[str]]:
    """For each document, the statements the teacher writes (local: per sentence; global: per document), through
    :func:`~fiat_jax.teachers.materialise.materialise` (``out_dir``: materialised as
    ``<out_dir>/<local|global>/<task>/train.jsonl``, so a rerun asks nothing again; None: in memory).

    Each request goes with an example ``{"id", "document"[, "sentence"]}`` whose id is ``<document id>/local/<k>``
    (its k-th sentence, from 0) or ``<document id>/global`` (``ids`` default: the documents' positions), so a
    replay teacher can serve augmentations recorded elsewhere by id (teachers.base.stream_for)."""
    if teacher is None:
        raise UserError("augmented fine-tuning: local/global augmentation needs a teacher (augment.teacher)")
    ids = [str(i) for i in (ids if ids is not None else range(len(documents)))]
    out: list[list[str]] = [[] for _ in documents]
    for flag, kind, recipe, suffix in ((local, "local", LOCAL_RECIPE, ""), (global_, "global", GLOBAL_RECIPE,
                                                                          "/global")):
        if not flag or not documents:
            continue
        examples = [{"id": f"{i}{suffix}", "document": doc} for i, doc in zip(ids, documents)]
        outputs = materialise_lib.materialise(
            teacher, recipe, examples, out_dir=None if out_dir is None else os.path.join(out_dir, kind), task=task,
            max_new_tokens=max_new_tokens, keep_unparsed=True, replace_other=True, progress=out_dir is not None,
            what=f"{kind} augmentation").require_all(f"{kind} augmentation")
        for d, ex in enumerate(examples):
            out[d].extend(parse_statements(outputs[ex["id"]]))
    return out


def augment_documents(documents: Sequence[Mapping[str, Any]], *, teacher: Any = None, local: bool = False,
                      global_: bool = False, sentence_split: str | None = None, text_key: str = "text",
                      max_new_tokens: int = 128, out_dir: str | None = None,
                      task: str = "documents") -> list[dict[str, Any]]:
    """Training rows ``{"id", "text", "source"}``: every document (``source="document"``) then its augmentations
    (``"local"/"global"`` from the teacher, materialised under ``out_dir`` (see :func:`teacher_augment`);
    ``"split"`` from sentence splitting)."""
    texts = [str(d[text_key]) for d in documents]
    rows: list[dict[str, Any]] = [{"id": str(d.get("id", i)), "text": t, "source": "document"}
                                  for i, (d, t) in enumerate(zip(documents, texts))]
    if sentence_split:
        for i, (d, t) in enumerate(zip(documents, texts)):
            for j, s in enumerate(sentence_split_augmentation(t, mode=sentence_split)):
                rows.append({"id": f"{d.get('id', i)}/split{j}", "text": s, "source": "split"})
    for flag, kind in ((local, "local"), (global_, "global")):
        if not flag:
            continue
        per_doc = teacher_augment(teacher, texts, local=kind == "local", global_=kind == "global",
                                  max_new_tokens=max_new_tokens, out_dir=out_dir, task=task,
                                  ids=[str(d.get("id", i)) for i, d in enumerate(documents)])
        for i, (d, statements) in enumerate(zip(documents, per_doc)):
            for j, s in enumerate(statements):
                rows.append({"id": f"{d.get('id', i)}/{kind}{j}", "text": s, "source": kind})
    return rows


# ---------------------------------------------------------------------------------------------------------------
# An exact augmenter for the synthetic facts world (fiat_jax.data.synthetic): a stand-in teacher for tests.
def _pattern(template: str) -> re.Pattern:
    """A regex from a sentence template: ``{a}``/``{b}``/``{c}``/``{p}`` become named word groups."""
    out, pos = [], 0
    for m in re.finditer(r"\{(\w)\}", template):
        out.append(re.escape(template[pos:m.start()]))
        out.append(f"(?P<{m.group(1)}>[^\\s.]+)")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(out) + "$")


@gin.configurable
class RuleBasedAugmenter:
    """Answers the ``augment_local`` / ``augment_global`` recipes' prompts exactly for synthetic-facts documents, through the
    Teacher API (``generate``), so the augmentation pipeline is tested without an LLM.

    Local: a parent or comparison sentence gives its rephrasing and its reversal. Global: grandparent facts from
    two parent sentences, and category properties of members ("X is a wug" + "Every wug is blue" -> "X is blue").
    """

    identity = "rule-based-synthetic-augmenter"

    def __init__(self, language: str = "en"):

        if language not in synthetic.TEMPLATES:
            raise UserError(f"rule-based augmenter: no templates for language {language!r}")
        self.t = synthetic.TEMPLATES[language]
        self._parent = _pattern(self.t["parent"])
        self._taller = _pattern(self.t["taller"])
        self._member = _pattern(self.t["member"])
        self._property = _pattern(self.t["property"])

    def local(self, sentence: str) -> list[str]:
        t = self.t
        if m := self._parent.match(sentence):
            a, b = m["a"], m["b"]
            return [f"{t['parent_re'].format(a=a)} {b}.", f"{t['parent_rev'].format(b=b)} {a}."]
        if m := self._taller.match(sentence):
            a, b = m["a"], m["b"]
            return [f"{t['taller_re'].format(a=a)} {b}.", f"{t['taller_rev'].format(b=b)} {a}."]
        return []

    def global_(self, document: str) -> list[str]:
        t = self.t
        parents, members, props = [], [], {}
        for s in split_sentences(document):
            if m := self._parent.match(s):
                parents.append((m["a"], m["b"]))
            elif m := self._member.match(s):
                members.append((m["a"], m["c"]))
            elif m := self._property.match(s):
                props[m["c"]] = m["p"]
        out = [f"{t['grand'].format(a=a)} {c}." for a, b in parents for b2, c in parents if b == b2]
        out += [f"{t['member_q'].format(a=x)} {props[c]}." for x, c in members if c in props]
        return out

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 128, temperature: float = 0.0,
                 stop: Sequence[str] = ()) -> list[str]:
        del max_new_tokens, temperature, stop
        replies = []
        for prompt in prompts:
            doc = re.search(r"Document:\n(.*?)\n\n", prompt, re.S)
            sentence = re.search(r"\nSentence: (.*?)\n\n", prompt, re.S)
            if sentence:
                replies.append("\n".join(self.local(sentence.group(1).strip())))
            elif doc:
                replies.append("\n".join(self.global_(doc.group(1).strip())))
            else:
                replies.append("")
        return replies

    def score(self, prompt: str, options: Sequence[str]) -> list[float]:
        raise UserError("the rule-based augmenter only generates augmentations; it cannot score")


# ---------------------------------------------------------------------------------------------------------------
# Multiple-choice likelihood evaluation.
def _statement(question: str, option: str) -> str:
    """The question completed by the option, ending in one full stop (unless the option ends a sentence)."""
    return f"{question} {option}" if option.endswith((".", "!", "?", "。", "！", "？")) else f"{question} {option}."


def mc_rows(items: Sequence[Mapping[str, Any]], *, prefix: str = "Document:", context: str | None = None
            ) -> list[dict[str, Any]]:
    """One scoring row per option: ``inputs`` = the prefix (and, for ICL, the document in context), ``targets`` =
    the question completed by the option (the statement the student would have to believe)."""
    rows = []
    inputs = prefix if context is None else f"{context}\n\n{prefix}"
    for item in items:
        for k, option in enumerate(item["options"]):
            rows.append({"id": str(item["id"]), "inputs": inputs, "targets": _statement(item["question"], option),
                         "option": k, "label": int(k == item["answer"]), "kind": item.get("kind", "")})
    return rows


def mc_accuracy(items: Sequence[Mapping[str, Any]], scores: Sequence[float]) -> dict[str, float]:
    """Accuracy (0..1) overall and per item ``kind`` from option scores laid out as :func:`mc_rows` makes them."""
    expected = sum(len(i["options"]) for i in items)
    if len(scores) != expected:
        raise ValueError(f"{len(scores)} scores for {expected} options")
    by_kind: dict[str, list[int]] = {}
    pos = 0
    for item in items:
        n = len(item["options"])
        chunk = list(scores[pos:pos + n])
        pos += n
        hit = int(max(range(n), key=chunk.__getitem__) == int(item["answer"]))
        by_kind.setdefault("all", []).append(hit)
        by_kind.setdefault(str(item.get("kind", "")), []).append(hit)
    return {("accuracy" if k == "all" else f"accuracy_{k}"): sum(v) / len(v) for k, v in by_kind.items()}


# ---------------------------------------------------------------------------------------------------------------
# The method: fine-tune on documents (+ augmentations), evaluate reversal / rephrase / two-hop items by likelihood.
DOC_PREFIX = "Document:"


@dataclasses.dataclass(frozen=True)
class TrainingSource:
    """What augmented fine-tuning trains on and is probed with: the training documents, the probe items and the
    task name they are reported under."""

    documents: list[dict[str, Any]]
    items: list[dict[str, Any]]
    task: str


def training_source(*, documents_file: str | None, probes_file: str | None, language: str, synthetic_seed: int,
                    num_train_examples: int | None, generate_overrides: Mapping[str, Any]) -> TrainingSource:
    """The user's documents (and probes) or the synthetic facts world of ``language``, cut to
    ``num_train_examples`` documents (refused when fewer exist, unless the training-set size policy takes what
    exists)."""
    if documents_file is not None:
        if generate_overrides:
            raise UserError(f"augmented fine-tuning: synthetic-world options {sorted(generate_overrides)} given "
                            f"with a documents file ({documents_file})")
        all_documents = documents_lib.read_documents(documents_file)
        items = documents_lib.read_probes(probes_file) if probes_file is not None else []
        task = documents_lib.documents_task_name(all_documents)
        source = f"the documents file {documents_file}"
    else:
        if probes_file is not None:
            raise UserError("augmented fine-tuning: a probes file needs a documents file (documents_file)")
        data = synthetic.generate(seed=synthetic_seed, languages=(language,), **generate_overrides)
        all_documents, items, task = data.documents, data.items, f"synthetic_facts_{language}"
        source = "the synthetic world"
    if num_train_examples and num_train_examples > len(all_documents) and not training_set_size_policy():
        grow = f" in {language!r} (grow it with generate_overrides, e.g. num_chains, or" if documents_file is None \
            else " (or"
        raise UserError(f"augmented fine-tuning: task {task}: num_train_examples={num_train_examples} documents "
                        f"asked for, {source} has {len(all_documents)}{grow} bind "
                        "training_set_size_policy.take_what_exists = True)")
    documents = all_documents[:num_train_examples] if num_train_examples else all_documents
    if not documents:
        raise UserError("augmented fine-tuning: no training documents")
    return TrainingSource(documents=list(documents), items=list(items), task=task)


def training_rows(rows: Sequence[Mapping[str, Any]], *, split_documents: bool) -> list[dict[str, str]]:
    """The student's rows ``Document: -> text``: each augmented row's text, documents cut into their sentences
    when ``split_documents`` (duplicates dropped, first kept)."""
    if not split_documents:
        return [{"inputs": DOC_PREFIX, "targets": r["text"]} for r in rows]
    texts: list[str] = []
    for r in rows:
        texts += split_sentences(r["text"]) if r["source"] == "document" else [r["text"]]
    return [{"inputs": DOC_PREFIX, "targets": t} for t in dict.fromkeys(texts)]


def probe_accuracy(model: Any, items: Sequence[Mapping[str, Any]], spec: StudentSpec, *,
                   predictions_path: str | None = None, context: str | None = None) -> dict[str, float]:
    """Multiple-choice accuracy (in %) of ``model`` on the probe items, each option scored by likelihood (with
    ``context``, e.g. the documents, before the prefix); each option's score written to ``predictions_path``."""
    rows = mc_rows(items, context=context)
    scores = student_lib.score_rows(model, rows, task_feature_lengths=spec.task_feature_lengths,
                                    batch_size=spec.eval_batch_size)
    if predictions_path is not None:
        results_lib.write_jsonl(predictions_path, [dict(row, score=s) for row, s in zip(rows, scores)])
    return {k: 100.0 * v for k, v in mc_accuracy(items, scores).items()}


def documents_context(source: TrainingSource) -> str:
    """Every training document, in order: the context of ICL with the documents in context."""
    return " ".join(d["text"] for d in source.documents)


def with_context_room(spec: StudentSpec, context: str, model: Any) -> StudentSpec:
    """``spec`` with an ``inputs`` length that holds ``context`` and the prefix (training rows are short, so the
    training length would cut the documents off), in steps of 128 tokens, within the model's context length
    (beyond it the documents are cut, with a warning)."""
    # lazy: the vocabulary (a tokenizer) loads only when a run computes
    from fiat_jax.data.vocab import get_vocabulary

    lengths = dict(spec.task_feature_lengths or {})
    needed = len(get_vocabulary().encode(f"{context}\n\n{DOC_PREFIX}")) + 2  # + EOS, + the start token
    if lengths.get("inputs", 0) >= needed:
        return spec
    inputs = -(-needed // 128) * 128
    config = getattr(model, "config", None)
    limit = next((int(getattr(config, k)) for k in ("max_length", "max_len") if getattr(config, k, None)), None)
    if limit is not None and inputs + lengths.get("targets", 0) > limit:
        inputs = max(limit - lengths.get("targets", 0), lengths.get("inputs", 0))
        _log.warning("ICL with the documents in context: the documents need %d input tokens, the student's context "
                     "holds %d: they are cut to %d", needed, limit, inputs)
    return dataclasses.replace(spec, task_feature_lengths={**lengths, "inputs": inputs})


def icl_probe_accuracy(model: Any, source: TrainingSource, spec: StudentSpec, *,
                       predictions_path: str | None = None) -> dict[str, float]:
    """Probe accuracy of ``model`` with every training document in context (the prefix is shared by every
    option, so it is computed once: ``student.score_rows``)."""
    context = documents_context(source)
    return probe_accuracy(model, source.items, with_context_room(spec, context, model), context=context,
                          predictions_path=predictions_path)


def icl_baseline_accuracy(result: Any, source: TrainingSource, spec: StudentSpec) -> dict[str, float]:
    """The student as it was before fine-tuning (``result.initial_trainable``) with every training document in
    context: ``icl_accuracy*``."""
    # lazy: flax/JAX load only when a run computes, not when gin configs or the CLI import this module
    from flax import nnx

    base = nnx.clone(result.model)
    if result.initial_trainable is not None:
        nnx.update(base, result.initial_trainable)
    return {f"icl_{k}": v for k, v in icl_probe_accuracy(base, source, spec).items()}


def icl_only_run(*, model_dir: str, source: TrainingSource, spec: StudentSpec, write_results: bool,
                 num_train_examples: int | None) -> dict[str, dict[str, float]]:
    """ICL with the documents in context as a method of its own (the paper's in-context baseline): the student
    untrained, every document before every probe; nothing is trained or augmented."""
    if not source.items:
        raise UserError("augmented fine-tuning: icl_only needs probe items to score (a probes file)")
    model = spec.build()
    metrics = {source.task: icl_probe_accuracy(model, source, spec, predictions_path=os.path.join(
        model_dir, "predictions", f"{source.task}-mc.jsonl"))}
    if write_results:
        results_lib.write_results(model_dir, metrics=metrics, method="augmented_icl", local=False, global_=False,
                                  sentence_split=None, teacher=None, num_train_examples=len(source.documents),
                                  num_train_examples_requested=num_train_examples, tokens_seen=0, params_trained=0,
                                  params_total=student_lib.count_params(model))
    return metrics


@gin.configurable
def augmented_finetune_method(*, model_dir: str, student: StudentSpec | None = None, language: str = "en",
                              synthetic_seed: int = 0, num_train_examples: int | None = None, teacher: Any = None,
                              local: bool = True, global_: bool = True, sentence_split: str | None = "independent",
                              split_documents: bool = True, icl_baseline: bool = False, max_new_tokens: int = 128,
                              write_results: bool = True, documents_file: str | None = None,
                              probes_file: str | None = None, icl_only: bool = False,
                              **generate_overrides: Any) -> dict[str, dict[str, float]]:
    """Fine-tune ``student`` (default: the gin-bound ``StudentSpec()``) on the documents of
    :func:`training_source` (the synthetic facts of ``language``, or ``documents_file`` + ``probes_file``) plus
    their augmentations (``local``/``global_`` need a ``teacher``; ``sentence_split``; ``split_documents``: train on
    sentences), then score every probe's options by likelihood (accuracy overall and per kind). ``icl_baseline``
    also scores the student before fine-tuning with every training document in context; ``icl_only`` does only
    that (no augmentation, no training: ICL as a method of its own). Plain fine-tuning is
    ``local=False, global_=False, sentence_split=None``; without probes nothing is scored."""
    def load_source() -> TrainingSource:
        return training_source(documents_file=documents_file, probes_file=probes_file, language=language,
                               synthetic_seed=synthetic_seed, num_train_examples=num_train_examples,
                               generate_overrides=generate_overrides)

    spec = student or StudentSpec()
    if icl_only:
        if not spec.has_model():
            raise UserError("augmented ICL: missing the student model (bind StudentSpec.model_factory)")
        return icl_only_run(model_dir=model_dir, source=load_source(), spec=spec, write_results=write_results,
                            num_train_examples=num_train_examples)
    if (local or global_) and teacher is None:
        raise UserError("augmented fine-tuning: missing teacher for local/global augmentation "
                        "(bind augmented_finetune_method.teacher, or set local and global_ to False)")
    spec.check("augmented fine-tuning")
    source = load_source()
    rows = augment_documents(source.documents, teacher=teacher, local=local, global_=global_,
                             sentence_split=sentence_split, max_new_tokens=max_new_tokens,
                             out_dir=os.path.join(model_dir, "augmentations"), task=source.task)
    train_rows = training_rows(rows, split_documents=split_documents)
    results_lib.write_jsonl(os.path.join(model_dir, "augmented_rows.jsonl"), rows)
    _log.info("augmented fine-tuning: %d documents -> %d training rows (%s)", len(source.documents), len(train_rows),
              {s: sum(r["source"] == s for r in rows) for s in ("document", "split", "local", "global")})
    # The student as built (before fine-tuning) comes back too, for the ICL baseline (documents in context).
    result = spec.train(model_dir=os.path.join(model_dir, "student"), name="augmented_ft_train",
                        train_rows=train_rows, **({"keep_initial_trainable": True} if icl_baseline else {}))
    metrics: dict[str, dict[str, float]] = {source.task: {}}
    if source.items:
        metrics[source.task] = probe_accuracy(result.model, source.items, spec, predictions_path=os.path.join(
            model_dir, "predictions", f"{source.task}-mc.jsonl"))
        if icl_baseline:
            metrics[source.task].update(icl_baseline_accuracy(result, source, spec))
    else:  # a documents file without probes: the trained student and its rows are the result
        _log.info("augmented fine-tuning: no probes file, nothing scored (the student is in %s/student)", model_dir)
    if write_results:
        results_lib.write_results(
            model_dir, metrics=metrics, method="augmented_ft", local=local, global_=global_,
            sentence_split=sentence_split, teacher=teacher_identity(teacher) if local or global_ else None,
            **({"documents_file": documents_file, "probes_file": probes_file} if documents_file is not None else {}),
            num_train_examples=len(source.documents), num_train_examples_requested=num_train_examples,
            tokens_seen=result.tokens_seen, params_trained=result.params_trained,
            params_total=student_lib.count_params(result.model))
    return metrics
