"""Tables and plots from a sweep's results.jsonl: markdown, a self-contained HTML page, PNG/SVG plots, CSV.

Per task and training-set size, a table in the layout of FIAT's Table 2: one row per method (and model variant),
one column per metric, each cell the mean over seeds of the mean over languages, with a 95% bootstrap interval
over seeds and evaluation items (:mod:`fiat_jax.sweeps.stats`), kept inside the metric's range. Then every method
against its baseline (FIAT vs FT and ICL, augmented vs plain FT, phased vs one-off, random and reversed
phases, each ablation vs full FIAT):
the paired difference on the same seeds and items, its interval and a permutation p-value. Per-language tables,
cost (student tokens and FLOPs, teacher calls, wall time), scale curves with bands, ablation bars, failed or
missing runs with their logs, provenance, and any results file that lacks a field follow.

Training-set sizes are the ones the runs report (``num_train_examples``), the requested size beside them where it
differs. Metrics a run reports for its in-context baseline (``icl_*``) get their own row, not the run's.


The pieces, one job each: :mod:`~fiat_jax.sweeps.summary` (rows -> records -> intervals),
:mod:`~fiat_jax.sweeps.tables`, :mod:`~fiat_jax.sweeps.comparisons`, :mod:`~fiat_jax.sweeps.costs`,
:mod:`~fiat_jax.sweeps.plots` and :mod:`~fiat_jax.sweeps.render`; this module puts them on one page and keeps
their public names importable from here.
"""

from __future__ import annotations

import base64
import html
import json
import os
import pathlib

from fiat_jax.errors import UserError
from fiat_jax.sweeps import run_results, stats  # noqa: F401 - re-exported (callers reach them from here)
from fiat_jax.sweeps.comparisons import (  # noqa: F401 - re-exported
    COMPARISON_METRICS_PER_TABLE, baseline_pairs, comparison_tables, comparisons)
from fiat_jax.sweeps.costs import cost_table, failed_runs, provenance_table, training_flops  # noqa: F401
from fiat_jax.sweeps.plots import Plot, ablation_bars, scale_curves  # noqa: F401 - re-exported
from fiat_jax.sweeps.render import HTML_CSS, html_table, md_table, write_csvs
from fiat_jax.sweeps.summary import (  # noqa: F401 - re-exported
    _PERCENT_NAMES, CONFIDENCE, ICL_LABEL, ICL_PREFIX, REQUIRED_FIELDS, Record, Summary, actual_size, check_rows,
    field_warnings, metric_bounds, records_from_rows, requested_size, run_labels, summarize)
from fiat_jax.sweeps.sweep import PLAN_FILE, RESULTS_FILE, read_results
from fiat_jax.sweeps.tables import (  # noqa: F401 - re-exported
    LANGUAGES_PER_TABLE, METRICS_PER_TABLE, Table, language_tables, main_tables)


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
    costs = cost_table(rows, run_labels(rows, plan))
    failures = failed_runs(plan, rows, results_dir)
    provenance = provenance_table(rows)
    warnings = field_warnings(rows, results_dir)
    plots = scale_curves(summary, plots_dir) + ablation_bars(summary, plots_dir)
    csvs = write_csvs(out, records, rows, summary, comps)

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
        md += [f"## {title}", ""] + [md_table(t) + "\n" for t in items]
        if not items:
            md += ["none", ""]
    if warnings:
        md += ["## Results files with missing fields", ""] + [f"- {w}" for w in warnings] + [""]
    if plots:
        md += ["## Plots", ""]
        md += [f"![{p.title}](plots/{p.png.name}) ([svg](plots/{p.svg.name}))\n" for p in plots]
    (out / "report.md").write_text("\n".join(md))

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Sweep report: {html.escape(name)}</title>"
             f"<style>{HTML_CSS}</style></head><body><h1>Sweep report: {html.escape(name)}</h1>"
             f"<p>{html.escape(intro)}</p>"]
    for title, items in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts += [html_table(t) for t in items] or ["<p>none</p>"]
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
