"""ICL (teacher with instruction + k exemplars, predict and score) and student fine-tuning (full / PEFT hooks),
and `fiat run` comparing methods in one table."""
from __future__ import annotations

import functools
import json

import pytest

from fiat_jax.methods.student import StudentSpec
from fiat_jax.data import metrics as data_metrics
from fiat_jax.errors import UserError
from fiat_jax.methods import fiat as F
from fiat_jax.methods import finetune, icl, run
from fiat_jax.data.examples import register_examples_task
import test_methods_helpers as MH
from test_train_helpers import compilation_cache  # noqa: F401 (fixture)


def test_icl_prompt_has_instruction_and_k_exemplars():
    rows = MH.toy_rows(6)
    shots = icl.pick_exemplars(rows, 2, seed=1)
    assert shots == icl.pick_exemplars(rows, 2, seed=1) and len(shots) == 2
    prompt = icl.icl_prompt({"inputs": "2 + 2"}, shots, instruction="Add the numbers.")
    assert prompt.startswith("Add the numbers.\n\nInput: ") and prompt.endswith("Input: 2 + 2\nAnswer:")
    assert prompt.count("Input:") == 3 and f"Answer: {shots[0]['targets']}\n\n" in prompt
    with pytest.raises(UserError, match="exemplars"):
        icl.pick_exemplars(rows, 7)
    # a task input that ends in its own answer header (XCOPA's "Answer:") gets no second one
    own = icl.icl_prompt({"inputs": "Premise: x\nAnswer:"}, [{"inputs": "Premise: y\nAnswer:", "targets": "2"}],
                         instruction="Pick 1 or 2.")
    assert own == "Pick 1 or 2.\n\nInput: Premise: y\nAnswer: 2\n\nInput: Premise: x\nAnswer:"


def test_icl_predicts_and_scores(tmp_path):
    MH.register_toy()

    def score_metric(targets, scores):
        return {"mean_score": sum(scores) / len(scores)}

    register_examples_task("toyadd_sc", {"train": MH.toy_rows(8), "validation": MH.toy_rows(4, offset=5)},
                           metric_fns=[data_metrics.accuracy, score_metric])
    teacher = MH.FakeTeacher()
    try:
        with pytest.raises(UserError, match="missing teacher"):
            icl.icl_method(model_dir=str(tmp_path), mixture_or_task_name="toyadd_en")
        metrics = icl.icl_method(model_dir=str(tmp_path), mixture_or_task_name="toyadd_en", teacher=teacher, k=3)
        assert metrics == {"toyadd_en": {"accuracy": 100.0}}  # the fake teacher adds correctly
        assert all(c.count("Input:") == 4 for c in teacher.calls)
        scored = icl.icl_method(model_dir=str(tmp_path / "sc"), mixture_or_task_name="toyadd_sc", teacher=teacher,
                                k=0)
        assert scored["toyadd_sc"]["accuracy"] == 100.0 and scored["toyadd_sc"]["mean_score"] < 0
    finally:
        MH.cleanup_registry()
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["method"] == "icl" and res["params_trained"] == 0
    preds = [json.loads(x) for x in (tmp_path / "predictions" / "toyadd_en-icl.jsonl").read_text().splitlines()]
    assert len(preds) == 6 and all(p["prediction"] == p["target"] for p in preds)
    # Per-item scores for the report's paired tests, the teacher's calls, provenance.
    assert res["item_scores"]["toyadd_en"]["accuracy"]["values"] == [100.0] * 6
    assert res["teacher_cost"]["calls"] == 6 and res["provenance"]["teacher"]


def test_icl_replies_are_materialised_and_a_rerun_asks_nothing_again(tmp_path):
    """ICL's teacher calls go through teachers.materialise: replies kept under MODEL_DIR/icl_replies with the
    recipe hash, a rerun reads them back; a teacher that reads examples (simulated) still gets the prompts only."""
    MH.register_toy()
    teacher = MH.FakeTeacher()
    try:
        first = icl.icl_method(model_dir=str(tmp_path), mixture_or_task_name="toyadd_en", teacher=teacher, k=2)
        asked = len(teacher.calls)
        again = icl.icl_method(model_dir=str(tmp_path), mixture_or_task_name="toyadd_en", teacher=teacher, k=2)
        assert again == first and len(teacher.calls) == asked == 6
        rows = [json.loads(x) for x in (tmp_path / "icl_replies" / "toyadd_en" / "validation.jsonl")
                .read_text().splitlines()]
        assert len(rows) == 6 and {r["recipe"] for r in rows} == {"icl"} and all(r["recipe_hash"] for r in rows)
        preds = [json.loads(x) for x in (tmp_path / "predictions" / "toyadd_en-icl.jsonl").read_text().splitlines()]
        assert [p["input"] for p in preds] == teacher.calls

        class ReadsExamples(MH.FakeTeacher):
            identity = "reads-examples/v1"

            def generate_for_examples(self, examples, prompts, **kw):
                raise AssertionError("ICL must not hand the examples (their gold answers) to the teacher")

        other = ReadsExamples()
        icl.icl_method(model_dir=str(tmp_path / "other"), mixture_or_task_name="toyadd_en", teacher=other, k=2)
        assert len(other.calls) == 6
    finally:
        MH.cleanup_registry()


