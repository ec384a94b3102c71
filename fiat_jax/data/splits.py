"""Deterministic train/validation/test cuts for single-split sources, their disjointness check, and nested
training-set caps.

Why ranks: each example carries ``rank``, its position in a seeded shuffle of its split. Keeping ``rank < N``
gives a training set of exactly N examples, and the first 100 are inside the first 1000 (nested caps), so a
scale sweep changes only how much data a run sees, never which examples come first.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fiat_jax.errors import UserError
import tensorflow as tf

DEFAULT_FRACTIONS: Mapping[str, float] = {"train": 0.5, "validation": 0.1, "test": 0.4}
TRAIN_SPLITS = ("train",)
EVAL_SPLITS = ("validation", "test")  # ``full`` (the whole published set, train included) is neither
_SPACE = re.compile(r"\s+")


def normalise(text: Any) -> str:
    """Text as compared for duplicates: NFKC, case-folded, whitespace collapsed (a list joins its items)."""
    if isinstance(text, (list, tuple)):
        text = "\x1e".join(str(t) for t in text)
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", str(text)).casefold()).strip()


def content_key(example: Mapping[str, Any], fields: Sequence[str]) -> str:
    """The normalised content of an example's input fields: two examples with one key are the same item."""
    return "\x1f".join(normalise(example.get(f, "")) for f in fields)


def drop_repeats(examples: Sequence[dict[str, Any]], fields: Sequence[str], *,
                 where: str = "") -> list[dict[str, Any]]:
    """One example per normalised content (the smallest id wins), so a seeded cut cannot put the same item on
    both sides; the number dropped is logged."""
    best: dict[str, dict[str, Any]] = {}
    for ex in examples:
        key = content_key(ex, fields)
        if key not in best or ex["id"] < best[key]["id"]:
            best[key] = ex
    kept_ids = {ex["id"] for ex in best.values()}
    kept = [ex for ex in examples if ex["id"] in kept_ids]
    if len(kept) != len(examples):
        logging.getLogger(__name__).info("%s: %d repeated item(s) (same normalised content) kept once",
                                         where or "cut", len(examples) - len(kept))
    return kept


def check_disjoint(split_rows: Mapping[str, Iterable[Mapping[str, Any]]], *, task: str,
                   content_fields: Sequence[str], train_splits: Sequence[str] = TRAIN_SPLITS,
                   eval_splits: Sequence[str] = EVAL_SPLITS) -> None:
    """UserError naming ``task`` and the first evaluation example also found in a training split, by id or by
    normalised content of ``content_fields``."""
    ids: dict[str, str] = {}
    keys: dict[str, tuple[str, str]] = {}
    for split in train_splits:
        for ex in split_rows.get(split, ()):
            ids[str(ex["id"])] = split
            if content_fields:
                keys[content_key(ex, content_fields)] = (split, str(ex["id"]))
    for split in eval_splits:
        for ex in split_rows.get(split, ()):
            if str(ex["id"]) in ids:
                raise UserError(f"task {task}: {split} example {ex['id']} is also in the {ids[str(ex['id'])]} split "
                                "(same id); evaluation items must never be trained on")
            hit = keys.get(content_key(ex, content_fields)) if content_fields else None
            if hit is not None:
                raise UserError(f"task {task}: {split} example {ex['id']} has the same content as {hit[0]} example "
                                f"{hit[1]}; evaluation items must never be trained on")


def carve(examples: Sequence[dict[str, Any]], *, seed: int,
          fractions: Mapping[str, float]) -> dict[str, list[dict[str, Any]]]:
    """Seeded disjoint pieces of one split, named by ``fractions`` (in order; floors, the last takes the rest);
    each example gets ``split`` and ``rank`` within its piece. XCOPA's published validation set becomes its
    ``train`` and ``validation`` this way (see ``sources.SourceSpec.carve``)."""
    if not fractions or any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise UserError(f"carve-out fractions must be >= 0 and sum to 1; got {dict(fractions)}")
    n = len(examples)
    order = seeded_order([e["id"] for e in examples], seed)
    out: dict[str, list[dict[str, Any]]] = {}
    lo = 0
    names = list(fractions)
    for index, name in enumerate(names):
        hi = n if index == len(names) - 1 else lo + int(np.floor(n * fractions[name]))
        out[name] = [dict(examples[i], split=name, rank=r) for r, i in enumerate(order[lo:hi])]
        lo = hi
    return out


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
    def _cap(ds: tf.data.Dataset) -> tf.data.Dataset:
        if num_train_examples is None:
            return ds
        n = tf.constant(int(num_train_examples), tf.int64)
        return ds.filter(lambda ex: tf.logical_or(tf.not_equal(ex["split"], "train"),
                                                  tf.cast(ex["rank"], tf.int64) < n))

    _cap.__name__ = f"cap_train_examples_{num_train_examples}"
    _cap.num_train_examples = num_train_examples  # read by `fiat tasks list`
    return _cap
