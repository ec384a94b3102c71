"""What a finished run reports to the sweep: final metrics per language, tokens seen, parameters trained.

The format is the "Run results" section of docs/CONTRACTS.md: ``MODEL_DIR/results.json`` when the run wrote one,
else the last evaluation rows of ``MODEL_DIR/metrics.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

from fiat_jax.errors import UserError

RESULTS_JSON = "results.json"
METRICS_JSONL = "metrics.jsonl"
AGGREGATE = "all"
_EVAL_KINDS = {"eval", "evaluation", "validation", "test"}
_NOT_METRICS = {"step", "kind", "split", "task", "language", "time", "timestamp", "wall_s", "epoch",
                "tokens_seen", "params_trained"}


class NoResults(UserError):
    """A run exited cleanly but left no final metrics."""


@dataclasses.dataclass
class RunResults:
    metrics: dict[str, dict[str, float]]  # language (or "all") -> metric name -> value
    tokens_seen: int | None = None
    params_trained: int | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def write_run_results(model_dir: str | os.PathLike, *, metrics: Mapping[str, Any], tokens_seen: int | None = None,
                      params_trained: int | None = None, **extra: Any) -> pathlib.Path | None:
    """Write ``MODEL_DIR/results.json`` atomically (process 0 only): the last act of a finished run.

    ``metrics``: ``{language: {metric: value}}`` (or flat ``{metric: value}``). Extra keyword arguments (``task``,
    ``steps``, ...) are stored too and reach the sweep's row under ``extra``. Returns the path (None off process 0).
    """
    import sys

    jax = sys.modules.get("jax")  # never import jax here: the sweep process must not claim accelerators
    if jax is not None and jax.process_index() != 0:
        return None
    root = pathlib.Path(model_dir)
    root.mkdir(parents=True, exist_ok=True)
    payload = {"metrics": {str(k): (dict(v) if isinstance(v, Mapping) else v) for k, v in metrics.items()},
               "tokens_seen": tokens_seen, "params_trained": params_trained, **extra}
    path = root / RESULTS_JSON
    tmp = root / f".{RESULTS_JSON}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True, default=float))
    os.replace(tmp, path)
    return path


PROVENANCE_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "seqio", "numpy", "tensorflow",
                       "gin-config")


def _git(*args: str) -> str | None:
    import subprocess

    root = pathlib.Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _hardware() -> str:
    import platform
    import sys

    jax = sys.modules.get("jax")  # only when the run imported it: never claim accelerators from here
    host = f"{platform.machine()} {os.cpu_count()} CPUs"
    if jax is None:
        return host
    try:
        devices = jax.devices()
        return f"{len(devices)} x {devices[0].platform}:{devices[0].device_kind} ({host})"
    except Exception:  # noqa: BLE001 (a backend that fails to start: the host still says something)
        return host


def _config_hash() -> str | None:
    import hashlib
    import sys

    gin = sys.modules.get("gin")
    if gin is None:
        return None
    try:
        text = gin.operative_config_str() or gin.config_str()
    except Exception:  # noqa: BLE001
        return None
    return hashlib.sha256(text.encode()).hexdigest()[:16] if text else None


def provenance(*, teacher: Any = None) -> dict[str, Any]:
    """What produced a run, recorded when it finishes: git commit and dirty flag of this checkout, package
    versions, the hash of the operative gin config, the teacher's identity, the hardware."""
    import importlib.metadata
    import platform

    versions = {}
    for name in PROVENANCE_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": _git("rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status),
            "python": platform.python_version(), "packages": versions, "config_hash": _config_hash(),
            "teacher": None if teacher is None else str(teacher), "hardware": _hardware()}


