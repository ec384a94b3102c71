"""What the runs cost (student tokens and FLOPs, teacher calls, wall time), which runs failed or are missing
(with their logs), and where each result came from (provenance), as report tables."""

from __future__ import annotations

import collections
import math
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fiat_jax.sweeps.summary import actual_size, requested_size, size_label
from fiat_jax.sweeps.sweep import LOG_FILE
from fiat_jax.sweeps.tables import Table

def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return math.fsum(present) / len(present) if present else None


def training_flops(row: Mapping[str, Any]) -> float | None:
    """≈ (4·N + 2·N_trained)·tokens: forward and input-gradient passes through all N parameters, weight gradients
    only for the trained ones (6·N·tokens when everything trains)."""
    extra = row.get("extra") or {}
    tokens, total = _number(row.get("tokens_seen")), _number(extra.get("params_total"))
    trained = _number(row.get("params_trained"))
    if tokens is None or total is None:
        return None
    return (4 * total + 2 * (trained if trained is not None else total)) * tokens


def cost_table(rows: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> Table:
    """Per method and actual training-set size: wall time, student tokens and FLOPs, teacher requests."""
    groups: dict[tuple, list[Mapping[str, Any]]] = collections.defaultdict(list)
    for row, label in zip(rows, labels):
        groups[(label, actual_size(row))].append(row)

    def cost(row: Mapping[str, Any], key: str) -> float | None:
        return _number(((row.get("extra") or {}).get("teacher_cost") or {}).get(key))

    def show(value: float | None, digits: str = ",.0f") -> str:
        return "–" if value is None else format(value, digits)

    out = []
    for (label, size), items in sorted(groups.items(), key=lambda kv: (labels.index(kv[0][0]),
                                                                       kv[0][1] is None, kv[0][1] or 0)):
        flops = _mean(training_flops(r) for r in items)
        out.append([label, size_label(size, requested_size(items[0])), str(len(items)), show(_mean(_number(r.get("wall_s")) for r in items),
                                                                   ",.1f"),
                    show(_mean(_number(r.get("tokens_seen")) for r in items)),
                    show(_mean(_number(r.get("params_trained")) for r in items)),
                    "–" if flops is None else f"{flops:.2e}",
                    show(_mean(cost(r, "calls") for r in items)),
                    show(_mean(cost(r, "output_chars") for r in items))])
    return Table(title="Cost per run", header=["Method", "Size", "Runs", "Wall time (s)", "Student tokens",
                                               "Params trained", "Training FLOPs ≈", "Teacher calls",
                                               "Teacher output (chars)"], rows=out,
                 note=("Means over the runs of each cell. FLOPs ≈ (4·N + 2·N_trained) × student tokens. Teacher "
                       "calls are the requests the run itself sent (reasoning read from a materialised teacher "
                       "directory costs nothing here); teacher output in characters, the teacher's tokenizer "
                       "being unknown to the report."))


def failed_runs(plan: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], results_dir: pathlib.Path) -> Table:
    """Planned runs without a results row: failed (a log exists) or never started, with the log's path."""
    finished = {row["run_id"] for row in rows}
    out = []
    for run in plan.get("runs", []):
        run_id = run.get("run_id")
        if run_id in finished:
            continue
        log = results_dir / "runs" / str(run_id) / LOG_FILE
        params = run.get("params") or {}
        out.append([str(run_id), str(run.get("method", "")), str(params.get(plan.get("size_binding",
                                                                                    "NUM_TRAIN_EXAMPLES"), "")),
                    str(params.get(plan.get("seed_binding", "SEED"), "")),
                    "failed" if log.is_file() else "not run", str(log) if log.is_file() else "–"])
    return Table(title="Failed or missing runs", header=["Run", "Method", "Size asked", "Seed", "Status", "Log"],
                 rows=out, text_columns=6, note="Runs of the plan (sweep.json) that left no row in results.jsonl.")


def provenance_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """Each distinct value of each provenance field, with how many runs recorded it."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in rows:
        prov = (row.get("extra") or {}).get("provenance")
        if not isinstance(prov, Mapping):
            counts["(none recorded)"]["runs without provenance"] += 1
            continue
        commit = prov.get("git_commit") or "unknown"
        counts["git commit"][f"{commit[:12]}{' (dirty)' if prov.get('git_dirty') else ''}"] += 1
        packages = prov.get("packages") or {}
        counts["packages"][", ".join(f"{k}=={v}" for k, v in sorted(packages.items())) or "unknown"] += 1
        counts["teacher"][str(prov.get("teacher") or "none")] += 1
        counts["hardware"][str(prov.get("hardware") or "unknown")] += 1
        counts["python"][str(prov.get("python") or "unknown")] += 1
    for row in rows:
        counts["config hash (sweep)"][str(row.get("config_hash") or "unknown")] += 1
    out = []
    for field, values in counts.items():
        if field == "config hash (sweep)" and len(values) > 3:
            out.append([field, f"{len(values)} distinct (one per run; see runs.csv)", str(sum(values.values()))])
            continue
        out += [[field, value, str(n)] for value, n in values.most_common()]
    return Table(title="Provenance", header=["Field", "Value", "Runs"], rows=out, text_columns=2,
                 note="Recorded by each run when it finished (results.json 'provenance').")
