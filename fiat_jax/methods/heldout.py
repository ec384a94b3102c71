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
import math
from collections.abc import Mapping, Sequence
from typing import Any

from fiat_jax.methods import student

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
    """Teacher-forced log-likelihood sums and token counts of each row's ``targets`` given its ``inputs``
    (:func:`fiat_jax.methods.student.score_rows_and_tokens`).

    Rows keep their order; an ``id`` field names each item (else its position)."""
    ids = tuple(str(r.get("id") or i) for i, r in enumerate(rows))
    sums, tokens = student.score_rows_and_tokens(
        model, [{"inputs": r["inputs"], "targets": r["targets"]} for r in rows],
        task_feature_lengths=task_feature_lengths, batch_size=batch_size, name=name)
    return ResponseScores(ids, tuple(sums), tuple(tokens))
