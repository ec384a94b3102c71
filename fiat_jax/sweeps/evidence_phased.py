"""The README's phased instruction tuning evidence table, derived from the shipped sweep results
(``evidence/phased/results.jsonl``), so the README shows exactly what the shipped command produces.

    python -m fiat_jax.sweeps.evidence phased          # print it (--write: into the README, --check: compare)

One row per ordering: held-out response log-likelihood per token (nats; higher is better) with its bootstrap
interval over seeds and items, Phased IFT (easy to hard) minus that ordering paired on (seed, item) with its
interval and a seed-level p-value (a t-test on the per-seed mean differences: the training runs are the
units, so a difference smaller than the spread between seeds is not called significant however many items
each run scored), and the win rate against the reference responses judged by the embedded
SmolLM2-135M-Instruct (secondary). Statistics are :mod:`fiat_jax.sweeps.stats`', the report's own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fiat_jax.errors import UserError
from fiat_jax.sweeps import stats

PHASED = "Phased IFT"
ORDER = ("Phased IFT", "One-off IFT", "Phased IFT (random phases)", "Phased IFT (hard to easy)")
SHOWN = {"Phased IFT": "Phased IFT (easy → hard)", "One-off IFT": "One-off IFT (all data, one stage)",
         "Phased IFT (random phases)": "Random phases (same stage sizes)",
         "Phased IFT (hard to easy)": "Reversed phases (hard → easy)"}
LL = "log_likelihood_per_token"
WIN = "win_rate"


def _items(row: Mapping[str, Any], metric: str) -> dict[str, float] | None:
    """``{item id: score}`` of one run's metric, from its per-item scores (None when it has none)."""
    for by_metric in ((row.get("extra") or {}).get("item_scores") or {}).values():
        entry = (by_metric or {}).get(metric)
        if entry and entry.get("values") and len(entry.get("ids") or ()) == len(entry["values"]):
            return {str(i): float(v) for i, v in zip(entry["ids"], entry["values"])}
    return None


def cells(rows: Sequence[Mapping[str, Any]], metric: str) -> dict[str, dict[int, dict[str, Any]]]:
    """``{method: {seed: {"all": scores}}}`` on the items every run of the metric scored, in one order."""
    scored = [(row, _items(row, metric)) for row in rows]
    scored = [(row, items) for row, items in scored if items]
    if not scored:
        return {}
    shared = sorted(set.intersection(*(set(items) for _, items in scored)))
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for row, items in scored:
        out.setdefault(str(row["method"]), {})[int(row.get("seed") or 0)] = {
            "all": np.asarray([items[i] for i in shared])}
    return out


def _interval(est: stats.Interval, scale: float = 1.0) -> str:
    if math.isnan(est.mean):
        return "–"
    mean = stats.format_number(est.mean * scale, percent=scale != 1.0)
    if math.isnan(est.low):
        return mean
    return (f"{mean} [{stats.format_number(est.low * scale, percent=scale != 1.0)}, "
            f"{stats.format_number(est.high * scale, percent=scale != 1.0)}]")


def _signed(text: str) -> str:
    return text if text.startswith(("-", "–")) else f"+{text}"


def phased_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The markdown table (see the module docstring)."""
    ll, win = cells(rows, LL), cells(rows, WIN)
    if PHASED not in ll:
        raise UserError(f"no {PHASED!r} runs with per-item {LL} scores in the results")
    n_items = len(next(iter(ll[PHASED].values()))["all"])
    n_judged = len(next(iter(win[PHASED].values()))["all"]) if PHASED in win else 0
    header = ["Ordering", "log-lik / token [95% CI]", "Phased − this [95% CI]", "p (seeds)"]
    header += [f"win rate vs reference, {n_judged} items [95% CI]"] if win else []
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for method in [m for m in ORDER if m in ll] + sorted(m for m in ll if m not in ORDER):
        mean = _interval(stats.bootstrap_interval(ll[method]))
        if method == PHASED:
            diff, p = "–", "–"
        else:
            comp = stats.paired_difference(ll[PHASED], ll[method])
            d = comp.diff
            diff = (f"{_signed(stats.format_number(d.mean, percent=False))} "
                    f"[{stats.format_number(d.low, percent=False)}, {stats.format_number(d.high, percent=False)}]")
            diff_cell = {s: {lang: np.asarray(ll[PHASED][s][lang]) - np.asarray(ll[method][s][lang])
                             for lang in ll[PHASED][s]} for s in sorted(set(ll[PHASED]) & set(ll[method]))}
            p = stats.format_p(stats.seed_level_p_value(diff_cell)).replace("= ", "")
        cells_ = [SHOWN.get(method, method), mean, diff, p]
        if win:
            cells_.append(_interval(stats.bootstrap_interval(win[method]), scale=100.0) if method in win else "–")
        lines.append("| " + " | ".join(cells_) + " |")
    lines.append("")
    lines.append(f"Log-likelihood per response token (nats, higher is better) of {n_items} held-out Alpaca-scored "
                 f"validation items; {len(ll[PHASED])} seeds, paired on (seed, item); 95% bootstrap intervals over "
                 f"seeds and items; p: two-sided t-test on the {len(ll[PHASED])} per-seed mean differences (seeds "
                 f"are the units, so item-level noise cannot make a seed-level spread look significant).")
    if win:
        lines.append(f"Win rate: (wins + ties / 2) / n − 50 %, judged by SmolLM2-135M-Instruct in both orders "
                     f"(secondary: a 135M judge).")
    return "\n".join(lines)
