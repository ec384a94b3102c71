"""FIAT: the exact student input (golden file), ablation flags that change only what they name, inference as a
teacher call then a student call, missing pieces failing before training, and end-to-end runs on a tiny student."""
from __future__ import annotations

import dataclasses
import json

import pytest

from fiat_jax.methods.student import StudentSpec
from fiat_jax.errors import UserError
from fiat_jax.methods import fiat as F
import test_methods_helpers as MH
from test_train_helpers import compilation_cache  # noqa: F401 (fixture)

EXAMPLE = {"id": "mgsm_sw/0", "language": "sw", "inputs": "Question: Juma ana machungwa 3 na ananunua 4. Ana mangapi?",
           "targets": "7"}
REASONING = {"mgsm_sw/0": "Juma starts with 3 oranges and buys 4 more, so 3 + 4 = 7."}
INSTRUCTION = "Use the reasoning to give the final number only."
FLAGS = [f.name for f in dataclasses.fields(F.FiatAblations)]


def _render(ablations: F.FiatAblations) -> str:
    rows = F.student_rows([EXAMPLE], REASONING, instruction=INSTRUCTION, ablations=ablations)
    return "\n-----\n".join(f"INPUT:\n{r['inputs']}\nTARGET:\n{r['targets']}" for r in rows)


def test_student_input_matches_golden_file(repo_root):
    variants = {"fiat": F.FiatAblations()}
    variants.update({flag: F.FiatAblations(**{flag: True}) for flag in FLAGS})
    text = "".join(f"===== {name}\n{_render(a)}\n" for name, a in variants.items())
    golden = (repo_root / "tests" / "golden" / "methods_fiat_student_input.txt").read_text()
    assert text == golden
    assert _render(F.FiatAblations()).startswith(
        "INPUT:\nInstruction: Use the reasoning to give the final number only.\n\nInput: Question: Juma")
    # The data engineer's template function is the one used.
    from fiat_jax.data.preprocessors import fiat_input
    row = F.student_rows([EXAMPLE], REASONING, instruction=INSTRUCTION)[0]
    assert row["inputs"] == fiat_input(INSTRUCTION, EXAMPLE["inputs"], REASONING["mgsm_sw/0"])


def _setup(ablations):
    return F.student_setup(ablations, initial_params="instruct-ckpt", model_transform="lora",
                           trainable="lora-params", base_initial_params="base-ckpt")


def test_each_ablation_changes_only_what_it_names():
    from flax import nnx

    base_rows = F.student_rows([EXAMPLE], REASONING, instruction=INSTRUCTION)
    base_setup = _setup(F.FiatAblations())
    assert base_setup == F.StudentSetup("instruct-ckpt", "lora", "lora-params")
    r, i = REASONING["mgsm_sw/0"], INSTRUCTION
    for flag in FLAGS:
        ab = F.FiatAblations(**{flag: True})
        rows, setup = F.student_rows([EXAMPLE], REASONING, instruction=INSTRUCTION, ablations=ab), _setup(ab)
        if flag == "no_reasoning":
            assert setup == base_setup and len(rows) == 1
            assert rows[0]["inputs"] == base_rows[0]["inputs"].replace(f"\n\nReasoning: {r}", "")
            assert not ab.teacher_at_inference and not ab.needs_teacher
        elif flag == "no_instruction":
            assert setup == base_setup and len(rows) == 1
            assert rows[0]["inputs"] == base_rows[0]["inputs"].replace(f"Instruction: {i}\n\n", "")
            assert ab.teacher_at_inference
        elif flag == "full_finetune":
            assert rows == base_rows
            from fiat_jax.methods.student import no_transform
            assert setup == F.StudentSetup("instruct-ckpt", no_transform, nnx.Param)
        elif flag == "reasoning_as_target":
            assert setup == base_setup and len(rows) == 2
            assert rows[0]["inputs"] == base_rows[0]["inputs"].replace(f"\n\nReasoning: {r}", "")
            assert rows[0]["targets"] == "7" and rows[1]["targets"] == r
            assert rows[1]["inputs"].endswith("Reasoning:") and not ab.teacher_at_inference
        elif flag == "non_instruction_tuned_base":
            assert rows == base_rows
            assert setup == dataclasses.replace(base_setup, initial_params="base-ckpt")
        else:
            raise AssertionError(f"untested flag {flag}")
        # Only the answer rows keep the example's other fields, untouched.
        assert {k: v for k, v in rows[0].items() if k != "inputs"} == \
               {k: v for k, v in base_rows[0].items() if k != "inputs"}


