"""In-context learning: the teacher, given an instruction and k exemplars from the training split, answers each
evaluation example directly (greedy generation for prediction metrics, log-likelihood of the target for score
metrics). No parameters are trained."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import gin
import numpy as np

from fiat_jax.errors import UserError
from fiat_jax.methods import results as results_lib
from fiat_jax.methods import common
from fiat_jax.teachers import base

_log = logging.getLogger(__name__)

ICL_TEMPLATE = "{instruction}\n\n{exemplars}{input}"
EXEMPLAR_TEMPLATE = "{input} {target}\n\n"
ANSWER_HEADER = "\nAnswer:"


def framed_input(text: Any) -> str:
    """``Input: <text>`` ending in an answer header: the task's own (XCOPA's "Answer:", MGSM's "Step-by-Step
    Answer:") when its formatted input already ends in one, else ``ANSWER_HEADER``."""
    text = str(text).rstrip()
    return f"Input: {text}" if text.endswith(":") else f"Input: {text}{ANSWER_HEADER}"


def pick_exemplars(examples: Sequence[Mapping[str, Any]], k: int, *, seed: int = 0) -> list[Mapping[str, Any]]:
    """``k`` training examples drawn with ``seed`` (kept in their original order)."""
    if k < 0:
        raise UserError(f"ICL: k={k} exemplars")
    if k > len(examples):
        raise UserError(f"ICL: asked for {k} exemplars, the training split has {len(examples)}")
    idx = sorted(np.random.default_rng(seed).choice(len(examples), size=k, replace=False).tolist())
    return [examples[i] for i in idx]


def icl_prompt(example: Mapping[str, Any], exemplars: Sequence[Mapping[str, Any]], *, instruction: str,
               template: str = ICL_TEMPLATE, exemplar_template: str = EXEMPLAR_TEMPLATE) -> str:
    shots = "".join(exemplar_template.format(input=framed_input(e["inputs"]), target=e["targets"]) for e in exemplars)
    return template.format(instruction=instruction, exemplars=shots, input=framed_input(example["inputs"]))


def first_line(text: str) -> str:
    """A teacher's answer: its first non-empty line (the model may go on with another "Input:")."""
    return next((ln.strip() for ln in (text or "").splitlines() if ln.strip()), "")


def _logged(task: str, replies: Iterator[tuple[int, Any]], total: int, every: int) -> Iterator[tuple[int, Any]]:
    """Pass a teacher's stream through, logging progress every ``every`` replies."""
    for n, reply in enumerate(replies, 1):
        if n % every == 0 or n == total:
            _log.info("ICL %s: %d/%d", task, n, total)
        yield reply


@gin.configurable
def icl_method(*, model_dir: str, mixture_or_task_name: str, teacher: Any = None, k: int = 4,
               instruction: str = "Answer the question.", num_eval_examples: int | None = None,
               eval_split: str = "validation", seed: int = 0, max_new_tokens: int = 32,
               batch_size: int = 8, write_results: bool = True) -> dict[str, dict[str, float]]:
    """ICL with ``teacher`` on every task of the mixture; writes predictions and ``results.json``."""

    if teacher is None:
        raise UserError("ICL: missing teacher (bind icl_method.teacher)")
    # Exemplars, not a training set: nothing is trained, so no training-set size is recorded.
    train_ex = common.split_examples(mixture_or_task_name, "train", exact=False) if k else {}
    eval_ex = common.split_examples(mixture_or_task_name, eval_split, limit=num_eval_examples)
    metrics: dict[str, dict[str, float]] = {}
    for task, examples in eval_ex.items():
        shots = pick_exemplars(train_ex[task], k, seed=seed) if k else []
        prompts = [icl_prompt(ex, shots, instruction=instruction) for ex in examples]
        fns, _ = common.metric_spec(task)
        wants_scores = any("scores" in inspect.signature(f).parameters for f in fns)
        # One stream over the whole split: the teacher plans its own batches (one shape for a small split).
        predictions = [first_line(o) for o in base.collect(
            _logged(task, base.stream(teacher, prompts, max_new_tokens=max_new_tokens, temperature=0.0,
                                      stop=("\n\n", "\nInput:"), chunk_size=batch_size), len(prompts), batch_size),
            len(prompts), what=str(getattr(teacher, "identity", type(teacher).__name__)))]
        scores = [teacher.score(p, [" " + str(ex["targets"])])[0] for p, ex in zip(prompts, examples)] \
            if wants_scores else None
        metrics[task] = common.compute_metrics(task, examples, predictions=predictions, scores=scores)
        results_lib.write_jsonl(os.path.join(model_dir, "predictions", f"{task}-icl.jsonl"), [
            {"id": ex.get("id"), "input": p, "target": ex["targets"], "prediction": pred,
             "score": None if scores is None else scores[i]}
            for i, (ex, p, pred) in enumerate(zip(examples, prompts, predictions))])
    if write_results:
        results_lib.write_results(model_dir, metrics=metrics, method="icl", k=k,
                                  teacher=str(getattr(teacher, "identity", type(teacher).__name__)),
                                  tokens_seen=0, params_trained=0)
    return metrics
