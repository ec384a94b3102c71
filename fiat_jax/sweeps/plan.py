"""The grid of a sweep: every run (method x gin axes x binding axes x seeds), its id and its config hash.

Pure planning (no files touched, no processes started), so ``sweep.configured_plan`` and tests build the very
plan the runner executes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fiat_jax.errors import UserError

_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One point of the grid: what to run and where."""

    run_id: str                      # directory name under SWEEP_DIR/runs
    method: str
    gin_files: tuple[str, ...]       # as written in the sweep config (base files, then the method's)
    bindings: tuple[tuple[str, Any], ...]  # --gin.K=V, in order (MODEL_DIR is added per run)
    params: dict[str, Any]           # the grid axes' values for this run (seed included)
    seed: int
    config_hash: str

    def row_fields(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "config_hash": self.config_hash, "method": self.method,
                "seed": self.seed, "params": dict(self.params), "gin_files": list(self.gin_files),
                "bindings": dict(self.bindings)}


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def config_hash(*, subcommand: str | Sequence[str], gin_files: Sequence[str],
                bindings: Sequence[tuple[str, Any]]) -> str:
    """Identity of a run's configuration: the same subcommand, gin files and bindings give the same hash."""
    subcommand = subcommand if isinstance(subcommand, str) else list(subcommand)
    payload = json.dumps(_canonical({"subcommand": subcommand, "gin_files": list(gin_files),
                                     "bindings": sorted((k, v) for k, v in bindings)}),
                         sort_keys=True, default=repr)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _slug(text: str, limit: int = 80) -> str:
    slug = _SLUG_UNSAFE.sub("_", text).strip("_")
    return slug[:limit]


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(_short(v) for v in value)
    return str(value).rsplit("/", 1)[-1]


def _method_entry(name: str, entry: Any) -> tuple[list[str], list[tuple[str, Any]]]:
    """A method is a list of gin files, or ``{'gin_files': [...], 'bindings': {...}}`` for an ablation."""
    if isinstance(entry, str):
        return [entry], []
    if isinstance(entry, Mapping):
        unknown = set(entry) - {"gin_files", "bindings"}
        if unknown:
            raise UserError(f"sweep method {name!r}: unknown key(s) {sorted(unknown)} (use gin_files, bindings)")
        return list(entry.get("gin_files", ())), list(dict(entry.get("bindings", {})).items())
    if isinstance(entry, (list, tuple)):
        return list(entry), []
    raise UserError(f"sweep method {name!r}: expected a list of gin files or a dict, got {type(entry).__name__}")


