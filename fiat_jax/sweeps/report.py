"""Tables and plots from a sweep's results.jsonl: markdown, a self-contained HTML page, PNG/SVG plots, CSV.

Per task and training-set size, a table in the layout of FIAT's Table 2: one row per method (and model variant),
one column per metric, each cell the mean over seeds of the mean over languages, with a 95% bootstrap interval
over seeds and evaluation items (:mod:`fiat_jax.sweeps.stats`), kept inside the metric's range. Then every method
against its baseline (FIAT vs FT and ICL, augmented vs plain FT, phased vs one-off, random and reversed phases,
each ablation vs full FIAT):
the paired difference on the same seeds and items, its interval and a permutation p-value. Per-language tables,
cost (student tokens and FLOPs, teacher calls, wall time), scale curves with bands, ablation bars, failed or
missing runs with their logs, provenance, and any results file that lacks a field follow.

Training-set sizes are the ones the runs report (``num_train_examples``), the requested size beside them where it
differs. Metrics a run reports for its in-context baseline (``icl_*``) get their own row, not the run's.
"""

from __future__ import annotations

import base64
import collections
import csv
import dataclasses
import html
import json
import math
import os
import pathlib
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fiat_jax.errors import UserError
from fiat_jax.sweeps import run_results, stats
from fiat_jax.sweeps.sweep import LOG_FILE, PLAN_FILE, RESULTS_FILE, read_results

CONFIDENCE = 0.95
ICL_PREFIX = "icl_"
ICL_LABEL = "ICL baseline (in context)"
REQUIRED_FIELDS = ("run_id", "method", "metrics")
LANGUAGES_PER_TABLE = 6  # MGSM's 11 languages in one row of intervals would not fit a page
METRICS_PER_TABLE = 5   # likewise the synthetic facts' accuracy by kind
COMPARISON_METRICS_PER_TABLE = 3  # a difference, its interval and its p-value take more room
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")
_PERCENT_NAMES = re.compile(r"(^|_)(acc|accuracy|f1|em|exact_match|auc_pr|win_rate|squad)", re.IGNORECASE)
_NO_INTERVAL = stats.Interval(math.nan, math.nan, math.nan, 0, 0)


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


@dataclasses.dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    text_columns: int = 1  # leading columns of names (left-aligned, may break anywhere); the rest are numbers


# ------------------------------------------------------------------------------------------------ reading rows


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


def _variant(row: Mapping[str, Any], plan: Mapping[str, Any]) -> dict[str, Any]:
    if "variant" in row:
        return dict(row["variant"] or {})
    skip = {plan.get("size_binding", "NUM_TRAIN_EXAMPLES"), plan.get("seed_binding", "SEED"),
            plan.get("language_binding")}
    return {k: v for k, v in dict(row.get("params", {})).items() if k not in skip}


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(_short(v) for v in value)
    return str(value).rsplit("/", 1)[-1]


def _varying(rows: Sequence[Mapping[str, Any]], plan: Mapping[str, Any]) -> list[str]:
    variants = [_variant(row, plan) for row in rows]
    keys = sorted({k for v in variants for k in v})
    return [k for k in keys if len({json.dumps(v.get(k), sort_keys=True, default=str) for v in variants}) > 1]


def _suffix(row: Mapping[str, Any], plan: Mapping[str, Any], varying: Sequence[str]) -> str:
    variant = _variant(row, plan)
    parts = [f"{k}={_short(variant[k])}" for k in varying if k in variant]
    return f" ({', '.join(parts)})" if parts else ""


def _labels(rows: Sequence[Mapping[str, Any]], plan: Mapping[str, Any]) -> list[str]:
    """``method`` or ``method (KEY=v, ...)`` naming only the variant keys whose values differ across rows."""
    varying = _varying(rows, plan)
    return [f"{row['method']}{_suffix(row, plan, varying)}" for row in rows]


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
    varying = _varying(rows, plan)
    out, seen = [], set()
    for row in rows:
        extra = row.get("extra") or {}
        task = str(row.get("task") or extra.get("task") or row.get("sweep") or "task")
        size = actual_size(row)
        suffix = _suffix(row, plan, varying)
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


def _ordered(values: Iterable[Any]) -> list[Any]:
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


