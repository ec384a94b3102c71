"""The run's starting state: mesh, model (initial weights, PEFT transform), optimizer, the compiled step, and the
parameters restored from the newest checkpoint when there is one (exact resume)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fiat_jax import gin_utils, partitioning
from fiat_jax.errors import UserError
from fiat_jax.train import checkpoints as ckpt_lib
from fiat_jax.train import optimizers, train_step
from fiat_jax.train.config import ModelConfig, ModelFactory, TrainConfig
from fiat_jax.train.hooks import LoopState

_log = logging.getLogger(__name__)


def build_model(model_factory: ModelFactory, *, seed: int, mesh: jax.sharding.Mesh | None,
                initial_params: Callable[[nnx.Module], Any] | None = None,
                model_transform: Callable[[nnx.Module], nnx.Module] | None = None) -> nnx.Module:
    """Create the model (params placed on the mesh), load initial weights, apply a PEFT transform."""
    rngs_seed = int(seed)
    model = partitioning.create_model(
        lambda: model_factory(rngs=nnx.Rngs(params=rngs_seed, dropout=rngs_seed + 1)), mesh=mesh)
    if initial_params is not None:
        initial_params(model)
    if model_transform is not None:
        model = model_transform(model)
    return model


def host_copy(tree: Any) -> Any:
    """Host copies of a state tree's leaves (they survive the step donating the device buffers)."""
    return jax.tree.map(lambda x: np.array(jax.device_get(x)), tree)


def build_mesh(config: TrainConfig) -> jax.sharding.Mesh:
    """The device mesh; the per-step batch must split evenly over its batch axes."""
    devices = jax.devices()[:config.num_devices] if config.num_devices else jax.devices()
    mesh = partitioning.make_mesh(config.mesh, devices=devices)
    divisor = train_step.batch_divisor(mesh)
    batch_size = config.dataset.batch_size
    if (batch_size // config.grad_accum_steps) % divisor:
        raise UserError(f"batch_size {batch_size} / grad_accum_steps {config.grad_accum_steps} is not divisible "
                        f"by the mesh's batch axes ({divisor} devices)")
    _log.info("mesh %s", partitioning.describe(mesh))
    return mesh


def build_optimizer(optimizer: Any) -> tuple[optax.GradientTransformation, Callable[[int], Any] | None]:
    """The optimizer (gin's ``make_optimizer`` when None; a transformation; or a factory of one) and the
    learning-rate schedule to log (known only for the default)."""
    if optimizer is None:
        return optimizers.make_optimizer(), optimizers.learning_rate_schedule()
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer, None
    return optimizer(), None


@dataclasses.dataclass
class Prepared:
    """Everything the step loop needs that does not change from step to step, and the state it starts from."""

    model: nnx.Module
    graphdef: Any
    frozen: Any
    compiled: Any
    schedule_lr: Callable[[int], Any] | None
    ckpts: ckpt_lib.Checkpoints
    fingerprint: dict[str, Any]
    start_batch: int
    state: LoopState
    params_trained: int

    def merge(self, params: Any) -> nnx.Module:
        return nnx.merge(self.graphdef, params, self.frozen)


def prepare(config: TrainConfig, mesh: jax.sharding.Mesh, model: nnx.Module) -> Prepared:
    """Split, compile and place the state (inside ``jax.set_mesh``), then restore the newest checkpoint.

    Nothing is written into MODEL_DIR before the restore has succeeded."""
    m: ModelConfig = config.model
    graphdef, params, frozen = train_step.split_model(model, m.trainable)
    tx, schedule_lr = build_optimizer(config.optimizer)
    abstract_opt = jax.eval_shape(tx.init, params)
    step_fn = train_step.make_step_fn(graphdef, tx, train_step.StepConfig(
        grad_accum_steps=config.grad_accum_steps, z_loss=config.z_loss, compute_dtype=config.compute_dtype,
        dropout_seed=m.seed + 2, loss_positions_per_row=train_step.resolve_loss_positions(
            config.loss_positions_per_row, config.dataset.task_feature_lengths)), trainable=m.trainable)
    compiled = train_step.jit_step(step_fn, mesh=mesh, abstract_params=params, abstract_opt_state=abstract_opt,
                                   abstract_frozen=frozen)
    params = jax.device_put(params, compiled.params_shardings)
    frozen = jax.device_put(frozen, compiled.frozen_shardings)
    opt_state = jax.jit(tx.init, out_shardings=compiled.opt_shardings)(params)
    step_arr = jax.device_put(jnp.zeros((), jnp.int32), compiled.replicated)

    c = config.checkpoint
    ckpts = ckpt_lib.Checkpoints(config.model_dir, keep=c.keep, best_metric=c.best_metric, best_mode=c.best_mode,
                                 async_save=c.async_save)
    print_ = ckpt_lib.fingerprint(model=model, abstract_params=params, extra={"trainable": str(m.trainable)})
    ckpts.check_fingerprint(print_, restore_anyway=c.restore_anyway)
    state = {"params": params, "opt_state": opt_state, "step": step_arr}
    shardings = {"params": compiled.params_shardings, "opt_state": compiled.opt_shardings,
                 "step": compiled.replicated}
    start_batch = 0
    if ckpts.latest_step() is not None:
        # Raises CheckpointMismatchError ("does not fit this model") or a UserError ("unreadable").
        restored = ckpts.restore(ckpt_lib.abstract_with_shardings(state, shardings))
        if restored is not None:
            state, meta = restored
            start_batch = int(meta.get("input_batches", meta["step"]))
            _log.info("resumed from step %d (input position %d batches)", meta["step"], start_batch)
    step = int(jax.device_get(state["step"]))
    ckpts.record_fingerprint(print_)
    gin_utils.write_operative_config(config.model_dir)
    loop_state = LoopState(step=step, params=state["params"], opt_state=state["opt_state"], step_arr=state["step"],
                           last_saved=step if ckpts.latest_step() == step else None)
    return Prepared(model=model, graphdef=graphdef, frozen=frozen, compiled=compiled, schedule_lr=schedule_lr,
                    ckpts=ckpts, fingerprint=print_, start_batch=start_batch, state=loop_state,
                    params_trained=int(sum(x.size for x in jax.tree.leaves(state["params"]))))
