"""Phased instruction tuning: stages from difficulty scores, controls, clear errors, and stage chaining."""
from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest

from fiat_jax.methods.student import StudentSpec
from fiat_jax.errors import UserError
from fiat_jax.methods import phased
import test_methods_helpers as MH
from fiat_jax.data.examples import register_examples_task
from test_train_helpers import compilation_cache  # noqa: F401 (fixture)


def _ex(scores):
    return [{"id": f"e{i}", "score": s, "inputs": f"{i} + 1", "targets": str(i + 1)} for i, s in enumerate(scores)]


def test_stage_assignment_default_thresholds():
    stages = phased.assign_stages(_ex([1.0, 1.5, 2.0, 3.49, 3.5, 5.0]))
    assert [[e["id"] for e in s.examples] for s in stages] == [["e0"], ["e1", "e2", "e3"], ["e4", "e5"]]
    assert stages[0].high == 1.5 and stages[2].low == 3.5 and math.isinf(stages[2].high)
    assert "score < 1.5" in stages[0].label


def test_any_number_of_stages_and_controls():
    ex = _ex([1, 2, 3, 4, 5, 1, 2, 3])
    assert [len(s.examples) for s in phased.assign_stages(ex, thresholds=(2.5,))] == [4, 4]
    assert [len(s.examples) for s in phased.assign_stages(ex, thresholds=(1.5, 2.5, 3.5, 4.5))] == [2, 2, 2, 1, 1]
    single = phased.assign_stages(ex, control="single")
    assert len(single) == 1 and len(single[0].examples) == 8
    rev = phased.assign_stages(ex, thresholds=(2.5,), control="reversed")
    assert [s.index for s in rev] == [1, 0] and all(float(e["score"]) > 2.5 for e in rev[0].examples)
    rnd = phased.assign_stages(ex, thresholds=(2.5,), control="random", seed=3)
    assert [len(s.examples) for s in rnd] == [4, 4]  # same sizes
    assert sorted(e["id"] for s in rnd for e in s.examples) == sorted(e["id"] for e in ex)
    assert rnd != phased.assign_stages(ex, thresholds=(2.5,))  # dealt differently from the sorted cut


def test_each_stage_gets_its_share_of_steps():
    assert phased.proportional_steps(6, [2, 2, 2]) == [2, 2, 2]
    assert phased.proportional_steps(100, [1054, 785, 1601]) == [31, 23, 46]
    assert phased.proportional_steps(2, [1, 1, 100]) == [1, 1, 1]  # every stage trains at least once


def test_clear_errors():
    with pytest.raises(UserError, match=r"stage 1 \(score < 1.5\) has no examples"):
        phased.assign_stages(_ex([2.0, 4.0]))
    with pytest.raises(UserError, match="e1 has no difficulty score"):
        phased.assign_stages([{"id": "e0", "score": 2}, {"id": "e1"}])
    with pytest.raises(UserError, match="no training examples"):
        phased.assign_stages([])
    with pytest.raises(UserError, match="increase"):
        phased.assign_stages(_ex([1.0]), thresholds=(3.5, 1.5))


def test_stage_counts_on_alpaca_scored(shared_data_dir):
    """The published file is the hardest stage of the release only: every score is >= 3.5."""
    path = shared_data_dir / "alpaca_scored" / "en-alpaca52k-stage3.jsonl"
    scores = [float(json.loads(line)["score"]) for line in open(path)]
    assert len(scores) == 6889
    assert phased.stage_counts(scores) == [0, 0, 6889]
    with pytest.raises(UserError, match="stage 1"):
        phased.assign_stages([{"id": i, "score": s} for i, s in enumerate(scores)])
    counts = phased.stage_counts(scores, thresholds=(4.0, 4.5))
    assert counts == [sum(s < 4.0 for s in scores), sum(4.0 <= s < 4.5 for s in scores),
                      sum(s >= 4.5 for s in scores)] and sum(counts) == 6889 and min(counts) > 1000


