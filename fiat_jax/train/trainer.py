"""``fiat train``: the T5X-style training entry (gin-configurable, keyword-only, REQUIRED macros).

:func:`train` checks its arguments, groups them into the frozen configs of :mod:`fiat_jax.train.config` and runs
:func:`fiat_jax.train.loop.run`: one jitted, partitioned, donating step (:mod:`~fiat_jax.train.train_step`);
deterministic seqio input with a prefetch thread (:mod:`~fiat_jax.train.input_pipeline`); the hooks of
:mod:`~fiat_jax.train.hooks` (metrics with NaN halting, evaluation, orbax checkpoints with exact resume,
preemption, results.json). Running the same command again on the same MODEL_DIR resumes from the newest
checkpoint and sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import gin
import jax
import optax
from flax import nnx

from fiat_jax import gin_utils
from fiat_jax.errors import UserError
from fiat_jax.train import loop
from fiat_jax.train.config import (CheckpointConfig, DatasetConfig, EvalConfig, LogConfig, ModelConfig,
                                   ModelFactory, TrainConfig)
from fiat_jax.train.hooks import TrainingDivergedError  # noqa: F401 (raised by train)
from fiat_jax.train.result import TrainResult
from fiat_jax.train.state import build_model  # noqa: F401 (the trainer's model builder, for callers)

_log = logging.getLogger(__name__)


# The declared type and range of train()'s configurable values, checked before any work (gin_utils.check_arguments).
TRAIN_ARGUMENT_CHECKS: dict[str, gin_utils.Check] = {
    "model_dir": gin_utils.string(),
    "train_steps": gin_utils.integer(min=0),
    "mixture_or_task_name": gin_utils.string(),
    "task_feature_lengths": gin_utils.lengths(),
    "batch_size": gin_utils.integer(min=1),
    "split": gin_utils.string(),
    "pack": gin_utils.boolean(),
    "shuffle": gin_utils.boolean(),
    "use_cached": gin_utils.boolean(),
    "seed": gin_utils.integer(min=0),
    "num_devices": gin_utils.integer(min=1, optional=True),
    "grad_accum_steps": gin_utils.integer(min=1),
    "z_loss": gin_utils.number(min=0),
    "compute_dtype": gin_utils.one_of("bfloat16", "float16", "float32", optional=True),
    "checkpoint_every_steps": gin_utils.integer(min=1),
    "keep_checkpoints": gin_utils.integer(min=1),
    "best_mode": gin_utils.one_of("min", "max"),
    "async_checkpointing": gin_utils.boolean(),
    "restore_anyway": gin_utils.boolean(),
    "log_every_steps": gin_utils.integer(min=1),
    "eval_every_steps": gin_utils.integer(min=1, optional=True),
    "prefetch_depth": gin_utils.integer(min=1),
    "progress_bar": gin_utils.boolean(),
    "tensorboard": gin_utils.boolean(),
}


@gin.configurable
def train(*,
          model_dir: str,
          train_steps: int,
          mixture_or_task_name: str,
          task_feature_lengths: Mapping[str, int],
          model_factory: ModelFactory,
          batch_size: int = 8,
          split: str = "train",
          register_tasks: Callable[[], Any] | None = None,
          feature_converter: Any = None,
          pack: bool = False,
          shuffle: bool = True,
          use_cached: bool = False,
          seed: int = 0,
          optimizer: optax.GradientTransformation | Callable[[], optax.GradientTransformation] | None = None,
          trainable: Any = nnx.Param,
          initial_params: Callable[[nnx.Module], Any] | None = None,
          model_transform: Callable[[nnx.Module], nnx.Module] | None = None,
          mesh: str = "data=-1",
          num_devices: int | None = None,
          grad_accum_steps: int = 1,
          z_loss: float = 0.0,
          compute_dtype: str | None = None,
          loss_positions_per_row: int | str | None = "auto",
          checkpoint_every_steps: int = 1000,
          keep_checkpoints: int = 3,
          best_metric: str | None = None,
          best_mode: str = "min",
          async_checkpointing: bool = True,
          restore_anyway: bool = False,
          log_every_steps: int = 10,
          eval_every_steps: int | None = None,
          eval_fn: Callable[..., Mapping[str, float]] | None = None,
          prefetch_depth: int = 2,
          progress_bar: bool = True,
          tensorboard: bool = True,
          export_peft_dir: str | None = None,
          task: Any = None,
          keep_initial_trainable: bool = False) -> TrainResult:
    """Train ``model_factory(rngs=...)`` on a seqio task or mixture for ``train_steps`` steps in ``model_dir``.

    Resumes from the newest checkpoint in ``model_dir/checkpoints`` when there is one. ``task``: a seqio Task or
    Mixture object trained on as it is, not looked up in the registry (e.g. in-memory rows:
    ``methods.examples.examples_task``; ``mixture_or_task_name`` then only labels results);
    ``keep_initial_trainable``: the result also holds the trainable state as built (before any step).
    ``trainable`` is an NNX filter choosing the differentiated parameters (PEFT passes its own).
    ``eval_fn(model=..., step=...)`` returns metrics logged under ``eval/`` every ``eval_every_steps`` (and usable
    as ``best_metric``).
    ``loss_positions_per_row``: the LM head runs only at this many loss positions per row ("auto": the targets
    length; None: every position; see ``train_step.StepConfig``). Raises
    :class:`TrainingDivergedError` on a NaN/inf loss, naming the step. ``export_peft_dir`` (absolute, or relative
    to ``model_dir``): when training finishes, the LoRA adapter is also written there as an HF peft directory.
    """
    c = gin_utils.check_arguments("train", {name: value for name, value in locals().items()
                                            if name in TRAIN_ARGUMENT_CHECKS}, TRAIN_ARGUMENT_CHECKS)
    if c["batch_size"] % c["grad_accum_steps"]:
        raise UserError(f"train.batch_size {c['batch_size']} is not divisible by train.grad_accum_steps "
                        f"{c['grad_accum_steps']}")
    config = TrainConfig(
        model_dir=model_dir, train_steps=c["train_steps"],
        dataset=DatasetConfig(
            mixture_or_task_name=mixture_or_task_name, task=task, task_feature_lengths=c["task_feature_lengths"],
            batch_size=c["batch_size"], split=split, pack=pack, shuffle=shuffle, use_cached=use_cached,
            seed=c["seed"], feature_converter=feature_converter, prefetch_depth=prefetch_depth,
            register_tasks=register_tasks),
        model=ModelConfig(model_factory=model_factory, initial_params=initial_params,
                          model_transform=model_transform, trainable=trainable, seed=c["seed"],
                          keep_initial_trainable=keep_initial_trainable),
        checkpoint=CheckpointConfig(every_steps=c["checkpoint_every_steps"], keep=keep_checkpoints,
                                    best_metric=best_metric, best_mode=best_mode, async_save=async_checkpointing,
                                    restore_anyway=restore_anyway),
        eval=EvalConfig(eval_fn=eval_fn, every_steps=c["eval_every_steps"]),
        log=LogConfig(every_steps=c["log_every_steps"], progress_bar=progress_bar, tensorboard=tensorboard),
        optimizer=optimizer, mesh=mesh, num_devices=num_devices, grad_accum_steps=c["grad_accum_steps"],
        z_loss=z_loss, compute_dtype=compute_dtype, loss_positions_per_row=loss_positions_per_row,
        check_model=_require_lora if export_peft_dir else None)
    result = loop.run(config)
    if export_peft_dir and not result.preempted and result.step >= config.train_steps and jax.process_index() == 0:
        from fiat_jax.peft import hf_adapter  # lazy: only runs that export an adapter need it

        out = hf_adapter.export_peft(result.model, pathlib.Path(model_dir) / export_peft_dir)
        _log.info("LoRA adapter written as an HF peft directory to %s", out)
    return result


def _require_lora(model: nnx.Module) -> None:
    from fiat_jax.peft import lora  # lazy: only runs that export an adapter need it

    if not lora.lora_modules(model):
        raise UserError("train.export_peft_dir is set but the model has no LoRA adapters "
                        "(bind train.model_transform = @lora_transform())")

