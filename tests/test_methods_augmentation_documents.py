"""Augmented fine-tuning on the user's own documents: the documents and probe files (formats, one-line errors
naming file, line and field), the shipped handbook example, and the method end to end through its gin files with
a tiny student and the replay teacher serving the example's recorded augmentations."""
from __future__ import annotations

import collections
import functools
import json

import gin
import pytest

from fiat_jax.methods.student import StudentSpec
from fiat_jax import gin_utils
from fiat_jax.data import documents as D
from fiat_jax.errors import UserError
from fiat_jax.methods import augmentation as A
from fiat_jax.teachers import replay
import test_methods_helpers as MH
from test_train_helpers import compilation_cache  # noqa: F401 (fixture)


@pytest.fixture
def handbook(repo_root):
    return repo_root / "examples" / "handbook"


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_the_shipped_handbook_reads_and_never_states_its_reversals(handbook):
    docs = D.read_documents(str(handbook / "documents.jsonl"))
    items = D.read_probes(str(handbook / "probes.jsonl"))
    assert len(docs) == 4 and D.documents_task_name(docs) == "documents_en"
    kinds = collections.Counter(i["kind"] for i in items)
    assert set(kinds) == {"reversal", "rephrase", "syllogism", "held_out"} and kinds["reversal"] >= 5
    corpus = " ".join(d["text"] for d in docs)
    for item in items:
        statement = f"{item['question']} {item['options'][item['answer']]}"
        if item["kind"] in ("reversal", "held_out", "syllogism"):
            assert statement not in corpus, statement  # else the probe tests nothing
    # Every sentence of every page has its recorded augmentation (the replay teacher would stop otherwise).
    teacher = replay.replay_teacher(path=str(handbook / "augmentations.jsonl"))
    per_doc = A.teacher_augment(teacher, [d["text"] for d in docs], ids=[d["id"] for d in docs])
    assert "The Tidewater depot is headed by Ilse Marrow." in per_doc[0] and teacher.replayed == 20
    # What the augmentations add is what the reversal, syllogism and rephrase probes ask; no held-out fact.
    augmented = {s.rstrip(".") for statements in per_doc for s in statements}
    for item in items:
        statement = f"{item['question']} {item['options'][item['answer']]}"
        assert (statement in augmented) == (item["kind"] != "held_out"), statement
    assert D.documents_task_name([{"language": "en"}, {"language": "de"}]) == "documents"


@pytest.mark.parametrize("name, rows, message", [
    ("documents", [{"id": "a", "text": "One."}, {"id": "b"}], r"docs.jsonl:2: missing field 'text'"),
    ("documents", [{"text": "One."}], r"docs.jsonl:1: missing field 'id'"),
    ("documents", [{"id": "a", "text": "One."}, {"id": "a", "text": "Two."}],
     r"docs.jsonl:2: field 'id': 'a' already used on line 1"),
    ("documents", [{"id": "a", "text": ""}], r"docs.jsonl:1: field 'text' must be a non-empty string"),
    ("documents", ["{oops"], r"docs.jsonl:1: not JSON"),
    ("probes", [{"prompt": "X is", "options": ["a", "b"], "answer": "c", "kind": "reversal"}],
     r"probes.jsonl:1: field 'answer': 'c' is not one of the options \['a', 'b'\]"),
    ("probes", [{"prompt": "X is", "options": ["a", "b"], "kind": "reversal"}],
     r"probes.jsonl:1: missing field 'answer'"),
    ("probes", [{"prompt": "X is", "options": ["a", "b"], "answer": "a"}], r"probes.jsonl:1: missing field 'kind'"),
    ("probes", [{"prompt": "X is", "options": "a", "answer": "a", "kind": "k"}],
     r"probes.jsonl:1: field 'options' must be a list of at least 2"),
    ("probes", [{"options": ["a", "b"], "answer": "a", "kind": "k"}], r"probes.jsonl:1: missing field 'prompt'"),
    ("probes", [], r"probes.jsonl has no rows"),
])
def test_bad_rows_are_one_line_naming_file_line_and_field(tmp_path, name, rows, message):
    if name == "documents":
        with pytest.raises(UserError, match=message):
            D.read_documents(_write(tmp_path / "docs.jsonl", rows))
    else:
        with pytest.raises(UserError, match=message):
            D.read_probes(_write(tmp_path / "probes.jsonl", rows))


def test_probes_become_items_scored_like_the_synthetic_ones(tmp_path):
    items = D.read_probes(_write(tmp_path / "p.jsonl", [
        {"prompt": "The depot is headed by", "options": ["Ilse", "Ravi"], "answer": "Ravi", "kind": "reversal"},
        {"id": "own", "prompt": "Claims go to", "options": ["Nadia.", "Orla."], "answer": "Nadia.", "kind": "k"}]))
    assert items[0] == {"id": "probe1", "language": "", "kind": "reversal", "question": "The depot is headed by",
                        "options": ["Ilse", "Ravi"], "answer": 1}
    rows = A.mc_rows(items)
    assert [r["targets"] for r in rows] == ["The depot is headed by Ilse.", "The depot is headed by Ravi.",
                                            "Claims go to Nadia.", "Claims go to Orla."]  # one full stop
    assert items[1]["id"] == "own"


