"""README "Evidence": each table is what ``python -m fiat_jax.sweeps.evidence <paper>`` derives from the shipped
``evidence/<paper>/results.jsonl`` (so a figure cannot be edited by hand), and the augmented-FT claims hold."""

from __future__ import annotations

import json
import math
import pathlib
import re

import numpy as np

import pytest

from fiat_jax.sweeps import augment_quality, evidence, evidence_phased

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAPERS = ["augmented", "fiat", "phased"]


@pytest.mark.parametrize("paper", PAPERS)
def test_readme_table_is_derived_from_shipped_results(paper):
    assert (ROOT / "evidence" / paper / "results.jsonl").is_file()
    assert evidence.readme_table(paper) == evidence.table(paper)


def test_readme_has_a_subsection_per_paper():
    text = (ROOT / "README.md").read_text()
    assert "## Evidence" in text
    for paper in ("augmented", "fiat", "phased"):
        assert f"<!-- evidence:{paper} -->" in text and f"<!-- /evidence:{paper} -->" in text


def _comparison(kind, model="tiny"):
    rows = evidence.read_rows(ROOT / "evidence" / "augmented" / "results.jsonl")
    cell = lambda method: evidence.item_cell(rows, method, f"accuracy_{kind}", model=model)
    return rows, cell


def test_reversal_curse_direction_in_shipped_results():
    """Done-when of issue 18 for the tiny student: plain FT near chance on reversals, augmented FT with the
    rule-based augmenter >= 30 points above chance, p < 0.01 paired on (seed, item)."""
    import numpy as np

    rows, cell = _comparison("reversal")
    chance = evidence.synthetic_chance()
    ft, aug = cell("FT"), cell("Aug-FT (local+global)")
    assert len(ft[0]) >= 5 and len(aug[0]) >= 5  # seeds
    ft_mean = float(np.mean([v["all"].mean() for v in ft[0].values()]))
    aug_mean = float(np.mean([v["all"].mean() for v in aug[0].values()]))
    assert ft_mean <= chance + 10  # plain FT is no better than chance (it is below it: see README)
    assert aug_mean >= chance + 30
    comp = evidence.paired(aug, ft)
    assert comp is not None and comp.diff.per_item and comp.p_value < 0.01


def test_reversal_curse_direction_in_shipped_results_for_the_smollm2_student():
    """The same Done-when for SmolLM2-135M-Instruct with LoRA: plain FT within 10 points of chance on reversals,
    local+global augmentation with the rule-based augmenter >= 30 points above it, p < 0.01 paired on
    (seed, item) and with the seeds as the units."""
    rows, cell = _comparison("reversal", model="smollm2-135m-lora")
    chance = evidence.synthetic_chance()
    ft, aug = cell("FT"), cell("Aug-FT (local+global)")
    assert len(ft[0]) >= 5 and len(aug[0]) >= 5  # seeds
    ft_mean = float(np.mean([v["all"].mean() for v in ft[0].values()]))
    aug_mean = float(np.mean([v["all"].mean() for v in aug[0].values()]))
    assert ft_mean <= chance + 10
    assert aug_mean >= ft_mean + 30 and aug_mean >= chance + 30
    comp = evidence.paired(aug, ft)
    assert comp is not None and comp.diff.per_item and comp.p_value < 0.01
    assert evidence.seed_level_p(aug, ft) < 0.01


def test_paired_difference_pairs_items_by_id():
    import numpy as np

    a = ({0: {"all": np.array([1.0, 0.0, 1.0])}}, {0: ["x", "y", "z"]})
    b = ({0: {"all": np.array([1.0, 0.0])}}, {0: ["z", "y"]})  # z and y shared; z scored 1 by both
    comp = evidence.paired(a, b)
    assert comp.diff.mean == pytest.approx(0.0)


def test_rule_based_teacher_quality_is_exact():
    from fiat_jax.methods import augmentation

    out = augment_quality.measure(teacher=augmentation.RuleBasedAugmenter(), documents=3)
    assert out["statements"] > 0
    assert out["true_pct"] == 100.0 and out["false_pct"] == 0.0
    assert out["reversal_coverage_pct"] == 100.0


