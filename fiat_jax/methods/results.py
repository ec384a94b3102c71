"""What a finished method run leaves behind: ``MODEL_DIR/results.json`` (docs/CONTRACTS.md, "Run results"),
predictions as JSONL, and a printed comparison table.

``results.json`` also carries what a reviewer needs beside the metrics: per-item scores read back from the
run's predictions files (only where their mean reproduces the reported metric, so a paired test compares what the
table shows), the teacher calls the run made, and provenance (see :mod:`fiat_jax.train.run_record`)."""

from __future__ import annotations

import glob
import hashlib
import inspect
import json
import logging
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from fiat_jax.methods import common
from fiat_jax.data.examples import training_set_sizes
from fiat_jax.train import run_record

_log = logging.getLogger(__name__)


def write_results(model_dir: str, *, metrics: Mapping[str, Mapping[str, float]], method: str,
                  tokens_seen: int | None = None, params_trained: int | None = None, **extra: Any) -> pathlib.Path | None:
    """``results.json``: ``{"metrics": {task: {metric: v}}, "method", "item_scores", "teacher_cost",
    "provenance", ...}`` written atomically, last.

    The training-set size the method drew for these tasks (``num_train_examples``, the actual size, and
    ``num_train_examples_requested``) is added unless ``extra`` names it.
    """
    extra = {**training_set_sizes(list(metrics)), **extra}

    task = next(iter(metrics), "")
    family = task.rsplit("_", 1)[0] if "_" in task else task
    extra.setdefault("item_scores", _or_empty(item_scores, model_dir, metrics))
    cost = extra.setdefault("teacher_cost", _or_empty(teacher_cost, model_dir))
    teacher = extra.get("teacher") or ", ".join(cost.pop("teachers", [])) or None
    extra.setdefault("provenance", run_record.provenance(teacher=teacher))
    return run_record.write_run_results(model_dir, metrics={k: dict(v) for k, v in metrics.items()},
                                        tokens_seen=tokens_seen, params_trained=params_trained, method=method,
                                        task=family, **extra)


def _or_empty(fn: Any, *args: Any) -> dict[str, Any]:
    """What the report adds to a run's results, never at the cost of the results themselves."""
    try:
        return fn(*args)
    except Exception as err:  # noqa: BLE001
        _log.warning("results.json without %s: %s", fn.__name__, err)
        return {}


# ------------------------------------------------------------------------------------------- per-item scores


def _prediction_files(model_dir: str, task: str) -> list[pathlib.Path]:
    """``predictions/<task>[_<suffix>]-<step>.jsonl``, newest first."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(model_dir), "predictions", "*.jsonl")):
        stem = os.path.basename(path)[:-len(".jsonl")].rsplit("-", 1)[0]
        if stem == task or stem.startswith(task + "_"):
            found.append(pathlib.Path(path))
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def _target_key(value: Any) -> str:
    return hashlib.sha1(str(value).strip().encode("utf-8", "replace")).hexdigest()[:10]


def _multiple_choice(rows: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[str], list[float]]] | None:
    """Rows with ``id``/``option``/``label``/``score`` (one per option): 1 per item whose best option is right,
    overall ("accuracy") and per ``kind`` ("accuracy_<kind>")."""
    if not rows or not all({"id", "option", "label", "score"} <= set(r) for r in rows):
        return None
    items: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        items.setdefault(str(row["id"]), []).append(row)
    out: dict[str, tuple[list[str], list[float]]] = {}
    for item_id, options in items.items():
        best = max(options, key=lambda r: float(r["score"]))
        hit = float(int(best["label"]) == 1)
        for name in ("accuracy", f"accuracy_{options[0].get('kind', '')}"):
            ids, values = out.setdefault(name, ([], []))
            ids.append(item_id)
            values.append(hit)
    return out


def _by_metric_fns(task: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[str], list[float]]]:
    """Each prediction metric of the task on one row at a time, as the evaluator wrote it (targets and predictions
    postprocessed) and, for rows written before postprocessing, through the task's postprocessor."""

    fns, _ = common.metric_spec(task)
    out: dict[str, tuple[list[str], list[float]]] = {}
    for variant in ("as_written", "postprocessed"):
        try:
            per = _per_row(task, fns, rows, variant)
        except Exception as err:  # noqa: BLE001 (a metric that needs more than one row, an odd row)
            _log.info("no %s per-item scores for %s: %s", variant, task, err)
            continue
        ids = [str(r["id"]) if r.get("id") not in (None, "") else "" for r in rows]
        out.update({f"{variant}:{name}": (ids, values) for name, values in per.items()})
    return out


