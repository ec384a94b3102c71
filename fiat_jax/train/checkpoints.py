"""Orbax checkpoints of a training run: async saves, keep-last-k + best-by-metric, resume, re-sharded restore.

A checkpoint step holds two items: ``state`` (params, optimizer state, step; a nested dict of arrays with string
keys, so it does not depend on NNX or optax class layout) and ``meta`` (JSON: step, input position, fingerprint).
Orbax writes each step into a temporary directory and renames it when complete, so a failed or killed save never
damages the previous step; :meth:`Checkpoints.restore` also falls back to an older step if the newest is unreadable.

``MODEL_DIR/fingerprint.json`` records what model the directory belongs to (model class, config, parameter shapes);
a run with a different fingerprint refuses to resume there unless ``restore_anyway=True``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from fiat_jax.errors import UserError

_log = logging.getLogger(__name__)


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def leaf_paths(tree: Any) -> list[tuple[tuple[str, ...], Any]]:
    """``[(("params", "layers_0", "kernel"), leaf), ...]``; the ``.value`` of NNX Variables is dropped."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = tuple(_key_name(k) for k in path)
        if len(path) > 1 and isinstance(path[-1], jax.tree_util.GetAttrKey) and names[-1] == "value":
            names = names[:-1]
        out.append((names, leaf))
    return out


def to_nested(tree: Any) -> dict[str, Any]:
    """Any pytree (NNX State, optax state, dicts) -> nested dict with string keys, for orbax."""
    nested: dict[str, Any] = {}
    for names, leaf in leaf_paths(tree):
        node = nested
        for name in names[:-1]:
            node = node.setdefault(name, {})
        node[names[-1]] = leaf
    return nested


def from_nested(template: Any, nested: Mapping[str, Any]) -> Any:
    """Inverse of :func:`to_nested`: the values of ``nested`` poured into ``template``'s structure."""
    leaves = []
    for names, _ in leaf_paths(template):
        node: Any = nested
        for name in names:
            node = node[name]
        leaves.append(node)
    return jax.tree.unflatten(jax.tree.structure(template), leaves)


