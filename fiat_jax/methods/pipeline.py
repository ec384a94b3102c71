"""What every training method composes around its own rows: the examples of a task or mixture (training and
evaluation splits), then the student trained and evaluated on the method's rows and the run recorded in
``results.json``. Teacher outputs come from :mod:`fiat_jax.teachers.materialise`; the rows are each method's own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fiat_jax.methods import common
from fiat_jax.methods import results as results_lib
from fiat_jax.methods.student import StudentSpec, train_and_evaluate


def train_and_eval_examples(mixture_or_task_name: str, *, num_train_examples: int | None, eval_split: str,
                            num_eval_examples: int | None) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """``({task: training examples}, {task: evaluation examples})`` of every task of the mixture."""
    return (common.split_examples(mixture_or_task_name, "train", limit=num_train_examples),
            common.split_examples(mixture_or_task_name, eval_split, limit=num_eval_examples))


def train_evaluate_and_record(spec: StudentSpec, *, model_dir: str, name: str,
                              train_rows: Sequence[Mapping[str, Any]],
                              eval_rows: Mapping[str, Sequence[Mapping[str, Any]]], method: str,
                              write_results: bool = True, **fields: Any) -> dict[str, dict[str, float]]:
    """The student trained on ``train_rows`` and evaluated on each task's rows (``student.train_and_evaluate``),
    then ``results.json`` written with ``method``, ``fields`` and the training's own figures: ``{task: metrics}``."""
    metrics, info = train_and_evaluate(spec, model_dir=model_dir, name=name, train_rows=train_rows,
                                       eval_rows=eval_rows)
    if write_results:
        results_lib.write_results(model_dir, metrics=metrics, method=method, **fields, **info)
    return metrics
