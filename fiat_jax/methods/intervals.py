"""Each method's held-out mean with its 95 % interval over evaluation items, for ``fiat run``'s comparison table.

Why: a table of bare means on a few hundred items invites reading noise as a finding; printing the interval next
to each mean shows at a glance which differences the evaluation can resolve. The interval is over items (one
run, one seed: it says how much the *item sample* moves the mean, not the training seed), normal approximation:
the mean over languages of each language's item mean, with variance ``sum_l s_l^2 / n_l / L^2`` (languages
weighted equally, as the table's "mean" column does). Seeds and paired tests are the sweep report's job
(:mod:`fiat_jax.sweeps.stats`); this module stays below ``sweeps`` in the layer order.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

Z_95 = 1.959963984540054  # two-sided 95 % normal quantile


@dataclasses.dataclass(frozen=True)
class ItemInterval:
    """A mean over items (averaged over languages) and its 95 % interval; ``items``: how many items in all."""

    mean: float
    low: float
    high: float
    items: int


def item_interval(values_by_language: Mapping[str, Sequence[float]]) -> ItemInterval:
    """Mean over languages of the per-item mean, with its 95 % normal interval (nan bounds with < 2 items in a
    language). Raises ``ValueError`` when no language has items."""
    groups = [[float(v) for v in vs] for vs in values_by_language.values() if len(vs)]
    if not groups:
        raise ValueError("item_interval: no per-item values")
    means = [math.fsum(g) / len(g) for g in groups]
    mean = math.fsum(means) / len(groups)
    total = sum(len(g) for g in groups)
    if any(len(g) < 2 for g in groups):
        return ItemInterval(mean, math.nan, math.nan, total)
    var = math.fsum(math.fsum((v - m) ** 2 for v in g) / (len(g) - 1) / len(g) for g, m in zip(groups, means))
    half = Z_95 * math.sqrt(var) / len(groups)
    return ItemInterval(mean, mean - half, mean + half, total)


def interval_table(results: Mapping[str, Mapping[str, Mapping[str, float]]],
                   item_scores: Mapping[str, Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]]], *,
                   metric: str | None = None) -> str:
    """The comparison table (one row per method, a column per task, the mean over tasks) with one more column
    right after the mean: its 95 % interval over items, where the method's per-item scores are known for every
    task (``item_scores[method][task][metric]["values"]``, as :func:`fiat_jax.methods.results.item_scores`
    returns them), else "-"."""
    tasks = sorted({t for r in results.values() for t in r})
    if metric is None:
        metric = next((m for r in results.values() for t in r.values() for m in t), "")
    header = ["method"] + tasks + ["mean", "95 % interval"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    counts: set[int] = set()
    for name, per_task in results.items():
        scores = item_scores.get(name, {})
        cells, values, items = [name], [], {}
        for t in tasks:
            v = per_task.get(t, {}).get(metric)
            cells.append("-" if v is None else f"{v:.1f}")
            if v is not None:
                values.append(v)
                per_item = scores.get(t, {}).get(metric, {}).get("values")
                if per_item:
                    items[t] = per_item
        cells.append(f"{sum(values) / len(values):.1f}" if values else "-")
        ci = item_interval(items) if values and len(items) == len(values) else None
        cells.append("-" if ci is None or math.isnan(ci.low) else f"[{ci.low:.1f}, {ci.high:.1f}]")
        counts |= {len(v) for v in items.values()}
        lines.append("| " + " | ".join(cells) + " |")
    note = f" (interval over items: {'/'.join(map(str, sorted(counts)))} per task)" if counts else ""
    return f"{metric}{note}\n" + "\n".join(lines)
