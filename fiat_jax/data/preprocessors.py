"""seqio preprocessors: per-source text formatting, the FIAT input template, chat wrapping, few-shot prefixes.

Each preprocessor is a small pure ``tf.data.Dataset -> tf.data.Dataset`` map that writes ``inputs`` and
``targets`` text and keeps every other feature (``id``, ``language``, labels) for metrics and teacher joins.
Pass arguments with ``functools.partial``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf


# ---------------------------------------------------------------- the FIAT student input
@dataclasses.dataclass(frozen=True)
class FiatTemplate:
    """Headers of the FIAT student input; a piece that is ``None`` is left out (ablations)."""

    instruction_header: str = "Instruction:"
    input_header: str = "Input:"
    reasoning_header: str = "Reasoning:"
    answer_header: str = "Answer:"
    separator: str = "\n\n"


DEFAULT_FIAT_TEMPLATE = FiatTemplate()


def fiat_input(instruction: Any, input: Any, reasoning: Any = None, *,  # noqa: A002 - the paper's name
               template: FiatTemplate = DEFAULT_FIAT_TEMPLATE) -> Any:
    """The FIAT student input: instruction, input and teacher reasoning, then the answer header.

    ``instruction`` or ``reasoning`` may be ``None`` (the "no instruction" / "no reasoning" ablations). Works on
    Python strings (golden tests) and on scalar ``tf.string`` tensors (inside seqio maps) alike:
      "Instruction: {instruction}\\n\\nInput: {input}\\n\\nReasoning: {reasoning}\\n\\nAnswer:"
    """
    parts: list[Any] = []
    if instruction is not None:
        parts.append(_join([template.instruction_header, " ", instruction]))
    parts.append(_join([template.input_header, " ", input]))
    if reasoning is not None:
        parts.append(_join([template.reasoning_header, " ", reasoning]))
    parts.append(template.answer_header)
    out = parts[0]
    for part in parts[1:]:
        out = _join([out, template.separator, part])
    return out


def _join(parts: Sequence[Any]) -> Any:
    if any(isinstance(p, (tf.Tensor, tf.Variable)) for p in parts):
        return tf.strings.join([tf.convert_to_tensor(p, tf.string) for p in parts])
    return "".join(p.decode() if isinstance(p, bytes) else p for p in parts)


# ---------------------------------------------------------------- few-shot exemplars
def few_shot_prefix(exemplars: Sequence[dict[str, str]], *, k: int, seed: int | None = None,
                    separator: str = "\n\n") -> str:
    """The first ``k`` exemplars (or ``k`` drawn with ``seed``) as "q\\na" blocks, ending with a separator."""
    if k <= 0:
        return ""
    if k > len(exemplars):
        raise ValueError(f"asked for {k} exemplars, only {len(exemplars)} exist")
    idx = list(range(k)) if seed is None else sorted(np.random.default_rng(seed).choice(
        len(exemplars), size=k, replace=False).tolist())
    return "".join(f"{exemplars[i]['q']}\n{exemplars[i]['a']}{separator}" for i in idx)


# ---------------------------------------------------------------- per-source formats
def _map(ds: tf.data.Dataset, fn) -> tf.data.Dataset:
    def wrapped(ex):
        ex = dict(ex)
        ex.update(fn(ex))
        return ex
    return ds.map(wrapped, num_parallel_calls=tf.data.AUTOTUNE)


def mgsm_to_text(ds: tf.data.Dataset, *, prefix: str = "", question_header: str = "Question: ",
                 answer_header: str = "Step-by-Step Answer:") -> tf.data.Dataset:
    """inputs: few-shot prefix + question; targets: the numeric answer (``answer`` kept for metrics)."""
    return _map(ds, lambda ex: {
        "inputs": tf.strings.join([prefix, question_header, ex["question"], "\n", answer_header]),
        "targets": ex["answer"]})


def xcopa_to_text(ds: tf.data.Dataset) -> tf.data.Dataset:
    """A two-way choice as text; targets "1" or "2"."""
    def fn(ex):
        what = tf.where(tf.equal(ex["question"], "cause"), "What was the cause?", "What happened as a result?")
        inputs = tf.strings.join(["Premise: ", ex["premise"], "\n", what, "\nOption 1: ", ex["choice1"],
                                  "\nOption 2: ", ex["choice2"], "\nAnswer:"])
        return {"inputs": inputs, "targets": tf.strings.as_string(ex["label"] + 1)}
    return _map(ds, fn)


def xcopa_to_options(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Two rows per item (option 1 then option 2) for scoring by likelihood; ``label`` 1 marks the right one."""
    def expand(ex):
        what = tf.where(tf.equal(ex["question"], "cause"), " because", " so")
        inputs = tf.strings.join([ex["premise"], what])
        rows = []
        for option in (0, 1):
            row = dict(ex)
            row["inputs"] = inputs
            row["targets"] = ex["choice1"] if option == 0 else ex["choice2"]
            row["option"] = tf.constant(option, tf.int64)
            row["label"] = tf.cast(tf.equal(ex["label"], option), tf.int64)
            rows.append(row)
        return tf.data.Dataset.from_tensors(rows[0]).concatenate(tf.data.Dataset.from_tensors(rows[1]))
    return ds.flat_map(expand)


