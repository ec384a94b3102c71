"""Orbax checkpoints of a training run: async saves, keep-last-k + best-by-metric, resume, re-sharded restore.

A checkpoint step holds two items: ``state`` (params, optimizer state, step; a nested dict of arrays with string
keys, so it does not depend on NNX or optax class layout) and ``meta`` (JSON: step, input position, fingerprint).
Orbax writes each step into a temporary directory and renames it when complete, so a failed or killed save never
damages the previous step; :meth:`Checkpoints.restore` also falls back to an older step if the newest is unreadable.

``MODEL_DIR/fingerprint.json`` records what model the directory belongs to (model class, config, parameter shapes);
a run with a different fingerprint refuses to resume there unless ``restore_anyway=True``.
"""

from __future__ import annotations

import contextlib
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

# How long a save may take to finish (orbax's default is 20 minutes, during which a run whose directory has become
# unwritable would sit waiting for nothing). Tiny and medium checkpoints finish in seconds; raise it through gin
# for very large ones on slow storage.
SAVE_TIMEOUT_S = 120


class CheckpointSaveError(UserError):
    """A checkpoint could not be written; the run stops and the last good checkpoint is kept."""


class CheckpointMismatchError(UserError):
    """A checkpoint that is readable but does not fit this model (other parameter names, shapes or dtypes)."""


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
            preservation_policy=ocm.AnyPreservationPolicy(policies),
            # Directories created synchronously: a directory that cannot be created fails the save at once,
            # where orbax's background creation would leave the save waiting 300 s for a signal.
            async_options=ocp.AsyncOptions(timeout_secs=int(SAVE_TIMEOUT_S),
                                           create_directories_asynchronously=False))
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        except OSError as err:
            raise UserError(f"checkpoint directory {self.directory}: {_os_reason(err)}") from None
        self._failed = False
        self._last_good = self.latest_step()
        self._pending: int | None = None

    # -- fingerprint -------------------------------------------------------------------------------------------
    @property
    def fingerprint_path(self) -> pathlib.Path:
        return self.model_dir / "fingerprint.json"

    def check_fingerprint(self, current: Mapping[str, Any], *, restore_anyway: bool = False) -> None:
        """Refuse a MODEL_DIR holding checkpoints of another model. Writes nothing: :meth:`record_fingerprint`
        does, once a restore has succeeded (a failed ``restore_anyway`` must leave the directory as it was)."""
        path = self.fingerprint_path
        if path.is_file() and self.all_steps():
            try:
                stored = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise UserError(f"{path} is unreadable ({type(err).__name__}); move it away to train here") from None
            if stored.get("hash") != current.get("hash"):
                why = _first_difference(stored, current)
                if not restore_anyway:
                    raise UserError(
                        f"MODEL_DIR {self.model_dir} holds checkpoints of a different model or config ({why}); "
                        f"use a new MODEL_DIR or pass --gin.train.restore_anyway=True")
                _log.warning("restoring anyway although the fingerprint differs: %s", why)

    def record_fingerprint(self, current: Mapping[str, Any]) -> None:
        """Write ``fingerprint.json`` (process 0), after the restore (if any) has succeeded."""
        path = self.fingerprint_path
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

    def last_good_step(self) -> int | None:
        """The newest step known to be complete on disk (a failed save's step is not)."""
        return self._last_good

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
        """Start an (async) save of ``state`` at ``step``.

        Raises :class:`CheckpointSaveError` when this save or an earlier async one failed (orbax reports an
        async failure at the next save or wait); the steps before it are untouched on disk.
        """
        args = ocp.args.Composite(state=ocp.args.StandardSave(to_nested(state)),
                                  meta=ocp.args.JsonSave(dict(meta) | {"step": int(step)}))
        clean_metrics = {k: float(v) for k, v in (metrics or {}).items()} or None
        with self._save_errors(int(step)):
            self.manager.save(int(step), args=args, metrics=clean_metrics, force=True)
        self._pending = int(step)
        if not self.manager._options.enable_async_checkpointing:  # noqa: SLF001 (a plain bool of our own options)
            self._completed()

    def _completed(self) -> None:
        if self._pending is not None:
            self._last_good = self._pending
            self._pending = None

    @contextlib.contextmanager
    def _save_errors(self, step: int | None):
        if self._failed:
            raise CheckpointSaveError(f"an earlier checkpoint save to {self.directory} failed")
        try:
            yield
        except Exception as err:  # orbax raises whatever the file system or its own threads raised
            self._failed = True
            at = self._pending if self._pending is not None else step
            good = self._last_good
            raise CheckpointSaveError(
                f"saving checkpoint step {at} to {self.directory} failed ({_exception_reason(err)}); stopped. "
                f"Last good checkpoint: {'step ' + str(good) if good is not None else 'none'}") from err
        self._completed()

    def restore(self, abstract_state: Any, *, step: int | None = None) -> tuple[Any, dict[str, Any]] | None:
        """``(state, meta)`` from ``step`` (default: newest readable) into ``abstract_state``'s shardings.

        ``abstract_state`` is a tree of ``jax.ShapeDtypeStruct`` with the *target* shardings, so a checkpoint
        written on one mesh restores into another. Returns None when there is no checkpoint.
        """
        steps = [step] if step is not None else list(reversed(self.all_steps()))
        target = to_nested(abstract_state)
        errors = []
        for candidate in steps:
            mismatch = self._mismatch(candidate, target)
            if mismatch:  # readable, but of another model: no older step would fit either, and none is moved
                raise CheckpointMismatchError(
                    f"checkpoint step {candidate} in {self.directory} does not fit this model ({mismatch}); "
                    f"use a new MODEL_DIR, or the model config it was trained with")
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
            self._last_good = int(candidate)
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

    def _mismatch(self, step: int, target: Mapping[str, Any]) -> str | None:
        """The first parameter whose name, shape or dtype differs between step ``step`` and ``target``; None
        when they agree or when the step's metadata is unreadable (then the restore itself decides)."""
        try:
            stored_tree = ocp.StandardCheckpointer().metadata(self.directory / str(step) / "state").item_metadata
            stored = {"/".join(names): leaf for names, leaf in leaf_paths(stored_tree)}
        except Exception:  # noqa: BLE001 (unreadable metadata: the restore reports it as unreadable)
            return None
        wanted = {"/".join(names): leaf for names, leaf in leaf_paths(target)}
        if not set(stored) & set(wanted):  # no tree, or nothing in common: damaged metadata, not another model
            return None
        missing = sorted(set(wanted) - set(stored))
        if missing:
            return f"{missing[0]} is not in the checkpoint" + (f" (+{len(missing) - 1} more)" if len(missing) > 1
                                                               else "")
        extra = sorted(set(stored) - set(wanted))
        if extra:
            return f"the checkpoint has {extra[0]}, which this model lacks"
        for name in sorted(wanted):
            want, have = wanted[name], stored[name]
            want_shape, have_shape = tuple(getattr(want, "shape", ())), tuple(getattr(have, "shape", ()) or ())
            if want_shape != have_shape:
                return f"{name}: checkpoint shape {have_shape}, model shape {want_shape}"
            want_dtype, have_dtype = getattr(want, "dtype", None), getattr(have, "dtype", None)
            if want_dtype is not None and have_dtype is not None and np.dtype(want_dtype) != np.dtype(have_dtype):
                return f"{name}: checkpoint dtype {np.dtype(have_dtype)}, model dtype {np.dtype(want_dtype)}"
        return None

    def wait(self) -> None:
        """Wait for the async save in flight (bounded by SAVE_TIMEOUT_S); CheckpointSaveError if it failed."""
        if self._failed:
            return
        with self._save_errors(None):
            self.manager.wait_until_finished()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            try:
                self.manager.close()
            except Exception:  # noqa: BLE001 (closing after a failed save: the save's error is the one to report)
                if not self._failed:
                    raise


def _os_reason(err: OSError) -> str:
    return os.strerror(err.errno).lower() if err.errno else (str(err) or type(err).__name__)


def _exception_reason(err: BaseException) -> str:
    """The innermost OSError's reason (orbax wraps them), else the first line of the message."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError):
            where = f": {seen.filename}" if getattr(seen, "filename", None) else ""
            return _os_reason(seen) + where
        seen = seen.__cause__ or seen.__context__
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


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
