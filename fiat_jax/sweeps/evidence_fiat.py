"""The README's FIAT evidence table and teacher-quality plot, derived from a FIAT evidence sweep's results.jsonl.

Why a module of its own: the README table must be exactly what a shipped command prints from the shipped
``evidence/fiat/results.jsonl`` (tests/test_evidence_tables.py re-derives it), and the comparisons FIAT's paper
makes (FIAT and each ablation against fine-tuning and against ICL; along the simulated teacher-quality axis q,
FIAT's gain over both) are not the generic report's baseline pairs. Paired on (seed, item) units where both runs
wrote per-item scores for the same items (by id; by position where a run wrote blank or repeated ids, as every
method scores the same first N items of the split in order), else on seeds (stats.paired_difference decides).

    python -m fiat_jax.sweeps.evidence_fiat evidence/fiat/results.jsonl [--plot evidence/fiat/fiat_q.png]
"""

from __future__ import annotations

import argparse
import math
import pathlib
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from fiat_jax.errors import UserError
from fiat_jax.sweeps import stats
from fiat_jax.sweeps.results_rows import read_rows

METRIC = "accuracy"
SIMULATED = "simulated:"
_Q = re.compile(r"controlled-teacher:q=([0-9.]+)")


def teacher_of(row: Mapping[str, Any]) -> str | None:
    """The teacher identity the run recorded (``simulated:controlled-teacher:q=...`` for the controlled one)."""
    extra = row.get("extra") or {}
    return extra.get("teacher") or (extra.get("provenance") or {}).get("teacher")


def quality_of(row: Mapping[str, Any]) -> float | None:
    """q of the simulated controlled teacher, None for any other teacher."""
    match = _Q.search(str(teacher_of(row) or ""))
    return float(match.group(1)) if match else None


def _kind(row: Mapping[str, Any]) -> str:
    return str((row.get("extra") or {}).get("method") or row.get("method") or "").lower()


def _cell(rows: Sequence[Mapping[str, Any]], metric: str) -> dict[int, dict[str, tuple[tuple, Any]]]:
    """``{seed: {task: (ids, values)}}`` of one method: per-item scores where the run wrote them."""
    # lazy: kept out of the light import path of this module
    import numpy as np

    out: dict[int, dict[str, tuple[tuple, Any]]] = {}
    for row in rows:
        extra = row.get("extra") or {}
        family = str(extra.get("task") or "")
        items = extra.get("item_scores") or {}
        for lang, metrics in (row.get("metrics") or {}).items():
            if metric not in (metrics or {}):
                continue
            entry = (items.get(f"{family}_{lang}") or items.get(lang) or {}).get(metric) or {}
            values = entry.get("values") or []
            ids = tuple(str(i) for i in entry.get("ids") or ())
            if values and (len(ids) != len(values) or "" in ids or len(set(ids)) != len(ids)):
                # No usable ids (the student's scorer wrote blanks): every method scores the same first N
                # items of the evaluation split in their order, so the position is the item.
                ids = tuple(f"#{k}" for k in range(len(values)))
            if values and len(ids) == len(values):
                out.setdefault(int(row.get("seed") or 0), {})[str(lang)] = (ids, np.asarray(values, float))
            else:
                out.setdefault(int(row.get("seed") or 0), {})[str(lang)] = ((), np.asarray([metrics[metric]]))
    return out


def _align(a: Mapping, b: Mapping) -> tuple[dict, dict]:
    """The two cells on the (seed, language, item id) units both scored; run means where ids are missing."""
    # lazy: kept out of the light import path of this module
    import numpy as np

    out_a: dict[int, dict[str, Any]] = {}
    out_b: dict[int, dict[str, Any]] = {}
    for seed in sorted(set(a) & set(b)):
        for lang in sorted(set(a[seed]) & set(b[seed])):
            (ids_a, va), (ids_b, vb) = a[seed][lang], b[seed][lang]
            if _positional(ids_a) != _positional(ids_b) and len(ids_a) == len(ids_b):
                ids_a = ids_b = tuple(f"#{k}" for k in range(len(ids_a)))  # one side knows positions only
            where = {i: n for n, i in enumerate(ids_b)}
            shared = [(n, where[i]) for n, i in enumerate(ids_a) if i in where]
            if ids_a and ids_b and shared:
                out_a.setdefault(seed, {})[lang] = va[[x for x, _ in shared]]
                out_b.setdefault(seed, {})[lang] = vb[[y for _, y in shared]]
            else:
                out_a.setdefault(seed, {})[lang] = np.asarray([va.mean()])
                out_b.setdefault(seed, {})[lang] = np.asarray([vb.mean()])
    return out_a, out_b


def _positional(ids: tuple) -> bool:
    """Ids made from positions (a run that wrote no usable item ids, see ``_cell``)."""
    return bool(ids) and all(i.startswith("#") for i in ids)


def compare(a: Mapping, b: Mapping) -> stats.Comparison | None:
    """``a - b`` (percentage points): paired bootstrap interval and sign-flip p-value."""
    ca, cb = _align(a, b)
    return stats.paired_difference(ca, cb, bounds=(0.0, 100.0)) if ca else None


