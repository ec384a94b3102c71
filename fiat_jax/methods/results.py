"""What a finished method run leaves behind: ``MODEL_DIR/results.json`` (docs/CONTRACTS.md, "Run results"),
predictions as JSONL, and a printed comparison table."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any


def write_results(model_dir: str, *, metrics: Mapping[str, Mapping[str, float]], method: str,
                  tokens_seen: int | None = None, params_trained: int | None = None, **extra: Any) -> pathlib.Path | None:
    """``results.json``: ``{"metrics": {task: {metric: v}}, "method", ...}`` written atomically, last.

    The training-set size the method drew for these tasks (``num_train_examples``, the actual size, and
    ``num_train_examples_requested``) is added unless ``extra`` names it.
    """
    from fiat_jax.methods.examples import training_set_sizes
    from fiat_jax.sweeps import run_results

    extra = {**training_set_sizes(list(metrics)), **extra}

    task = next(iter(metrics), "")
    family = task.rsplit("_", 1)[0] if "_" in task else task
    return run_results.write_run_results(model_dir, metrics={k: dict(v) for k, v in metrics.items()},
                                         tokens_seen=tokens_seen, params_trained=params_trained, method=method,
                                         task=family, **extra)


def write_jsonl(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write rows atomically (temp file then rename)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def language_average(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean over tasks (languages) of each metric every task has."""
    if not metrics:
        return {}
    names = set.intersection(*(set(m) for m in metrics.values()))
    return {n: sum(m[n] for m in metrics.values()) / len(metrics) for n in sorted(names)}


def comparison_table(results: Mapping[str, Mapping[str, Mapping[str, float]]], *, metric: str | None = None) -> str:
    """A markdown table: one row per method, one column per task plus the average, of ``metric`` (default: the
    first metric the first method reports)."""
    methods = list(results)
    tasks = sorted({t for r in results.values() for t in r})
    if metric is None:
        metric = next((m for r in results.values() for t in r.values() for m in t), "")
    header = ["method"] + tasks + ["mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in methods:
        cells = [name]
        values = []
        for t in tasks:
            v = results[name].get(t, {}).get(metric)
            cells.append("-" if v is None else f"{v:.1f}")
            if v is not None:
                values.append(v)
        cells.append(f"{sum(values) / len(values):.1f}" if values else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return f"{metric}\n" + "\n".join(lines)
