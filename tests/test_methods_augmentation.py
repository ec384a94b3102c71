"""Augmented fine-tuning: prompts through the Teacher API, sentence splitting, the exact rule-based augmenter,
multiple-choice likelihood scoring, and the reversal finding of Lampinen et al. 2025 on synthetic facts."""
from __future__ import annotations

import json

import pytest

from fiat_jax.methods.student import StudentSpec
from fiat_jax.data import synthetic
from fiat_jax.errors import UserError
from fiat_jax.methods import augmentation as A
import test_methods_helpers as MH
from test_train_helpers import compilation_cache  # noqa: F401 (fixture)

DOC = "Blorn is the parent of Skav. Skav is the parent of Trim. Quax is a wug. Every wug is blue."


def test_sentence_splitting():
    assert A.split_sentences(DOC) == ["Blorn is the parent of Skav.", "Skav is the parent of Trim.",
                                      "Quax is a wug.", "Every wug is blue."]
    assert A.sentence_split_augmentation(DOC, mode="independent") == A.split_sentences(DOC)
    assert A.sentence_split_augmentation(DOC, mode="cumulative") == [
        "Blorn is the parent of Skav.", "Blorn is the parent of Skav. Skav is the parent of Trim.",
        "Blorn is the parent of Skav. Skav is the parent of Trim. Quax is a wug."]
    assert A.sentence_split_augmentation("One sentence.", mode="independent") == []
    with pytest.raises(UserError, match="sentence splitting"):
        A.sentence_split_augmentation(DOC, mode="sideways")


def test_rule_based_augmenter_through_the_teacher_prompts():
    aug = A.RuleBasedAugmenter("en")
    per_doc = A.teacher_augment(aug, [DOC], local=True, global_=False)
    assert per_doc == [["Blorn has a child called Skav.", "Skav is the child of Blorn.",
                        "Skav has a child called Trim.", "Trim is the child of Skav."]]
    assert A.teacher_augment(aug, [DOC], local=False, global_=True) == [
        ["Blorn is the grandparent of Trim.", "Quax is blue."]]
    fr = A.RuleBasedAugmenter("fr")
    assert fr.local("Blorn est plus grand que Skav.") == ["Blorn a une taille supérieure à Skav.",
                                                         "Skav est plus petit que Blorn."]


def test_augment_documents_rows_and_missing_teacher():
    docs = [{"id": "d0", "text": DOC}]
    rows = A.augment_documents(docs, teacher=A.RuleBasedAugmenter(), local=True, global_=True,
                               sentence_split="cumulative")
    assert [r["source"] for r in rows].count("document") == 1
    assert {r["source"] for r in rows} == {"document", "split", "local", "global"}
    assert rows[0] == {"id": "d0", "text": DOC, "source": "document"}
    with pytest.raises(UserError, match="teacher"):
        A.augment_documents(docs, local=True)
    assert A.parse_statements("1. First.\n- Second.\n\n* Third.") == ["First.", "Second.", "Third."]


class _RecordingTeacher:
    def __init__(self):
        self.prompts = []

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, stop=()):
        self.prompts += list(prompts)
        return ["- a statement." for _ in prompts]


def test_local_prompt_per_sentence_global_prompt_per_document():
    t = _RecordingTeacher()
    A.teacher_augment(t, [DOC, "X is a wug."], local=True, global_=True)
    local = [p for p in t.prompts if "Sentence:" in p]
    global_ = [p for p in t.prompts if "Sentence:" not in p]
    assert len(local) == 5 and len(global_) == 2
    assert all("Document:\n" + DOC in p for p in local[:4]) and "reverse direction" in local[0]
    assert "follow from the document" in global_[0]


def test_mc_rows_and_accuracy():
    items = [{"id": "i0", "kind": "reversal", "question": "Skav is the child of", "options": ["Trim", "Blorn"],
              "answer": 1},
             {"id": "i1", "kind": "rephrase", "question": "Blorn has a child called", "options": ["Skav", "Quax"],
              "answer": 0}]
    rows = A.mc_rows(items)
    assert rows[1]["targets"] == "Skav is the child of Blorn." and rows[1]["label"] == 1
    acc = A.mc_accuracy(items, [-1.0, -2.0, -1.0, -3.0])
    assert acc == {"accuracy": 0.5, "accuracy_reversal": 0.0, "accuracy_rephrase": 1.0}
    assert A.mc_rows(items, context="Some doc.")[0]["inputs"] == "Some doc.\n\nDocument:"


