"""Held-out response log-likelihood per token, item by item: an automatic metric of instruction tuning that does not
depend on a judge (phased instruction tuning's evidence; a 135M judge is close to chance).

Each held-out response is scored teacher-forced by the trained student (its target tokens, EOS included, as the
trainer's feature converter cuts them). The metric is the log-likelihood summed over every held-out response token
divided by the number of those tokens. Its per-item scores are each response's summed log-likelihood divided by
the *mean* response length (in tokens) of the held-out set, so that their mean is exactly the metric and a paired
test between two runs on the same items (same tokens, same weights) compares what the table shows.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fiat_jax.methods.examples import register_examples_task
from fiat_jax.train import input_pipeline, losses

METRIC = "log_likelihood_per_token"


@dataclasses.dataclass(frozen=True)
class ResponseScores:
    """Summed log-likelihood and token count of each held-out response (in row order)."""

    ids: tuple[str, ...]
    sums: tuple[float, ...]
    tokens: tuple[int, ...]

    @property
    def per_token(self) -> float:
        """Log-likelihood per response token over the whole held-out set (nan when empty)."""
        total = sum(self.tokens)
        return math.fsum(self.sums) / total if total else math.nan

    @property
    def per_response(self) -> float:
        """Mean summed log-likelihood of a response (the older ``log_likelihood`` metric)."""
        return math.fsum(self.sums) / len(self.sums) if self.sums else math.nan

    def item_values(self) -> list[float]:
        """Per-item scores whose mean is :attr:`per_token`: each sum over the mean response length."""
        if not self.tokens or not sum(self.tokens):
            return []
        mean_tokens = sum(self.tokens) / len(self.tokens)
        return [s / mean_tokens for s in self.sums]


def item_entry(ids: Sequence[str], values: Sequence[float]) -> dict[str, Any]:
    """One metric's per-item scores in results.json's ``item_scores`` layout (ids unique: no target digests)."""
    return {"ids": [str(i) for i in ids], "targets": [], "values": [float(v) for v in values]}


def score_responses(model: Any, rows: Sequence[Mapping[str, Any]], *, task_feature_lengths: Mapping[str, int],
                    batch_size: int = 16, name: str = "heldout_scoring") -> ResponseScores:
    """Teacher-forced log-likelihood sums and token counts of each row's ``targets`` given its ``inputs``.

    Rows keep their order; an ``id`` field names each item (else its position)."""
    # lazy: JAX loads only when a run computes, not when gin configs or the CLI import this module
    import jax
    # lazy: JAX loads only when a run computes, not when gin configs or the CLI import this module
    import jax.numpy as jnp
    # lazy: flax/JAX load only when a run computes, not when gin configs or the CLI import this module
    from flax import nnx


    ids = tuple(str(r.get("id") or i) for i, r in enumerate(rows))
    if not rows:
        return ResponseScores(ids, (), ())
    task = register_examples_task(name, {"validation": [{"inputs": r["inputs"], "targets": r["targets"]}
                                                        for r in rows]})
    converter = input_pipeline.feature_converter_for(getattr(model, "model_kind", "decoder"), pack=False)
    ds = task.get_dataset(sequence_length=dict(task_feature_lengths), split="validation", shuffle=False,
                          use_cached=False)
    feats = list(converter(ds, dict(task_feature_lengths)).as_numpy_iterator())
    graphdef, state = nnx.split(model)

    @functools.partial(jax.jit, static_argnames="max_positions")
    def score(state, batch, max_positions):
        m = nnx.merge(graphdef, state)
        tgt, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
        if not hasattr(m, "hidden_from_batch"):
            lp = jax.nn.log_softmax(m.logits_from_batch(batch, deterministic=True).astype(jnp.float32), axis=-1)
            return jnp.sum(jnp.take_along_axis(lp, tgt[..., None], axis=-1)[..., 0] * weights, axis=-1)
        return losses.head_token_log_likelihoods(m.hidden_from_batch(batch, deterministic=True),
                                                 m.logits_from_hidden, tgt, weights, max_positions=max_positions)

    sums: list[float] = []
    tokens: list[int] = []
    for start in range(0, len(feats), batch_size):
        chunk = feats[start:start + batch_size]
        batch = {k: np.stack([f[k] for f in chunk]) for k in chunk[0]}
        pad = batch_size - len(chunk)
        if pad:
            batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
        out = score(state, batch, losses.position_bucket(batch["decoder_loss_weights"]))
        sums.extend(float(x) for x in np.asarray(out)[:len(chunk)])
        tokens.extend(int(x) for x in np.count_nonzero(batch["decoder_loss_weights"][:len(chunk)], axis=-1))
    return ResponseScores(ids, tuple(sums), tuple(tokens))
