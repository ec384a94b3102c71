"""Pairwise win rate with a judge teacher: both orders, a split verdict or tie counts half."""
from __future__ import annotations

import pytest

from fiat_jax.errors import UserError
from fiat_jax.methods import winrate


class ScriptedJudge:
    """Prefers the longer response, except on 'tie' instructions; records both orders it was asked."""

    def __init__(self, position_bias: bool = False):
        self.prompts: list[str] = []
        self.position_bias = position_bias

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, stop=()):
        out = []
        for p in prompts:
            self.prompts.append(p)
            if self.position_bias:
                out.append("A")
                continue
            a = p.split("Response A:\n")[1].split("\n\nResponse B:")[0]
            b = p.split("Response B:\n")[1].split("\n\nBetter response:")[0]
            if "tie" in p.split("Instruction:\n")[1].split("\n")[0]:
                out.append("It is a tie.")
            else:
                out.append("A" if len(a) > len(b) else "B")
        return out


def test_win_rate_formula_and_both_orders():
    judge = ScriptedJudge()
    ins = ["one", "two", "three (tie)", "four"]
    cand = ["long answer", "long answer", "x", "s"]
    base = ["short", "short", "y", "much longer answer"]
    totals, records = winrate.pairwise_win_rate(judge, ins, cand, base)
    assert (totals.wins, totals.ties, totals.losses) == (2, 1, 1)
    assert totals.win_rate == pytest.approx((2 + 0.5) / 4 - 0.5)
    assert len(judge.prompts) == 8  # every comparison asked in both orders
    assert "Response A:\nlong answer" in judge.prompts[0] and "Response B:\nlong answer" in judge.prompts[1]
    assert [r["outcome"] for r in records] == [1, 1, 0, -1]


def test_position_bias_cancels_to_ties():
    totals, _ = winrate.pairwise_win_rate(ScriptedJudge(position_bias=True), ["a", "b"], ["x", "y"], ["p", "q"])
    assert totals.ties == 2 and totals.win_rate == 0.0


def test_parse_and_errors():
    assert winrate.parse_verdict("B is better") == "B"
    assert winrate.parse_verdict("Response A.") == "A"
    assert winrate.parse_verdict("???") == "tie"
    assert winrate.parse_verdict("It is a tie.") == "tie"
    assert winrate.parse_verdict("a: B") == "B"
    with pytest.raises(UserError, match="judge"):
        winrate.pairwise_win_rate(None, ["a"], ["b"], ["c"])
    with pytest.raises(UserError, match="instructions"):
        winrate.pairwise_win_rate(ScriptedJudge(), ["a"], ["b", "c"], ["c"])