@pytest.mark.slow
@pytest.mark.usefixtures("compilation_cache")
def test_reversal_plain_ft_near_chance_augmented_ft_above(tmp_path):
    """The central finding: facts learnt by fine-tuning do not reverse; augmented fine-tuning makes them."""
    world = dict(num_chains=6, num_comparisons=6, num_members=0, num_categories=1, facts_per_document=3)
    train_fn = MH.tiny_train_fn(model_factory=__import__("functools").partial(
        __import__("test_train_helpers").tiny_decoder, vocab=259, d_model=64, mlp=128, max_len=64),
        batch_size=16, log_every_steps=50)
    tfl = {"inputs": 16, "targets": 48}
    try:
        student = StudentSpec(train_steps=250, task_feature_lengths=tfl, train_fn=train_fn, eval_batch_size=32)
        plain = A.augmented_finetune_method(model_dir=str(tmp_path / "plain"), student=student, local=False,
                                            global_=False, sentence_split=None, icl_baseline=True, **world)
        aug = A.augmented_finetune_method(model_dir=str(tmp_path / "aug"), student=student,
                                          teacher=A.RuleBasedAugmenter("en"), local=True, global_=True,
                                          icl_baseline=True, **world)
    finally:
        MH.cleanup_registry()
    items = [i for i in synthetic.generate(seed=0, languages=("en",), **world).items if i["kind"] == "reversal"]
    chance = 100.0 / len(items[0]["options"])
    p, a = plain["synthetic_facts_en"]["accuracy_reversal"], aug["synthetic_facts_en"]["accuracy_reversal"]
    assert p <= chance + 20.0, (p, a)
    assert a >= chance + 40.0 and a >= p + 40.0, (p, a)
    # The ICL baseline scores the student as it was before fine-tuning: the same model in both runs.
    assert plain["synthetic_facts_en"]["icl_accuracy"] == aug["synthetic_facts_en"]["icl_accuracy"]
    res = json.loads((tmp_path / "aug" / "results.json").read_text())
    assert res["method"] == "augmented_ft" and "accuracy_reversal" in res["metrics"]["synthetic_facts_en"]
    assert (tmp_path / "aug" / "predictions" / "synthetic_facts_en-mc.jsonl").exists()
    # Per-item hits read back from the scored options, one per item, averaging to the reported accuracies.
    for name in ("accuracy", "accuracy_reversal"):
        entry = res["item_scores"]["synthetic_facts_en"][name]
        assert set(entry["values"]) <= {0.0, 100.0} and len(set(entry["ids"])) == len(entry["values"])
        assert sum(entry["values"]) / len(entry["values"]) == pytest.approx(res["metrics"]["synthetic_facts_en"][name])


def test_icl_only_scores_the_untrained_student_with_the_documents_in_context(tmp_path):
    """ICL as a method of its own: nothing trained or asked of a teacher, every document before every probe (the
    inputs length grows to hold them), per-item scores in results.json for the paired report."""
    import functools

    from fiat_jax.models import build_model
    from fiat_jax.models.decoder import DecoderConfig

    cfg = DecoderConfig(vocab_size=259, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                        mlp_dim=64, rope_theta=10000.0, max_length=1024)
    world = dict(num_chains=2, num_comparisons=2, num_members=0, num_categories=1, facts_per_document=8)
    spec = StudentSpec(task_feature_lengths={"inputs": 4, "targets": 48}, eval_batch_size=8,
                       model_factory=functools.partial(build_model, config=cfg))
    try:
        out = A.augmented_finetune_method(model_dir=str(tmp_path), student=spec, icl_only=True,
                                          teacher=A.RuleBasedAugmenter("en"), **world)
    finally:
        MH.cleanup_registry()
    data = synthetic.generate(seed=0, languages=("en",), **world)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["method"] == "augmented_icl" and res["tokens_seen"] == 0 and res["teacher"] is None
    assert set(out["synthetic_facts_en"]) >= {"accuracy", "accuracy_reversal"}
    rows = [json.loads(x) for x in (tmp_path / "predictions" / "synthetic_facts_en-mc.jsonl").read_text().splitlines()]
    assert len(rows) == sum(len(i["options"]) for i in data.items)
    assert rows[0]["inputs"].startswith(data.documents[0]["text"][:40])  # the documents are in context
    assert len(res["item_scores"]["synthetic_facts_en"]["accuracy"]["values"]) == len(data.items)
    assert not (tmp_path / "student").exists() and not (tmp_path / "augmentations").exists()


def test_context_room_grows_the_inputs_within_the_model_context(caplog):
    from types import SimpleNamespace

    spec = StudentSpec(task_feature_lengths={"inputs": 4, "targets": 24})
    context = "Ann is the parent of Bo. " * 20  # 500 characters: 500 byte tokens
    roomy = A.with_context_room(spec, context, SimpleNamespace(config=SimpleNamespace(max_length=8192)))
    assert roomy.task_feature_lengths == {"inputs": 640, "targets": 24}  # 500 + prefix + 2, in steps of 128
    tight = A.with_context_room(spec, context, SimpleNamespace(config=SimpleNamespace(max_length=256)))
    assert tight.task_feature_lengths["inputs"] == 232 and "cut to 232" in caplog.text
    assert A.with_context_room(roomy, context, None) is roomy
