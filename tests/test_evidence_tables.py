"""The README's Evidence tables are what the shipped results files produce (one function per paper)."""
from __future__ import annotations

import pathlib
import re

import numpy as np

from fiat_jax.sweeps import evidence_phased

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_block(paper: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- evidence:{paper} -->(.*?)<!-- /evidence:{paper} -->", text, re.S)
    assert match, f"README has no <!-- evidence:{paper} --> block"
    return match.group(1)


def test_phased_table_is_the_shipped_results_table():
    table = evidence_phased.phased_table(evidence_phased.read_rows(ROOT / "evidence" / "phased" / "results.jsonl"))
    assert table in _readme_block("phased"), table


def _row(method, seed, ll, win=None):
    ids = [f"i{k}" for k in range(len(ll))]
    items = {"log_likelihood_per_token": {"ids": ids, "targets": [], "values": list(ll)}}
    if win is not None:
        items["win_rate"] = {"ids": ids[:len(win)], "targets": [], "values": list(win)}
    return {"run_id": f"{method}-{seed}", "method": method, "seed": seed,
            "metrics": {"alpaca_scored": {"log_likelihood_per_token": float(np.mean(ll))}},
            "extra": {"item_scores": {"alpaca_scored": items}}}


def test_phased_table_pairs_phased_with_each_ordering_on_items():
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(3):
        base = rng.normal(-2.0, 0.5, size=40)  # item difficulty, shared by the orderings of a seed
        rows += [_row("Phased IFT", seed, base + 0.1, win=[0.5, 0.0]),
                 _row("One-off IFT", seed, base + rng.normal(0, 0.01, 40), win=[0.0, -0.5]),
                 _row("Phased IFT (hard to easy)", seed, base + 0.1 + rng.normal(0, 0.01, 40))]
    table = evidence_phased.phased_table(rows).splitlines()
    one_off = next(line for line in table if line.startswith("| One-off"))
    reversed_ = next(line for line in table if line.startswith("| Reversed"))
    # Item pairing removes the items' spread (sd 0.5): +0.1 is clear on 120 (seed, item) pairs, 0 is not.
    assert re.search(r"\| \+0\.(09|10)\d* \[", one_off) and "< 0.001" in one_off, one_off
    assert "< 0.001" not in reversed_, reversed_
    assert table[2].startswith("| Phased IFT (easy → hard)") and "| 25.0 [" in table[2] and "| – |" in reversed_


def test_phased_table_without_judge_has_no_win_rate_column():
    rows = [_row(m, s, [-1.0 - s, -2.0, -3.0 + 0.1 * (m == "Phased IFT")]) for m in evidence_phased.ORDER
            for s in range(2)]
    table = evidence_phased.phased_table(rows)
    assert "win rate" not in table.lower() and table.splitlines()[0].count("|") == 5
