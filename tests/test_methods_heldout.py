"""Held-out response log-likelihood per token, item by item (phased instruction tuning's judge-free metric)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flax import nnx

import test_methods_helpers as MH
import test_train_helpers as H
from fiat_jax.methods.student import StudentSpec
from fiat_jax.methods import heldout, phased, student
from fiat_jax.methods.examples import register_examples_task
from test_train_helpers import compilation_cache  # noqa: F401 (fixture)


def test_per_token_is_total_over_tokens_and_items_average_to_it():
    scored = heldout.ResponseScores(ids=("a", "b"), sums=(-1.0, -9.0), tokens=(1, 3))
    assert scored.per_token == pytest.approx(-2.5)  # not the mean of ratios (-1 and -3: -2)
    assert scored.per_response == pytest.approx(-5.0)
    assert np.mean(scored.item_values()) == pytest.approx(scored.per_token)
    assert heldout.ResponseScores((), (), ()).item_values() == [] and math.isnan(heldout.ResponseScores(
        (), (), ()).per_token)


def test_scores_agree_with_the_shared_scorer_and_count_target_tokens():
    rows = [{"id": "x", "inputs": "2 + 2", "targets": "4"}, {"id": "y", "inputs": "10 + 5", "targets": "fifteen"},
            {"id": "z", "inputs": "1 + 0", "targets": "a much longer response than fits"}]
    with nnx.use_eager_sharding(False):
        model = H.tiny_decoder(rngs=nnx.Rngs(0), vocab=259, d_model=32, mlp=64, max_len=112)
    try:
        scored = heldout.score_responses(model, rows, task_feature_lengths=MH.TFL, batch_size=2)
        reference = student.score_rows(model, rows, task_feature_lengths=MH.TFL, batch_size=4)
    finally:
        MH.cleanup_registry(prefixes=("heldout", "methods_"))
    assert scored.ids == ("x", "y", "z")
    assert np.allclose(scored.sums, reference, rtol=1e-5, atol=1e-4)
    # Byte vocabulary: one token per byte plus EOS, truncated to the target length (8).
    assert scored.tokens == (2, 8, 8)
    assert scored.per_token == pytest.approx(sum(reference) / 18, rel=1e-5)


class _WinLossTie:
    """A judge whose verdicts make the first item a win, the second a loss and the third a tie."""

    def __init__(self):
        self.prompts = []

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, stop=()):
        self.prompts += list(prompts)
        # Candidate is A in even prompts, B in odd ones: "A" then "B" is a candidate win, "B" then "A" a loss.
        pattern = ["A", "B", "B", "A", "A", "A"]
        return [pattern[i % len(pattern)] for i in range(len(prompts))]


@pytest.mark.usefixtures("compilation_cache")
def test_phased_run_writes_per_item_scores_that_reproduce_its_metrics(tmp_path):
    train = [{"id": f"t{i}", "score": s, "inputs": f"{i} + 1", "targets": str(i + 1)}
             for i, s in enumerate([1.0, 1.2, 2.0, 3.0, 4.0, 4.5])]
    validation = [{"id": f"v{i}", "score": 2.0, "inputs": f"{i} + 2", "targets": str(i + 2)} for i in range(4)]
    register_examples_task("phasedtoy", {"train": train, "validation": validation})
    try:
        judge = _WinLossTie()
        metrics = phased.phased_method(model_dir=str(tmp_path), mixture_or_task_name="phasedtoy",
                                       thresholds=(1.5, 3.5), judge=judge, num_judge_examples=3,
                                       student=StudentSpec(train_steps=3, task_feature_lengths=MH.TFL,
                                                           train_fn=MH.tiny_train_fn(), eval_batch_size=8))
    finally:
        MH.cleanup_registry()
    m = metrics["phasedtoy"]
    res = json.loads((tmp_path / "results.json").read_text())
    items = res["item_scores"]["phasedtoy"]
    per_token = items[heldout.METRIC]
    assert per_token["ids"] == ["v0", "v1", "v2", "v3"]
    assert np.mean(per_token["values"]) == pytest.approx(m[heldout.METRIC], rel=1e-9)
    assert np.mean(items["log_likelihood"]["values"]) == pytest.approx(m["log_likelihood"], rel=1e-9)
    # Targets "2".."5": one byte + EOS each, so per token is per response / 2.
    assert res["eval_response_tokens"] == 8 and m[heldout.METRIC] == pytest.approx(m["log_likelihood"] / 2)
    # Win rate on the first 3 items only: win, loss, tie.
    assert len(judge.prompts) == 6 and m["n"] == 3
    assert items["win_rate"] == {"ids": ["v0", "v1", "v2"], "targets": [], "values": [0.5, -0.5, 0.0]}
    assert m["win_rate"] == pytest.approx(np.mean(items["win_rate"]["values"]))
