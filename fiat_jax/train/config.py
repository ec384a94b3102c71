"""The trainer's settings as small frozen dataclasses (t5x/Levanter style): what ``trainer.train``'s gin-bound
keyword arguments mean, grouped by the piece of the loop that reads them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx

from fiat_jax import gin_utils
from fiat_jax.errors import UserError
from fiat_jax.train import peft_export

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


def from_arguments(arguments: Mapping[str, Any]) -> TrainConfig:
    """``trainer.train``'s keyword arguments (its gin bindings, by name), checked and grouped into a TrainConfig.

    A bad value is one UserError naming its binding (``train.batch_size``), raised before any work."""
    a = gin_utils.check_arguments("train", {name: value for name, value in arguments.items()
                                            if name in TRAIN_ARGUMENT_CHECKS}, TRAIN_ARGUMENT_CHECKS)
    a.update({name: value for name, value in arguments.items() if name not in TRAIN_ARGUMENT_CHECKS})
    if a["batch_size"] % a["grad_accum_steps"]:
        raise UserError(f"train.batch_size {a['batch_size']} is not divisible by train.grad_accum_steps "
                        f"{a['grad_accum_steps']}")
    return TrainConfig(
        model_dir=a["model_dir"], train_steps=a["train_steps"],
        dataset=DatasetConfig(
            mixture_or_task_name=a["mixture_or_task_name"], task=a["task"],
            task_feature_lengths=a["task_feature_lengths"], batch_size=a["batch_size"], split=a["split"],
            pack=a["pack"], shuffle=a["shuffle"], use_cached=a["use_cached"], seed=a["seed"],
            feature_converter=a["feature_converter"], prefetch_depth=a["prefetch_depth"],
            register_tasks=a["register_tasks"]),
        model=ModelConfig(model_factory=a["model_factory"], initial_params=a["initial_params"],
                          model_transform=a["model_transform"], trainable=a["trainable"], seed=a["seed"],
                          keep_initial_trainable=a["keep_initial_trainable"]),
        checkpoint=CheckpointConfig(every_steps=a["checkpoint_every_steps"], keep=a["keep_checkpoints"],
                                    best_metric=a["best_metric"], best_mode=a["best_mode"],
                                    async_save=a["async_checkpointing"], restore_anyway=a["restore_anyway"]),
        eval=EvalConfig(eval_fn=a["eval_fn"], every_steps=a["eval_every_steps"]),
        log=LogConfig(every_steps=a["log_every_steps"], progress_bar=a["progress_bar"],
                      tensorboard=a["tensorboard"]),
        optimizer=a["optimizer"], mesh=a["mesh"], num_devices=a["num_devices"],
        grad_accum_steps=a["grad_accum_steps"], z_loss=a["z_loss"], compute_dtype=a["compute_dtype"],
        loss_positions_per_row=a["loss_positions_per_row"],
        check_model=peft_export.require_lora if a["export_peft_dir"] else None)
