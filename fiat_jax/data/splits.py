"""Deterministic train/validation/test cuts for single-split sources, and nested training-set caps.

Why ranks: each example carries ``rank``, its position in a seeded shuffle of its split. Keeping ``rank < N``
gives a training set of exactly N examples, and the first 100 are inside the first 1000 (nested caps), so a
scale sweep changes only how much data a run sees, never which examples come first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fiat_jax.errors import UserError

DEFAULT_FRACTIONS: Mapping[str, float] = {"train": 0.5, "validation": 0.1, "test": 0.4}


def seeded_order(ids: Sequence[str], seed: int) -> list[int]:
    """Indices of ``ids`` in a seeded shuffle that depends only on the ids and the seed, not their order."""
    by_id = sorted(range(len(ids)), key=lambda i: ids[i])
    if len(set(ids)) != len(ids):
        raise UserError("duplicate example ids; a seeded split needs unique ids")
    perm = np.random.default_rng(seed).permutation(len(ids))
    return [by_id[p] for p in perm]


def with_ranks(examples: Sequence[dict[str, Any]], *, seed: int, split: str) -> list[dict[str, Any]]:
    """Copies of the examples with ``split`` and ``rank`` (position in a seeded shuffle of this split)."""
    order = seeded_order([e["id"] for e in examples], seed)
    ranked = [dict(examples[i], rank=r, split=split) for r, i in enumerate(order)]
    return ranked


def cut(examples: Sequence[dict[str, Any]], *, seed: int,
        fractions: Mapping[str, float] = DEFAULT_FRACTIONS) -> dict[str, list[dict[str, Any]]]:
    """Seeded train/validation/test cut of one split; sizes are floors of the fractions, test takes the rest.

    Returns the three splits (examples with ``split`` and ``rank``) plus ``full`` (every example, ranked; TFDS
    reserves the name "all"), so results can still be reported on the whole published set.
    """
    if set(fractions) != {"train", "validation", "test"}:
        raise UserError(f"split fractions need exactly train, validation, test; got {sorted(fractions)}")
    if any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise UserError(f"split fractions must be >= 0 and sum to 1; got {dict(fractions)}")
    n = len(examples)
    order = seeded_order([e["id"] for e in examples], seed)
    n_train = int(np.floor(n * fractions["train"]))
    n_val = int(np.floor(n * fractions["validation"]))
    bounds = {"train": (0, n_train), "validation": (n_train, n_train + n_val), "test": (n_train + n_val, n)}
    out: dict[str, list[dict[str, Any]]] = {}
    for name, (lo, hi) in bounds.items():
        # Rank within the split keeps the seeded order, so caps are nested.
        out[name] = [dict(examples[i], split=name, rank=r) for r, i in enumerate(order[lo:hi])]
    out["full"] = with_ranks(examples, seed=seed, split="full")
    return out


def cap_filter(num_train_examples: int | None):
    """A seqio preprocessor keeping the first ``num_train_examples`` (by rank) of the train split only."""
    import tensorflow as tf

    def _cap(ds: tf.data.Dataset) -> tf.data.Dataset:
        if num_train_examples is None:
            return ds
        n = tf.constant(int(num_train_examples), tf.int64)
        return ds.filter(lambda ex: tf.logical_or(tf.not_equal(ex["split"], "train"),
                                                  tf.cast(ex["rank"], tf.int64) < n))

    _cap.__name__ = f"cap_train_examples_{num_train_examples}"
    return _cap