@pytest.mark.usefixtures("compilation_cache")
def test_finetune_full_and_peft_hooks(tmp_path):
    from flax import nnx

    MH.register_toy()
    transformed = []

    def freeze_all_but_head(model):
        """A stand-in PEFT transform: only logits_dense trains (marked by a custom filter)."""
        transformed.append(type(model).__name__)
        return model

    head_only = nnx.All(nnx.Param, nnx.PathContains("logits_dense"))
    try:
        with pytest.raises(UserError, match="PEFT transform"):
            finetune.finetune_method(model_dir=str(tmp_path / "x"), mixture_or_task_name="toyadd_en", mode="lora",
                                     student=StudentSpec(train_steps=2, task_feature_lengths=MH.TFL,
                                                         train_fn=MH.tiny_train_fn()))
        full = finetune.finetune_method(model_dir=str(tmp_path / "full"), mixture_or_task_name="toyadd_en",
                                        mode="full", student=StudentSpec(
                                            train_steps=3, task_feature_lengths=MH.TFL,
                                            train_fn=MH.tiny_train_fn(), eval_batch_size=8))
        peft = finetune.finetune_method(model_dir=str(tmp_path / "lora"), mixture_or_task_name="toyadd_en",
                                        mode="lora", student=StudentSpec(
                                            train_steps=3, task_feature_lengths=MH.TFL,
                                            model_transform=freeze_all_but_head, trainable=head_only,
                                            train_fn=MH.tiny_train_fn(), eval_batch_size=8))
    finally:
        MH.cleanup_registry()
    assert "accuracy" in full["toyadd_en"] and "accuracy" in peft["toyadd_en"] and transformed
    r_full = json.loads((tmp_path / "full" / "results.json").read_text())
    r_peft = json.loads((tmp_path / "lora" / "results.json").read_text())
    assert r_full["method"] == "finetune_full" and r_peft["method"] == "finetune_lora"
    assert 0 < r_peft["params_trained"] < r_full["params_trained"]
    assert list((tmp_path / "full" / "predictions").glob("*.jsonl"))
    for r in (r_full, r_peft):  # per-item scores that average to the reported accuracy; the student's size
        values = r["item_scores"]["toyadd_en"]["accuracy"]["values"]
        assert values and sum(values) / len(values) == pytest.approx(r["metrics"]["toyadd_en"]["accuracy"])
        assert r["params_total"] >= r["params_trained"] > 0


@pytest.mark.usefixtures("compilation_cache")
def test_non_instruction_tuned_base_loads_the_base_checkpoint(tmp_path):
    MH.register_toy()
    loaded = []
    try:
        F.fiat_method(model_dir=str(tmp_path), mixture_or_task_name="toyadd_en", teacher=MH.FakeTeacher(),
                      student_instruction="Add.", base_initial_params=lambda m: loaded.append("base"),
                      ablations=F.FiatAblations(non_instruction_tuned_base=True),
                      student=StudentSpec(train_steps=2, task_feature_lengths=MH.TFL,
                                          initial_params=lambda m: loaded.append("instruct"),
                                          train_fn=MH.tiny_train_fn(), model_transform=MH.identity_peft,
                                          trainable=MH.head_only(), eval_batch_size=8))
    finally:
        MH.cleanup_registry()
    assert loaded == ["base"]


@pytest.mark.usefixtures("compilation_cache")
def test_run_compares_methods_in_a_table(tmp_path, capsys):
    teacher = MH.FakeTeacher()
    student = StudentSpec(train_steps=2, task_feature_lengths=MH.TFL, train_fn=MH.tiny_train_fn(), eval_batch_size=8)
    methods = {
        "ICL": functools.partial(icl.icl_method, mixture_or_task_name="toyadd_en", teacher=teacher, k=2),
        "FT": functools.partial(finetune.finetune_method, mixture_or_task_name="toyadd_en", mode="full",
                                student=student),
        "FIAT": functools.partial(F.fiat_method, mixture_or_task_name="toyadd_en", teacher=teacher,
                                  student_instruction="Add.", ablations=F.FiatAblations(full_finetune=True),
                                  student=student),
    }
    try:
        with pytest.raises(UserError, match="exactly one"):
            run.run(model_dir=str(tmp_path))
        out = run.run(model_dir=str(tmp_path), methods=methods, register_tasks=MH.register_toy)
    finally:
        MH.cleanup_registry()
    assert list(out) == ["ICL", "FT", "FIAT"] and out["ICL"]["toyadd_en"]["accuracy"] == 100.0
    printed = capsys.readouterr().out
    assert "| method | toyadd_en | mean |" in printed and "| ICL | 100.0 | 100.0 |" in printed
    for sub in ("icl", "ft", "fiat"):
        assert (tmp_path / sub / "results.json").exists()
    assert (tmp_path / "comparison.md").exists()