@pytest.mark.usefixtures("compilation_cache")
def test_stages_chain_parameters(tmp_path):
    try:
        ex = _ex([1.0, 1.2, 1.0, 1.4, 2.0, 3.0, 2.5, 3.2])
        stages = phased.assign_stages(ex, thresholds=(1.5,))
        starts = []
        train_fn = MH.tiny_train_fn()

        def spy(**kwargs):
            result = train_fn(**kwargs)
            return result

        model, records = phased.train_stages(
            stages, model_dir=str(tmp_path), steps_per_stage=[3, 2], train_fn=spy,
            to_row=lambda e: {"inputs": e["inputs"], "targets": e["targets"]}, task_feature_lengths=MH.TFL,
            eval_fn=None, register_tasks=None)
        assert [r.num_examples for r in records] == [4, 4] and [r.steps for r in records] == [3, 2]
        # Stage 2 started exactly from stage 1's final parameters, and trained away from them.
        assert records[1].start_digest == records[0].end_digest
        assert records[0].start_digest != records[0].end_digest != records[1].end_digest
        assert (tmp_path / "stage_1" / "checkpoints").is_dir() and (tmp_path / "stage_2" / "checkpoints").is_dir()
        from flax import nnx
        assert phased.params_digest(nnx.state(model, nnx.Param)) == records[1].end_digest
    finally:
        MH.cleanup_registry()


def test_phased_method_fails_before_training_on_empty_stage(tmp_path):
    register_examples_task("phasedtoy", {"train": _ex([4.0, 4.5]), "validation": _ex([4.0])})
    called = []
    try:
        with pytest.raises(UserError, match="no examples"):
            phased.phased_method(model_dir=str(tmp_path), mixture_or_task_name="phasedtoy", student=StudentSpec(
                train_steps=4, task_feature_lengths=MH.TFL,
                train_fn=functools.partial(lambda **k: called.append(k), model_factory=None)))
        with pytest.raises(UserError, match="missing the student model"):
            phased.phased_method(model_dir=str(tmp_path), mixture_or_task_name="phasedtoy", thresholds=(4.2,),
                                 student=StudentSpec(train_steps=4, task_feature_lengths=MH.TFL,
                                                     train_fn=lambda **k: called.append(k)))
        assert not called
    finally:
        MH.cleanup_registry()


class _AlwaysFirst:
    def __init__(self):
        self.prompts = []

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, stop=()):
        self.prompts += list(prompts)
        return ["A" for _ in prompts]


@pytest.mark.usefixtures("compilation_cache")
def test_phased_method_end_to_end(tmp_path):
    register_examples_task("phasedtoy", {"train": _ex([1.0, 1.2, 2.0, 3.0, 4.0, 4.5]),
                                            "validation": _ex([2.0, 3.0])})
    try:
        judge = _AlwaysFirst()
        metrics = phased.phased_method(model_dir=str(tmp_path), mixture_or_task_name="phasedtoy",
                                       thresholds=(1.5, 3.5), judge=judge,
                                       student=StudentSpec(train_steps=6, task_feature_lengths=MH.TFL,
                                                           train_fn=MH.tiny_train_fn(), eval_batch_size=8))
        assert np.isfinite(metrics["phasedtoy"]["log_likelihood"])
        # Win rate against the reference responses: a judge that always says "A" is split by the two orders.
        assert metrics["phasedtoy"]["n"] == 2 and metrics["phasedtoy"]["ties"] == 2
        assert metrics["phasedtoy"]["win_rate"] == 0.0 and len(judge.prompts) == 4
        res = json.loads((tmp_path / "results.json").read_text())
        assert [s["num_examples"] for s in res["stages"]] == [2, 2, 2] and sum(s["steps"] for s in res["stages"]) == 6
        assert list((tmp_path / "predictions").glob("*.jsonl"))
    finally:
        MH.cleanup_registry()