def _size_name(size: Any, requested: Any = None) -> str:
    def name(s: Any) -> str:
        return "n=?" if s is None else f"n={s:,}" if isinstance(s, int) else f"n={s}"

    if requested is not None and requested != size:
        return f"{name(size)} (asked {requested:,})" if isinstance(requested, int) else f"{name(size)} (asked {requested})"
    return name(size)


# --------------------------------------------------------------------------------------------------- summary


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
        return _size_name(size, self.requested.get((task, size)))


def _languages(by_lang: Mapping[str, Any]) -> list[str]:
    return [l for l in by_lang if l != run_results.AGGREGATE] or list(by_lang)


def summarize(records: Sequence[Record], confidence: float = CONFIDENCE) -> Summary:
    scales = {m: metric_bounds(records, m) for m in _ordered(r.metric for r in records)}
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
                   labels=_ordered(r.label for r in records), tasks=_ordered(r.task for r in records),
                   sizes=_sizes(records), metrics=list(scales), languages=sorted({r.language for r in records}),
                   scales=scales)


def _fmt(est: stats.Interval, percent: bool) -> str:
    if est.seeds == 0 or math.isnan(est.mean):
        return "–"
    mean = stats.format_number(est.mean, percent=percent)
    if math.isnan(est.low):
        return mean
    mark = "" if est.per_item else "†"
    return (f"{mean} [{stats.format_number(est.low, percent=percent)}, "
            f"{stats.format_number(est.high, percent=percent)}]{mark}")


def _percent(summary: Summary, metric: str) -> bool:
    return summary.scales[metric][1] == (0.0, 100.0)


def _method_note(rows: Sequence[Sequence[str]]) -> str:
    dagger = any("†" in c for row in rows for c in row[1:])
    return (f"Mean over seeds of the mean over languages; [{CONFIDENCE:.0%} bootstrap interval] resampling seeds "
            f"and evaluation items ({stats.BOOTSTRAP_SAMPLES} draws, seeded), clipped to the metric's range."
            + (" † marks cells whose runs reported no per-item scores: their interval resamples seeds only and is "
               "too narrow with few seeds." if dagger else "") + " Percentages have one decimal.")


def main_tables(summary: Summary) -> list[Table]:
    """FIAT Table 2's layout: per task and training-set size, methods as rows and metrics as columns."""
    tables = []
    for task in summary.tasks:
        for size in summary.sizes:
            present = [m for m in summary.metrics if any((l, task, size, "mean", m) in summary.estimates
                                                         for l in summary.labels)]
            for part, metrics in _chunks(present, METRICS_PER_TABLE):
                tables.append(_main_table(summary, task, size, metrics, part))
    return tables


def _chunks(items: Sequence[Any], size: int) -> list[tuple[str, list[Any]]]:
    """``items`` in pieces of at most ``size``, each with its " (k of n)" title suffix (none when one piece)."""
    pieces = [list(items[i:i + size]) for i in range(0, len(items), size)]
    return [(f" ({k + 1} of {len(pieces)})" if len(pieces) > 1 else "", piece) for k, piece in enumerate(pieces)]


def _main_table(summary: Summary, task: str, size: Any, metrics: Sequence[str], part: str) -> Table:
    """One table of FIAT Table 2's layout: the methods (rows) on ``metrics`` (columns)."""
    header = ["Method", "Seeds"] + [m + (" (%)" if _percent(summary, m) else "") for m in metrics]
    rows = []
    for label in summary.labels:
        ests = [summary.estimates.get((label, task, size, "mean", m), _NO_INTERVAL) for m in metrics]
        if all(e.seeds == 0 for e in ests):
            continue
        rows.append([label, str(max(e.seeds for e in ests))] +
                    [_fmt(e, _percent(summary, m)) for e, m in zip(ests, metrics)])
    return Table(title=f"{task}, {summary.size_name(task, size)}{part}", header=header, rows=rows,
                 note=_method_note(rows))