def test_missing_pieces_fail_before_training(tmp_path):
    MH.register_toy()
    called = []
    try:
        with pytest.raises(UserError, match="missing teacher"):
            F.fiat_method(model_dir=str(tmp_path), mixture_or_task_name="toyadd_en", student_instruction="x",
                          student=StudentSpec(train_steps=2, task_feature_lengths=MH.TFL,
                                              train_fn=lambda **k: called.append(1)))
        with pytest.raises(UserError, match="PEFT transform"):
            F.fiat_method(model_dir=str(tmp_path), mixture_or_task_name="toyadd_en", teacher=MH.FakeTeacher(),
                          student_instruction="x", student=StudentSpec(train_steps=2, task_feature_lengths=MH.TFL,
                                                                       train_fn=lambda **k: called.append(1)))
        with pytest.raises(UserError, match="base checkpoint"):
            F.fiat_method(model_dir=str(tmp_path), mixture_or_task_name="toyadd_en", teacher=MH.FakeTeacher(),
                          ablations=F.FiatAblations(non_instruction_tuned_base=True),
                          student=StudentSpec(train_steps=2, task_feature_lengths=MH.TFL,
                                              model_transform=MH.identity_peft,
                                              train_fn=lambda **k: called.append(1)))
        assert not called
    finally:
        MH.cleanup_registry()


def test_teacher_outputs_are_materialised_and_reused(tmp_path):
    teacher = MH.FakeTeacher()
    examples = MH.toy_rows(5)
    out = F.teacher_outputs(teacher, examples, task="toyadd_en", split="train", out_dir=str(tmp_path),
                            instruction="Add.", batch_size=2)
    assert out[examples[0]["id"]] == "0 plus 1 is 1." and len(teacher.calls) == 5
    rows = [json.loads(x) for x in (tmp_path / "toyadd_en" / "train.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rows} == {e["id"] for e in examples} and rows[0]["teacher"] == "fake-teacher/v1"
    again = F.teacher_outputs(teacher, examples, task="toyadd_en", split="train", out_dir=str(tmp_path),
                              instruction="Add.")
    assert again == out and len(teacher.calls) == 5  # nothing asked twice
    # A new recipe (instruction) is a different cache entry.
    F.teacher_outputs(teacher, examples[:1], task="toyadd_en", split="train", out_dir=str(tmp_path),
                      instruction="Sum.")
    assert len(teacher.calls) == 6


@pytest.mark.usefixtures("compilation_cache")
@pytest.mark.parametrize("flag", [None, "no_reasoning", "no_instruction", "full_finetune", "reasoning_as_target"])
def test_fiat_end_to_end_on_a_tiny_student(tmp_path, flag):
    MH.register_toy()
    teacher = MH.FakeTeacher()
    ablations = F.FiatAblations(**({flag: True} if flag else {}))
    try:
        metrics = F.fiat_method(model_dir=str(tmp_path), mixture_or_task_name="toyadd_en", teacher=teacher,
                                student_instruction=None, ablations=ablations,
                                student=StudentSpec(train_steps=3, task_feature_lengths=MH.TFL,
                                                    train_fn=MH.tiny_train_fn(), eval_batch_size=8,
                                                    model_transform=MH.identity_peft, trainable=MH.head_only()))
    finally:
        MH.cleanup_registry()
    assert set(metrics) == {"toyadd_en"} and 0.0 <= metrics["toyadd_en"]["accuracy"] <= 100.0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["method"] == "fiat" and res["ablations"][flag or "no_reasoning"] == bool(flag)
    assert (res["params_trained"] == 32 * 259) == (flag != "full_finetune")  # PEFT stand-in: the head only
    preds = [json.loads(x) for p in (tmp_path / "predictions").glob("*.jsonl") for x in p.read_text().splitlines()]
    assert len(preds) == 6
    items = res["item_scores"]["toyadd_en"]["accuracy"]  # one score per evaluation item, for the paired tests
    assert len(items["values"]) == 6 and sum(items["values"]) / 6 == pytest.approx(metrics["toyadd_en"]["accuracy"])
    if flag != "no_reasoning":  # without reasoning FIAT asks the teacher nothing
        assert res["teacher_cost"]["calls"] >= 1 and res["provenance"]["teacher"] == "fake-teacher/v1"
    reasoning_prompts = [c for c in teacher.calls if "think step by step" in c]
    eval_inputs = [p["input"] for p in preds]
    if ablations.teacher_at_inference:
        # Inference = a teacher call (reasoning for each eval example) then the student reading it.
        assert len(reasoning_prompts) == 16 + 6
        assert all("\n\nReasoning: " in x for x in eval_inputs)
    else:
        assert all("Reasoning: " not in x for x in eval_inputs)
        assert len(reasoning_prompts) == (16 if flag == "reasoning_as_target" else 0)
    assert all(("Instruction: Add the two numbers." in x) == (flag != "no_instruction") for x in eval_inputs)
