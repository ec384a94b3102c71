"""The pure train step and its pjit: only the trainable state is differentiated and has optimizer state.

The model is split once with ``nnx.split`` into a static graphdef (closed over), the trainable parameters and
everything else (frozen parameters, RNG streams). The step is a pure function of
``(params, opt_state, step, frozen, batch)`` jitted once with input/output shardings from the logical axis names
and with the params, optimizer state and step donated, so a step updates them in place.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fiat_jax import partitioning
from fiat_jax.errors import UserError
from fiat_jax.train import losses

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


def split_model(model: nnx.Module, trainable: Any = nnx.Param) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """``(graphdef, trainable_state, frozen_state)``; ``trainable`` is any nnx filter (type, predicate, ...)."""
    graphdef, params, frozen = nnx.split(model, trainable, ...)
    if not jax.tree.leaves(params):
        raise UserError("no trainable parameters: the trainable filter matched nothing in the model")
    return graphdef, params, frozen


def _cast_floating(tree: Any, dtype: Any) -> Any:
    if dtype is None:
        return tree
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What the step computes; part of the run's fingerprint only through the model and the optimizer."""

    grad_accum_steps: int = 1
    z_loss: float = 0.0
    compute_dtype: Any = None  # None = parameters' own dtype (fp32); "bfloat16" casts params and activations
    dropout_seed: int = 0
    # The LM head only at loss-bearing positions: at most this many per row of a (micro-)batch are gathered
    # (static, so one compile); a batch with more takes the full head (exact either way). None = full head.
    loss_positions_per_row: int | None = None
    # With loss_positions_per_row: the gathered positions go through the head in rematerialised chunks of this
    # many, so at most [chunk, vocab] logits exist at once (long targets). None = one chunk.
    head_chunk_size: int | None = None


def resolve_loss_positions(value: int | str | None, task_feature_lengths: Mapping[str, int]) -> int | None:
    """``StepConfig.loss_positions_per_row`` from the trainer's setting: "auto" = the targets feature length (the
    exact bound for unpacked rows; packed rows with more fall back to the full head), an int, or None."""
    if value is None:
        return None
    if value == "auto":
        length = task_feature_lengths.get("targets")
        return int(length) if length else None
    if isinstance(value, str) or int(value) < 1:
        raise UserError(f"loss_positions_per_row must be 'auto', a positive int or None, not {value!r}")
    return int(value)


