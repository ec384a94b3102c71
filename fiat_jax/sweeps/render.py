"""Report tables as markdown and HTML (a cell wraps between its mean, interval and p-value, never inside one),
and the long-form CSV files beside the report."""

from __future__ import annotations

import csv
import html
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fiat_jax.sweeps import stats
from fiat_jax.sweeps.summary import Record, Summary, requested_size
from fiat_jax.sweeps.tables import Table

def md_table(table: Table) -> str:
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


def html_table(table: Table) -> str:
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


HTML_CSS = ("body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1200px}"
        ".wrap{max-width:100%}table{border-collapse:collapse;margin:0.5em 0;font-size:90%;max-width:100%}"
        "th,td{border:1px solid #bbb;padding:3px 6px;text-align:right}th{overflow-wrap:anywhere}"
        ".t{text-align:left;overflow-wrap:anywhere;min-width:7em}.nw{white-space:nowrap}"
        ".note{color:#555;font-size:85%}"
        "figure{margin:1em 0}img{max-width:100%;height:auto}li{overflow-wrap:anywhere}")


def write_csvs(out_dir: pathlib.Path, records: Sequence[Record], rows: Sequence[Mapping[str, Any]],
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
