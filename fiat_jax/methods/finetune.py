"""Fine-tuning the student on the task's own inputs and targets: full, LoRA or prompt tuning (the PEFT variant
is the student's ``model_transform`` + ``trainable`` pair, ``StudentSpec`` fields bound in gin by the method and
peft configs; ``full`` trains every parameter)."""

from __future__ import annotations

import dataclasses
import logging

import gin
from flax import nnx

from fiat_jax.errors import UserError
from fiat_jax.methods import pipeline
from fiat_jax.methods.common import require
from fiat_jax.methods.student import StudentSpec, no_transform

_log = logging.getLogger(__name__)
MODES = ("full", "lora", "prompt")


def finetune_student(spec: StudentSpec, mode: str) -> StudentSpec:
    """The spec for ``mode``: ``full`` trains every parameter (no PEFT transform), ``lora`` / ``prompt`` need the
    spec's PEFT transform; refused before anything is computed when a piece is missing."""
    if mode not in MODES:
        raise UserError(f"finetune_method.mode={mode!r}: choose one of {', '.join(MODES)}")
    require(spec.train_steps, "train_steps", "fine-tuning")
    if mode == "full":
        spec = dataclasses.replace(spec, model_transform=no_transform, trainable=nnx.Param)
    elif spec.model_transform is None:
        raise UserError(f"fine-tuning ({mode}): missing the PEFT transform (bind StudentSpec.model_transform, "
                        f"e.g. in gin_configs/methods/finetune_{mode}.gin)")
    spec.check("fine-tuning")
    return spec


@gin.configurable
def finetune_method(*, model_dir: str, mixture_or_task_name: str, student: StudentSpec | None = None,
                    mode: str = "lora", num_train_examples: int | None = None,
                    num_eval_examples: int | None = None, eval_split: str = "validation",
                    write_results: bool = True) -> dict[str, dict[str, float]]:
    """Train ``student`` (default: the gin-bound ``StudentSpec()``) on ``num_train_examples`` of the train split,
    evaluate on ``eval_split``; writes results.json."""
    spec = finetune_student(student or StudentSpec(), mode)
    train_ex, eval_ex = pipeline.train_and_eval_examples(mixture_or_task_name, num_train_examples=num_train_examples,
                                                         eval_split=eval_split, num_eval_examples=num_eval_examples)
    rows = [{"id": ex.get("id", ""), "inputs": ex["inputs"], "targets": ex["targets"]}
            for examples in train_ex.values() for ex in examples]
    _log.info("fine-tuning (%s): %d training examples, %d steps", mode, len(rows), spec.train_steps)
    return pipeline.train_evaluate_and_record(spec, model_dir=model_dir, name=f"ft_{mode}", train_rows=rows,
                                              eval_rows=eval_ex, method=f"finetune_{mode}",
                                              write_results=write_results)
