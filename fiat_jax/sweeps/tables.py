"""The report's main tables (FIAT's Table 2 layout: a row per method, a column per metric) and per-language
tables, as plain :class:`Table` values that :mod:`fiat_jax.sweeps.render` writes as markdown or HTML."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from fiat_jax.sweeps import stats
from fiat_jax.sweeps.summary import CONFIDENCE, NO_INTERVAL, Summary

LANGUAGES_PER_TABLE = 6  # MGSM's 11 languages in one row of intervals would not fit a page
METRICS_PER_TABLE = 5   # likewise the synthetic facts' accuracy by kind


@dataclasses.dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    text_columns: int = 1  # leading columns of names (left-aligned, may break anywhere); the rest are numbers


def _fmt(est: stats.Interval, percent: bool) -> str:
    if est.seeds == 0 or math.isnan(est.mean):
        return "–"
    mean = stats.format_number(est.mean, percent=percent)
    if math.isnan(est.low):
        return mean
    mark = "" if est.per_item else "†"
    return (f"{mean} [{stats.format_number(est.low, percent=percent)}, "
            f"{stats.format_number(est.high, percent=percent)}]{mark}")


def percent_metric(summary: Summary, metric: str) -> bool:
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
            for part, metrics in in_chunks(present, METRICS_PER_TABLE):
                tables.append(_main_table(summary, task, size, metrics, part))
    return tables


def in_chunks(items: Sequence[Any], size: int) -> list[tuple[str, list[Any]]]:
    """``items`` in pieces of at most ``size``, each with its " (k of n)" title suffix (none when one piece)."""
    pieces = [list(items[i:i + size]) for i in range(0, len(items), size)]
    return [(f" ({k + 1} of {len(pieces)})" if len(pieces) > 1 else "", piece) for k, piece in enumerate(pieces)]


def _main_table(summary: Summary, task: str, size: Any, metrics: Sequence[str], part: str) -> Table:
    """One table of FIAT Table 2's layout: the methods (rows) on ``metrics`` (columns)."""
    header = ["Method", "Seeds"] + [m + (" (%)" if percent_metric(summary, m) else "") for m in metrics]
    rows = []
    for label in summary.labels:
        ests = [summary.estimates.get((label, task, size, "mean", m), NO_INTERVAL) for m in metrics]
        if all(e.seeds == 0 for e in ests):
            continue
        rows.append([label, str(max(e.seeds for e in ests))] +
                    [_fmt(e, percent_metric(summary, m)) for e, m in zip(ests, metrics)])
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
                            _fmt(summary.estimates.get(k, NO_INTERVAL), percent_metric(summary, metric)) for k in keys])
                part = f" ({n + 1} of {len(chunks)})" if len(chunks) > 1 else ""
                tables.append(Table(title=f"{task} — {metric} per language{part}", header=["Method", "Size"] + shown,
                                    rows=rows,
                                    note=f"{metric}: mean over seeds [{CONFIDENCE:.0%} bootstrap interval]."))
    return tables
