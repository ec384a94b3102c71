"""Tables and plots from a sweep's results.jsonl: markdown, a self-contained HTML page, PNG/SVG plots, CSV.

The main table has the shape of FIAT's Table 2: one row per method (and model variant), one column per task and
training-set size, each cell the mean over seeds ± the half-width of a 95% Student-t interval, where each seed's
score is the mean over its languages. A per-language breakdown, a cost table (wall time, tokens seen, parameters
trained), scale curves (metric vs training examples, log x) and ablation bar charts follow.
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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fiat_jax.errors import UserError
from fiat_jax.sweeps import run_results, stats
from fiat_jax.sweeps.sweep import PLAN_FILE, RESULTS_FILE, read_results

CONFIDENCE = 0.95
_EMPTY = stats.Estimate(math.nan, math.nan, 0)
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


@dataclasses.dataclass(frozen=True)
class Record:
    """One metric value of one run for one language (long form)."""

    run_id: str
    label: str      # method, plus the variant bindings that differ between runs
    method: str
    task: str
    size: int | float | None
    seed: int
    language: str
    metric: str
    value: float


@dataclasses.dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


def _variant(row: Mapping[str, Any], plan: Mapping[str, Any]) -> dict[str, Any]:
    if "variant" in row:
        return dict(row["variant"])
    skip = {plan.get("size_binding", "NUM_TRAIN_EXAMPLES"), plan.get("seed_binding", "SEED"),
            plan.get("language_binding")}
    return {k: v for k, v in dict(row.get("params", {})).items() if k not in skip}


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(_short(v) for v in value)
    return str(value).rsplit("/", 1)[-1]


def _labels(rows: Sequence[Mapping[str, Any]], plan: Mapping[str, Any]) -> list[str]:
    """``method`` or ``method (KEY=v, ...)`` naming only the variant keys whose values differ across rows."""
    variants = [_variant(row, plan) for row in rows]
    keys = sorted({k for v in variants for k in v})
    varying = [k for k in keys if len({json.dumps(v.get(k), sort_keys=True, default=str) for v in variants}) > 1]
    labels = []
    for row, variant in zip(rows, variants):
        parts = [f"{k}={_short(variant[k])}" for k in varying if k in variant]
        labels.append(f"{row['method']} ({', '.join(parts)})" if parts else str(row["method"]))
    return labels


def records_from_rows(rows: Sequence[Mapping[str, Any]], plan: Mapping[str, Any] | None = None) -> list[Record]:
    plan = plan or {}
    out = []
    for row, label in zip(rows, _labels(rows, plan)):
        extra = row.get("extra") or {}
        task = str(row.get("task") or extra.get("task") or row.get("sweep") or "task")
        for language, metrics in (row.get("metrics") or {}).items():
            for metric, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    out.append(Record(run_id=row["run_id"], label=label, method=row["method"], task=task,
                                      size=row.get("train_examples"), seed=int(row.get("seed", 0)),
                                      language=str(language), metric=metric, value=float(value)))
    return out


def _ordered(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def _sizes(records: Sequence[Record]) -> list[Any]:
    return sorted({r.size for r in records}, key=lambda s: (s is None, s if s is not None else 0))


def _language_mean(records: Sequence[Record]) -> dict[tuple, float]:
    """(label, task, size, metric, seed) -> mean over the run's languages (the aggregate "all" only if alone)."""
    groups: dict[tuple, dict[str, float]] = collections.defaultdict(dict)
    for r in records:
        groups[(r.label, r.task, r.size, r.metric, r.seed)][r.language] = r.value
    out = {}
    for key, by_lang in groups.items():
        langs = [l for l in by_lang if l != run_results.AGGREGATE] or list(by_lang)
        out[key] = math.fsum(by_lang[l] for l in langs) / len(langs)
    return out


def _percent(records: Sequence[Record], metric: str) -> bool:
    values = [r.value for r in records if r.metric == metric]
    return bool(values) and all(0.0 <= v <= 1.0 for v in values)


def _fmt(est: stats.Estimate, scale: float) -> str:
    if est.n == 0 or math.isnan(est.mean):
        return "–"
    if math.isnan(est.half_width):
        return f"{est.mean * scale:.1f}" if scale != 1 else f"{est.mean:.4g}"
    if scale != 1:
        return f"{est.mean * scale:.1f} ± {est.half_width * scale:.1f}"
    return f"{est.mean:.4g} ± {est.half_width:.2g}"


