"""Pairwise win rate with a judge teacher (as in phased instruction tuning, arXiv 2406.04371).

Each comparison is asked twice, with the two responses in both orders, to cancel the judge's position bias. A
response wins a comparison when it wins in both orders, loses when it loses in both, and anything else (a split
verdict, or "tie") is a tie counted half: win rate = (wins + ties / 2) / N - 0.5, in [-0.5, 0.5].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from fiat_jax.errors import UserError
from fiat_jax.teachers import materialise as materialise_lib, recipes

# The judge's prompt is a recipe file (fiat_jax/teachers/recipes/judge_pairwise.txt); its verdict parser too.
JUDGE_RECIPE = "judge_pairwise"
parse_verdict = recipes.parse_verdict


@dataclasses.dataclass(frozen=True)
class WinRate:
    wins: int
    ties: int
    losses: int

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def win_rate(self) -> float:
        """(wins + ties / 2) / N - 0.5: 0 is parity, +0.5 always better, -0.5 always worse."""
        return (self.wins + self.ties / 2) / self.n - 0.5 if self.n else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"win_rate": self.win_rate, "wins": float(self.wins), "ties": float(self.ties),
                "losses": float(self.losses), "n": float(self.n)}


def outcome(first_order: str, second_order: str) -> int:
    """+1 / 0 / -1 for the candidate, given verdicts with the candidate as A, then as B."""
    cand = (first_order == "A") + (second_order == "B")
    base = (first_order == "B") + (second_order == "A")
    if cand == 2:
        return 1
    if base == 2:
        return -1
    return 0


def pairwise_win_rate(judge: Any, instructions: Sequence[str], candidate: Sequence[str], baseline: Sequence[str],
                      *, recipe: str = JUDGE_RECIPE, max_new_tokens: int = 8, out_dir: str | None = None,
                      task: str = "win_rate") -> tuple[WinRate, list[dict]]:
    """Win rate of ``candidate`` responses against ``baseline`` ones, judged in both orders through
    :func:`~fiat_jax.teachers.materialise.materialise` (``out_dir``: the verdicts materialised there; None: in
    memory).

    Returns the totals and one record per instruction (both verdicts and the outcome).
    """
    if judge is None:
        raise UserError("win rate: no judge teacher configured")
    if not (len(instructions) == len(candidate) == len(baseline)):
        raise UserError(f"win rate: {len(instructions)} instructions, {len(candidate)} candidate and "
                        f"{len(baseline)} baseline responses")
    if not instructions:
        raise UserError("win rate: nothing to compare")
    comparisons = []
    for i, (ins, c, b) in enumerate(zip(instructions, candidate, baseline)):
        comparisons.append({"id": f"{i}/candidate_first", "instruction": ins, "a": c, "b": b})
        comparisons.append({"id": f"{i}/candidate_second", "instruction": ins, "a": b, "b": c})
    verdicts = materialise_lib.materialise(
        judge, recipe, comparisons, out_dir=out_dir, task=task, max_new_tokens=max_new_tokens,
        replace_other=True, progress=False, what="win-rate judge").require_all("win rate")
    wins = ties = losses = 0
    records = []
    for i, ins in enumerate(instructions):
        v1, v2 = verdicts[f"{i}/candidate_first"], verdicts[f"{i}/candidate_second"]
        o = outcome(v1, v2)
        wins += o == 1
        losses += o == -1
        ties += o == 0
        records.append({"instruction": ins, "candidate": candidate[i], "baseline": baseline[i],
                        "verdict_candidate_first": v1, "verdict_candidate_second": v2, "outcome": o})
    return WinRate(wins=wins, ties=ties, losses=losses), records
