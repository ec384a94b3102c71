"""The comparison table's 95 % interval over items: the formula, and the table column beside each mean."""
from __future__ import annotations

import math

import pytest

from fiat_jax.methods import intervals


def test_item_interval_matches_the_normal_formula():
    sw = [100.0, 0.0, 100.0, 100.0]
    idn = [0.0, 0.0, 100.0, 0.0, 100.0, 0.0]
    got = intervals.item_interval({"sw": sw, "id": idn})
    m_sw, m_id = 75.0, 100.0 / 3
    var_sw = sum((v - m_sw) ** 2 for v in sw) / 3 / 4
    var_id = sum((v - m_id) ** 2 for v in idn) / 5 / 6
    half = 1.959963984540054 * math.sqrt(var_sw + var_id) / 2
    assert got.mean == pytest.approx((m_sw + m_id) / 2)
    assert (got.low, got.high) == pytest.approx(((m_sw + m_id) / 2 - half, (m_sw + m_id) / 2 + half))
    assert got.items == 10


def test_item_interval_shrinks_with_items_and_is_undefined_for_one():
    few = intervals.item_interval({"a": [0.0, 100.0] * 6})
    many = intervals.item_interval({"a": [0.0, 100.0] * 250})
    assert few.high - few.low > 5 * (many.high - many.low) / 2
    assert many.high - many.low < 10  # 500 items: a 5-point difference is resolved
    assert math.isnan(intervals.item_interval({"a": [100.0]}).low)
    with pytest.raises(ValueError):
        intervals.item_interval({"a": []})


def test_interval_table_adds_the_interval_beside_the_mean():
    results = {"ICL": {"x_sw": {"accuracy": 50.0}, "x_id": {"accuracy": 75.0}},
               "FT": {"x_sw": {"accuracy": 25.0}, "x_id": {"accuracy": 50.0}}}
    scores = {"ICL": {"x_sw": {"accuracy": {"values": [0.0, 100.0]}},
                      "x_id": {"accuracy": {"values": [100.0, 100.0, 0.0, 100.0]}}}}
    table = intervals.interval_table(results, scores, metric="accuracy")
    lines = table.splitlines()
    assert lines[0] == "accuracy (interval over items: 2/4 per task)"
    assert lines[1] == "| method | x_id | x_sw | mean | 95 % interval |"
    ci = intervals.item_interval({"x_sw": [0.0, 100.0], "x_id": [100.0, 100.0, 0.0, 100.0]})
    assert lines[3] == f"| ICL | 75.0 | 50.0 | 62.5 | [{ci.low:.1f}, {ci.high:.1f}] |"
    assert lines[4] == "| FT | 50.0 | 25.0 | 37.5 | - |"  # no per-item scores: no interval
