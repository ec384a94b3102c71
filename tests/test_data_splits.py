"""Splits a reviewer can trust: every shipped task's train and eval splits are disjoint, a leaking source is refused,
an edited data file is prepared again, and a training set is as large as asked or an error."""
import json
import os
import re
import shutil
import subprocess
import sys

import gin
import pytest
import seqio

import tasks
from fiat_jax.data import readers, sources, splits, tfds_builders
from fiat_jax.errors import UserError
from fiat_jax.data import examples
from fiat_jax.methods import common

EVAL_SPLITS = ("validation", "test")


@pytest.fixture(autouse=True)
def _clean_registry():
    seqio.TaskRegistry.reset()
    seqio.MixtureRegistry.reset()
    examples._TRAINING_SETS.clear()
    yield
    seqio.TaskRegistry.reset()
    seqio.MixtureRegistry.reset()
    examples._TRAINING_SETS.clear()


def _text(value) -> str:
    # Independent of splits.normalise on purpose: casefold, collapse whitespace.
    if isinstance(value, (list, tuple)):
        value = " | ".join(map(str, value))
    return " ".join(str(value).casefold().split())


def _ids(name, split):
    ds = seqio.get_mixture_or_task(name).get_dataset(sequence_length=None, split=split, shuffle=False,
                                                     use_cached=False)
    return [ex["id"].decode() for ex in ds.as_numpy_iterator()]


def _assert_disjoint(name, by_split, fields):
    train = by_split.get("train", [])
    train_ids = {str(ex["id"]) for ex in train}
    train_content = {tuple(_text(ex[f]) for f in fields) for ex in train}
    for split in EVAL_SPLITS:
        for ex in by_split.get(split, []):
            assert str(ex["id"]) not in train_ids, (name, split, ex["id"])
            assert tuple(_text(ex[f]) for f in fields) not in train_content, (name, split, ex["id"])


def test_every_shipped_task_has_disjoint_train_and_eval_splits(shared_data_dir, repo_root, tmp_path):
    """Registers every shipped task (the real data sets and the fixtures of the others) and checks each one that
    has a train split and an eval split: no eval example's id or input content is in train."""
    checked = set()
    fixtures = repo_root / "tests" / "fixtures" / "data"
    for data_dir in (shared_data_dir, fixtures):
        names = tasks.register_all(data_dir=str(data_dir), tfds_dir=str(tmp_path / "tfds"))
        for name in names:
            task = seqio.TaskRegistry.get(name)
            if not ({"train"} & set(task.splits) and set(EVAL_SPLITS) & set(task.splits)):
                continue
            if isinstance(task.source, seqio.TfdsDataSource):
                builder, lang = task.source.tfds_dataset.name.split(":")[0].split("/")
                source = next(b.SOURCE for b in tfds_builders.BUILDERS.values() if b.name == builder)
                spec = sources.SOURCES[source]
                if not os.path.isfile(spec.probe(str(data_dir), lang)) or (source, lang) in checked:
                    continue
                by_split = tfds_builders.build_splits(spec, str(data_dir), lang, seed=0,
                                                      fractions=splits.DEFAULT_FRACTIONS,
                                                      report=readers.RowReport(strict=False))
                _assert_disjoint(name, by_split, spec.content_fields)
                checked.add((source, lang))
            else:  # an in-memory task: read its splits as they are served
                by_split = {s: examples.task_examples(name, s) for s in task.splits}
                _assert_disjoint(name, by_split, ("inputs",))
                checked.add((name, ""))
    families = {source for source, _ in checked}
    assert {"mgsm", "xcopa", "tydiqa_goldp", "alpaca_scored", "xor_attriqa", "xtreme_up_qa_in_lang",
            "xtreme_up_qa_cross_lang"} <= families
    assert ("xcopa", "sw") in checked and len(checked) >= 36  # 11 MGSM, 11 XCOPA, 9 TyDi QA, Alpaca, fixtures


def _xcopa_copy(src, dst, *, leak: bool):
    """An XCOPA data dir with Swahili only; ``leak`` makes every test item a copy of a validation item."""
    (dst / "xcopa").mkdir(parents=True)
    for name in ("val.sw.jsonl", "test.sw.jsonl"):
        shutil.copy(src / "xcopa" / name, dst / "xcopa" / name)
    if leak:
        rows = [json.loads(line) for line in (src / "xcopa" / "val.sw.jsonl").read_text().splitlines()]
        with open(dst / "xcopa" / "test.sw.jsonl", "w") as f:
            for i, row in enumerate(rows):  # new ids, the same items re-spaced and re-cased
                row = dict(row, idx=10_000 + i, premise="  " + row["premise"].upper())
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def test_a_leaking_source_is_refused_with_one_line_naming_task_and_duplicate(shared_data_dir, repo_root, tmp_path):
    data = tmp_path / "data"
    _xcopa_copy(shared_data_dir, data, leak=True)
    tasks.register_all(data_dir=str(data), tfds_dir=str(tmp_path / "tfds"))
    with pytest.raises(UserError, match=r"^task xcopa_sw: test example xcopa/sw/test/\d+ has the same content as "
                                        r"train example xcopa/sw/validation/\d+; evaluation items must never"):
        _ids("xcopa_sw", "test")
    # The CLI: exit 2 and one line.
    proc = subprocess.run([sys.executable, "-m", "fiat_jax.cli", "tasks", "show", "xcopa_sw", "--split=test",
                           f"--gin.register_all.data_dir='{data}'",
                           f"--gin.register_all.tfds_dir='{tmp_path / 'tfds_cli'}'"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(repo_root)}, cwd=str(repo_root))
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("fiat: error:")]
    assert len(errors) == 1 and "task xcopa_sw: test example" in errors[0]