def test_method_checks_its_sources_before_training(tmp_path, handbook):
    kwargs = dict(model_dir=str(tmp_path), local=False, global_=False,
                  student=StudentSpec(train_steps=1, task_feature_lengths={"inputs": 8, "targets": 8},
                                      train_fn=MH.tiny_train_fn(), eval_batch_size=32))
    with pytest.raises(UserError, match="a probes file needs a documents file"):
        A.augmented_finetune_method(probes_file=str(handbook / "probes.jsonl"), **kwargs)
    with pytest.raises(UserError, match="num_train_examples=9 documents asked for, the documents file"):
        A.augmented_finetune_method(documents_file=str(handbook / "documents.jsonl"), num_train_examples=9,
                                    **kwargs)
    with pytest.raises(UserError, match="synthetic-world options"):
        A.augmented_finetune_method(documents_file=str(handbook / "documents.jsonl"), num_chains=3, **kwargs)
    assert not (tmp_path / "student").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("compilation_cache")
def test_handbook_end_to_end_through_the_gin_files(tmp_path, handbook):
    """methods/augmented_ft.gin + runs/augmented_documents.gin + teachers/replay.gin, a tiny byte-level student."""
    import test_train_helpers as H
    from fiat_jax.methods import run

    gin.external_configurable(functools.partial(H.tiny_decoder, vocab=259, d_model=32, mlp=64, max_len=128),
                              name="tiny_documents_student", module="documents_tests")
    gin.add_config_file_search_path(str(gin_utils.DEFAULT_GIN_DIR))
    for f in ("methods/augmented_ft.gin", "runs/augmented_documents.gin", "teachers/replay.gin"):
        gin.parse_config_file(str(gin_utils.DEFAULT_GIN_DIR / f))
    gin.parse_config([
        "StudentSpec.model_factory = @tiny_documents_student", f"MODEL_DIR = '{tmp_path}'", "SEED = 1", "TRAIN_STEPS = 4",
        "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 96}", "train.batch_size = 8", "train.mesh = 'data=1'",
        "train.num_devices = 1", "train.progress_bar = False", "train.tensorboard = False",
        "train.async_checkpointing = False", "run.register_tasks = None",
        "augmented_finetune_method.icl_baseline = False",
        f"DOCUMENTS_FILE = '{handbook / 'documents.jsonl'}'", f"PROBES_FILE = '{handbook / 'probes.jsonl'}'",
        f"REPLAY_FILE = '{handbook / 'augmentations.jsonl'}'"])
    try:
        out = run.run()
    finally:
        MH.cleanup_registry()
    res = json.loads((tmp_path / "results.json").read_text())
    metrics = res["metrics"]["documents_en"]
    assert out["run"]["documents_en"] == metrics
    assert {"accuracy", "accuracy_reversal", "accuracy_syllogism", "accuracy_rephrase",
            "accuracy_held_out"} <= set(metrics)
    assert all(0.0 <= v <= 100.0 for v in metrics.values())
    assert res["teacher"].startswith("replay:hand-written-example:") and res["method"] == "augmented_ft"
    assert res["documents_file"].endswith("documents.jsonl") and res["probes_file"].endswith("probes.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "augmented_rows.jsonl").read_text().splitlines()]
    sources = collections.Counter(r["source"] for r in rows)
    assert sources["document"] == 4 and sources["split"] == 16 and sources["local"] == 24 and sources["global"] == 6
    assert {"id": "handbook-01/local0", "text": "Ilse Marrow runs the Tidewater depot.", "source": "local"} in rows
    preds = (tmp_path / "predictions" / "documents_en-mc.jsonl").read_text().splitlines()
    assert len(preds) == 16 * 4


@pytest.mark.slow
@pytest.mark.usefixtures("compilation_cache")
def test_documents_without_probes_train_and_score_nothing(tmp_path, handbook):
    """Plain fine-tuning on the documents alone: a trained student and its rows, no metrics invented."""
    try:
        metrics = A.augmented_finetune_method(
            model_dir=str(tmp_path), local=False, global_=False, sentence_split=None,
            documents_file=str(handbook / "documents.jsonl"), icl_baseline=True,
            student=StudentSpec(train_steps=2, task_feature_lengths={"inputs": 16, "targets": 96},
                                train_fn=MH.tiny_train_fn(), eval_batch_size=32))
    finally:
        MH.cleanup_registry()
    assert metrics == {"documents_en": {}}
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["metrics"] == {"documents_en": {}} and res["probes_file"] is None and res["teacher"] is None
    assert res["tokens_seen"] > 0 and not (tmp_path / "predictions").exists()
    rows = [json.loads(x) for x in (tmp_path / "augmented_rows.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows] == ["document"] * 4
