"""Token cross-entropy on target tokens only, with T5's optional z-loss.

Weights come from ``decoder_loss_weights`` (0 on padding, on packed-segment padding and, for prefix LMs, on the
inputs), so packing needs nothing more here. Losses are returned as *sums* with their token count so that gradient
accumulation and data parallelism normalise once, by the global number of target tokens.

FIAT rows are long inputs with a few target tokens, so the LM head over a 32k-49k vocabulary at every position
would dominate the step: :func:`head_cross_entropy_sums` applies it only at the loss-bearing positions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np


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


def loss_positions(weights: jax.Array, max_positions: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(flat indices [N], valid [N], count)`` of the loss-bearing (weight != 0) positions of ``weights [B, T]``.

    ``N = max_positions`` is static so the step compiles once; slots past ``count`` point at position 0 and are
    marked invalid. When ``count > N`` the indices are incomplete: callers fall back to the full computation.
    """
    flat = weights.reshape(-1) != 0
    count = jnp.sum(flat.astype(jnp.int32))
    (idx,) = jnp.nonzero(flat, size=max_positions, fill_value=0)
    valid = jnp.arange(max_positions) < count
    return idx, valid, count


def position_bucket(weights: np.ndarray) -> int:
    """A static ``max_positions`` for a host batch: its loss-position count rounded up to a power of two (at least
    8), so scoring batches of varied targets compile a handful of programs."""
    count = int(np.count_nonzero(np.asarray(weights)))
    return max(8, 1 << max(count - 1, 0).bit_length())


def _gather_rows(x: jax.Array, idx: jax.Array) -> jax.Array:
    return jnp.take(x.reshape((-1,) + x.shape[2:]), idx, axis=0)


def head_cross_entropy_sums(hidden: jax.Array, head: Callable[[jax.Array], jax.Array], targets: jax.Array,
                            weights: jax.Array, *, max_positions: int | None, z_loss: float = 0.0,
                            chunk_size: int | None = None) -> dict[str, jax.Array]:
    """:func:`cross_entropy_sums` of ``head(hidden)``, computing the head (and softmax) only at loss positions.

    ``hidden [B, T, D]`` are final hidden states and ``head`` the LM head. With ``max_positions`` N (static) the
    at most N positions whose weight is non-zero are gathered to ``[N, D]`` and only their ``[N, V]`` logits are
    formed; a batch with more loss positions than N takes the full ``[B, T, V]`` path instead (``lax.cond``, so
    the result is always exact and only the branch taken runs). ``chunk_size`` splits the N positions (all B*T of
    them on the full path) into rematerialised chunks so at most ``[chunk_size, V]`` logits live at once (long
    targets, loss on every position). ``max_positions`` None (or >= B*T) is the full computation.
    """
    b, t = targets.shape

    def rows(h, tgt, w):  # h [N, D]: one head call, or rematerialised chunks of at most chunk_size positions
        n = h.shape[0]
        if not chunk_size or chunk_size >= n:
            return cross_entropy_sums(head(h), tgt, w, z_loss=z_loss)
        c = int(chunk_size)
        pad = (-n) % c
        h = jnp.pad(h, ((0, pad), (0, 0))).reshape(-1, c, h.shape[-1])
        tgt = jnp.pad(tgt, (0, pad)).reshape(-1, c)
        w = jnp.pad(w, (0, pad)).reshape(-1, c)

        @jax.checkpoint
        def one(args):
            hc, tc, wc = args
            return cross_entropy_sums(head(hc), tc, wc, z_loss=z_loss)

        sums = jax.lax.map(one, (h, tgt, w))
        return {k: jnp.sum(v) for k, v in sums.items()}

    def full(hidden):
        if chunk_size and chunk_size < b * t:  # every position, still never more than [chunk_size, V] logits
            return rows(hidden.reshape(b * t, hidden.shape[-1]), targets.reshape(-1), weights.reshape(-1))
        return cross_entropy_sums(head(hidden), targets, weights, z_loss=z_loss)

    if max_positions is None or max_positions >= b * t:
        return full(hidden)
    n = int(max_positions)

    def gathered(hidden):
        idx, valid, _ = loss_positions(weights, n)
        w = jnp.where(valid, jnp.take(weights.reshape(-1), idx), 0)
        return rows(_gather_rows(hidden, idx), jnp.take(targets.reshape(-1), idx), w)

    count = jnp.sum((weights != 0).astype(jnp.int32))
    return jax.lax.cond(count <= n, gathered, full, hidden)


def head_token_log_likelihoods(hidden: jax.Array, head: Callable[[jax.Array], jax.Array], targets: jax.Array,
                               weights: jax.Array, *, max_positions: int | None) -> jax.Array:
    """Per-row sums ``[B]`` of ``weights * log p(target)`` (scoring), with the head only at loss positions as in
    :func:`head_cross_entropy_sums` (full computation when the batch has more than ``max_positions``)."""
    b, t = targets.shape

    def full(hidden):
        lp = jax.nn.log_softmax(head(hidden).astype(jnp.float32), axis=-1)
        tok = jnp.take_along_axis(lp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
        return jnp.sum(tok * weights, axis=-1)

    if max_positions is None or max_positions >= b * t:
        return full(hidden)
    n = int(max_positions)

    def gathered(hidden):
        idx, valid, _ = loss_positions(weights, n)
        lp = jax.nn.log_softmax(head(_gather_rows(hidden, idx)).astype(jnp.float32), axis=-1)
        tgt = jnp.take(targets.reshape(-1), idx).astype(jnp.int32)
        tok = jnp.take_along_axis(lp, tgt[:, None], axis=-1)[:, 0]
        w = jnp.where(valid, jnp.take(weights.reshape(-1), idx), 0).astype(jnp.float32)
        return jax.ops.segment_sum(tok * w, idx // t, num_segments=b)

    count = jnp.sum((weights != 0).astype(jnp.int32))
    return jax.lax.cond(count <= n, gathered, full, hidden)