def language_tables(summary: Summary) -> list[Table]:
    tables = []
    for task in summary.tasks:
        for metric in summary.metrics:
            langs = [l for l in summary.languages
                     if any((lab, task, s, l, metric) in summary.estimates for lab in summary.labels
                            for s in summary.sizes)]
            if len(langs) < 2:
                continue
            chunks = [langs[i:i + LANGUAGES_PER_TABLE] for i in range(0, len(langs), LANGUAGES_PER_TABLE)]
            for n, chunk in enumerate(chunks):
                shown = chunk + (["mean"] if n == len(chunks) - 1 else [])
                rows = []
                for label in summary.labels:
                    for size in summary.sizes:
                        keys = [(label, task, size, lang, metric) for lang in shown]
                        if not any(k in summary.estimates for k in keys):
                            continue
                        rows.append([label, summary.size_name(task, size)] + [
                            _fmt(summary.estimates.get(k, _NO_INTERVAL), _percent(summary, metric)) for k in keys])
                part = f" ({n + 1} of {len(chunks)})" if len(chunks) > 1 else ""
                tables.append(Table(title=f"{task} — {metric} per language{part}", header=["Method", "Size"] + shown,
                                    rows=rows,
                                    note=f"{metric}: mean over seeds [{CONFIDENCE:.0%} bootstrap interval]."))
    return tables


# ----------------------------------------------------------------------------------------------- comparisons


def _role(row: Mapping[str, Any]) -> str:
    """What a run is, for choosing its baseline: icl, ft, fiat, fiat_ablation, aug_plain, aug, phased,
    phased_one_off, phased_control (random or reversed phases), or other."""
    extra = row.get("extra") or {}
    kind = str(extra.get("method") or row.get("method") or "").lower()
    if kind == "icl":
        return "icl"
    if kind.startswith("finetune"):
        return "ft"
    if kind == "fiat":
        return "fiat_ablation" if any((extra.get("ablations") or {}).values()) else "fiat"
    if kind == "augmented_ft":
        return "aug" if extra.get("local") or extra.get("global_") else "aug_plain"
    if kind.startswith("phased"):
        control = extra.get("control")
        return {"single": "phased_one_off", "random": "phased_control", "reversed": "phased_control"}.get(
            control, "phased")
    return "other"


# Phased IFT (easy to hard) against each control: one-off, random phases, hard to easy.
_BASELINES = {"fiat": ("ft", "icl"), "fiat_ablation": ("fiat",), "aug": ("aug_plain", "ft", "icl"),
              "aug_plain": ("icl",), "phased": ("phased_one_off", "phased_control", "ft"),
              "phased_control": ("phased_one_off",)}


