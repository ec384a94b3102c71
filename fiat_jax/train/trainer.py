"""``fiat train``: the T5X-style training entry (gin-configurable, keyword-only, REQUIRED macros).

:func:`train` checks its arguments, groups them into the frozen configs of :mod:`fiat_jax.train.config` and runs
:func:`fiat_jax.train.loop.run`: one jitted, partitioned, donating step (:mod:`~fiat_jax.train.train_step`);
deterministic seqio input with a prefetch thread (:mod:`~fiat_jax.train.input_pipeline`); the hooks of
:mod:`~fiat_jax.train.hooks` (metrics with NaN halting, evaluation, orbax checkpoints with exact resume,
preemption, results.json). Running the same command again on the same MODEL_DIR resumes from the newest
checkpoint and sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gin
import optax
from flax import nnx

from fiat_jax.train import config as config_lib
from fiat_jax.train import loop, peft_export
from fiat_jax.train.config import ModelFactory
from fiat_jax.train.hooks import TrainingDivergedError  # noqa: F401 (raised by train)
from fiat_jax.train.result import TrainResult
from fiat_jax.train.state import build_model  # noqa: F401 (the trainer's model builder, for callers)


@gin.configurable
def train(*, model_dir: str, train_steps: int, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
          model_factory: ModelFactory, batch_size: int = 8, split: str = "train",
          register_tasks: Callable[[], Any] | None = None, feature_converter: Any = None, pack: bool = False,
          shuffle: bool = True, use_cached: bool = False, seed: int = 0,
          optimizer: optax.GradientTransformation | Callable[[], optax.GradientTransformation] | None = None,
          trainable: Any = nnx.Param, initial_params: Callable[[nnx.Module], Any] | None = None,
          model_transform: Callable[[nnx.Module], nnx.Module] | None = None, mesh: str = "data=-1",
          num_devices: int | None = None, grad_accum_steps: int = 1, z_loss: float = 0.0,
          compute_dtype: str | None = None, loss_positions_per_row: int | str | None = "auto",
          checkpoint_every_steps: int = 1000, keep_checkpoints: int = 3, best_metric: str | None = None,
          best_mode: str = "min", async_checkpointing: bool = True, restore_anyway: bool = False,
          log_every_steps: int = 10, eval_every_steps: int | None = None,
          eval_fn: Callable[..., Mapping[str, float]] | None = None, prefetch_depth: int = 2,
          progress_bar: bool = True, tensorboard: bool = True, export_peft_dir: str | None = None,
          task: Any = None, keep_initial_trainable: bool = False) -> TrainResult:
    """Train ``model_factory(rngs=...)`` on a seqio task or mixture for ``train_steps`` steps in ``model_dir``.

    Resumes from the newest checkpoint in ``model_dir/checkpoints`` when there is one. The arguments are checked
    and grouped by :func:`fiat_jax.train.config.from_arguments`; the config dataclasses say what each means
    (``task``: a seqio Task or Mixture object trained on as it is; ``trainable``: the NNX filter of what is
    differentiated; ``eval_fn(model=..., step=...)``: metrics under ``eval/`` every ``eval_every_steps``, usable
    as ``best_metric``; ``loss_positions_per_row``: ``train_step.StepConfig``). ``export_peft_dir`` (absolute, or
    relative to ``model_dir``): the LoRA adapter is also written there as an HF peft directory. Raises
    :class:`TrainingDivergedError` on a NaN/inf loss, naming the step.
    """
    config = config_lib.from_arguments(locals())
    result = loop.run(config)
    if export_peft_dir:
        peft_export.export_finished(result, model_dir=model_dir, export_peft_dir=export_peft_dir,
                                    train_steps=config.train_steps)
    return result
