"""The replay teacher: recorded replies by example id or by prompt, one clear line for a missing or bad row, an
optional fallback, no scoring without one; usable by FIAT through gin where any teacher goes."""
from __future__ import annotations

import functools
import json

import gin
import pytest

from fiat_jax import gin_utils
from fiat_jax.errors import UserError
from fiat_jax.teachers import base
from fiat_jax.teachers import replay as R
import test_methods_helpers as MH
from test_train_helpers import compilation_cache  # noqa: F401 (fixture)


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_replays_by_id_then_by_prompt(tmp_path):
    path = _write(tmp_path / "rec.jsonl", [
        {"id": "mgsm_sw/0", "output": "3 + 4 = 7. So the answer is 7.", "teacher": "qwen2.5-72b"},
        {"prompt": "What is 2 + 2?", "output": "4"},
        {"id": "mgsm_sw/1", "prompt": "Both keys", "output": "by both"}])
    t = R.replay_teacher(path=path)
    examples = [{"id": "mgsm_sw/0"}, {"id": "not-recorded"}, {"id": "mgsm_sw/1"}]
    assert base.generate_for(t, examples, ["any prompt", "What is 2 + 2?", "Both keys"], max_new_tokens=8) == [
        "3 + 4 = 7. So the answer is 7.", "4", "by both"]
    assert t.generate(["What is 2 + 2?"], max_new_tokens=8) == ["4"]  # no example: by prompt only
    assert t.generate_for_examples([{"id": "mgsm_sw/0"}], ["x"], max_new_tokens=8, stop=[" So"]) == ["3 + 4 = 7."]
    assert t.identity.startswith("replay:qwen2.5-72b:") and t.replayed == 5


def test_missing_entry_names_the_example_and_the_file(tmp_path):
    path = _write(tmp_path / "rec.jsonl", [{"id": "a", "output": "A"}])
    t = R.replay_teacher(path=path)
    with pytest.raises(UserError, match=rf"no recording for example b in {tmp_path}/rec.jsonl \(1 of 2 missing"):
        t.generate_for_examples([{"id": "a"}, {"id": "b"}], ["p", "q"], max_new_tokens=8)
    with pytest.raises(UserError, match="no recording for prompt 'Write one short instruction'"):
        t.generate(["Write one short instruction"], max_new_tokens=8)
    with pytest.raises(UserError, match="cannot score: a recording holds text, not log-likelihoods"):
        t.score("p", ["x"])


def test_fallback_answers_what_the_file_lacks(tmp_path):
    path = _write(tmp_path / "rec.jsonl", [{"id": "a", "output": "A"}])
    fake = MH.FakeTeacher()
    t = R.replay_teacher(path=path, fallback=fake)
    out = t.generate_for_examples([{"id": "a"}, {"id": "b"}], ["1 + 2", "2 + 3 Let's think step by step"],
                                  max_new_tokens=8)
    assert out == ["A", "2 plus 3 is 5."] and fake.calls == ["2 + 3 Let's think step by step"]
    assert t.fell_back == 1 and t.identity.endswith("+fallback:fake-teacher/v1")
    assert t.score("p", ["ab", "a"]) == [-2.0, -1.0]


@pytest.mark.parametrize("rows, message", [
    (['{"id": "a", "output": "A"}', "not json"], r"rec.jsonl:2: not JSON"),
    ([{"id": "a"}], r"rec.jsonl:1: missing field 'output'"),
    ([{"output": "A"}], r"rec.jsonl:1: missing field 'id' \(or 'prompt'\)"),
    ([{"id": "a", "output": 3}], r"rec.jsonl:1: field 'output' must be a string"),
    ([{"id": "a", "output": "A"}, "", {"id": "a", "output": "B"}],
     r"rec.jsonl:3: field 'id': 'a' already recorded with another output on line 1"),
    ([], "holds no recordings"),
])
def test_bad_rows_are_one_line_naming_file_line_and_field(tmp_path, rows, message):
    path = _write(tmp_path / "rec.jsonl", rows)
    with pytest.raises(UserError, match=message):
        R.replay_teacher(path=path)


