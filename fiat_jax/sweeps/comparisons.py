"""Every method against its baseline (FIAT vs FT and ICL, augmented vs plain FT, phased vs one-off, each ablation
vs full FIAT): the paired difference on the same seeds and items, its interval and a permutation p-value."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fiat_jax.sweeps import stats
from fiat_jax.sweeps.summary import (
    CONFIDENCE, ICL_LABEL, ICL_PREFIX, Summary, ordered_values, variant_bindings, variant_suffix, varying_keys)
from fiat_jax.sweeps.tables import Table, in_chunks, percent_metric

COMPARISON_METRICS_PER_TABLE = 3  # a difference, its interval and its p-value take more room


def _role(row: Mapping[str, Any]) -> str:
    """What a run is, for choosing its baseline: icl, ft, fiat, fiat_ablation, aug_plain, aug, phased,
    phased_one_off, phased_control (random or reversed phases), or other."""
    extra = row.get("extra") or {}
    kind = str(extra.get("method") or row.get("method") or "").lower()
    if kind == "icl":
        return "icl"
    if kind.startswith("finetune"):
        return "ft"
    if kind == "fiat":
        return "fiat_ablation" if any((extra.get("ablations") or {}).values()) else "fiat"
    if kind == "augmented_ft":
        return "aug" if extra.get("local") or extra.get("global_") else "aug_plain"
    if kind.startswith("phased"):
        control = extra.get("control")
        return {"single": "phased_one_off", "random": "phased_control", "reversed": "phased_control"}.get(
            control, "phased")
    return "other"


# Phased IFT (easy to hard) against each control: one-off, random phases, hard to easy.
_BASELINES = {"fiat": ("ft", "icl"), "fiat_ablation": ("fiat",), "aug": ("aug_plain", "ft", "icl"),
              "aug_plain": ("icl",), "phased": ("phased_one_off", "phased_control", "ft"),
              "phased_control": ("phased_one_off",)}


def baseline_pairs(rows: Sequence[Mapping[str, Any]], plan: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(method label, baseline label) pairs with the same model variant. Of several FIAT labels with no ablation
    flag, the shortest name is full FIAT and the others (another PEFT, ...) are its ablations."""
    varying = varying_keys(rows, plan)
    roles: dict[str, str] = {}
    variant_of: dict[str, str] = {}
    for row in rows:
        label = f"{row['method']}{variant_suffix(row, plan, varying)}"
        roles.setdefault(label, _role(row))
        variant_of[label] = json.dumps({k: variant_bindings(row, plan).get(k) for k in varying}, sort_keys=True,
                                       default=str)
        if any(str(m).startswith(ICL_PREFIX) for by in (row.get("metrics") or {}).values() for m in (by or {})):
            icl_label = f"{ICL_LABEL}{variant_suffix(row, plan, varying)}"
            roles.setdefault(icl_label, "icl")
            variant_of[icl_label] = variant_of[label]
    for variant in set(variant_of.values()):
        full = sorted((l for l, r in roles.items() if r == "fiat" and variant_of[l] == variant), key=len)
        for other in full[1:]:
            roles[other] = "fiat_ablation"
    pairs = []
    for label, role in roles.items():
        for base_role in _BASELINES.get(role, ()):
            candidates = [l for l, r in roles.items() if r == base_role and variant_of[l] == variant_of[label]]
            if base_role == "fiat":
                candidates = sorted(candidates, key=len)[:1]
            pairs += [(label, base) for base in candidates]
    return pairs


def _match(ka: tuple, kb: tuple, na: int, nb: int) -> tuple[list[int], list[int]] | None:
    """Indices of the items both runs scored: by id where both have ids, else by position where the targets
    agree item by item; None when neither says the items are the same."""
    (ids_a, tg_a), (ids_b, tg_b) = ka, kb
    if ids_a is not None and ids_b is not None:
        where_b = {i: n for n, i in enumerate(ids_b)}
        shared = [(n, where_b[i]) for n, i in enumerate(ids_a) if i in where_b]
        return ([a for a, _ in shared], [b for _, b in shared]) if shared else None
    if tg_a is not None and tg_b is not None and na == nb and tg_a == tg_b:
        return list(range(na)), list(range(nb))
    return None


