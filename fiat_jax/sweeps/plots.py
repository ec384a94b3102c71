"""Scale curves (metric vs training examples, intervals as bands) and ablation bars, as PNG and SVG files.

matplotlib is imported only when a plot is drawn: the sweep process imports this package and must stay light.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re
import textwrap

from fiat_jax.sweeps.summary import Summary
from fiat_jax.sweeps.tables import percent_metric

_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


@dataclasses.dataclass
class Plot:
    title: str
    png: pathlib.Path
    svg: pathlib.Path


def _slug(text: str) -> str:
    return _SLUG.sub("_", text).strip("_") or "plot"


def _pyplot():
    import matplotlib  # lazy: the sweep process imports the report package and must not load matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # lazy: as matplotlib above (after its backend is chosen)

    return plt


def _save(fig, out_dir: pathlib.Path, stem: str, title: str) -> Plot:
    png, svg = out_dir / f"{stem}.png", out_dir / f"{stem}.svg"
    fig.savefig(png, dpi=100)
    fig.savefig(svg)
    _pyplot().close(fig)
    return Plot(title=title, png=png, svg=svg)


def _ylabel(summary: Summary, metric: str) -> str:
    return metric + (" (%)" if percent_metric(summary, metric) else "")


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