def _numbers(mapping: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in mapping.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key in _NOT_METRICS or not math.isfinite(float(value)):
            continue
        out[str(key)] = float(value)
    return out


def _per_language(metrics: Mapping[str, Any], where: str) -> dict[str, dict[str, float]]:
    """``{lang: {metric: v}}`` as is; a flat ``{metric: v}`` becomes ``{"all": {...}}``."""
    if metrics and all(isinstance(v, Mapping) for v in metrics.values()):
        out = {str(lang): _numbers(values) for lang, values in metrics.items()}
        return {lang: values for lang, values in out.items() if values}
    if any(isinstance(v, Mapping) for v in metrics.values()):
        raise NoResults(f"{where}: 'metrics' mixes per-language dicts and plain numbers")
    flat = _numbers(metrics)
    return {AGGREGATE: flat} if flat else {}


def _int_or_none(value: Any) -> int | None:
    return None if value is None or isinstance(value, bool) else int(value)


def _from_results_json(path: pathlib.Path) -> RunResults:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise NoResults(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("metrics"), Mapping):
        raise NoResults(f"{path}: expected an object with a 'metrics' object")
    metrics = _per_language(data["metrics"], str(path))
    extra = {k: v for k, v in data.items() if k not in ("metrics", "tokens_seen", "params_trained")}
    return RunResults(metrics=metrics, tokens_seen=_int_or_none(data.get("tokens_seen")),
                      params_trained=_int_or_none(data.get("params_trained")), extra=extra)


def _eval_rows(row: Mapping[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """(language, metrics) pairs carried by one metrics.jsonl row."""
    kind = str(row.get("kind") or row.get("split") or "").lower()
    if kind in _EVAL_KINDS:
        key = str(row.get("language") or row.get("task") or AGGREGATE)
        values = row.get("metrics")
        if isinstance(values, Mapping):
            if values and all(isinstance(v, Mapping) for v in values.values()):
                return [(str(lang), _numbers(v)) for lang, v in values.items()]
            return [(key, _numbers(values))]
        # The trainer's evaluator: {"split": "eval", "<task>/<metric>": v, "mean/<metric>": v} (tasks per language).
        grouped: dict[str, dict[str, float]] = {}
        for name, value in _numbers(row).items():
            task, _, metric = name.rpartition("/")
            grouped.setdefault(task or key, {})[metric] = value
        if len(grouped) > 1:
            grouped.pop("mean", None)  # the report averages languages itself
        return list(grouped.items())
    # Flat "eval/<language or task>/<metric>" keys, as TensorBoard-style writers produce.
    found: dict[str, dict[str, float]] = {}
    for name, value in row.items():
        parts = str(name).split("/")
        if parts[0] in _EVAL_KINDS and len(parts) >= 2:
            lang, metric = (parts[1], "/".join(parts[2:])) if len(parts) > 2 else (AGGREGATE, parts[1])
            number = _numbers({metric: value})
            if number:
                found.setdefault(lang, {}).update(number)
    return list(found.items())


def iter_jsonl(path: str | os.PathLike, *, on_malformed: Any = None) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """``(line number, row)`` of a JSONL file written by appends; a line cut short by a kill (or any line that is
    not a JSON object) is skipped, reported through ``on_malformed(line_number)`` when given."""
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, Mapping):
                if on_malformed is not None:
                    on_malformed(number)
                continue
            yield number, row


def _from_metrics_jsonl(path: pathlib.Path) -> RunResults:
    last_step, metrics = None, {}
    tokens = params = None
    for _, row in iter_jsonl(path):
        tokens = row.get("tokens_seen", tokens)
        params = row.get("params_trained", params)
        pairs = [(lang, values) for lang, values in _eval_rows(row) if values]
        if not pairs:
            continue
        step = row.get("step", 0)
        if last_step is None or step > last_step:  # a later evaluation replaces the earlier ones
            last_step, metrics = step, {}
        if step == last_step:
            for lang, values in pairs:
                metrics.setdefault(lang, {}).update(values)
    return RunResults(metrics=metrics, tokens_seen=_int_or_none(tokens), params_trained=_int_or_none(params),
                      extra={"step": last_step} if last_step is not None else {})


def read_run_results(model_dir: str | os.PathLike, *, require_results_json: bool = False) -> RunResults:
    """The final results of the run in ``model_dir``; NoResults when it has none.

    ``require_results_json``: only ``results.json`` proves the run finished (metrics.jsonl may hold mid-training
    evaluations of a run that stopped early and exited 0).
    """
    root = pathlib.Path(model_dir)
    results_json, metrics_jsonl = root / RESULTS_JSON, root / METRICS_JSONL
    if results_json.is_file():
        results = _from_results_json(results_json)
    elif require_results_json:
        raise NoResults(f"run wrote no {RESULTS_JSON} in {root}")
    elif metrics_jsonl.is_file():
        results = _from_metrics_jsonl(metrics_jsonl)
    else:
        raise NoResults(f"run wrote neither {RESULTS_JSON} nor {METRICS_JSONL} in {root}")
    if not results.metrics:
        raise NoResults(f"run in {root} reported no final evaluation metrics")
    task, renamed = split_task_prefix(results.metrics)
    if task:
        results.metrics = renamed
        results.extra.setdefault("task", task)
    return results


def split_task_prefix(metrics: Mapping[str, dict[str, float]]) -> tuple[str | None, dict[str, dict[str, float]]]:
    """``{"mgsm_sw": .., "mgsm_bn": ..}`` -> ``("mgsm", {"sw": .., "bn": ..})``: per-language tasks share a prefix."""
    keys = [k for k in metrics if k != AGGREGATE]
    if len(keys) < 2 or len(keys) != len(metrics):
        return None, dict(metrics)
    prefixes = {k.rsplit("_", 1)[0] for k in keys if "_" in k}
    if len(prefixes) != 1 or not all("_" in k for k in keys):
        return None, dict(metrics)
    prefix = prefixes.pop()
    return prefix, {k[len(prefix) + 1:]: v for k, v in metrics.items()}
