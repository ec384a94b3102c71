"""seqio tasks end to end: TFDS preparation (once per session), exact counts, caps, fixtures, teacher joins, CLI."""

import json

import pytest
import seqio

import tasks
from fiat_jax import tasks_command
from fiat_jax.errors import UserError


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(autouse=True)
def _clean_registry():
    seqio.TaskRegistry.reset()
    seqio.MixtureRegistry.reset()
    yield
    seqio.TaskRegistry.reset()
    seqio.MixtureRegistry.reset()


def _ids(name, split, **kw):
    ds = seqio.get_mixture_or_task(name).get_dataset(sequence_length=None, split=split, shuffle=False,
                                                     use_cached=False, **kw)
    return [ex["id"].decode() for ex in ds.as_numpy_iterator()]


def test_registration_is_explicit_and_idempotent(shared_data_dir, tfds_dir):
    assert "mgsm_en" not in seqio.TaskRegistry.names()  # importing tasks registered nothing
    names = tasks.register_all(data_dir=str(shared_data_dir), tfds_dir=tfds_dir)
    again = tasks.register_all(data_dir=str(shared_data_dir), tfds_dir=tfds_dir)
    assert names == again and len(names) == len(set(names))
    for name in ("mgsm_sw", "xcopa_qu", "xcopa_mc_qu", "tydiqa_goldp_te", "alpaca_scored", "xor_attriqa_bn",
                 "xtreme_up_qa_in_lang_sw", "synthetic_facts_fr"):
        assert name in names
    mixtures = seqio.MixtureRegistry.names()
    assert {"mgsm", "xcopa", "tydiqa_goldp", "lang_sw", "synthetic_facts"} <= set(mixtures)
    assert {t.name for t in seqio.get_mixture_or_task("lang_sw").tasks} >= {"mgsm_sw", "xcopa_sw",
                                                                             "tydiqa_goldp_sw"}


def test_exact_counts_through_tfds(shared_data_dir, tfds_dir):
    tasks.register_all(data_dir=str(shared_data_dir), tfds_dir=tfds_dir)
    mgsm = {s: _ids("mgsm_bn", s) for s in ("train", "validation", "test", "full")}
    assert {s: len(v) for s, v in mgsm.items()} == {"train": 125, "validation": 25, "test": 100, "full": 250}
    assert sorted(mgsm["train"] + mgsm["validation"] + mgsm["test"]) == sorted(mgsm["full"])
    # XCOPA: a seeded 80/20 carve-out of the published 100 validation items, the published 500 test items.
    assert [len(_ids("xcopa_th", s)) for s in ("train", "validation", "test")] == [80, 20, 500]
    assert len(_ids("xcopa_mc_th", "validation")) == 40  # two scored rows per item
    with open(shared_data_dir / "tydiqa_goldp" / "bengali_dev.json", encoding="utf-8") as f:
        n = sum(len(p["qas"]) for a in json.load(f)["data"] for p in a["paragraphs"])
    assert len(_ids("tydiqa_goldp_bn", "full")) == n == 113


def test_num_train_examples_cap_is_nested(shared_data_dir, tfds_dir):
    tasks.register_all(data_dir=str(shared_data_dir), tfds_dir=tfds_dir, num_train_examples=10)
    small = set(_ids("mgsm_en", "train"))
    assert len(_ids("mgsm_en", "test")) == 100  # the cap touches train only
    tasks.register_all(data_dir=str(shared_data_dir), tfds_dir=tfds_dir, num_train_examples=100)
    big = set(_ids("mgsm_en", "train"))
    assert len(small) == 10 and len(big) == 100 and small < big


def test_fixture_sources_through_tasks(repo_root, tfds_dir):
    data = str(repo_root / "tests" / "fixtures" / "data")
    tasks.register_all(data_dir=data, tfds_dir=tfds_dir, xtreme_up_languages=("sw",))
    task = seqio.get_mixture_or_task("xor_attriqa_bn")
    rows = list(task.get_dataset(sequence_length=None, split="test", shuffle=False).as_numpy_iterator())
    assert sorted(r["targets_pretokenized"] for r in rows) == [b"no", b"yes", b"yes"]
    assert len(_ids("xtreme_up_qa_cross_lang_sw", "test")) == 1
    qa = seqio.get_mixture_or_task("xtreme_up_qa_in_lang_sw")
    ex = next(qa.get_dataset(sequence_length=None, split="test", shuffle=False).as_numpy_iterator())
    assert qa.postprocess_fn(b"x", example=ex, is_target=True) == [ex["targets_pretokenized"].decode()]
    with pytest.raises(UserError, match=r"xor_attriqa/in-language/fi\.jsonl"):
        _ids("xor_attriqa_fi", "test")


