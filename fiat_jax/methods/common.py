"""Pieces every method shares: the examples of a task or mixture split, and a task's metrics applied to
predictions or scores computed outside the evaluator (teacher ICL). The student's side is methods/student.py."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fiat_jax.errors import UserError
from fiat_jax.data.examples import task_examples


def task_names(mixture_or_task_name: str) -> list[str]:
    # lazy: seqio pulls in TensorFlow (seconds): only when a task is read
    import seqio

    try:
        obj = seqio.get_mixture_or_task(mixture_or_task_name)
    except ValueError as err:
        raise UserError(f"unknown task or mixture {mixture_or_task_name!r} (are the tasks registered? "
                        f"`fiat tasks list` shows them)") from err
    return [t.name for t in obj.tasks] if isinstance(obj, seqio.Mixture) else [obj.name]


def split_examples(mixture_or_task_name: str, split: str, *, limit: int | None = None,
                   exact: bool | None = None) -> dict[str, list[dict]]:
    """``{task: [example, ...]}`` for every task of a mixture (``limit`` examples per task at most; for ``train``
    exactly, unless ``training_set_size_policy`` takes what exists: see ``examples.task_examples``; ``exact=False``
    for examples that are not a training set, e.g. ICL exemplars)."""
    out = {}
    for name in task_names(mixture_or_task_name):
        rows = task_examples(name, split, limit=limit, exact=split == "train" if exact is None else exact)
        if not rows:
            raise UserError(f"task {name} has no {split!r} examples")
        out[name] = rows
    return out


def metric_spec(task_name: str) -> tuple[list[Callable[..., Any]], Callable[..., Any] | None]:
    # lazy: seqio pulls in TensorFlow (seconds): only when a task is read
    import seqio

    task = seqio.get_mixture_or_task(task_name)
    return _unique(list(task.metric_fns)), task.postprocess_fn


def _unique(fns: Sequence[Callable]) -> list[Callable]:
    seen, out = set(), []
    for fn in fns:
        if id(fn) not in seen:
            seen.add(id(fn))
            out.append(fn)
    return out


def compute_metrics(task_name: str, examples: Sequence[Mapping[str, Any]], *,
                    predictions: Sequence[str] | None = None, scores: Sequence[float] | None = None) -> dict[str, float]:
    """The task's seqio metric functions on predictions (text) and/or scores, targets postprocessed as seqio does."""
    fns, post = metric_spec(task_name)

    def postprocess(text: Any, ex: Mapping[str, Any], is_target: bool) -> Any:
        if post is None:
            return text
        return post(text, example={k: (np.asarray(v) if isinstance(v, list) else v) for k, v in ex.items()},
                    is_target=is_target)

    targets = [postprocess(ex["targets"], ex, True) for ex in examples]
    out: dict[str, float] = {}
    for fn in _unique(fns):
        params = inspect.signature(fn).parameters
        if "scores" in params:
            if scores is None:
                continue
            values = fn(targets, list(scores))
        elif "predictions" in params:
            if predictions is None:
                continue
            values = fn(targets, [postprocess(p, ex, False) for p, ex in zip(predictions, examples)])
        else:
            continue
        out.update({k: float(getattr(v, "value", v)) for k, v in values.items()})
    return out


def require(value: Any, what: str, method: str) -> Any:
    """A required piece of a method config, or a UserError naming it (raised before any training)."""
    if value is None or (isinstance(value, (str, list, tuple, dict)) and not value):
        raise UserError(f"{method}: missing {what}")
    return value


def teacher_identity(teacher: Any) -> str | None:
    """What results.json records as the teacher (``simulated:...`` for the controlled teacher)."""
    if teacher is None:
        return None
    return str(getattr(teacher, "identity", type(teacher).__name__))