def qa_to_text(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Extractive QA: context and question in, first gold answer out (all answers kept in ``answers``)."""
    return _map(ds, lambda ex: {
        "inputs": tf.strings.join(["Context: ", ex["context"], "\nQuestion: ", ex["question"], "\nAnswer:"]),
        "targets": ex["answers"][0]})


def attribution_to_text(ds: tf.data.Dataset, *, always_yes: bool = False) -> tf.data.Dataset:
    """Is the predicted answer attributable to the passage? targets "yes"/"no" (or always "yes" for scoring)."""
    def fn(ex):
        inputs = tf.strings.join(["Question: ", ex["query"], "\nAnswer: ", ex["prediction"], "\nPassage: ",
                                  ex["passage"], "\nIs the answer supported by the passage?"])
        yes_no = tf.where(tf.equal(ex["label"], 1), "yes", "no")
        return {"inputs": inputs, "targets": tf.constant("yes") if always_yes else yes_no}
    return _map(ds, fn)


def alpaca_to_text(ds: tf.data.Dataset) -> tf.data.Dataset:
    return _map(ds, lambda ex: {"inputs": ex["instruction"], "targets": ex["response"]})


# ---------------------------------------------------------------- FIAT and chat wrappers
def fiat_format(ds: tf.data.Dataset, *, instruction: str | None, reasoning_key: str | None = "teacher_output",
                template: FiatTemplate = DEFAULT_FIAT_TEMPLATE) -> tf.data.Dataset:
    """Rewrite ``inputs`` as the FIAT student input (instruction, the formatted input, teacher reasoning)."""
    return _map(ds, lambda ex: {"inputs": fiat_input(
        instruction, ex["inputs"], ex[reasoning_key] if reasoning_key else None, template=template)})


SMOLLM2_CHAT = "<|im_start|>user\n{inputs}<|im_end|>\n<|im_start|>assistant\n"


def chat_format(ds: tf.data.Dataset, *, template: str = SMOLLM2_CHAT) -> tf.data.Dataset:
    """Wrap ``inputs`` in a decoder student's chat template (a string with one ``{inputs}``)."""
    if template.count("{inputs}") != 1:
        raise ValueError(f"chat template needs exactly one {{inputs}}: {template!r}")
    before, after = template.split("{inputs}")
    return _map(ds, lambda ex: {"inputs": tf.strings.join([before, ex["inputs"], after])})


def qa_postprocess(output: Any, example: dict[str, Any] | None = None, is_target: bool = False) -> Any:
    """Targets become the list of gold answers (for max-over-answers F1/EM); predictions stay text."""
    if is_target and example is not None and "answers" in example:
        return [a.decode() if isinstance(a, bytes) else str(a) for a in np.asarray(example["answers"]).tolist()]
    return output


def label_postprocess(output: Any, example: dict[str, Any] | None = None, is_target: bool = False) -> Any:
    """Targets become the example's 0/1 ``label`` (AUC-PR, multiple-choice scoring)."""
    if is_target and example is not None and "label" in example:
        return int(example["label"])
    return output