def test_teacher_task_joins_by_id_and_records_metadata(shared_data_dir, tfds_dir, tmp_path):
    tasks.register_all(data_dir=str(shared_data_dir), tfds_dir=tfds_dir)
    ids = _ids("mgsm_sw", "validation")
    out_dir = tmp_path / "teacher" / "mgsm_sw"
    out_dir.mkdir(parents=True)
    with open(out_dir / "validation.jsonl", "w", encoding="utf-8") as f:
        for i in ids[:-1]:  # one example without a teacher output
            f.write(json.dumps({"id": i, "task": "mgsm_sw", "split": "validation", "recipe": "fiat_cot",
                                "recipe_hash": "abc123", "teacher": "local:smollm2", "output": f"reason {i}"}) + "\n")
    names = tasks.register_all(data_dir=str(shared_data_dir), tfds_dir=tfds_dir, teacher_dir=str(tmp_path / "teacher"),
                               fiat_instruction="Solve it.")
    assert "mgsm_teacher_sw" in names
    from tasks.teacher_tasks import TEACHER_METADATA
    assert TEACHER_METADATA["mgsm_teacher_sw"]["validation"]["recipe_hash"] == "abc123"
    task = seqio.get_mixture_or_task("mgsm_teacher_sw")
    rows = list(task.get_dataset(sequence_length=None, split="validation", shuffle=False).as_numpy_iterator())
    assert len(rows) == len(ids) - 1
    first = rows[0]
    text = first["inputs_pretokenized"].decode()
    assert text.startswith("Instruction: Solve it.\n\nInput: Question: ")
    assert text.endswith(f"Reasoning: reason {first['id'].decode()}\n\nAnswer:")
    assert first["teacher"] == b"local:smollm2" and first["recipe_hash"] == b"abc123"
    tasks.register_all(data_dir=str(shared_data_dir), tfds_dir=tfds_dir, teacher_dir=str(tmp_path / "teacher"),
                       strict=True)
    with pytest.raises(UserError, match="no teacher output for 1 of 25"):
        _ids("mgsm_teacher_sw", "validation")


def test_tasks_cli_list_and_show(shared_data_dir, tfds_dir, capsys):
    import gin

    gin.bind_parameter("register_all.data_dir", str(shared_data_dir))
    gin.bind_parameter("register_all.tfds_dir", tfds_dir)
    tasks_command.tasks_main(action="list", name=None, split="train", n=3)
    listed = capsys.readouterr().out
    assert "mgsm_en\tsplits=train:125,validation:25,test:100,full:250\n" in listed and "lang_sw\tmixture" in listed
    assert ("xcopa_sw\tsplits=train:80,validation:20,test:500 from train: seeded 80% of published validation; "
            "validation: seeded 20% of published validation; test: published test\n") in listed
    assert "synthetic_docs_en\tsplits=train:12\n" in listed
    assert "xor_attriqa_bn\tsplits=train,validation,test (unavailable: " in listed  # not in ../shared/data
    tasks_command.tasks_main(action="show", name="mgsm_en", split="train", n=2)
    shown = capsys.readouterr().out
    assert shown.count("--- mgsm_en [train]") == 2 and "inputs (" in shown and "targets (" in shown
    with pytest.raises(UserError, match="no task or mixture named 'nope'"):
        tasks_command.tasks_main(action="show", name="nope", split="train", n=1)
    with pytest.raises(UserError, match="has no split 'dev'"):
        tasks_command.tasks_main(action="show", name="mgsm_en", split="dev", n=1)


def test_xcopa_train_is_carved_out_of_validation_disjoint_and_capped(shared_data_dir, tfds_dir):
    tasks.register_all(data_dir=str(shared_data_dir), tfds_dir=tfds_dir, num_train_examples=30)
    train, val, test = (_ids("xcopa_vi", s) for s in ("train", "validation", "test"))
    assert len(train) == 30 and len(val) == 20 and len(test) == 500
    assert not set(train) & set(val) and not set(train) & set(test)
    # Carved from the published validation file (ids keep its name), by a seed: another seed, another carve.
    assert all(i.startswith("xcopa/vi/validation/") for i in train + val)
    tasks.register_all(data_dir=str(shared_data_dir), tfds_dir=tfds_dir, seed=1)
    assert set(_ids("xcopa_vi", "validation")) != set(val)


