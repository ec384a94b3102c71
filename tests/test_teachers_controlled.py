"""The controlled (simulated) teacher: reasoning consistent with the gold answer with probability q, deterministic
per (seed, example id), labelled simulated; FIAT hands it the examples through the ExampleTeacher hook."""
from __future__ import annotations

import json
import math

import pytest

from fiat_jax.methods.student import StudentSpec
from fiat_jax.errors import UserError
from fiat_jax.methods import fiat as F
from fiat_jax.teachers import base
from fiat_jax.teachers import controlled as C
import test_methods_helpers as MH
from test_train_helpers import compilation_cache  # noqa: F401 (fixture)


def _examples(n: int) -> list[dict]:
    """Every answer type the teacher knows: numbers (MGSM), choices (XCOPA), yes/no, text spans (TyDi QA)."""
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            out.append({"id": f"mgsm/{i}", "inputs": f"Juma has {i} oranges and buys 4. How many?",
                        "targets": str(i + 4)})
        elif kind == 1:
            out.append({"id": f"xcopa/{i}", "inputs": "The man fell. What was the cause?", "choice1": "He slipped.",
                        "choice2": "He sang.", "targets": str(1 + i % 2)})
        elif kind == 2:
            out.append({"id": f"attr/{i}", "inputs": "Is the answer supported?", "targets": "yes" if i % 8 else "no"})
        else:
            out.append({"id": f"tydi/{i}", "inputs": "Context: Dar es Salaam is the largest city of Tanzania and "
                        "Dodoma is its capital. Question: What is the capital of Tanzania?", "targets": "Dodoma"})
    return out


def _named(teacher: C.ControlledTeacher, examples: list[dict]) -> list[bool]:
    replies = base.generate_for(teacher, examples, ["unused"] * len(examples), max_new_tokens=64)
    return [C.claimed_answer(r) == ex["targets"] for r, ex in zip(replies, examples)]


def test_q1_always_names_the_gold_answer_q0_never():
    examples = _examples(200)
    assert all(_named(C.ControlledTeacher(q=1.0, seed=3), examples))
    replies = base.generate_for(C.ControlledTeacher(q=0.0, seed=3), examples, [""] * 200, max_new_tokens=64)
    for reply, ex in zip(replies, examples):
        claimed = C.claimed_answer(reply)
        assert claimed is not None and claimed != ex["targets"], (reply, ex)
        if ex["id"].startswith("tydi"):
            assert ex["targets"] not in reply  # a wrong span of the context, never the gold one
    xcopa = [C.claimed_answer(r) for r, ex in zip(replies, examples) if "choice1" in ex]
    assert set(xcopa) <= {"1", "2"}  # the other option, not an invented one


def test_q_half_is_about_half_and_the_sets_are_nested():
    n, q = 1000, 0.5
    examples = _examples(n)
    k = sum(_named(C.ControlledTeacher(q=q, seed=0), examples))
    # Binomial(n, q): 5 standard deviations either side (the draws are a fixed hash, so this cannot flake).
    assert abs(k - n * q) <= 5 * math.sqrt(n * q * (1 - q)), k
    low, high = _named(C.ControlledTeacher(q=0.3, seed=0), examples), _named(C.ControlledTeacher(q=0.7, seed=0),
                                                                              examples)
    assert all(h for lo, h in zip(low, high) if lo) and sum(low) < k < sum(high)
    # Another seed draws other examples.
    assert _named(C.ControlledTeacher(q=q, seed=1), examples) != _named(C.ControlledTeacher(q=q, seed=0), examples)


def test_deterministic_across_instances_and_order():
    examples = _examples(40)
    a = base.generate_for(C.ControlledTeacher(q=0.5, seed=7), examples, [""] * 40, max_new_tokens=64)
    b = base.generate_for(C.ControlledTeacher(q=0.5, seed=7), examples[::-1], [""] * 40, max_new_tokens=64)
    assert a == b[::-1]
    assert C.unit_draw(7, "mgsm/0") == C.unit_draw(7, "mgsm/0") != C.unit_draw(8, "mgsm/0")
    # Across processes and machines too: a sha256 draw, pinned here (Python's salted hash() would break this).
    assert C.unit_draw(7, "mgsm/0") == pytest.approx(0.848669049155844, abs=1e-15)
    ex = {"id": "mgsm/3", "inputs": "Juma has 3 oranges and buys 4. How many?", "targets": "7"}
    assert C.ControlledTeacher(q=0.0, seed=7).reasoning(ex) == (
        "Let's think step by step. The question says: Juma has 3 oranges and buys 4. How many. So the answer is 10.")


def test_labelled_simulated_and_clear_errors():
    t = C.ControlledTeacher(q=0.25, seed=2)
    assert t.identity == "simulated:controlled-teacher:q=0.25:seed=2" and "simulated" in repr(t)
    with pytest.raises(UserError, match="q must be in"):
        C.ControlledTeacher(q=1.5)
    with pytest.raises(UserError, match="STUDENT_INSTRUCTION"):
        t.generate(["Write one short instruction"], max_new_tokens=8)
    with pytest.raises(UserError, match="cannot score"):
        t.score("p", ["a", "b"])
    with pytest.raises(UserError, match="no gold answer"):
        t.generate_for_examples([{"id": "x", "inputs": "?"}], ["p"], max_new_tokens=8)


@pytest.mark.slow
@pytest.mark.usefixtures("compilation_cache")
def test_fiat_with_the_controlled_teacher_records_simulated_everywhere(tmp_path):
    MH.register_toy()
    teacher = C.ControlledTeacher(q=1.0, seed=0)
    try:
        F.fiat_method(model_dir=str(tmp_path), mixture_or_task_name="toyadd_en", teacher=teacher,
                      student_instruction="Add the two numbers.",
                      student=StudentSpec(train_steps=2, task_feature_lengths=MH.TFL, train_fn=MH.tiny_train_fn(),
                                          eval_batch_size=8, model_transform=MH.identity_peft,
                                          trainable=MH.head_only()))
    finally:
        MH.cleanup_registry()
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["teacher"] == "simulated:controlled-teacher:q=1:seed=0"
    rows = [json.loads(x) for x in (tmp_path / "teacher_outputs" / "toyadd_en" / "train.jsonl").read_text()
            .splitlines()]
    assert len(rows) == 16 and all(r["teacher"].startswith("simulated:") for r in rows)
    by_id = {r["id"]: r["output"] for r in rows}
    assert all(C.claimed_answer(by_id[ex["id"]]) == ex["targets"] for ex in MH.toy_rows(16))  # the gold, via FIAT
    preds = [json.loads(x) for p in (tmp_path / "predictions").glob("*.jsonl") for x in p.read_text().splitlines()]
    assert all(C.ANSWER_LEAD in p["input"] for p in preds)  # inference reads the simulated reasoning too