def _aligned(summary: Summary, a: tuple, b: tuple) -> tuple[dict, dict]:
    """The two cells on the items both scored (see :func:`_match`), else on run-level means."""
    cell_a, cell_b = summary.cells[a], summary.cells[b]
    al_a, al_b = summary.aligns[a], summary.aligns[b]
    out_a: dict[int, dict[str, np.ndarray]] = {}
    out_b: dict[int, dict[str, np.ndarray]] = {}
    for seed in set(cell_a) & set(cell_b):
        for lang in set(cell_a[seed]) & set(cell_b[seed]):
            va, vb = cell_a[seed][lang], cell_b[seed][lang]
            ka, kb = al_a[seed][lang], al_b[seed][lang]
            match = _match(ka, kb, len(va), len(vb)) if ka is not None and kb is not None else None
            if match is not None:
                out_a.setdefault(seed, {})[lang] = va[match[0]]
                out_b.setdefault(seed, {})[lang] = vb[match[1]]
            else:
                out_a.setdefault(seed, {})[lang] = np.asarray([va.mean()])
                out_b.setdefault(seed, {})[lang] = np.asarray([vb.mean()])
    return out_a, out_b


def comparisons(summary: Summary, pairs: Sequence[tuple[str, str]]) -> dict[tuple, stats.Comparison]:
    """(method, baseline, task, size, metric) -> the paired comparison on languages averaged like the tables."""
    out = {}
    for method, base in pairs:
        for task in summary.tasks:
            for size in summary.sizes:
                for metric in summary.metrics:
                    a, b = (method, task, size, metric), (base, task, size, metric)
                    if a not in summary.cells or b not in summary.cells:
                        continue
                    ca, cb = _aligned(summary, a, b)
                    comp = stats.paired_difference(ca, cb, bounds=summary.scales[metric][1], confidence=CONFIDENCE)
                    if comp is not None:
                        out[(method, base, task, size, metric)] = comp
    return out


def comparison_tables(summary: Summary, comps: Mapping[tuple, stats.Comparison]) -> list[Table]:
    """Per task and size: one row per (method, baseline), one column per metric."""
    tables = []
    for task in summary.tasks:
        for size in summary.sizes:
            keys = [k for k in comps if k[2] == task and k[3] == size]
            for part, metrics in in_chunks(ordered_values(k[4] for k in keys), COMPARISON_METRICS_PER_TABLE):
                tables.append(_comparison_table(summary, comps, task, size, metrics, part))
    return tables


def _comparison_cell(comp: stats.Comparison | None, percent: bool) -> str:
    if comp is None:
        return "–"
    diff = comp.diff
    shown = stats.format_number(diff.mean, percent=percent)
    shown = "0.0" if shown == "-0.0" else shown
    sign = "+" if diff.mean > 0 and shown.strip("0.") else ""
    interval = "" if math.isnan(diff.low) else (
        f" [{stats.format_number(diff.low, percent=percent)}, {stats.format_number(diff.high, percent=percent)}]")
    return f"{sign}{shown}{interval}{'' if diff.per_item else '†'}, p {stats.format_p(comp.p_value)}"


def _comparison_table(summary: Summary, comps: Mapping[tuple, stats.Comparison], task: str, size: Any,
                      metrics: Sequence[str], part: str) -> Table:
    keys = [k for k in comps if k[2] == task and k[3] == size and k[4] in metrics]
    rows = []
    for method, base in ordered_values((k[0], k[1]) for k in keys):
        seeds = max(comps[k].diff.seeds for k in keys if k[0] == method and k[1] == base)
        rows.append([method, base, str(seeds)] + [
            _comparison_cell(comps.get((method, base, task, size, m)), percent_metric(summary, m)) for m in metrics])
    dagger = any("†" in c for r in rows for c in r)
    note = (f"Method − baseline on the seeds and items both scored: mean [{CONFIDENCE:.0%} paired bootstrap interval "
            f"over seeds and items], p from a two-sided sign-flip permutation test (exact, or {stats.PERMUTATIONS} "
            f"seeded permutations)." + (" † no per-item scores: the interval resamples seeds only and the test "
                                        "flips whole (seed, language) results, so p is at least "
                                        "2 / 2^(seeds × languages) (0.5 for 2 seeds of one language)."
                                        if dagger else ""))
    return Table(title=f"{task}, {summary.size_name(task, size)}: paired differences{part}",
                 header=["Method", "Baseline", "Seeds"] + list(metrics), rows=rows, text_columns=2, note=note)
