"""The trainer's settings as small frozen dataclasses (t5x/Levanter style): what ``trainer.train``'s gin-bound
keyword arguments mean, grouped by the piece of the loop that reads them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx

ModelFactory = Callable[..., nnx.Module]


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """Where the training batches come from. ``task``: a seqio Task or Mixture object used as it is (no registry
    look-up, e.g. in-memory rows from ``methods.examples.examples_task``); else ``mixture_or_task_name`` is looked
    up in the seqio registry (after ``register_tasks()``, when given)."""

    mixture_or_task_name: str
    task_feature_lengths: Mapping[str, int]
    batch_size: int
    split: str = "train"
    pack: bool = False
    shuffle: bool = True
    use_cached: bool = False
    seed: int = 0
    feature_converter: Any = None
    prefetch_depth: int = 2
    task: Any = None
    register_tasks: Callable[[], Any] | None = None

    @property
    def name(self) -> str:
        """The task's name for results.json: the object's own name when one was given."""
        return str(getattr(self.task, "name", None) or self.mixture_or_task_name)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """How the model is built: factory, initial weights, PEFT transform, and the filter of what trains."""

    model_factory: ModelFactory
    initial_params: Callable[[nnx.Module], Any] | None = None
    model_transform: Callable[[nnx.Module], nnx.Module] | None = None
    trainable: Any = nnx.Param
    seed: int = 0
    keep_initial_trainable: bool = False  # a host copy of the trainable state as built, in the TrainResult


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints in ``MODEL_DIR/checkpoints``: every ``every_steps`` steps and at the last step."""

    every_steps: int = 1000
    keep: int = 3
    best_metric: str | None = None
    best_mode: str = "min"
    async_save: bool = True
    restore_anyway: bool = False


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """``eval_fn(model=..., step=..., model_dir=...)`` every ``every_steps`` steps and after the last one."""

    eval_fn: Callable[..., Mapping[str, float]] | None = None
    every_steps: int | None = None

    def due(self, step: int) -> bool:
        return self.eval_fn is not None and bool(self.every_steps) and step % int(self.every_steps) == 0


@dataclasses.dataclass(frozen=True)
class LogConfig:
    """Train metrics: one ``metrics.jsonl`` row (and TensorBoard scalars) per ``every_steps`` steps."""

    every_steps: int = 10
    progress_bar: bool = True
    tensorboard: bool = True


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run: the pieces above, the optimizer, the step's numerics and the device mesh."""

    model_dir: str
    train_steps: int
    dataset: DatasetConfig
    model: ModelConfig
    checkpoint: CheckpointConfig = CheckpointConfig()
    eval: EvalConfig = EvalConfig()
    log: LogConfig = LogConfig()
    optimizer: Any = None
    mesh: str = "data=-1"
    num_devices: int | None = None
    grad_accum_steps: int = 1
    z_loss: float = 0.0
    compute_dtype: str | None = None
    loss_positions_per_row: int | str | None = "auto"
    check_model: Callable[[nnx.Module], None] | None = None  # raises before training (e.g. no LoRA to export)
