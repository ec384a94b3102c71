"""A sweep's results.jsonl rows as long-form records, and their means with bootstrap intervals.

Per label (method plus the variant bindings that differ), task, training-set size, language and metric: the mean
over seeds of the per-run values, with a 95% interval over seeds and evaluation items (:mod:`fiat_jax.sweeps.stats`)
kept inside the metric's range. Sizes are the ones the runs report (``num_train_examples``); metrics a run reports
for its in-context baseline (``icl_*``) get their own label.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fiat_jax.errors import UserError
from fiat_jax.sweeps import run_results, stats

CONFIDENCE = 0.95
ICL_PREFIX = "icl_"
ICL_LABEL = "ICL baseline (in context)"
REQUIRED_FIELDS = ("run_id", "method", "metrics")
_PERCENT_NAMES = re.compile(r"(^|_)(acc|accuracy|f1|em|exact_match|auc_pr|win_rate|squad)", re.IGNORECASE)
NO_INTERVAL = stats.Interval(math.nan, math.nan, math.nan, 0, 0)


@dataclasses.dataclass(frozen=True)
class Record:
    """One metric value of one run for one language (long form), with its per-item scores when known."""

    run_id: str
    label: str      # method, plus the variant bindings that differ between runs
    method: str
    task: str
    size: int | float | None
    seed: int
    language: str
    metric: str
    value: float
    items: tuple[tuple, tuple[float, ...]] | None = None  # ((item ids or None, target digests or None), scores)


def check_rows(rows: Sequence[Mapping[str, Any]], path: pathlib.Path) -> None:
    """One line naming the file, the run and the field when a row lacks what every table needs."""
    for i, row in enumerate(rows, 1):
        for field in REQUIRED_FIELDS:
            if field not in row or row[field] is None:
                who = row.get("run_id") or f"row {i}"
                raise UserError(f"{path}: {who} has no {field!r} field")
        if not isinstance(row["metrics"], Mapping):
            raise UserError(f"{path}: {row['run_id']} has a 'metrics' field that is not an object")


def field_warnings(rows: Sequence[Mapping[str, Any]], results_dir: pathlib.Path) -> list[str]:
    """One line per run whose results lack a field the report shows (its cells say "–")."""
    out = []
    for row in rows:
        extra = row.get("extra") or {}
        where = results_dir / str(row.get("run_dir") or pathlib.Path("runs") / str(row["run_id"])) / \
            run_results.RESULTS_JSON
        missing = [f for f in ("provenance", "item_scores") if f not in extra]
        missing += [f for f in ("wall_s", "tokens_seen") if row.get(f) is None]
        if "num_train_examples" not in extra and "num_train_examples" not in row:
            missing.append("num_train_examples")
        if missing:
            out.append(f"{where}: no {', '.join(repr(m) for m in missing)} field")
    return out


def variant_bindings(row: Mapping[str, Any], plan: Mapping[str, Any]) -> dict[str, Any]:
    if "variant" in row:
        return dict(row["variant"] or {})
    skip = {plan.get("size_binding", "NUM_TRAIN_EXAMPLES"), plan.get("seed_binding", "SEED"),
            plan.get("language_binding")}
    return {k: v for k, v in dict(row.get("params", {})).items() if k not in skip}


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(_short(v) for v in value)
    return str(value).rsplit("/", 1)[-1]


def varying_keys(rows: Sequence[Mapping[str, Any]], plan: Mapping[str, Any]) -> list[str]:
    variants = [variant_bindings(row, plan) for row in rows]
    keys = sorted({k for v in variants for k in v})
    return [k for k in keys if len({json.dumps(v.get(k), sort_keys=True, default=str) for v in variants}) > 1]


def variant_suffix(row: Mapping[str, Any], plan: Mapping[str, Any], varying: Sequence[str]) -> str:
    variant = variant_bindings(row, plan)
    parts = [f"{k}={_short(variant[k])}" for k in varying if k in variant]
    return f" ({', '.join(parts)})" if parts else ""


def run_labels(rows: Sequence[Mapping[str, Any]], plan: Mapping[str, Any]) -> list[str]:
    """``method`` or ``method (KEY=v, ...)`` naming only the variant keys whose values differ across rows."""
    varying = varying_keys(rows, plan)
    return [f"{row['method']}{variant_suffix(row, plan, varying)}" for row in rows]


def actual_size(row: Mapping[str, Any]) -> Any:
    """The training-set size the run used (``num_train_examples``), else the size the sweep asked for."""
    extra = row.get("extra") or {}
    for value in (row.get("num_train_examples"), extra.get("num_train_examples")):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    return row.get("train_examples")


def requested_size(row: Mapping[str, Any]) -> Any:
    extra = row.get("extra") or {}
    return next((v for v in (row.get("num_train_examples_requested"), extra.get("num_train_examples_requested"),
                             row.get("train_examples")) if v is not None), None)


def _item_lookup(row: Mapping[str, Any], language: str, metric: str) -> tuple[tuple, tuple] | None:
    """The run's per-item scores of ``metric`` for ``language`` (results.json's ``item_scores`` are keyed by the
    full task name; metrics by language once the task prefix is split off)."""
    scores = (row.get("extra") or {}).get("item_scores") or {}
    task = str((row.get("extra") or {}).get("task") or "")
    keys = [language, f"{task}_{language}"] + ([next(iter(scores))] if len(scores) == 1 and
                                                len(row.get("metrics") or {}) == 1 else [])
    for key in keys:
        entry = (scores.get(key) or {}).get(metric)
        if not isinstance(entry, Mapping) or not entry.get("values"):
            continue
        values = tuple(float(v) for v in entry["values"])
        ids = tuple(str(i) for i in entry.get("ids") or ())
        targets = tuple(str(t) for t in entry.get("targets") or ())
        usable_ids = ids if len(ids) == len(values) and all(ids) and len(set(ids)) == len(ids) else None
        return (usable_ids, targets if len(targets) == len(values) else None), values
    return None


def records_from_rows(rows: Sequence[Mapping[str, Any]], plan: Mapping[str, Any] | None = None) -> list[Record]:
    plan = plan or {}
    varying = varying_keys(rows, plan)
    out, seen = [], set()
    for row in rows:
        extra = row.get("extra") or {}
        task = str(row.get("task") or extra.get("task") or row.get("sweep") or "task")
        size = actual_size(row)
        suffix = variant_suffix(row, plan, varying)
        for language, metrics in (row.get("metrics") or {}).items():
            for metric, value in (metrics or {}).items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    continue
                label, name = f"{row['method']}{suffix}", metric
                if metric.startswith(ICL_PREFIX):  # the run's in-context baseline: a row of its own
                    label, name = f"{ICL_LABEL}{suffix}", metric[len(ICL_PREFIX):]
                key = (label, task, size, int(row.get("seed") or 0), str(language), name)
                if key in seen:
                    continue
                seen.add(key)
                out.append(Record(run_id=row["run_id"], label=label, method=row["method"], task=task, size=size,
                                  seed=int(row.get("seed") or 0), language=str(language), metric=name,
                                  value=float(value), items=_item_lookup(row, str(language), metric)))
    return out


def ordered_values(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def _sizes(records: Sequence[Record]) -> list[Any]:
    return sorted({r.size for r in records}, key=lambda s: (s is None, s if s is not None else 0))


def metric_bounds(records: Sequence[Record], metric: str) -> tuple[float, tuple[float, float] | None]:
    """(display scale, range): fractions (every value in [0, 1]) shown ×100 in [0, 100]; percentage-named
    metrics in [0, 100] stay; anything else (a loss) is unbounded."""
    values = [r.value for r in records if r.metric == metric]
    # Per-item scores settle it: a hit scores 100 on a percentage metric, 1 on a fraction (a tiny model's 0.8%
    # accuracy must not read as 80%).
    peak = max((max(r.items[1]) for r in records if r.metric == metric and r.items), default=0.0)
    if peak > 1.0 and all(0.0 <= v <= 100.0 for v in values):
        return 1.0, (0.0, 100.0)
    if values and all(0.0 <= v <= 1.0 for v in values):
        return 100.0, (0.0, 100.0)
    if values and _PERCENT_NAMES.search(metric) and all(0.0 <= v <= 100.0 for v in values):
        return 1.0, (0.0, 100.0)
    return 1.0, None


def size_label(size: Any, requested: Any = None) -> str:
    def name(s: Any) -> str:
        return "n=?" if s is None else f"n={s:,}" if isinstance(s, int) else f"n={s}"

    if requested is not None and requested != size:
        return f"{name(size)} (asked {requested:,})" if isinstance(requested, int) else f"{name(size)} (asked {requested})"
    return name(size)


@dataclasses.dataclass
class Summary:
    """Cells per (label, task, size, language or "mean", metric) and their bootstrap intervals."""

    cells: dict[tuple, dict[int, dict[str, np.ndarray]]]
    aligns: dict[tuple, dict[int, dict[str, tuple]]]
    estimates: dict[tuple, stats.Interval]
    labels: list[str]
    tasks: list[str]
    sizes: list[Any]
    metrics: list[str]
    languages: list[str]
    scales: dict[str, tuple[float, tuple[float, float] | None]]
    requested: dict[tuple, Any] = dataclasses.field(default_factory=dict)  # (task, size) -> size asked

    def size_name(self, task: str, size: Any) -> str:
        return size_label(size, self.requested.get((task, size)))


def _languages(by_lang: Mapping[str, Any]) -> list[str]:
    return [l for l in by_lang if l != run_results.AGGREGATE] or list(by_lang)


def summarize(records: Sequence[Record], confidence: float = CONFIDENCE) -> Summary:
    scales = {m: metric_bounds(records, m) for m in ordered_values(r.metric for r in records)}
    cells: dict[tuple, dict[int, dict[str, np.ndarray]]] = collections.defaultdict(dict)
    aligns: dict[tuple, dict[int, dict[str, tuple]]] = collections.defaultdict(dict)
    for r in records:
        scale = scales[r.metric][0]
        values = np.asarray(r.items[1] if r.items else (r.value,), dtype=np.float64) * scale
        if r.items and not math.isclose(float(values.mean()), r.value * scale, rel_tol=1e-6, abs_tol=1e-6):
            values, align = np.asarray([r.value * scale]), None  # items that disagree with the metric: unused
        else:
            align = r.items[0] if r.items else None
        cells[(r.label, r.task, r.size, r.metric)].setdefault(r.seed, {})[r.language] = values
        aligns[(r.label, r.task, r.size, r.metric)].setdefault(r.seed, {})[r.language] = align
    estimates: dict[tuple, stats.Interval] = {}
    for (label, task, size, metric), cell in cells.items():
        bounds = scales[metric][1]
        langs = _languages(next(iter(cell.values())))
        mean_cell = {s: {l: v for l, v in by.items() if l in langs} for s, by in cell.items()}
        estimates[(label, task, size, "mean", metric)] = stats.bootstrap_interval(
            mean_cell, bounds=bounds, confidence=confidence)
        for lang in {l for by in cell.values() for l in by}:
            one = {s: {lang: by[lang]} for s, by in cell.items() if lang in by}
            estimates[(label, task, size, lang, metric)] = stats.bootstrap_interval(one, bounds=bounds,
                                                                                   confidence=confidence)
    return Summary(cells=dict(cells), aligns=dict(aligns), estimates=estimates,
                   labels=ordered_values(r.label for r in records), tasks=ordered_values(r.task for r in records),
                   sizes=_sizes(records), metrics=list(scales), languages=sorted({r.language for r in records}),
                   scales=scales)