def test_check_disjoint_by_id_and_content():
    train = [{"id": "a", "q": "Hello  World"}]
    with pytest.raises(UserError, match="task t: validation example a is also in the train split"):
        splits.check_disjoint({"train": train, "validation": [{"id": "a", "q": "other"}]}, task="t",
                              content_fields=("q",))
    with pytest.raises(UserError, match="test example b has the same content as train example a"):
        splits.check_disjoint({"train": train, "test": [{"id": "b", "q": "hello world "}]}, task="t",
                              content_fields=("q",))
    # ``full`` holds train by design, and two eval splits may share items.
    splits.check_disjoint({"train": train, "full": train, "validation": [{"id": "c", "q": "x"}],
                           "test": [{"id": "c", "q": "x"}]}, task="t", content_fields=("q",))


def test_a_cut_keeps_a_repeated_item_once():
    rows = [{"id": f"{i:02d}", "q": f"question {i % 7}"} for i in range(20)]
    out = splits.cut(splits.drop_repeats(rows, ("q",)), seed=0)
    assert len(out["full"]) == 7
    splits.check_disjoint(out, task="t", content_fields=("q",))


def test_xcopa_tiny_train_then_eval_scores_items_it_never_trained_on(tmp_path, repo_root, shared_data_dir):
    """`fiat train/eval --gin_file=runs/xcopa_tiny.gin`: the evaluated inputs are none of the trained ones."""
    model_dir, tfds_dir = tmp_path / "run", tmp_path / "tfds"
    flags = ["--gin_file=runs/xcopa_tiny.gin", f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=2",
             f"--gin.register_all.tfds_dir='{tfds_dir}'"]
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    for command in ("train", "eval"):
        proc = subprocess.run([sys.executable, "-m", "fiat_jax.cli", command, *flags], capture_output=True,
                              text=True, timeout=900, env=env, cwd=str(repo_root))
        assert proc.returncode == 0, proc.stderr[-3000:]
    predictions = sorted((model_dir / "predictions").glob("xcopa_sw-*.jsonl"))
    assert predictions, list(model_dir.iterdir())
    evaluated = [json.loads(line)["input"] for line in predictions[-1].read_text().splitlines()]
    tasks.register_all(data_dir=str(shared_data_dir), tfds_dir=str(tfds_dir))
    trained = {ex["inputs"] for ex in examples.task_examples("xcopa_sw", "train")}
    assert len(trained) == 80 and len(evaluated) == 16
    # The evaluator's inputs are the task's inputs cut to the feature length: compare their first 64 characters.
    prefixes = {t[:64] for t in trained}
    assert not [e for e in evaluated if e[:64] in prefixes]


def test_an_edited_data_file_is_prepared_again(shared_data_dir, tmp_path):
    data = tmp_path / "data"
    _xcopa_copy(shared_data_dir, data, leak=False)
    tfds_dir = str(tmp_path / "tfds")
    tasks.register_all(data_dir=str(data), tfds_dir=tfds_dir)
    assert len(_ids("xcopa_sw", "test")) == 500
    path = data / "xcopa" / "test.sw.jsonl"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, not changed: same records
    spec = sources.SOURCES["xcopa"]
    before = tfds_builders.source_fingerprint(str(data), spec, memo_dir=tfds_dir)
    path.write_text("\n".join(path.read_text().splitlines()[:300]) + "\n")
    after = tfds_builders.source_fingerprint(str(data), spec, memo_dir=tfds_dir)
    assert before != after
    tasks.register_all(data_dir=str(data), tfds_dir=tfds_dir)
    assert len(_ids("xcopa_sw", "test")) == 300


def test_a_training_set_larger_than_the_task_is_an_error_unless_configured(shared_data_dir, tmp_path):
    from fiat_jax.methods import results

    tasks.register_all(data_dir=str(shared_data_dir), tfds_dir=str(tmp_path / "tfds"))
    with pytest.raises(UserError, match=re.escape("task mgsm_en: 1000 train examples asked for, it has 125")):
        common.split_examples("mgsm_en", "train", limit=1000)
    assert len(common.split_examples("mgsm_en", "train", limit=100)["mgsm_en"]) == 100
    assert examples.training_set_sizes() == {"num_train_examples": 100, "num_train_examples_requested": 100}
    # Evaluation caps stay caps (at most), and a task with enough examples is cut exactly.
    assert len(common.split_examples("mgsm_en", "test", limit=1000)["mgsm_en"]) == 100
    gin.bind_parameter("training_set_size_policy.take_what_exists", True)
    assert len(common.split_examples("mgsm_en", "train", limit=1000)["mgsm_en"]) == 125
    results.write_results(str(tmp_path / "run"), metrics={"mgsm_en": {"accuracy": 1.0}}, method="finetune")
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (written["num_train_examples"], written["num_train_examples_requested"]) == (125, 1000)