def baseline_pairs(rows: Sequence[Mapping[str, Any]], plan: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(method label, baseline label) pairs with the same model variant. Of several FIAT labels with no ablation
    flag, the shortest name is full FIAT and the others (another PEFT, ...) are its ablations."""
    varying = _varying(rows, plan)
    roles: dict[str, str] = {}
    variant_of: dict[str, str] = {}
    for row in rows:
        label = f"{row['method']}{_suffix(row, plan, varying)}"
        roles.setdefault(label, _role(row))
        variant_of[label] = json.dumps({k: _variant(row, plan).get(k) for k in varying}, sort_keys=True,
                                       default=str)
        if any(str(m).startswith(ICL_PREFIX) for by in (row.get("metrics") or {}).values() for m in (by or {})):
            icl_label = f"{ICL_LABEL}{_suffix(row, plan, varying)}"
            roles.setdefault(icl_label, "icl")
            variant_of[icl_label] = variant_of[label]
    for variant in set(variant_of.values()):
        full = sorted((l for l, r in roles.items() if r == "fiat" and variant_of[l] == variant), key=len)
        for other in full[1:]:
            roles[other] = "fiat_ablation"
    pairs = []
    for label, role in roles.items():
        for base_role in _BASELINES.get(role, ()):
            candidates = [l for l, r in roles.items() if r == base_role and variant_of[l] == variant_of[label]]
            if base_role == "fiat":
                candidates = sorted(candidates, key=len)[:1]
            pairs += [(label, base) for base in candidates]
    return pairs


def _match(ka: tuple, kb: tuple, na: int, nb: int) -> tuple[list[int], list[int]] | None:
    """Indices of the items both runs scored: by id where both have ids, else by position where the targets
    agree item by item; None when neither says the items are the same."""
    (ids_a, tg_a), (ids_b, tg_b) = ka, kb
    if ids_a is not None and ids_b is not None:
        where_b = {i: n for n, i in enumerate(ids_b)}
        shared = [(n, where_b[i]) for n, i in enumerate(ids_a) if i in where_b]
        return ([a for a, _ in shared], [b for _, b in shared]) if shared else None
    if tg_a is not None and tg_b is not None and na == nb and tg_a == tg_b:
        return list(range(na)), list(range(nb))
    return None


def _aligned(summary: Summary, a: tuple, b: tuple) -> tuple[dict, dict]:
    """The two cells on the items both scored (see :func:`_match`), else on run-level means."""
    cell_a, cell_b = summary.cells[a], summary.cells[b]
    al_a, al_b = summary.aligns[a], summary.aligns[b]
    out_a: dict[int, dict[str, np.ndarray]] = {}
    out_b: dict[int, dict[str, np.ndarray]] = {}
    for seed in set(cell_a) & set(cell_b):
        for lang in set(cell_a[seed]) & set(cell_b[seed]):
            va, vb = cell_a[seed][lang], cell_b[seed][lang]
            ka, kb = al_a[seed][lang], al_b[seed][lang]
            match = _match(ka, kb, len(va), len(vb)) if ka is not None and kb is not None else None
            if match is not None:
                out_a.setdefault(seed, {})[lang] = va[match[0]]
                out_b.setdefault(seed, {})[lang] = vb[match[1]]
            else:
                out_a.setdefault(seed, {})[lang] = np.asarray([va.mean()])
                out_b.setdefault(seed, {})[lang] = np.asarray([vb.mean()])
    return out_a, out_b


def comparisons(summary: Summary, pairs: Sequence[tuple[str, str]]) -> dict[tuple, stats.Comparison]:
    """(method, baseline, task, size, metric) -> the paired comparison on languages averaged like the tables."""
    out = {}
    for method, base in pairs:
        for task in summary.tasks:
            for size in summary.sizes:
                for metric in summary.metrics:
                    a, b = (method, task, size, metric), (base, task, size, metric)
                    if a not in summary.cells or b not in summary.cells:
                        continue
                    ca, cb = _aligned(summary, a, b)
                    comp = stats.paired_difference(ca, cb, bounds=summary.scales[metric][1], confidence=CONFIDENCE)
                    if comp is not None:
                        out[(method, base, task, size, metric)] = comp
    return out


def comparison_tables(summary: Summary, comps: Mapping[tuple, stats.Comparison]) -> list[Table]:
    """Per task and size: one row per (method, baseline), one column per metric."""
    tables = []
    for task in summary.tasks:
        for size in summary.sizes:
            keys = [k for k in comps if k[2] == task and k[3] == size]
            for part, metrics in _chunks(_ordered(k[4] for k in keys), COMPARISON_METRICS_PER_TABLE):
                tables.append(_comparison_table(summary, comps, task, size, metrics, part))
    return tables


def _comparison_cell(comp: stats.Comparison | None, percent: bool) -> str:
    if comp is None:
        return "–"
    diff = comp.diff
    shown = stats.format_number(diff.mean, percent=percent)
    shown = "0.0" if shown == "-0.0" else shown
    sign = "+" if diff.mean > 0 and shown.strip("0.") else ""
    interval = "" if math.isnan(diff.low) else (
        f" [{stats.format_number(diff.low, percent=percent)}, {stats.format_number(diff.high, percent=percent)}]")
    return f"{sign}{shown}{interval}{'' if diff.per_item else '†'}, p {stats.format_p(comp.p_value)}"


def _comparison_table(summary: Summary, comps: Mapping[tuple, stats.Comparison], task: str, size: Any,
                      metrics: Sequence[str], part: str) -> Table:
    keys = [k for k in comps if k[2] == task and k[3] == size and k[4] in metrics]
    rows = []
    for method, base in _ordered((k[0], k[1]) for k in keys):
        seeds = max(comps[k].diff.seeds for k in keys if k[0] == method and k[1] == base)
        rows.append([method, base, str(seeds)] + [
            _comparison_cell(comps.get((method, base, task, size, m)), _percent(summary, m)) for m in metrics])
    dagger = any("†" in c for r in rows for c in r)
    note = (f"Method − baseline on the seeds and items both scored: mean [{CONFIDENCE:.0%} paired bootstrap interval "
            f"over seeds and items], p from a two-sided sign-flip permutation test (exact, or {stats.PERMUTATIONS} "
            f"seeded permutations)." + (" † no per-item scores: the interval resamples seeds only and the test "
                                        "flips whole (seed, language) results, so p is at least "
                                        "2 / 2^(seeds × languages) (0.5 for 2 seeds of one language)."
                                        if dagger else ""))
    return Table(title=f"{task}, {summary.size_name(task, size)}: paired differences{part}",
                 header=["Method", "Baseline", "Seeds"] + list(metrics), rows=rows, text_columns=2, note=note)


# ------------------------------------------------------------------------------------------- cost, failures


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return math.fsum(present) / len(present) if present else None


def training_flops(row: Mapping[str, Any]) -> float | None:
    """≈ (4·N + 2·N_trained)·tokens: forward and input-gradient passes through all N parameters, weight gradients
    only for the trained ones (6·N·tokens when everything trains)."""
    extra = row.get("extra") or {}
    tokens, total = _number(row.get("tokens_seen")), _number(extra.get("params_total"))
    trained = _number(row.get("params_trained"))
    if tokens is None or total is None:
        return None
    return (4 * total + 2 * (trained if trained is not None else total)) * tokens


def cost_table(rows: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> Table:
    """Per method and actual training-set size: wall time, student tokens and FLOPs, teacher requests."""
    groups: dict[tuple, list[Mapping[str, Any]]] = collections.defaultdict(list)
    for row, label in zip(rows, labels):
        groups[(label, actual_size(row))].append(row)

    def cost(row: Mapping[str, Any], key: str) -> float | None:
        return _number(((row.get("extra") or {}).get("teacher_cost") or {}).get(key))

    def show(value: float | None, digits: str = ",.0f") -> str:
        return "–" if value is None else format(value, digits)

    out = []
    for (label, size), items in sorted(groups.items(), key=lambda kv: (labels.index(kv[0][0]),
                                                                       kv[0][1] is None, kv[0][1] or 0)):
        flops = _mean(training_flops(r) for r in items)
        out.append([label, _size_name(size, requested_size(items[0])), str(len(items)), show(_mean(_number(r.get("wall_s")) for r in items),
                                                                   ",.1f"),
                    show(_mean(_number(r.get("tokens_seen")) for r in items)),
                    show(_mean(_number(r.get("params_trained")) for r in items)),
                    "–" if flops is None else f"{flops:.2e}",
                    show(_mean(cost(r, "calls") for r in items)),
                    show(_mean(cost(r, "output_chars") for r in items))])
    return Table(title="Cost per run", header=["Method", "Size", "Runs", "Wall time (s)", "Student tokens",
                                               "Params trained", "Training FLOPs ≈", "Teacher calls",
                                               "Teacher output (chars)"], rows=out,
                 note=("Means over the runs of each cell. FLOPs ≈ (4·N + 2·N_trained) × student tokens. Teacher "
                       "calls are the requests the run itself sent (reasoning read from a materialised teacher "
                       "directory costs nothing here); teacher output in characters, the teacher's tokenizer "
                       "being unknown to the report."))


def failed_runs(plan: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], results_dir: pathlib.Path) -> Table:
    """Planned runs without a results row: failed (a log exists) or never started, with the log's path."""
    finished = {row["run_id"] for row in rows}
    out = []
    for run in plan.get("runs", []):
        run_id = run.get("run_id")
        if run_id in finished:
            continue
        log = results_dir / "runs" / str(run_id) / LOG_FILE
        params = run.get("params") or {}
        out.append([str(run_id), str(run.get("method", "")), str(params.get(plan.get("size_binding",
                                                                                    "NUM_TRAIN_EXAMPLES"), "")),
                    str(params.get(plan.get("seed_binding", "SEED"), "")),
                    "failed" if log.is_file() else "not run", str(log) if log.is_file() else "–"])
    return Table(title="Failed or missing runs", header=["Run", "Method", "Size asked", "Seed", "Status", "Log"],
                 rows=out, text_columns=6, note="Runs of the plan (sweep.json) that left no row in results.jsonl.")


def provenance_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """Each distinct value of each provenance field, with how many runs recorded it."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in rows:
        prov = (row.get("extra") or {}).get("provenance")
        if not isinstance(prov, Mapping):
            counts["(none recorded)"]["runs without provenance"] += 1
            continue
        commit = prov.get("git_commit") or "unknown"
        counts["git commit"][f"{commit[:12]}{' (dirty)' if prov.get('git_dirty') else ''}"] += 1
        packages = prov.get("packages") or {}
        counts["packages"][", ".join(f"{k}=={v}" for k, v in sorted(packages.items())) or "unknown"] += 1
        counts["teacher"][str(prov.get("teacher") or "none")] += 1
        counts["hardware"][str(prov.get("hardware") or "unknown")] += 1
        counts["python"][str(prov.get("python") or "unknown")] += 1
    for row in rows:
        counts["config hash (sweep)"][str(row.get("config_hash") or "unknown")] += 1
    out = []
    for field, values in counts.items():
        if field == "config hash (sweep)" and len(values) > 3:
            out.append([field, f"{len(values)} distinct (one per run; see runs.csv)", str(sum(values.values()))])
            continue
        out += [[field, value, str(n)] for value, n in values.most_common()]
    return Table(title="Provenance", header=["Field", "Value", "Runs"], rows=out, text_columns=2,
                 note="Recorded by each run when it finished (results.json 'provenance').")


# ----------------------------------------------------------------------------------------------------- plots


@dataclasses.dataclass
class Plot:
    title: str
    png: pathlib.Path
    svg: pathlib.Path


def _slug(text: str) -> str:
    return _SLUG.sub("_", text).strip("_") or "plot"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_dir: pathlib.Path, stem: str, title: str) -> Plot:
    png, svg = out_dir / f"{stem}.png", out_dir / f"{stem}.svg"
    fig.savefig(png, dpi=100)
    fig.savefig(svg)
    _pyplot().close(fig)
    return Plot(title=title, png=png, svg=svg)


def _ylabel(summary: Summary, metric: str) -> str:
    return metric + (" (%)" if _percent(summary, metric) else "")


def scale_curves(summary: Summary, out_dir: pathlib.Path) -> list[Plot]:
    """Metric vs actual training examples (log x), one line per method, the bootstrap interval as a band."""
    plt = _pyplot()
    sizes = [s for s in summary.sizes if isinstance(s, (int, float)) and s > 0]
    if len(sizes) < 2:
        return []
    plots = []
    for task in summary.tasks:
        for metric in summary.metrics:
            fig, ax = plt.subplots(figsize=(6.4, 4))
            drawn = False
            for label in summary.labels:
                points = [(s, summary.estimates[(label, task, s, "mean", metric)]) for s in sizes
                          if (label, task, s, "mean", metric) in summary.estimates]
                if len(points) < 2:
                    continue
                xs = [p[0] for p in points]
                (line,) = ax.plot(xs, [p[1].mean for p in points], marker="o", label=label)
                if all(not math.isnan(p[1].low) for p in points):
                    ax.fill_between(xs, [p[1].low for p in points], [p[1].high for p in points], alpha=0.2,
                                    color=line.get_color())
                drawn = True
            if not drawn:
                plt.close(fig)
                continue
            bounds = summary.scales[metric][1]
            if bounds is not None:
                low, high = ax.get_ylim()
                ax.set_ylim(max(low, bounds[0]), min(high, bounds[1]))
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks(sizes, [f"{s:,}" for s in sizes])
            ax.set_xlabel("training examples (actual)")
            ax.set_ylabel(_ylabel(summary, metric))
            title = f"{task}: {metric} vs training examples"
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            plots.append(_save(fig, out_dir, f"scale_{_slug(task)}_{_slug(metric)}", title))
    return plots


def ablation_bars(summary: Summary, out_dir: pathlib.Path) -> list[Plot]:
    """Methods side by side at the largest training-set size, bootstrap intervals as error bars."""
    plt = _pyplot()
    if len(summary.labels) < 2:
        return []
    plots = []
    for task in summary.tasks:
        for metric in summary.metrics:
            present = [s for s in summary.sizes
                       if any((l, task, s, "mean", metric) in summary.estimates for l in summary.labels)]
            if not present:
                continue
            size = present[-1]
            bars = [(l, summary.estimates[(l, task, size, "mean", metric)]) for l in summary.labels
                    if (l, task, size, "mean", metric) in summary.estimates]
            if len(bars) < 2:
                continue
            fig, ax = plt.subplots(figsize=(min(9.0, max(4.0, 0.9 * len(bars) + 2)), 4.2))
            means = [e.mean for _, e in bars]
            errors = [[0.0 if math.isnan(e.low) else e.mean - e.low for _, e in bars],
                      [0.0 if math.isnan(e.high) else e.high - e.mean for _, e in bars]]
            ax.bar(range(len(bars)), means, yerr=errors, capsize=4, color=[f"C{i % 10}" for i in range(len(bars))])
            ax.set_xticks(range(len(bars)))
            ax.set_xticklabels([textwrap.fill(l, 22) for l, _ in bars], rotation=25, ha="right", fontsize=7)
            bounds = summary.scales[metric][1]
            if bounds is not None:
                ax.set_ylim(bounds[0], min(bounds[1], max(max(e.high if not math.isnan(e.high) else e.mean
                                                              for _, e in bars) * 1.1, 1.0)))
            ax.set_ylabel(_ylabel(summary, metric))
            title = f"{task}: {metric} at {summary.size_name(task, size)}"
            ax.set_title(title)
            ax.grid(True, axis="y", alpha=0.3)
            fig.tight_layout()
            plots.append(_save(fig, out_dir, f"ablation_{_slug(task)}_{_slug(metric)}", title))
    return plots


# ----------------------------------------------------------------------------------------------- rendering


def _md_table(table: Table) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [f"### {table.title}", "", "| " + " | ".join(map(cell, table.header)) + " |",
             "|" + "|".join("---" for _ in table.header) + "|"]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in table.rows]
    if not table.rows:
        lines += ["| " + " | ".join(["none"] + [""] * (len(table.header) - 1)) + " |"]
    if table.note:
        lines += ["", f"_{table.note}_"]
    return "\n".join(lines)


def _html_table(table: Table) -> str:
    def cls(i: int) -> str:
        return " class='t'" if i < table.text_columns else ""

    head = "".join(f"<th{cls(i)}>{html.escape(h)}</th>" for i, h in enumerate(table.header))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{_unbroken(html.escape(c))}</td>" for i, c in enumerate(row))
                   + "</tr>" for row in table.rows)
    if not table.rows:
        body = f"<tr><td class='t' colspan='{len(table.header)}'>none</td></tr>"
    note = f"<p class='note'>{html.escape(table.note)}</p>" if table.note else ""
    return (f"<h3>{html.escape(table.title)}</h3><div class='wrap'><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>{note}")


_UNBROKEN = re.compile(r"\[[^\]]*\][†]?|p (?:=|&lt;) [\d.]+")


def _unbroken(text: str) -> str:
    """A cell wraps between its mean, its interval and its p-value, never inside one."""
    return _UNBROKEN.sub(lambda m: f"<span class='nw'>{m.group(0)}</span>", text)


_CSS = ("body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1200px}"
        ".wrap{max-width:100%}table{border-collapse:collapse;margin:0.5em 0;font-size:90%;max-width:100%}"
        "th,td{border:1px solid #bbb;padding:3px 6px;text-align:right}th{overflow-wrap:anywhere}"
        ".t{text-align:left;overflow-wrap:anywhere;min-width:7em}.nw{white-space:nowrap}"
        ".note{color:#555;font-size:85%}"
        "figure{margin:1em 0}img{max-width:100%;height:auto}li{overflow-wrap:anywhere}")


def _write_csvs(out_dir: pathlib.Path, records: Sequence[Record], rows: Sequence[Mapping[str, Any]],
                summary: Summary, comps: Mapping[tuple, stats.Comparison]) -> list[pathlib.Path]:
    by_run = {row["run_id"]: row for row in rows}
    paths = [out_dir / "runs.csv", out_dir / "summary.csv", out_dir / "comparisons.csv"]
    with open(paths[0], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run_id", "method", "label", "task", "num_train_examples", "num_train_examples_requested",
                         "seed", "language", "metric", "value", "items", "wall_s", "tokens_seen", "params_trained",
                         "config_hash"])
        for r in records:
            row = by_run[r.run_id]
            writer.writerow([r.run_id, r.method, r.label, r.task, r.size, requested_size(row), r.seed, r.language,
                             r.metric, r.value, len(r.items[1]) if r.items else "", row.get("wall_s"),
                             row.get("tokens_seen"), row.get("params_trained"), row.get("config_hash")])
    with open(paths[1], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "task", "num_train_examples", "language", "metric", "seeds", "items", "mean",
                         "ci95_low", "ci95_high"])
        for (label, task, size, language, metric), est in summary.estimates.items():
            writer.writerow([label, task, size, language, metric, est.seeds, est.items, est.mean, est.low, est.high])
    with open(paths[2], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "baseline", "task", "num_train_examples", "metric", "seeds", "items", "diff",
                         "ci95_low", "ci95_high", "p_value"])
        for (method, base, task, size, metric), comp in comps.items():
            d = comp.diff
            writer.writerow([method, base, task, size, metric, d.seeds, d.items, d.mean, d.low, d.high, comp.p_value])
    return paths


def report(*, results_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Write report.md, report.html (images embedded), plots/*.png|svg, runs.csv, summary.csv, comparisons.csv.

    Returns the output directory (default RESULTS_DIR/report). Raises UserError when there are no results or a
    row lacks a field every table needs (before anything is written).
    """
    results_dir = pathlib.Path(results_dir).expanduser()
    results_path = results_dir / RESULTS_FILE
    if not results_path.is_file():
        raise UserError(f"no {RESULTS_FILE} in {results_dir} (is it a sweep directory?)")
    rows = read_results(results_dir)
    if not rows:
        raise UserError(f"{results_path} holds no results yet")
    check_rows(rows, results_path)
    plan_path = results_dir / PLAN_FILE
    plan = json.loads(plan_path.read_text()) if plan_path.is_file() else {}
    order = {run["run_id"]: i for i, run in enumerate(plan.get("runs", []))}
    rows.sort(key=lambda r: (order.get(r["run_id"], len(order)), str(r["run_id"])))
    records = records_from_rows(rows, plan)
    if not records:
        raise UserError(f"{results_path}: no numeric metrics in any row")
    out = pathlib.Path(out_dir).expanduser() if out_dir else results_dir / "report"
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)

    summary = summarize(records)
    for row in rows:
        task = str(row.get("task") or (row.get("extra") or {}).get("task") or row.get("sweep") or "task")
        summary.requested.setdefault((task, actual_size(row)), requested_size(row))
    comps = comparisons(summary, baseline_pairs(rows, plan))
    tables = main_tables(summary)
    paired = comparison_tables(summary, comps)
    per_language = language_tables(summary)
    costs = cost_table(rows, _labels(rows, plan))
    failures = failed_runs(plan, rows, results_dir)
    provenance = provenance_table(rows)
    warnings = field_warnings(rows, results_dir)
    plots = scale_curves(summary, plots_dir) + ablation_bars(summary, plots_dir)
    csvs = _write_csvs(out, records, rows, summary, comps)

    name = plan.get("name") or results_dir.name
    expected = len(plan.get("runs", [])) or len(rows)
    intro = (f"{len(rows)} finished runs of {expected} planned; {len(summary.labels)} methods, "
             f"{len(summary.sizes)} training-set sizes, {len(summary.tasks)} task(s), "
             f"{len(summary.languages)} language(s). Data: {', '.join(p.name for p in csvs)}.")
    sections: list[tuple[str, list[Table]]] = [("Results", tables), ("Paired comparisons", paired),
                                               ("Per-language breakdown", per_language), ("Cost", [costs]),
                                               ("Failed or missing runs", [failures]), ("Provenance", [provenance])]
    md = [f"# Sweep report: {name}", "", intro, ""]
    for title, items in sections:
        md += [f"## {title}", ""] + [_md_table(t) + "\n" for t in items]
        if not items:
            md += ["none", ""]
    if warnings:
        md += ["## Results files with missing fields", ""] + [f"- {w}" for w in warnings] + [""]
    if plots:
        md += ["## Plots", ""]
        md += [f"![{p.title}](plots/{p.png.name}) ([svg](plots/{p.svg.name}))\n" for p in plots]
    (out / "report.md").write_text("\n".join(md))

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Sweep report: {html.escape(name)}</title>"
             f"<style>{_CSS}</style></head><body><h1>Sweep report: {html.escape(name)}</h1>"
             f"<p>{html.escape(intro)}</p>"]
    for title, items in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts += [_html_table(t) for t in items] or ["<p>none</p>"]
    if warnings:
        parts.append("<h2>Results files with missing fields</h2><ul>" +
                     "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul>")
    if plots:
        parts.append("<h2>Plots</h2>")
        for p in plots:
            data = base64.b64encode(p.png.read_bytes()).decode("ascii")
            parts.append(f"<figure class='plot'><img alt='{html.escape(p.title)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(p.title)}</figcaption></figure>")
    parts.append("</body></html>")
    (out / "report.html").write_text("".join(parts))
    for line in warnings[:5]:
        print(f"report: warning: {line}")
    if len(warnings) > 5:
        print(f"report: warning: {len(warnings) - 5} more results files lack fields (see report.md)")
    print(f"report: {out / 'report.md'}\nreport: {out / 'report.html'}")
    return out