def make_step_fn(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, config: StepConfig, *,
                 trainable: Any = nnx.Param) -> Callable[..., tuple[nnx.State, Any, jax.Array, Metrics]]:
    """The pure train step ``(params, opt_state, step, frozen, batch) -> (params, opt_state, step + 1, metrics)``.

    Metrics are sums over the global batch (``loss``, ``weight``, ``correct``, ...) plus ``grad_norm`` and
    ``learning_rate``-free scalars; dropout keys are ``fold_in(dropout_seed, step)`` so a resumed run draws the
    same masks as an uninterrupted one.
    """
    compute_dtype = jnp.dtype(config.compute_dtype) if config.compute_dtype else None
    accum = int(config.grad_accum_steps)

    def loss_fn(params, frozen, batch, total_weight):
        frozen = jax.tree.map(lambda v: v, frozen)  # fresh Variables at this trace level (dropout RNG counters)
        model = nnx.merge(graphdef, _cast_floating(params, compute_dtype), _cast_floating(frozen, compute_dtype))
        targets, weights = batch["decoder_target_tokens"], losses.loss_weights(batch)
        if config.loss_positions_per_row is None or not hasattr(model, "hidden_from_batch"):
            logits = model.logits_from_batch(batch, deterministic=False)
            sums = losses.cross_entropy_sums(logits, targets, weights, z_loss=config.z_loss)
        else:
            hidden = model.hidden_from_batch(batch, deterministic=False)
            sums = losses.head_cross_entropy_sums(
                hidden, lambda h: model.logits_from_hidden(h, deterministic=False), targets, weights,
                max_positions=int(config.loss_positions_per_row) * targets.shape[0], z_loss=config.z_loss,
                chunk_size=config.head_chunk_size)
        return sums["loss"] / total_weight, sums

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step_fn(params, opt_state, step, frozen, batch):
        model = nnx.merge(graphdef, params, frozen)
        nnx.reseed(model, dropout=jax.random.fold_in(jax.random.key(config.dropout_seed), step))
        _, _, frozen = nnx.split(model, trainable, ...)
        total_weight = jnp.maximum(jnp.sum(losses.loss_weights(batch).astype(jnp.float32)), 1.0)
        if accum == 1:
            (_, sums), grads = grad_fn(params, frozen, batch, total_weight)
        else:
            micro = jax.tree.map(lambda x: x.reshape((accum, x.shape[0] // accum) + x.shape[1:]), batch)

            def body(carry, mb):
                g_acc, s_acc = carry
                (_, s), g = grad_fn(params, frozen, mb, total_weight)
                return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, s_acc, s)), None

            zeros_g = jax.tree.map(jnp.zeros_like, params)
            zeros_s = {k: jnp.zeros((), jnp.float32)
                       for k in ("loss", "cross_entropy", "z_loss", "correct", "weight")}
            (grads, sums), _ = jax.lax.scan(body, (zeros_g, zeros_s), micro)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = dict(sums)
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics["param_norm"] = optax.global_norm(params)  # non-finite after a bad update: stop before saving it
        return params, opt_state, step + 1, metrics

    return step_fn


def _lenient_sharding(mesh: Mesh, var: Any) -> NamedSharding:
    """Sharding of an optimizer-state leaf: its parameter's logical names when the rank matches, else replicated."""
    value = var.get_value() if isinstance(var, nnx.Variable) else var
    shape = tuple(getattr(value, "shape", ()))
    names = var.get_metadata().get("out_sharding") if isinstance(var, nnx.Variable) else None
    if not names or len(names) != len(shape):
        return NamedSharding(mesh, PartitionSpec())
    spec = partitioning.logical_to_mesh_axes(names, what="optimizer state")
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axis_names = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        ok = axis_names and dim % math.prod(mesh.shape[a] for a in axis_names) == 0
        fitted.append(axes if ok else None)
    return NamedSharding(mesh, PartitionSpec(*fitted))


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
    """Shardings for an optimizer state (or any tree of Variables/arrays), leniently from logical names."""
    return jax.tree.map(lambda v: _lenient_sharding(mesh, v), tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


@dataclasses.dataclass
class CompiledStep:
    """The jitted step and the shardings of everything it touches."""

    fn: Callable[..., Any]
    params_shardings: Any
    opt_shardings: Any
    frozen_shardings: Any
    batch_sharding: NamedSharding
    replicated: NamedSharding


def jit_step(step_fn: Callable[..., Any], *, mesh: Mesh, abstract_params: Any, abstract_opt_state: Any,
             abstract_frozen: Any) -> CompiledStep:
    """pjit the step once: in/out shardings from logical names; params, opt state and step donated."""
    p_sh = partitioning.param_shardings(abstract_params, mesh)
    o_sh = tree_shardings(abstract_opt_state, mesh)
    f_sh = tree_shardings(abstract_frozen, mesh)
    b_sh = partitioning.batch_sharding(mesh)
    rep = NamedSharding(mesh, PartitionSpec())
    fn = jax.jit(step_fn, in_shardings=(p_sh, o_sh, rep, f_sh, b_sh), out_shardings=(p_sh, o_sh, rep, rep),
                 donate_argnums=(0, 1, 2))
    return CompiledStep(fn, p_sh, o_sh, f_sh, b_sh, rep)


def batch_divisor(mesh: Mesh) -> int:
    """The global batch must be a multiple of this (the mesh axes the batch rule shards over)."""
    spec = partitioning.batch_sharding(mesh).spec
    axes = spec[0] if len(spec) else None
    names = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    return int(np.prod([mesh.shape[a] for a in names])) if names else 1
