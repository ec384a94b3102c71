"""The README's "Evidence" tables, derived from the shipped ``evidence/<paper>/results.jsonl`` (a sweep's rows).

One function per paper turns the rows into a markdown table; ``python -m fiat_jax.sweeps.evidence <paper>``
prints it, ``--check`` compares it with the README's text between ``<!-- evidence:<paper>:table -->`` markers
(tests/test_evidence_tables.py does the same), ``--write`` puts it there. The statistics are
:mod:`fiat_jax.sweeps.stats`: a bootstrap interval over seeds and items, and paired differences on the same
(seed, item) pairs with a sign-flip permutation p-value, so that p < 0.01 is reachable with 5 seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fiat_jax.data import synthetic
from fiat_jax.errors import UserError
from fiat_jax.sweeps import evidence_fiat, evidence_phased, stats
from fiat_jax.sweeps.results_rows import read_rows

ROOT = pathlib.Path(__file__).resolve().parents[2]
BOUNDS = (0.0, 100.0)
Cell = dict  # {seed: {"en": numpy array of per-item scores}}


def item_cell(rows: Sequence[Mapping[str, Any]], method: str, metric: str, *, model: str | None = None
              ) -> tuple[Cell, dict[int, list[str]]]:
    """``{seed: {task: per-item scores}}`` of one method's runs, and the item ids per seed (for pairing).

    Runs whose per-item scores are missing fall back to their run-level metric (one value per seed)."""
    cell: Cell = {}
    ids: dict[int, list[str]] = {}
    for row in rows:
        if row.get("method") != method or (model is not None and (row.get("params") or {}).get("MODEL") != model):
            continue
        seed = int(row.get("seed") or 0)
        for task, metrics in (row.get("metrics") or {}).items():
            if metric not in (metrics or {}):
                continue
            entry = (((row.get("extra") or {}).get("item_scores") or {}).get(task) or {}).get(metric) or {}
            values = entry.get("values") or []
            if values and math.isclose(float(np.mean(values)), float(metrics[metric]), abs_tol=1e-6):
                cell.setdefault(seed, {})["all"] = np.asarray(values, dtype=np.float64)
                ids[seed] = [str(i) for i in entry.get("ids") or []]
            else:
                cell.setdefault(seed, {})["all"] = np.asarray([float(metrics[metric])])
                ids[seed] = []
    return cell, ids


def paired(a: tuple[Cell, dict], b: tuple[Cell, dict]) -> stats.Comparison | None:
    """``a - b`` on the (seed, item) pairs both scored (items matched by id), else on seed-level means."""
    out_a, out_b = aligned(a, b)
    return stats.paired_difference(out_a, out_b, bounds=BOUNDS) if out_a else None


def seed_level_p(a: tuple[Cell, dict], b: tuple[Cell, dict]) -> float:
    """p of ``a - b`` with the seeds (each its own world and training run) as the units: a t-test on the
    per-seed mean differences over the same items as :func:`paired` (NaN with fewer than 2 seeds)."""
    out_a, out_b = aligned(a, b)
    return stats.seed_level_p_value({s: {"all": out_a[s]["all"] - out_b[s]["all"]} for s in out_a})


def aligned(a: tuple[Cell, dict], b: tuple[Cell, dict]) -> tuple[Cell, Cell]:
    """The two cells on the (seed, item) pairs both scored (items matched by id), else on seed-level means."""
    (cell_a, ids_a), (cell_b, ids_b) = a, b
    out_a: Cell = {}
    out_b: Cell = {}
    for seed in sorted(set(cell_a) & set(cell_b)):
        va, vb = cell_a[seed]["all"], cell_b[seed]["all"]
        if ids_a.get(seed) and ids_b.get(seed):
            where = {i: n for n, i in enumerate(ids_b[seed])}
            shared = [(n, where[i]) for n, i in enumerate(ids_a[seed]) if i in where]
            va, vb = va[[n for n, _ in shared]], vb[[m for _, m in shared]]
        else:
            va, vb = np.asarray([va.mean()]), np.asarray([vb.mean()])
        out_a[seed], out_b[seed] = {"all": va}, {"all": vb}
    return out_a, out_b


def _interval(cell: Cell) -> str:
    if not cell:
        return "–"
    est = stats.bootstrap_interval(cell, bounds=BOUNDS)
    mean = stats.format_number(est.mean, percent=True)
    if math.isnan(est.low):
        return mean
    return f"{mean} [{stats.format_number(est.low, percent=True)}, {stats.format_number(est.high, percent=True)}]"


def _difference(comp: stats.Comparison | None, seed_p: float = float("nan")) -> str:
    if comp is None:
        return "–"
    d = comp.diff
    seeds = "" if math.isnan(seed_p) else f"; seeds: p {stats.format_p(seed_p)}"
    return (f"{d.mean:+.1f} [{d.low:+.1f}, {d.high:+.1f}], p {stats.format_p(comp.p_value)}{seeds}")


# ------------------------------------------------------------------------------------ augmented fine-tuning
AUGMENTED_KINDS = (("reversal", "reversal"), ("two_hop", "syllogism (two-hop)"), ("rephrase", "rephrase"),
                   ("held_out", "held-out (control)"))
AUGMENTED_BASELINE = "FT"


def synthetic_chance() -> float:
    """Accuracy of a uniform guess on the synthetic items (100 / options per item), from the generator."""
    items = synthetic.generate(seed=0, languages=("en",)).items
    return 100.0 * sum(1.0 / len(i["options"]) for i in items) / len(items)


def _teacher_label(rows: Sequence[Mapping[str, Any]], method: str) -> str:
    names = {str((r.get("extra") or {}).get("teacher") or "") for r in rows if r.get("method") == method}
    names.discard("")
    if not names:
        return "none"
    return ", ".join(sorted("rule-based (simulated)" if n.startswith("rule-based") else n for n in names))


def augmented_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Accuracy per probe kind (mean over seeds [95% interval over seeds and items]) per student and method,
    then each method's paired difference from plain FT on reversals and on syllogisms."""
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    models = list(dict.fromkeys(str((r.get("params") or {}).get("MODEL", "")) for r in rows))
    header = (["student", "method", "teacher", "seeds"] + [name for _, name in AUGMENTED_KINDS]
              + ["reversal − FT", "syllogism − FT"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in models:
        for method in methods:
            if not any(r["method"] == method and (r.get("params") or {}).get("MODEL", "") == model for r in rows):
                continue
            cells = [_interval(item_cell(rows, method, f"accuracy_{kind}", model=model)[0])
                     for kind, _ in AUGMENTED_KINDS]
            diffs = ["" if method == AUGMENTED_BASELINE else _difference(*_compared(rows, method, kind, model))
                     for kind in ("reversal", "two_hop")]
            n = len({int(r.get("seed") or 0) for r in rows
                     if r["method"] == method and (r.get("params") or {}).get("MODEL", "") == model})
            lines.append("| " + " | ".join([model, method, _teacher_label(rows, method), str(n)] + cells + diffs)
                         + " |")
    lines.append("")
    lines.append("Accuracy (%) by multiple-choice likelihood, mean over seeds (each seed its own world) [95% "
                 f"bootstrap interval over seeds and items]; chance {synthetic_chance():.1f} (every probe has 4 "
                 "options). Differences are paired on (seed, item): p from a two-sided sign-flip permutation test "
                 "over the (seed, item) pairs, and (\"seeds\") from a t-test on the per-seed mean differences, "
                 "the seeds (each its own world and training run) being the units.")
    return "\n".join(lines)


def _compared(rows: Sequence[Mapping[str, Any]], method: str, kind: str, model: str
              ) -> tuple[stats.Comparison | None, float]:
    """``method`` − plain FT on one probe kind for one student: the paired comparison and the seed-level p."""
    a = item_cell(rows, method, f"accuracy_{kind}", model=model)
    b = item_cell(rows, AUGMENTED_BASELINE, f"accuracy_{kind}", model=model)
    return paired(a, b), seed_level_p(a, b)


def teacher_quality_table(directory: str | pathlib.Path) -> str:
    """What each teacher wrote as augmentations, scored against the synthetic world
    (``teacher_quality_*.json`` beside the results, from ``python -m fiat_jax.sweeps.augment_quality``)."""
    files = sorted(pathlib.Path(directory).glob("teacher_quality_*.json"))
    if not files:
        return ""
    lines = ["| teacher | documents (4 facts each) | statements | true in the world | false | reversals "
             "(share of statements) | reversals of the documents' facts written |", "|---|---|---|---|---|---|---|"]
    for path in files:
        q = json.loads(path.read_text())
        name = "rule-based (simulated)" if str(q["teacher"]).startswith("rule-based") else str(q["teacher"])
        pct = lambda key: stats.format_number(float(q[key]), percent=True)
        lines.append(f"| {name} | {q['documents']} | {q['statements']} | {pct('true_pct')} % | {pct('false_pct')} % "
                     f"| {pct('reversal_pct')} % | {pct('reversal_coverage_pct')} % of {q['reversals_possible']} |")
    return "\n".join(lines)


TABLES: dict[str, Callable[[Sequence[Mapping[str, Any]]], str]] = {"augmented": augmented_table,
                                                                   "phased": evidence_phased.phased_table,
                                                                   "fiat": evidence_fiat.evidence_table}
EXTRA_TABLES: dict[str, Callable[[pathlib.Path], str]] = {"augmented": teacher_quality_table}


def table(paper: str, results: str | pathlib.Path | None = None) -> str:
    """The README table(s) of ``paper`` from its shipped results (default ``evidence/<paper>/results.jsonl``)."""
    if paper not in TABLES:
        raise UserError(f"evidence: no table for paper {paper!r}; have {sorted(TABLES)}")
    path = pathlib.Path(results or ROOT / "evidence" / paper / "results.jsonl")
    parts = [TABLES[paper](read_rows(path))]
    if paper in EXTRA_TABLES:
        parts.append(EXTRA_TABLES[paper](path.parent))
    return "\n\n".join(p for p in parts if p)


def markers(paper: str) -> tuple[str, str]:
    return f"<!-- evidence:{paper}:table -->", f"<!-- /evidence:{paper}:table -->"


def readme_table(paper: str, readme: str | pathlib.Path | None = None) -> str:
    """The README's text between the paper's table markers."""
    text = pathlib.Path(readme or ROOT / "README.md").read_text()
    start, end = markers(paper)
    if start not in text or end not in text:
        raise UserError(f"evidence: README has no {start} ... {end} markers")
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def write_readme_table(paper: str, readme: str | pathlib.Path | None = None) -> None:
    path = pathlib.Path(readme or ROOT / "README.md")
    text = path.read_text()
    start, end = markers(paper)
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    path.write_text(f"{before}{start}\n{table(paper)}\n{end}{after}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paper", help=f"one of {sorted(TABLES)}")
    p.add_argument("--results", default=None, help="a results.jsonl (default evidence/<paper>/results.jsonl)")
    p.add_argument("--check", action="store_true", help="exit 1 when the README's table differs")
    p.add_argument("--write", action="store_true", help="write the table into the README between its markers")
    args = p.parse_args(argv)
    try:
        if args.write and args.paper not in TABLES:  # `make evidence` for a paper whose table is not written yet
            print(f"evidence: no README table for {args.paper!r} yet; nothing written")
            return 0
        if args.write:
            write_readme_table(args.paper)
            return 0
        text = table(args.paper, args.results)
        if args.check:
            same = text == readme_table(args.paper)
            print("README table up to date" if same else "README table differs from the shipped results")
            return 0 if same else 1
        print(text)
        return 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
