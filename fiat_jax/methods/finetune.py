"""Fine-tuning the student on the task's own inputs and targets: full, LoRA or prompt tuning (the PEFT variant
is the trainer's ``model_transform`` + ``trainable`` pair bound in gin by the peft configs; ``full`` trains every
parameter)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import gin
from flax import nnx

from fiat_jax.errors import UserError
from fiat_jax.methods import common
from fiat_jax.methods import results as results_lib
from fiat_jax.methods.student import StudentSpec, no_transform, train_and_evaluate

_log = logging.getLogger(__name__)
MODES = ("full", "lora", "prompt")


@gin.configurable(denylist=["train_fn"])
def finetune_method(*, model_dir: str, mixture_or_task_name: str, train_steps: int | None = None,
                    task_feature_lengths: Mapping[str, int] | None = None, mode: str = "lora",
                    num_train_examples: int | None = None, num_eval_examples: int | None = None,
                    eval_split: str = "validation", initial_params: Callable | None = None,
                    model_transform: Callable | None = None, trainable: Any = None, eval_batch_size: int = 16,
                    write_results: bool = True, train_fn: Callable[..., Any] | None = None,
                    student: StudentSpec | None = None) -> dict[str, dict[str, float]]:
    """Train on ``num_train_examples`` of the train split, evaluate on ``eval_split``; writes results.json.
    ``student`` replaces the student's keyword arguments (``train_steps`` ... ``train_fn``) when given."""
    if mode not in MODES:
        raise UserError(f"finetune_method.mode={mode!r}: choose one of {', '.join(MODES)}")
    spec = student or StudentSpec.of(
        train_steps=common.require(train_steps, "train_steps", "fine-tuning"),
        task_feature_lengths=task_feature_lengths, train_fn=train_fn, initial_params=initial_params,
        model_transform=model_transform, trainable=trainable, eval_batch_size=eval_batch_size)
    if mode == "full":
        spec = dataclasses.replace(spec, model_transform=no_transform, trainable=nnx.Param)
    elif not spec.has("model_transform"):
        raise UserError(f"fine-tuning ({mode}): missing the PEFT transform (bind finetune_method.model_transform, "
                        f"e.g. in gin_configs/methods/finetune_{mode}.gin)")
    spec.check("fine-tuning")
    train_ex = common.split_examples(mixture_or_task_name, "train", limit=num_train_examples)
    eval_ex = common.split_examples(mixture_or_task_name, eval_split, limit=num_eval_examples)
    rows = [{"id": ex.get("id", ""), "inputs": ex["inputs"], "targets": ex["targets"]}
            for examples in train_ex.values() for ex in examples]
    _log.info("fine-tuning (%s): %d training examples, %d steps", mode, len(rows), spec.train_steps)
    metrics, info = train_and_evaluate(spec, model_dir=model_dir, name=f"ft_{mode}", train_rows=rows,
                                       eval_rows=eval_ex)
    if write_results:
        results_lib.write_results(model_dir, metrics=metrics, method=f"finetune_{mode}", **info)
    return metrics