def _size_name(size: Any) -> str:
    return "n=?" if size is None else f"n={size:,}" if isinstance(size, int) else f"n={size}"


@dataclasses.dataclass
class Summary:
    """Seed statistics per (label, task, size, language or "mean", metric)."""

    estimates: dict[tuple, stats.Estimate]
    labels: list[str]
    tasks: list[str]
    sizes: list[Any]
    metrics: list[str]
    languages: list[str]


def summarize(records: Sequence[Record], confidence: float = CONFIDENCE) -> Summary:
    per_seed: dict[tuple, list[float]] = collections.defaultdict(list)
    for (label, task, size, metric, _seed), value in _language_mean(records).items():
        per_seed[(label, task, size, "mean", metric)].append(value)
    for r in records:
        per_seed[(r.label, r.task, r.size, r.language, r.metric)].append(r.value)
    estimates = {key: stats.mean_ci(values, confidence) for key, values in per_seed.items()}
    return Summary(estimates=estimates, labels=_ordered(r.label for r in records),
                   tasks=_ordered(r.task for r in records), sizes=_sizes(records),
                   metrics=_ordered(r.metric for r in records), languages=sorted({r.language for r in records}))


def main_tables(summary: Summary, records: Sequence[Record]) -> list[Table]:
    tables = []
    columns = [(task, size) for task in summary.tasks for size in summary.sizes
               if any((l, task, size, "mean", m) in summary.estimates for l in summary.labels for m in summary.metrics)]
    for metric in summary.metrics:
        scale = 100.0 if _percent(records, metric) else 1.0
        multi_task = len(summary.tasks) > 1
        header = ["Method"] + [f"{task} {_size_name(size)}" if multi_task else _size_name(size)
                               for task, size in columns]
        rows = []
        for label in summary.labels:
            cells = [_fmt(summary.estimates.get((label, task, size, "mean", metric), _EMPTY), scale)
                     for task, size in columns]
            if any(c != "–" for c in cells):
                rows.append([label] + cells)
        seeds = sorted({e.n for k, e in summary.estimates.items() if k[3] == "mean" and k[4] == metric})
        note = (f"{metric}{' ×100' if scale != 1 else ''}; mean over languages, then mean ± half-width of the "
                f"{CONFIDENCE:.0%} Student-t interval across seeds (seeds per cell: {', '.join(map(str, seeds))}).")
        tables.append(Table(title=f"{metric}: methods × training examples"
                                  + (" × tasks" if multi_task else ""), header=header, rows=rows, note=note))
    return tables


def language_tables(summary: Summary, records: Sequence[Record]) -> list[Table]:
    tables = []
    for task in summary.tasks:
        for metric in summary.metrics:
            langs = [l for l in summary.languages
                     if any((lab, task, s, l, metric) in summary.estimates for lab in summary.labels
                            for s in summary.sizes)]
            if not langs:
                continue
            scale = 100.0 if _percent(records, metric) else 1.0
            rows = []
            for label in summary.labels:
                for size in summary.sizes:
                    keys = [(label, task, size, lang, metric) for lang in langs + ["mean"]]
                    if not any(k in summary.estimates for k in keys):
                        continue
                    rows.append([label, _size_name(size)] + [
                        _fmt(summary.estimates.get(k, _EMPTY), scale) for k in keys])
            note = f"{metric}{' ×100' if scale != 1 else ''}, mean ± {CONFIDENCE:.0%} CI across seeds."
            tables.append(Table(title=f"{task} — {metric} per language", header=["Method", "Size"] + langs + ["mean"],
                                rows=rows, note=note))
    return tables