def test_teacher_quality_counts_false_and_missing_reversals():
    from fiat_jax.data import synthetic

    data = synthetic.generate(seed=0, languages=("en",))
    item = next(i for i in data.items if i["kind"] == "reversal")
    wrong = next(o for k, o in enumerate(item["options"]) if k != item["answer"])
    rows = [{"source": "local", "text": f"{item['question']} {wrong}."},
            {"source": "local", "text": synthetic.item_statement(item) + "."},
            {"source": "global", "text": "The moon is made of cheese."}]
    out = augment_quality.quality(rows, data)
    assert out["statements"] == 3
    assert out["true_pct"] == pytest.approx(100 / 3) and out["false_pct"] == pytest.approx(100 / 3)
    assert 0 < out["reversal_coverage_pct"] < 100


def test_shipped_teacher_quality_files_parse():
    for path in sorted((ROOT / "evidence" / "augmented").glob("teacher_quality_*.json")):
        data = json.loads(path.read_text())
        assert {"teacher", "true_pct", "reversal_coverage_pct", "statements"} <= set(data)


# Phased instruction tuning (its table has its own builder, fiat_jax.sweeps.evidence_phased).


def _readme_block(paper: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- evidence:{paper} -->(.*?)<!-- /evidence:{paper} -->", text, re.S)
    assert match, f"README has no <!-- evidence:{paper} --> block"
    return match.group(1)


def test_phased_table_is_the_shipped_results_table():
    table = evidence_phased.phased_table(evidence.read_rows(ROOT / "evidence" / "phased" / "results.jsonl"))
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


def test_seed_level_p_ignores_item_counts_and_sees_the_seed_spread():
    """The phased table's p: seeds are the units. A difference that flips sign between training runs is not
    significant however many items each run scored (the (seed, item) sign flip calls it p < 0.001); one that
    every seed shows, with little spread between seeds, is."""
    from fiat_jax.sweeps import stats

    rng = np.random.default_rng(0)
    spread = {s: {"all": shift + rng.normal(0, 0.01, size=2000)} for s, shift in enumerate([0.3, -0.1, 0.2])}
    assert stats.sign_flip_p_value(spread) < 0.001  # item-level: 6000 units, all "significant"
    assert stats.seed_level_p_value(spread) > 0.2  # seed-level: mean 0.13, sd 0.21 over 3 seeds
    steady = {s: {"all": 0.1 + rng.normal(0, 0.01, size=40)} for s in range(3)}
    assert stats.seed_level_p_value(steady) < 0.001
    # Exact value on three seed means (items average first): t = 2 / (1 / sqrt(3)) with 2 df.
    exact = {0: {"all": np.array([1.0, 1.0])}, 1: {"all": np.array([2.0, 2.0])}, 2: {"all": np.array([3.0, 3.0])}}
    assert stats.seed_level_p_value(exact) == pytest.approx(1.0 - math.sqrt(6 / 7))  # 1 - t / sqrt(t^2 + 2)
    assert np.isnan(stats.seed_level_p_value({0: {"all": np.array([1.0])}}))


def test_phased_table_p_is_seed_level():
    """An ordering whose gain flips sign across seeds gets no small p in the phased table."""
    rng = np.random.default_rng(1)
    rows = []
    for seed, shift in enumerate([0.2, -0.15, 0.1]):
        base = rng.normal(-2.0, 0.5, size=200)
        rows += [_row("Phased IFT", seed, base + shift + rng.normal(0, 0.01, 200)),
                 _row("One-off IFT", seed, base + rng.normal(0, 0.01, 200))]
    one_off = next(line for line in evidence_phased.phased_table(rows).splitlines() if line.startswith("| One-off"))
    p = float(one_off.rstrip(" |").rsplit("|", 1)[1])
    assert p > 0.2, one_off
