"""The report compares phased instruction tuning (easy to hard) with each control: one-off, random, reversed."""
from __future__ import annotations

from fiat_jax.sweeps import report as report_lib


def _row(method, control):
    return {"run_id": method, "method": method, "metrics": {"en": {"log_likelihood_per_token": -2.0}},
            "extra": {"method": "phased_ift", "control": control}}


def test_phased_is_paired_with_one_off_random_and_reversed_phases():
    rows = [_row("One-off IFT", "single"), _row("Phased IFT", "none"), _row("Random", "random"),
            _row("Reversed", "reversed")]
    pairs = set(report_lib.baseline_pairs(rows, {}))
    assert {("Phased IFT", "One-off IFT"), ("Phased IFT", "Random"), ("Phased IFT", "Reversed")} <= pairs
    assert {("Random", "One-off IFT"), ("Reversed", "One-off IFT")} <= pairs  # does staging alone help?
    assert not any(base == "Phased IFT" for _, base in pairs)
