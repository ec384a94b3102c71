"""Learning-rate schedules and the optax optimizer of a run (gin-configurable, t5x/maxtext style).

Weight decay is masked so that norms, biases and other vectors are not decayed unless asked: decaying a layer-norm
scale towards zero is a classic silent regression.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import gin
import jax
import jax.numpy as jnp
import optax

from fiat_jax import partitioning

from fiat_jax.errors import UserError

DECAYS = ("constant", "cosine", "linear", "rsqrt")


@gin.configurable
def learning_rate_schedule(*, base_learning_rate: float = 1e-3, warmup_steps: int = 0,
                           decay: str = "constant", total_steps: int | None = None,
                           end_fraction: float = 0.0, warmup_init_fraction: float = 0.0) -> optax.Schedule:
    """Linear warmup to ``base_learning_rate`` then ``decay`` (constant / cosine / linear / rsqrt).

    ``cosine`` and ``linear`` decay to ``end_fraction * base`` at ``total_steps``; ``rsqrt`` is T5's
    ``base * sqrt(warmup / step)`` after warmup (flat ``base`` during warmup when ``warmup_init_fraction`` is 1).
    """
    if decay not in DECAYS:
        raise UserError(f"learning_rate_schedule.decay={decay!r}: choose one of {', '.join(DECAYS)}")
    if decay in ("cosine", "linear") and not total_steps:
        raise UserError(f"learning_rate_schedule.decay={decay!r} needs total_steps (bind it to %TRAIN_STEPS)")
    warmup_steps = max(int(warmup_steps), 0)
    base = float(base_learning_rate)
    end = base * float(end_fraction)
    decay_steps = max(int(total_steps or 0) - warmup_steps, 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        if warmup_steps:
            start = base * warmup_init_fraction
            warm = start + (base - start) * jnp.minimum(step / warmup_steps, 1.0)
        else:
            warm = jnp.asarray(base, jnp.float32)
        after = jnp.maximum(step - warmup_steps, 0.0)
        if decay == "constant":
            decayed = jnp.asarray(base, jnp.float32)
        elif decay == "cosine":
            frac = jnp.minimum(after / decay_steps, 1.0)
            decayed = end + (base - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
        elif decay == "linear":
            frac = jnp.minimum(after / decay_steps, 1.0)
            decayed = base + (end - base) * frac
        else:  # rsqrt
            decayed = base * jax.lax.rsqrt(jnp.maximum(step, max(warmup_steps, 1)) / max(warmup_steps, 1))
        return jnp.where(step < warmup_steps, warm, decayed)

    return schedule


def decay_mask(params: Any, *, exclude: Sequence[str] = (), min_ndim: int = 2) -> Any:
    """True for the leaves that get weight decay: at least ``min_ndim`` dims and no ``exclude`` regex match."""
    patterns = [re.compile(p) for p in exclude]

    def one(path, leaf):
        name = partitioning.path_str(path)
        return bool(getattr(leaf, "ndim", 0) >= min_ndim and not any(p.search(name) for p in patterns))

    return jax.tree_util.tree_map_with_path(one, params)


@gin.configurable
def make_optimizer(*, schedule: optax.Schedule | float | None = None, name: str = "adamw", b1: float = 0.9,
                   b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                   weight_decay_exclude: Sequence[str] = (r"(^|/)(bias|scale|embedding)(/|$)",),
                   weight_decay_min_ndim: int = 2, clip_norm: float | None = 1.0,
                   momentum: float = 0.9) -> optax.GradientTransformation:
    """Gradient clipping (global norm), then adamw / adafactor / sgd with masked, decoupled weight decay.

    ``schedule`` defaults to :func:`learning_rate_schedule` as bound in gin.
    """
    if schedule is None:
        schedule = learning_rate_schedule()

    def mask(params):
        return decay_mask(params, exclude=weight_decay_exclude, min_ndim=weight_decay_min_ndim)

    chain: list[optax.GradientTransformation] = []
    if clip_norm:
        chain.append(optax.clip_by_global_norm(float(clip_norm)))
    if name == "adamw":
        chain.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
    elif name == "adafactor":
        chain.append(optax.scale_by_factored_rms())
    elif name == "sgd":
        chain.append(optax.trace(decay=momentum) if momentum else optax.identity())
    else:
        raise UserError(f"make_optimizer.name={name!r}: choose adamw, adafactor or sgd")
    if weight_decay:
        chain.append(optax.add_decayed_weights(float(weight_decay), mask=mask))
    chain.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*chain)


OptimizerFactory = Callable[[], optax.GradientTransformation]