def _per_row(task: str, fns: Sequence[Any], rows: Sequence[Mapping[str, Any]], variant: str
             ) -> dict[str, list[float]]:

    per: dict[str, list[float]] = {}
    for row in rows:
        if variant == "as_written":
            values: dict[str, float] = {}
            for fn in fns:
                if "predictions" in _parameters(fn) and "scores" not in _parameters(fn):
                    values.update({k: float(getattr(v, "value", v)) for k, v in
                                   fn([row["target"]], [row["prediction"]]).items()})
        else:
            values = common.compute_metrics(task, [{"targets": row["target"]}],
                                            predictions=[str(row["prediction"])])
        for name, value in values.items():
            per.setdefault(name, []).append(value)
    return per


def _parameters(fn: Any) -> set[str]:

    return set(inspect.signature(fn).parameters)


def item_scores(model_dir: str, metrics: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """``{task: {metric: {"ids": [...], "targets": [...], "values": [...]}}}`` for every metric whose per-item
    scores (from the run's predictions files) average to the reported value; others are left out (the report
    then resamples seeds only and says so). ``targets`` are short digests, to align items with runs without ids."""
    out: dict[str, Any] = {}
    for task, reported in metrics.items():
        for path in _prediction_files(model_dir, task):
            try:
                rows = read_jsonl(path)
                candidates = _multiple_choice(rows)
                if candidates is None and rows and all({"target", "prediction"} <= set(r) for r in rows):
                    candidates = _by_metric_fns(task, rows)
            except Exception as err:  # noqa: BLE001 (a task not registered here, an odd file: no item scores)
                _log.info("no per-item scores from %s: %s", path, err)
                continue
            targets = [_target_key(r.get("target", r.get("id"))) for r in rows]
            for key, (ids, values) in (candidates or {}).items():
                name = key.split(":", 1)[-1]
                if name not in reported or name in out.get(task, {}) or not values:
                    continue
                mean = math.fsum(values) / len(values)
                for scale in (1.0, 100.0):
                    if math.isclose(mean * scale, float(reported[name]), rel_tol=1e-6, abs_tol=1e-6):
                        # target digests beside the ids: a run of this item set without ids still pairs
                        item_targets = targets if len(targets) == len(values) else []
                        out.setdefault(task, {})[name] = {"ids": ids, "targets": item_targets,
                                                          "values": [v * scale for v in values]}
                        break
    return out


# -------------------------------------------------------------------------------------------------- cost


def teacher_cost(model_dir: str) -> dict[str, Any]:
    """Teacher requests this run answered, from the rows it wrote: FIAT reasoning (``teacher_outputs/``) and
    teacher ICL predictions (``predictions/*-icl.jsonl``); output text in characters (the teacher's tokenizer is
    not known here), augmentation statements included (their number of calls is not recorded: ``calls`` None). Rows reused from a materialised ``teacher_dir`` are not this run's calls and not counted."""
    calls = chars_in = chars_out = 0
    teachers: set[str] = set()
    for path in glob.glob(os.path.join(glob.escape(model_dir), "teacher_outputs", "**", "*.jsonl"), recursive=True):
        for row in read_jsonl(path):
            calls += 1
            teachers.add(str(row.get("teacher", "")))
            chars_out += len(str(row.get("output", "")))
    for path in glob.glob(os.path.join(glob.escape(model_dir), "predictions", "*-icl.jsonl")):
        for row in read_jsonl(path):
            calls += 1
            chars_in += len(str(row.get("input", "")))
            chars_out += len(str(row.get("prediction", "")))
    augmented = os.path.join(model_dir, "augmented_rows.jsonl")
    if os.path.exists(augmented):  # statements the teacher wrote; one call may write several: calls unknown
        made = [r for r in read_jsonl(augmented) if r.get("source") in ("local", "global")]
        chars_out += sum(len(str(r.get("text", ""))) for r in made)
        if made and not calls:
            calls = None
    return {"calls": calls, "input_chars": chars_in, "output_chars": chars_out,
            "teachers": sorted(t for t in teachers if t)}


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