def method_order(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """ICL, fine-tuning, FIAT with the real teacher and its ablations, then the simulated q axis by q."""
    def key(name: str) -> tuple:
        row = next(r for r in rows if r["method"] == name)
        kind, q = _kind(row), quality_of(row)
        rank = 0 if kind == "icl" else 1 if kind.startswith("finetune") else 3 if q is not None else 2
        ablated = any(((row.get("extra") or {}).get("ablations") or {}).values())
        return (rank, -1.0 if q is None else q, ablated, name)
    return sorted(dict.fromkeys(r["method"] for r in rows), key=key)


def baselines(rows: Sequence[Mapping[str, Any]], order: Sequence[str]) -> tuple[str | None, str | None]:
    """The FT (LoRA) and ICL method names: the first fine-tuning and the first ICL method in ``order``."""
    kinds = {r["method"]: _kind(r) for r in rows}
    ft = next((m for m in order if kinds[m] == "finetune_lora" or kinds[m].startswith("finetune")), None)
    icl = next((m for m in order if kinds[m] == "icl"), None)
    return ft, icl


def _teacher_cell(rows: Sequence[Mapping[str, Any]]) -> str:
    names = sorted({str(teacher_of(r)) for r in rows if teacher_of(r)})
    if not names:
        return "none"
    return ", ".join(re.sub(r":seed=\d+$", "", n) for n in names)


def _pp(value: float, sign: str = "") -> str:
    """One decimal (``sign="+"``: always signed); "–" for a missing number (one run: no interval)."""
    return "–" if value is None or not math.isfinite(value) else f"{value:{sign}.1f}"


def _fmt_comp(comp: stats.Comparison | None) -> str:
    if comp is None:
        return "–"
    d = comp.diff
    return f"{_pp(d.mean, '+')} [{_pp(d.low, '+')}, {_pp(d.high, '+')}], p {stats.format_p(comp.p_value)}"


def evidence_table(rows: Sequence[Mapping[str, Any]], *, metric: str = METRIC) -> str:
    """The README's markdown table: each method's accuracy with its interval, and its paired difference with
    FT (LoRA) and with ICL (interval, p-value); simulated teachers say so in the teacher column."""
    if not rows:
        raise UserError("FIAT evidence: the results file has no rows")
    order = method_order(rows)
    by_method = {m: [r for r in rows if r["method"] == m] for m in order}
    cells = {m: _cell(rs, metric) for m, rs in by_method.items()}
    ft, icl = baselines(rows, order)
    lines = ["| method | teacher | seeds × items | accuracy % [95% CI] | − FT (LoRA), pp | − ICL, pp |",
             "|---|---|---|---|---|---|"]
    for m in order:
        cell = cells[m]
        est = stats.bootstrap_interval(cell and {s: {l: v for l, (_, v) in by.items()} for s, by in cell.items()},
                                       bounds=(0.0, 100.0))
        items = est.items if est.per_item else 1
        vs_ft = "–" if m == ft or ft is None else _fmt_comp(compare(cell, cells[ft]))
        vs_icl = "–" if m == icl or icl is None else _fmt_comp(compare(cell, cells[icl]))
        teacher = _teacher_cell(by_method[m])
        label = f"{m} *(simulated)*" if teacher.startswith(SIMULATED) and "simulated" not in m.lower() else m
        lines.append(f"| {label} | {teacher} | {est.seeds} × {items} | {_pp(est.mean)} [{_pp(est.low)}, "
                     f"{_pp(est.high)}] | {vs_ft} | {vs_icl} |")
    return "\n".join(lines)


def quality_curve(rows: Sequence[Mapping[str, Any]], *, metric: str = METRIC) -> list[dict[str, Any]]:
    """Per q of the simulated teacher: FIAT's gain over FT (LoRA) and over ICL, paired."""
    order = method_order(rows)
    ft, icl = baselines(rows, order)
    out = []
    for m in order:
        group = [r for r in rows if r["method"] == m]
        q = quality_of(group[0])
        if q is None or _kind(group[0]) != "fiat":
            continue
        cell = _cell(group, metric)
        out.append({"q": q, "method": m,
                    "vs_ft": compare(cell, _cell([r for r in rows if r["method"] == ft], metric)) if ft else None,
                    "vs_icl": compare(cell, _cell([r for r in rows if r["method"] == icl], metric)) if icl else None})
    return out


def quality_plot(rows: Sequence[Mapping[str, Any]], out_path: str | pathlib.Path, *, metric: str = METRIC) -> None:
    """FIAT's gain over FT and over ICL against q (simulated teacher), with the paired 95% intervals."""
    # lazy: matplotlib only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")
    # lazy: matplotlib only when a plot is drawn
    import matplotlib.pyplot as plt

    curve = quality_curve(rows, metric=metric)
    if not curve:
        raise UserError("FIAT evidence: no runs with the simulated controlled teacher (no q axis to plot)")
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for key, label, shift in (("vs_ft", "FIAT − FT (LoRA)", -0.008), ("vs_icl", "FIAT − ICL", 0.008)):
        pts = [(c["q"], c[key].diff) for c in curve if c[key] is not None]
        if not pts:
            continue
        qs = [q + shift for q, _ in pts]
        means = [d.mean for _, d in pts]
        err = [[d.mean - d.low if math.isfinite(d.low) else 0 for _, d in pts],
               [d.high - d.mean if math.isfinite(d.high) else 0 for _, d in pts]]
        ax.errorbar(qs, means, yerr=err, marker="o", capsize=3, label=label)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("q: share of consistent reasoning (SIMULATED controlled teacher)")
    ax.set_ylabel(f"paired difference in {metric} (pp)")
    ax.set_title("FIAT's gain vs teacher quality (simulated teacher)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_path = pathlib.Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fiat_jax.sweeps.evidence_fiat", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("results", help="a FIAT evidence sweep's results.jsonl")
    parser.add_argument("--plot", default=None, help="also write the teacher-quality plot (PNG) here")
    args = parser.parse_args(argv)
    try:
        rows = read_rows(args.results)
        print(evidence_table(rows))
        if args.plot:
            quality_plot(rows, args.plot)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
