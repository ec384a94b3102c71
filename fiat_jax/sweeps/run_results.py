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
from fiat_jax.train.run_record import (  # noqa: F401 (the sweep's names for them)
    PROVENANCE_PACKAGES, RESULTS_JSON, provenance, write_run_results)

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