def cost_table(rows: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> Table:
    groups: dict[tuple, list[Mapping[str, Any]]] = collections.defaultdict(list)
    for row, label in zip(rows, labels):
        groups[(label, row.get("train_examples"))].append(row)

    def mean_of(items, key):
        values = [float(r[key]) for r in items if isinstance(r.get(key), (int, float))]
        return math.fsum(values) / len(values) if values else None

    out = []
    for (label, size), items in sorted(groups.items(), key=lambda kv: (labels.index(kv[0][0]),
                                                                       kv[0][1] is None, kv[0][1] or 0)):
        wall, tokens, params = mean_of(items, "wall_s"), mean_of(items, "tokens_seen"), mean_of(items, "params_trained")
        out.append([label, _size_name(size), str(len(items)), "–" if wall is None else f"{wall:.1f}",
                    "–" if tokens is None else f"{tokens:,.0f}", "–" if params is None else f"{params:,.0f}"])
    return Table(title="Cost per run", header=["Method", "Size", "Runs", "Wall time (s)", "Tokens seen",
                                               "Params trained"], rows=out, note="Means over the runs of each cell.")


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
    fig.savefig(png, dpi=110)
    fig.savefig(svg)
    _pyplot().close(fig)
    return Plot(title=title, png=png, svg=svg)


def scale_curves(summary: Summary, records: Sequence[Record], out_dir: pathlib.Path) -> list[Plot]:
    """Metric vs training examples (log x), one line per method, the CI as a band."""
    plt = _pyplot()
    sizes = [s for s in summary.sizes if isinstance(s, (int, float)) and s > 0]
    if len(sizes) < 2:
        return []
    plots = []
    for task in summary.tasks:
        for metric in summary.metrics:
            scale = 100.0 if _percent(records, metric) else 1.0
            fig, ax = plt.subplots(figsize=(6, 4))
            drawn = False
            for label in summary.labels:
                points = [(s, summary.estimates[(label, task, s, "mean", metric)]) for s in sizes
                          if (label, task, s, "mean", metric) in summary.estimates]
                if not points:
                    continue
                xs = [p[0] for p in points]
                ys = [p[1].mean * scale for p in points]
                (line,) = ax.plot(xs, ys, marker="o", label=label)
                if all(not math.isnan(p[1].half_width) for p in points):
                    ax.fill_between(xs, [p[1].low * scale for p in points], [p[1].high * scale for p in points],
                                    alpha=0.2, color=line.get_color())
                drawn = True
            if not drawn:
                plt.close(fig)
                continue
            ax.set_xscale("log")
            ax.set_xlabel("training examples")
            ax.set_ylabel(metric + (" (×100)" if scale != 1 else ""))
            title = f"{task}: {metric} vs training examples"
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            plots.append(_save(fig, out_dir, f"scale_{_slug(task)}_{_slug(metric)}", title))
    return plots


def ablation_bars(summary: Summary, records: Sequence[Record], out_dir: pathlib.Path) -> list[Plot]:
    """Methods side by side at the largest training-set size, with 95% CI error bars."""
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
            scale = 100.0 if _percent(records, metric) else 1.0
            fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(bars) + 2), 4))
            errors = [0.0 if math.isnan(e.half_width) else e.half_width * scale for _, e in bars]
            ax.bar(range(len(bars)), [e.mean * scale for _, e in bars], yerr=errors, capsize=4,
                   color=[f"C{i}" for i in range(len(bars))])
            ax.set_xticks(range(len(bars)))
            ax.set_xticklabels([l for l, _ in bars], rotation=20, ha="right", fontsize=8)
            ax.set_ylabel(metric + (" (×100)" if scale != 1 else ""))
            title = f"{task}: {metric} at {_size_name(size)}"
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
    if table.note:
        lines += ["", f"_{table.note}_"]
    return "\n".join(lines)


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    note = f"<p class='note'>{html.escape(table.note)}</p>" if table.note else ""
    return (f"<h3>{html.escape(table.title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
            f"</table>{note}")


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;"
        "margin:0.5em 0}th,td{border:1px solid #bbb;padding:3px 8px;text-align:right}th:first-child,"
        "td:first-child{text-align:left}.note{color:#555;font-size:90%}img{max-width:100%}")


