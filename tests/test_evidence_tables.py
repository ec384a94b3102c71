"""README "Evidence": each table is what ``python -m fiat_jax.sweeps.evidence <paper>`` derives from the shipped
``evidence/<paper>/results.jsonl`` (so a figure cannot be edited by hand), and the augmented-FT claims hold."""

from __future__ import annotations

import json
import pathlib

import pytest

from fiat_jax.sweeps import augment_quality, evidence

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAPERS = ["augmented"]


@pytest.mark.parametrize("paper", PAPERS)
def test_readme_table_is_derived_from_shipped_results(paper):
    assert (ROOT / "evidence" / paper / "results.jsonl").is_file()
    assert evidence.readme_table(paper) == evidence.table(paper)


def test_readme_has_a_subsection_per_paper():
    text = (ROOT / "README.md").read_text()
    assert "## Evidence" in text
    for paper in ("augmented", "fiat", "phased"):
        assert f"<!-- evidence:{paper} -->" in text and f"<!-- /evidence:{paper} -->" in text


def _comparison(kind):
    rows = evidence.read_rows(ROOT / "evidence" / "augmented" / "results.jsonl")
    cell = lambda method: evidence.item_cell(rows, method, f"accuracy_{kind}", model="tiny")
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