def test_synthetic_tasks_are_deterministic_and_scored_by_option(shared_data_dir, tfds_dir):
    from fiat_jax.data import metrics

    tasks.register_all(data_dir=str(shared_data_dir), tfds_dir=tfds_dir, synthetic_seed=3)
    first = _ids("synthetic_facts_es", "test")
    assert first == _ids("synthetic_facts_es", "test") and len(first) > 50
    mc = list(seqio.get_mixture_or_task("synthetic_facts_mc_es").get_dataset(
        sequence_length=None, split="test", shuffle=False).as_numpy_iterator())
    assert len(mc) == 4 * len(first)
    labels = [int(r["label"]) for r in mc]
    # Scoring the right option highest gives 100 %, a constant score picks option 0 (chance-level).
    assert metrics.mc_accuracy_for(4)(labels, [float(x) for x in labels]) == {"accuracy": 100.0}
    assert metrics.mc_accuracy_for(4)(labels, [0.0] * len(labels))["accuracy"] < 50


def test_tasks_take_the_vocabulary_from_gin(shared_data_dir, tfds_dir):
    import os

    import gin
    from fiat_jax.data import vocab

    model = os.path.join(os.path.dirname(seqio.__file__), "test_data", "sentencepiece", "sentencepiece.model")
    spm = seqio.SentencePieceVocabulary(model)
    gin.bind_parameter("get_vocabulary.vocabulary", spm)
    assert vocab.get_vocabulary() == spm  # gin hands out a copy
    tasks.register_all(data_dir=str(shared_data_dir), tfds_dir=tfds_dir)
    task = seqio.get_mixture_or_task("synthetic_docs_en")
    assert task.output_features["targets"].vocabulary == spm
    assert task.output_features["targets"].vocabulary != seqio.ByteVocabulary()
    ex = next(task.get_dataset(sequence_length=None, split="train", shuffle=False).as_numpy_iterator())
    # The toy model has 26 pieces (lossy), so compare ids, not decoded text.
    assert ex["targets"].tolist() == spm.encode(ex["targets_pretokenized"].decode()) + [spm.eos_id]


def test_mixtures_leave_out_sources_without_data(shared_data_dir, tfds_dir):
    names = tasks.register_all(data_dir=str(shared_data_dir), tfds_dir=tfds_dir)
    assert "xtreme_up_qa_in_lang_sw" in names  # registered: using it names the missing file
    in_lang_sw = {t.name for t in seqio.get_mixture_or_task("lang_sw").tasks}
    assert in_lang_sw == {"mgsm_sw", "xcopa_sw", "tydiqa_goldp_sw"}
    assert "xor_attriqa" not in seqio.MixtureRegistry.names()
    mixed = seqio.get_mixture_or_task("lang_sw").get_dataset(sequence_length={"inputs": 64, "targets": 16},
                                                             split="test", shuffle=False, use_cached=False)
    assert all(set(ex) >= {"inputs", "targets"} for ex in mixed.take(5).as_numpy_iterator())


def test_bad_rows_through_the_builder_strict_and_lenient(tmp_path, tfds_dir):
    (tmp_path / "mgsm").mkdir()
    rows = [f"Question {i}?\t{i}" for i in range(20)] + ["Broken?\tmany"]
    (tmp_path / "mgsm" / "mgsm_de.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    tasks.register_all(data_dir=str(tmp_path), tfds_dir=tfds_dir)
    assert len(_ids("mgsm_de", "full")) == 20  # the bad row is reported (logged) and left out
    tasks.register_all(data_dir=str(tmp_path), tfds_dir=tfds_dir, strict=True)  # same tfds_dir: no stale reuse
    with pytest.raises(UserError, match=r"mgsm_de\.tsv:21: bad label"):
        _ids("mgsm_de", "full")


def test_mgsm_few_shot_exemplars_prefix(shared_data_dir, tfds_dir):
    tasks.register_all(data_dir=str(shared_data_dir), tfds_dir=tfds_dir, mgsm_num_exemplars=2)
    task = seqio.get_mixture_or_task("mgsm_en")
    ex = next(task.get_dataset(sequence_length=None, split="test", shuffle=False).as_numpy_iterator())
    text = ex["inputs_pretokenized"].decode()
    assert text.startswith("Question: Roger has 5 tennis balls.") and text.count("Step-by-Step Answer:") == 3