def _write_csvs(out_dir: pathlib.Path, records: Sequence[Record], rows: Sequence[Mapping[str, Any]],
                summary: Summary) -> tuple[pathlib.Path, pathlib.Path]:
    by_run = {row["run_id"]: row for row in rows}
    runs_csv, summary_csv = out_dir / "runs.csv", out_dir / "summary.csv"
    with open(runs_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run_id", "method", "label", "task", "train_examples", "seed", "language", "metric",
                         "value", "wall_s", "tokens_seen", "params_trained", "config_hash"])
        for r in records:
            row = by_run[r.run_id]
            writer.writerow([r.run_id, r.method, r.label, r.task, r.size, r.seed, r.language, r.metric, r.value,
                             row.get("wall_s"), row.get("tokens_seen"), row.get("params_trained"),
                             row.get("config_hash")])
    with open(summary_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "task", "train_examples", "language", "metric", "seeds", "mean",
                         "ci95_half_width", "ci95_low", "ci95_high"])
        for (label, task, size, language, metric), est in summary.estimates.items():
            writer.writerow([label, task, size, language, metric, est.n, est.mean, est.half_width, est.low,
                             est.high])
    return runs_csv, summary_csv


def report(*, results_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Write report.md, report.html (images embedded), plots/*.png|svg, runs.csv and summary.csv.

    Returns the output directory (default RESULTS_DIR/report). Raises UserError when there are no results.
    """
    results_dir = pathlib.Path(results_dir).expanduser()
    if not (results_dir / RESULTS_FILE).is_file():
        raise UserError(f"no {RESULTS_FILE} in {results_dir} (is it a sweep directory?)")
    rows = sorted(read_results(results_dir), key=lambda r: (str(r.get("run_id")),))
    if not rows:
        raise UserError(f"{results_dir / RESULTS_FILE} holds no results yet")
    plan_path = results_dir / PLAN_FILE
    plan = json.loads(plan_path.read_text()) if plan_path.is_file() else {}
    order = {run["run_id"]: i for i, run in enumerate(plan.get("runs", []))}
    rows.sort(key=lambda r: (order.get(r["run_id"], len(order)), str(r["run_id"])))
    records = records_from_rows(rows, plan)
    if not records:
        raise UserError(f"{results_dir / RESULTS_FILE}: no numeric metrics in any row")
    out = pathlib.Path(out_dir).expanduser() if out_dir else results_dir / "report"
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)

    summary = summarize(records)
    tables = main_tables(summary, records)
    per_language = language_tables(summary, records)
    costs = cost_table(rows, _labels(rows, plan))
    plots = scale_curves(summary, records, plots_dir) + ablation_bars(summary, records, plots_dir)
    runs_csv, summary_csv = _write_csvs(out, records, rows, summary)

    name = plan.get("name") or results_dir.name
    expected = len(plan.get("runs", [])) or len(rows)
    intro = (f"{len(rows)} finished runs of {expected} planned; {len(summary.labels)} methods, "
             f"{len(summary.sizes)} training-set sizes, {len(summary.tasks)} task(s), "
             f"{len(summary.languages)} language(s). Data: {runs_csv.name} (one line per run, language and metric), "
             f"{summary_csv.name} (means and intervals).")
    md = [f"# Sweep report: {name}", "", intro, "", "## Results", ""]
    md += [_md_table(t) + "\n" for t in tables]
    md += ["## Per-language breakdown", ""] + [_md_table(t) + "\n" for t in per_language]
    md += ["## Cost", "", _md_table(costs), ""]
    if plots:
        md += ["## Plots", ""]
        md += [f"![{p.title}](plots/{p.png.name}) ([svg](plots/{p.svg.name}))\n" for p in plots]
    (out / "report.md").write_text("\n".join(md))

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Sweep report: {html.escape(name)}</title>"
             f"<style>{_CSS}</style></head><body><h1>Sweep report: {html.escape(name)}</h1>"
             f"<p>{html.escape(intro)}</p><h2>Results</h2>"]
    parts += [_html_table(t) for t in tables]
    parts += ["<h2>Per-language breakdown</h2>"] + [_html_table(t) for t in per_language]
    parts += ["<h2>Cost</h2>", _html_table(costs)]
    if plots:
        parts.append("<h2>Plots</h2>")
        for p in plots:
            data = base64.b64encode(p.png.read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='{html.escape(p.title)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(p.title)}</figcaption></figure>")
    parts.append("</body></html>")
    (out / "report.html").write_text("".join(parts))
    print(f"report: {out / 'report.md'}\nreport: {out / 'report.html'}")
    return out