def plan(*, methods: Mapping[str, Any], grid: Mapping[str, Sequence[Any]] | None = None,
         gin_axes: Mapping[str, Mapping[str, Sequence[str]]] | None = None, seeds: Sequence[int] = (0,),
         seed_binding: str = "SEED", base_gin_files: Sequence[str] = (), setup_gin_files: Sequence[str] = (),
         overlay_gin_files: Sequence[str] = (), bindings: Mapping[str, Any] | None = None,
         subcommand: str | Sequence[str] = "run",
         only: Mapping[str, Mapping[str, Sequence[Any]]] | None = None) -> list[RunSpec]:
    """Every run of the grid, in a stable order (methods, gin axes, binding axes in order, then seeds).

    ``gin_axes`` are axes whose values are gin files rather than bindings (e.g. model sizes:
    ``{'MODEL': {'small': ['models/t5_small.gin'], 'base': ['models/t5_base.gin']}}``); their files come after
    the method's, and the value's name is recorded in the run's params. ``setup_gin_files`` (the task set-up:
    task, teacher, lengths) come right after the method's files so they override the method's defaults.
    ``overlay_gin_files`` come last of all
    (e.g. ``runs/local_tiny.gin``, which must override whatever the method sets). ``only`` restricts a method
    to some values of some axes (``{'Aug-FT (local)': {'MODEL': ['tiny']}}``: that method runs for the tiny
    student only), so one sweep can hold a costly axis value with fewer methods than a cheap one.
    """
    if not methods:
        raise UserError("sweep.methods is empty: name at least one method (a list of gin files)")
    grid = dict(grid or {})
    for axis, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise UserError(f"sweep.grid[{axis!r}] must be a non-empty list of values, got {values!r}")
    if not seeds:
        raise UserError("sweep.seeds is empty")
    gin_axes = {axis: dict(values) for axis, values in dict(gin_axes or {}).items()}
    for axis, values in gin_axes.items():
        if not values:
            raise UserError(f"sweep.gin_axes[{axis!r}] must map value names to lists of gin files")
        if axis in grid:
            raise UserError(f"sweep: axis {axis!r} is both in grid and in gin_axes")
    fixed = list(dict(bindings or {}).items())
    clash = {seed_binding, "MODEL_DIR"} & (set(grid) | set(gin_axes)) | {"MODEL_DIR"} & {k for k, _ in fixed}
    if clash:
        raise UserError(f"sweep: {sorted(clash)} are set by the sweep itself; remove them from grid/bindings")
    only = check_only(only, methods=methods, axes=[*gin_axes, *grid])
    runs: list[RunSpec] = []
    seen: dict[str, str] = {}
    gin_points = list(itertools.product(*[list(values.items()) for values in gin_axes.values()]))
    for name, entry in methods.items():
        method_files, method_bindings = _method_entry(name, entry)
        for gin_point, point in itertools.product(gin_points, itertools.product(*grid.values())):
            axis_files = [f for _, files in gin_point for f in ([files] if isinstance(files, str) else files)]
            params = {**{axis: value_name for axis, (value_name, _) in zip(gin_axes, gin_point)},
                      **dict(zip(grid, point))}
            if any(params[axis] not in allowed for axis, allowed in only.get(name, {}).items()):
                continue
            for seed in seeds:
                run_bindings = fixed + method_bindings + list(dict(zip(grid, point)).items()) + [(seed_binding, seed)]
                gin_files = (tuple(base_gin_files) + tuple(method_files) + tuple(setup_gin_files)
                             + tuple(axis_files) + tuple(overlay_gin_files))
                digest = config_hash(subcommand=subcommand, gin_files=gin_files, bindings=run_bindings)
                label = "-".join([name] + [f"{k}={_short(v)}" for k, v in params.items()] + [f"seed={seed}"])
                run_id = f"{_slug(label)}-{digest[:8]}"
                if run_id in seen:
                    raise UserError(f"sweep: method {name!r} and {seen[run_id]!r} describe the same run {run_id}")
                seen[run_id] = name
                runs.append(RunSpec(run_id=run_id, method=name, gin_files=gin_files,
                                    bindings=tuple(run_bindings), params={**params, seed_binding: seed},
                                    seed=int(seed), config_hash=digest))
    return runs


def check_only(only: Mapping[str, Mapping[str, Sequence[Any]]] | None, *, methods: Mapping[str, Any],
               axes: Sequence[str]) -> dict[str, dict[str, list[Any]]]:
    """``sweep.only`` as ``{method: {axis: [allowed values]}}``, every method and axis checked to exist (a typo
    would otherwise silently run the whole grid)."""
    out: dict[str, dict[str, list[Any]]] = {}
    for name, restriction in dict(only or {}).items():
        if name not in methods:
            raise UserError(f"sweep.only names method {name!r}, not in sweep.methods {sorted(methods)}")
        if not isinstance(restriction, Mapping) or not restriction:
            raise UserError(f"sweep.only[{name!r}] must map axis names to lists of allowed values")
        for axis, allowed in restriction.items():
            if axis not in axes:
                raise UserError(f"sweep.only[{name!r}] names axis {axis!r}, not a grid or gin axis {sorted(axes)}")
            if isinstance(allowed, (str, bytes)) or not isinstance(allowed, Sequence) or not allowed:
                raise UserError(f"sweep.only[{name!r}][{axis!r}] must be a non-empty list of values")
        out[name] = {axis: list(allowed) for axis, allowed in restriction.items()}
    return out
