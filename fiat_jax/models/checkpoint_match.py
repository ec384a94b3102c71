"""Flat <-> nested parameter trees and the strict matcher every checkpoint reader ends in.

Readers return a flat ``{our_name: np.ndarray}``; :func:`match_to_target` checks it against the model's parameter
tree and reports every missing, unexpected and mis-shaped tensor in ONE :class:`~fiat_jax.errors.UserError`,
never silently dropping or broadcasting; :func:`load_into` writes the result into a model in place.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from fiat_jax.errors import UserError

Flat = dict[str, np.ndarray]
PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------------------------
# Flat <-> nested trees
# --------------------------------------------------------------------------------------------------------------


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def flat_leaves(target: Any) -> dict[str, Any]:
    """``{"layers_0.attention.query.kernel": leaf}`` of an NNX module (its Params), its Param state or a nested
    dict (a trailing ``value`` key, as NNX states have, is dropped)."""
    tree = target
    if isinstance(target, nnx.Module):
        tree = nnx.state(target, nnx.Param)
    if isinstance(tree, nnx.State):
        tree = tree.to_pure_dict()
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [_key_name(k) for k in path]
        if len(names) > 1 and names[-1] == "value":
            names = names[:-1]
        out[".".join(names)] = leaf
    return out


def target_shapes(target: Any) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{"layers_0.attention.query.kernel": (shape, dtype)}`` of an NNX module, its Param state or a nested dict."""
    return {name: (tuple(int(d) for d in leaf.shape), np.dtype(leaf.dtype))
            for name, leaf in flat_leaves(target).items()}


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Flat:
    """Nested dict -> ``{"a.b.c": array}``."""
    out: Flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b.c": array}`` -> nested dict (the shape of ``nnx.state(model, nnx.Param).to_pure_dict()``)."""
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        node = nested
        parts = name.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def load_into(model: Any, params: Mapping[str, Any], *, source: str = "params") -> None:
    """Write a nested param dict into an NNX model in place, strictly matched, keeping each parameter's dtype and
    sharding (so a model already placed on a mesh stays placed)."""
    matched = match_to_target(flatten(params), model, source=source)
    state = nnx.state(model, nnx.Param)
    current = state.to_pure_dict()
    new = _int_keys_like(current, matched)

    def place(old: Any, value: Any) -> Any:
        sharding = getattr(old, "sharding", None)
        value = np.asarray(value, dtype=old.dtype)
        return jax.device_put(value, sharding) if sharding is not None else jax.numpy.asarray(value)

    state.replace_by_pure_dict(jax.tree.map(place, current, new))
    nnx.update(model, state)


def _int_keys_like(template: Any, params: Any) -> Any:
    """Our flat names are strings; NNX lists use int keys. Rebuild ``params`` with ``template``'s key types."""
    if not isinstance(template, Mapping):
        return params
    by_str = {str(k): k for k in template}
    return {by_str.get(str(k), k): _int_keys_like(template.get(by_str.get(str(k), k)), v) for k, v in params.items()}


# --------------------------------------------------------------------------------------------------------------
# Strict matching
# --------------------------------------------------------------------------------------------------------------


def _merge_compatible(src: tuple[int, ...], dst: tuple[int, ...]) -> bool:
    """True when one shape is the other with some runs of adjacent dims merged ([D,H,hd] ~ [D,H*hd])."""
    if src == dst:
        return True
    if math.prod(src) != math.prod(dst):
        return False
    long, short = (src, dst) if len(src) >= len(dst) else (dst, src)
    i = 0
    for size in short:
        acc = 1
        while i < len(long) and acc < size:
            acc *= long[i]
            i += 1
        if acc != size:
            return False
    return i == len(long)


def match_to_target(flat: Mapping[str, np.ndarray], target: Any, *, source: str,
                    unrecognised: Iterable[str] = ()) -> dict[str, Any]:
    """Check ``flat`` (our names) against the model's parameter tree; return a nested dict cast to target dtypes.

    Collects every missing, unexpected (incl. source tensors no rule recognised) and mis-shaped tensor and raises
    them all in one ``UserError`` naming ``source``.
    """
    shapes = target_shapes(target)
    missing = sorted(set(shapes) - set(flat))
    unexpected = sorted(set(flat) - set(shapes)) + [f"{n} (unrecognised source tensor)" for n in unrecognised]
    misshaped = []
    out: Flat = {}
    for name in sorted(set(shapes) & set(flat)):
        want, dtype = shapes[name]
        have = tuple(flat[name].shape)
        if not _merge_compatible(have, want):
            misshaped.append(f"{name} {list(have)} != model {list(want)}")
            continue
        out[name] = np.asarray(flat[name]).reshape(want).astype(dtype, copy=False)
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            shown = ", ".join(items[:12]) + (f", ... ({len(items) - 12} more)" if len(items) > 12 else "")
            problems.append(f"{len(items)} {label}: {shown}")
    if problems:
        raise UserError(f"checkpoint {source} does not fit the model: " + "; ".join(problems))
    return unflatten(out)
