"""Token cross-entropy on target tokens only, with T5's optional z-loss.

Weights come from ``decoder_loss_weights`` (0 on padding, on packed-segment padding and, for prefix LMs, on the
inputs), so packing needs nothing more here. Losses are returned as *sums* with their token count so that gradient
accumulation and data parallelism normalise once, by the global number of target tokens.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp


def cross_entropy_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array, *,
                       z_loss: float = 0.0) -> dict[str, jax.Array]:
    """Sums over the batch: ``loss`` (xent + z-loss), ``z_loss``, ``correct`` tokens and ``weight`` (tokens)."""
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    # One max pass serves both the stable log-partition and accuracy (an argmax pass over a 49k vocabulary cost
    # as much as the max itself; a tie with the target counts as correct).
    max_logit = jax.lax.stop_gradient(jnp.max(logits, axis=-1))
    log_z = max_logit + jnp.log(jnp.sum(jnp.exp(logits - max_logit[..., None]), axis=-1))
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    xent = log_z - target_logit
    zl = z_loss * jnp.square(log_z) if z_loss else jnp.zeros_like(log_z)
    correct = (target_logit >= max_logit).astype(jnp.float32)
    return {
        "loss": jnp.sum((xent + zl) * weights),
        "cross_entropy": jnp.sum(xent * weights),
        "z_loss": jnp.sum(zl * weights),
        "correct": jnp.sum(correct * weights),
        "weight": jnp.sum(weights),
    }


def loss_weights(batch: Mapping[str, jax.Array]) -> jax.Array:
    """``decoder_loss_weights`` when present, else non-padding targets (token 0 is padding)."""
    if "decoder_loss_weights" in batch:
        return batch["decoder_loss_weights"]
    return (batch["decoder_target_tokens"] != 0).astype(jnp.float32)