def test_identity_follows_the_file_contents(tmp_path):
    path = tmp_path / "rec.jsonl"
    _write(path, [{"id": "a", "output": "A"}])
    first = R.replay_teacher(path=str(path), name="big-model").identity
    _write(path, [{"id": "a", "output": "A, edited"}])
    second = R.replay_teacher(path=str(path), name="big-model").identity
    assert first.startswith("replay:big-model:") and first != second
    with pytest.raises(UserError, match="no file"):
        R.replay_teacher(path=str(tmp_path / "absent.jsonl"))


_REGISTERED: list[bool] = []


def _configure(tmp_path, shared_data_dir, *files, bindings=()):
    import test_train_helpers as H

    if not _REGISTERED:  # gin refuses to register a configurable name twice
        gin.external_configurable(functools.partial(H.tiny_decoder, vocab=259, d_model=32, mlp=64, max_len=256),
                                  name="tiny_replay_student", module="replay_tests")
        _REGISTERED.append(True)
    gin.add_config_file_search_path(str(gin_utils.DEFAULT_GIN_DIR))
    for f in files:
        gin.parse_config_file(str(gin_utils.DEFAULT_GIN_DIR / f))
    gin.parse_config([
        "StudentSpec.model_factory = @tiny_replay_student", f"MODEL_DIR = '{tmp_path}'", "SEED = 1",
        "NUM_TRAIN_EXAMPLES = 8", "NUM_EVAL_EXAMPLES = 4", "TRAIN_STEPS = 2", "train.batch_size = 4",
        "TASK_FEATURE_LENGTHS = {'inputs': 192, 'targets': 8}", "train.progress_bar = False",
        "train.tensorboard = False", "train.async_checkpointing = False", "evaluate.batch_size = 4",
        f"register_all.data_dir = '{shared_data_dir}'", "MIXTURE_OR_TASK_NAME = 'xcopa_sw'",
        "STUDENT_INSTRUCTION = 'Pick 1 or 2.'", *bindings])


@pytest.mark.slow
@pytest.mark.usefixtures("compilation_cache")
def test_fiat_gin_with_controlled_then_replayed_reasoning(tmp_path, shared_data_dir):
    """teachers/controlled.gin and teachers/replay.gin slot in where TEACHER goes; the materialised reasoning of
    one run replays as it is in the next, and the simulated label travels with it."""
    from fiat_jax.methods import run

    files = ("methods/fiat.gin", "methods/ablations/fiat_full_finetune.gin", "runs/local_tiny.gin")
    first = tmp_path / "controlled"
    _configure(first, shared_data_dir, *files, "teachers/controlled.gin", bindings=["CONTROLLED_TEACHER_Q = 0.5"])
    run.run()
    MH.cleanup_registry()
    assert json.loads((first / "results.json").read_text())["teacher"] == "simulated:controlled-teacher:q=0.5:seed=0"
    outputs = sorted((first / "teacher_outputs" / "xcopa_sw").glob("*.jsonl"))
    assert [p.name for p in outputs] == ["train.jsonl", "validation.jsonl"]
    recorded = tmp_path / "recorded.jsonl"
    recorded.write_text("".join(p.read_text() for p in outputs))

    gin.clear_config(clear_constants=True)
    second = tmp_path / "replayed"
    _configure(second, shared_data_dir, *files, "teachers/replay.gin", bindings=[f"REPLAY_FILE = '{recorded}'"])
    run.run()
    MH.cleanup_registry()
    res = json.loads((second / "results.json").read_text())
    assert res["teacher"].startswith("replay:simulated:controlled-teacher:q=0.5:seed=0:")
    for split in ("train", "validation"):
        def outs(root):
            return {r["id"]: r["output"] for r in map(json.loads, (root / "teacher_outputs" / "xcopa_sw" /
                                                                   f"{split}.jsonl").read_text().splitlines())}
        assert outs(second) == outs(first)