def fingerprint(*, model: Any, abstract_params: Any, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What makes a checkpoint belong to a model: its class, config and every parameter's shape and dtype."""
    shapes = {"/".join(names): [list(getattr(leaf, "shape", ())), str(getattr(leaf, "dtype", ""))]
              for names, leaf in leaf_paths(abstract_params)}
    config = getattr(model, "config", None)
    info = {"model": f"{type(model).__module__}.{type(model).__qualname__}",
            "config": repr(config) if config is not None else None, "params": shapes}
    info.update(dict(extra or {}))
    blob = json.dumps(info, sort_keys=True).encode()
    info["hash"] = hashlib.sha256(blob).hexdigest()[:16]
    return info


def _first_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    for key in ("model", "config"):
        if old.get(key) != new.get(key):
            return f"{key} {old.get(key)!s:.120} != {new.get(key)!s:.120}"
    old_p, new_p = old.get("params", {}), new.get("params", {})
    for name in sorted(set(old_p) | set(new_p)):
        if old_p.get(name) != new_p.get(name):
            return f"parameter {name}: {old_p.get(name)} != {new_p.get(name)}"
    for key in sorted(set(old) | set(new)):
        if key not in ("hash", "params") and old.get(key) != new.get(key):
            return f"{key} {old.get(key)!r} != {new.get(key)!r}"
    return "fingerprints differ"


class Checkpoints:
    """One run's checkpoint directory (``MODEL_DIR/checkpoints``) behind an orbax CheckpointManager."""

    def __init__(self, model_dir: str | os.PathLike, *, keep: int = 3, best_metric: str | None = None,
                 best_mode: str = "min", keep_best: int = 1, async_save: bool = True):
        if best_mode not in ("min", "max"):
            raise UserError(f"best_mode={best_mode!r}: expected 'min' or 'max'")
        self.model_dir = pathlib.Path(model_dir)
        self.directory = self.model_dir / "checkpoints"
        self.best_metric = best_metric
        self.best_mode = best_mode
        policies: list[Any] = [ocm.LatestN(n=max(int(keep), 1))]
        if best_metric:
            worst = float("inf") if best_mode == "min" else float("-inf")
            policies.append(ocm.BestN(get_metric_fn=lambda m: float(m.get(best_metric, worst)),
                                      reverse=best_mode == "min",
                                      n=max(int(keep_best), 1), keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True,
            preservation_policy=ocm.AnyPreservationPolicy(policies))
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    # -- fingerprint -------------------------------------------------------------------------------------------
    @property
    def fingerprint_path(self) -> pathlib.Path:
        return self.model_dir / "fingerprint.json"

    def check_fingerprint(self, current: Mapping[str, Any], *, restore_anyway: bool = False) -> None:
        """Refuse a MODEL_DIR holding checkpoints of another model; record the fingerprint on first use."""
        path = self.fingerprint_path
        if path.is_file() and self.all_steps():
            stored = json.loads(path.read_text())
            if stored.get("hash") != current.get("hash"):
                why = _first_difference(stored, current)
                if not restore_anyway:
                    raise UserError(
                        f"MODEL_DIR {self.model_dir} holds checkpoints of a different model or config ({why}); "
                        f"use a new MODEL_DIR or pass --gin.train.restore_anyway=True")
                _log.warning("restoring anyway although the fingerprint differs: %s", why)
        if jax.process_index() == 0:
            self.model_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(dict(current), indent=1, sort_keys=True))
            tmp.replace(path)

    # -- steps ---------------------------------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The step whose saved metrics are best by ``best_metric`` (None without metrics)."""
        if not self.best_metric:
            return None
        scored = []
        for step in self.all_steps():
            metrics = self.manager.metrics(step)
            if metrics and self.best_metric in metrics:
                scored.append((float(metrics[self.best_metric]), step))
        if not scored:
            return None
        return (min(scored) if self.best_mode == "min" else max(scored))[1]

    # -- save / restore ------------------------------------------------------------------------------------------
    def save(self, step: int, state: Any, *, meta: Mapping[str, Any],
             metrics: Mapping[str, float] | None = None) -> None:
        """Start an (async) save of ``state`` at ``step``; raises an earlier async save's error, if any."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(to_nested(state)),
                                  meta=ocp.args.JsonSave(dict(meta) | {"step": int(step)}))
        clean_metrics = {k: float(v) for k, v in (metrics or {}).items()} or None
        self.manager.save(int(step), args=args, metrics=clean_metrics, force=True)

    def restore(self, abstract_state: Any, *, step: int | None = None) -> tuple[Any, dict[str, Any]] | None:
        """``(state, meta)`` from ``step`` (default: newest readable) into ``abstract_state``'s shardings.

        ``abstract_state`` is a tree of ``jax.ShapeDtypeStruct`` with the *target* shardings, so a checkpoint
        written on one mesh restores into another. Returns None when there is no checkpoint.
        """
        steps = [step] if step is not None else list(reversed(self.all_steps()))
        target = to_nested(abstract_state)
        errors = []
        for candidate in steps:
            try:
                restored = self.manager.restore(candidate, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
            except Exception as err:  # an unreadable step: fall back to the previous one
                if step is not None:
                    raise UserError(f"cannot restore checkpoint step {step} from {self.directory}: "
                                    f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
                _log.warning("checkpoint step %s in %s is unreadable (%s); trying an older one", candidate,
                             self.directory, type(err).__name__)
                errors.append(f"{candidate}: {type(err).__name__}")
                continue
            if errors:
                self._set_aside([int(e.split(":")[0]) for e in errors])
            return from_nested(abstract_state, restored.state), dict(restored.meta)
        if errors:
            raise UserError(f"no readable checkpoint in {self.directory} ({'; '.join(errors)})")
        return None

    def _set_aside(self, steps: Sequence[int]) -> None:
        """Move unreadable steps to ``MODEL_DIR/checkpoints_unreadable/`` so training can write them again."""
        if jax.process_index() == 0:
            aside = self.model_dir / "checkpoints_unreadable"
            aside.mkdir(parents=True, exist_ok=True)
            for step in steps:
                source = self.directory / str(step)
                if source.exists():
                    target = aside / f"{step}-{int(time.time())}"
                    source.rename(target)
                    _log.warning("moved unreadable checkpoint step %d to %s", step, target)
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying target shardings, the restore target for orbax."""
    leaves, treedef = jax.tree.flatten(tree)
    flat_shardings = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    if len(flat_shardings) != len(leaves):
        raise ValueError(f"{len(flat_shardings)} shardings for {len(leaves)} arrays")
    return jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s)
                                        for x, s in zip(leaves, flat_shardings)])


def restore_params_only(model_dir: str | os.PathLike, abstract_params: Any, *, step: int | None = None,
                        ) -> tuple[Any, int]:
    """Params of a run (for evaluation): restores only ``state/params``; returns ``(params, step)``."""
    manager = ocp.CheckpointManager(pathlib.Path(model_dir) / "checkpoints",
                                    options=ocp.CheckpointManagerOptions(read_only=True, create=False),
                                    item_names=("state", "meta"))
    try:
        steps: Sequence[int] = sorted(manager.all_steps())
        if not steps:
            raise UserError(f"no checkpoint under {model_dir}/checkpoints")
        step = steps[-1] if step is None else step
        target = {"params": to_nested(abstract_params)}
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(
                target), partial_restore=True)))
        return from_nested(abstract_params, restored.state["params"]), step
    finally:
        manager.close()
