"""``teach()`` in process with a scripted teacher over a small in-memory seqio task: difficulty scores with
unparseable replies retried then recorded as failures (never as outputs), sentence expansion for local
augmentation, and a task-scoped recipe (instruction writing)."""
from __future__ import annotations

import json
import re

import pytest

from fiat_jax.errors import UserError

TASK = "teachertest_docs_en"


class ScriptedTeacher:
    identity = "scripted/v1"

    def __init__(self):
        self.calls: list[tuple[str, float]] = []

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, stop=()):
        out = []
        for p in prompts:
            self.calls.append((p, temperature))
            if "Rate the difficulty" in p:
                if "NEVER" in p:
                    out.append("I cannot say.")
                elif "RETRY" in p and temperature == 0.0:
                    out.append("Hard to tell.")
                else:
                    out.append(f"Score: **{len(re.findall('x', p.split('Instruction:')[1])) % 5 + 1}**")
            elif "Sentence:" in p:
                sentence = p.split("Sentence: ")[1].split("\n")[0]
                out.append(f"1. Rephrased: {sentence}\n2. Reversed: {sentence[::-1]}")
            else:
                out.append('Instruction: "Copy the input."')
        return out


@pytest.fixture
def task():
    import seqio

    from fiat_jax.data.examples import register_examples_task

    rows = [{"id": f"d{i}", "inputs": text, "targets": "t"} for i, text in enumerate(
        ["x. A is B. C is D.", "xx RETRY", "xxx NEVER", "One sentence only"])]
    register_examples_task(TASK, {"train": rows}, vocabulary=seqio.ByteVocabulary())
    yield TASK
    seqio.TaskRegistry.remove(TASK)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_difficulty_retries_unparseable_then_records_failures(task, tmp_path):
    from fiat_jax.teachers.teach import teach

    teacher = ScriptedTeacher()
    with pytest.raises(UserError, match=r"1 of 4 prompts failed .*train.failures.ndjson"):
        teach(teacher=teacher, recipe="difficulty", task=task, output_dir=str(tmp_path), progress=False)
    rows = {r["id"]: r for r in _rows(tmp_path / task / "train.jsonl")}
    assert sorted(rows) == ["d0", "d1", "d3"]  # the never-parseable one is not an output
    assert rows["d0"]["output"] == "2" and rows["d0"]["score"] == 2.0 and rows["d0"]["raw"] == "Score: **2**"
    assert rows["d1"]["temperature"] == 0.7  # answered on the first retry
    (failure,) = _rows(tmp_path / task / "train.failures.ndjson")
    assert failure["id"] == "d2" and "unparseable" in failure["reason"] and failure["raw"] == "I cannot say."
    assert [t for p, t in teacher.calls if "NEVER" in p] == [0.0, 0.7, 1.0]
    # A rerun asks only for the failed example (three attempts again), and the file keeps one row per id.
    teacher2 = ScriptedTeacher()
    with pytest.raises(UserError):
        teach(teacher=teacher2, recipe="difficulty", task=task, output_dir=str(tmp_path), progress=False)
    assert len(teacher2.calls) == 3 and len(_rows(tmp_path / task / "train.jsonl")) == 3


def test_local_augmentation_expands_sentences(task, tmp_path):
    from fiat_jax.teachers.teach import teach

    teacher = ScriptedTeacher()
    summary = teach(teacher=teacher, recipe="augment_local", task=task, output_dir=str(tmp_path), progress=False,
                    num_examples=1)
    assert summary.written == 1 and len(teacher.calls) == 3  # "x." / "A is B." / "C is D."
    (row,) = _rows(tmp_path / task / "train.jsonl")
    assert row["output"].splitlines()[:2] == ["Rephrased: x.", "Reversed: .x"]
    assert len(row["output"].splitlines()) == 6 and row["recipe"] == "augment_local"


def test_instruction_writing_is_one_output_per_task(task, tmp_path):
    from fiat_jax.teachers.teach import teach

    teacher = ScriptedTeacher()
    teach(teacher=teacher, recipe="instruction_writing", task=task, output_dir=str(tmp_path), progress=False,
          variables={"k": 2, "language": "examples"})
    out = json.loads((tmp_path / task / "train.instruction_writing.json").read_text())
    assert out["output"] == "Copy the input." and out["example_ids"] == ["d0", "d1"]
    (prompt, _), = teacher.calls
    assert "Input: x. A is B. C is D.\nOutput: t" in prompt and "the same language as the examples" in prompt
    teach(teacher=teacher, recipe="instruction_writing", task=task, output_dir=str(tmp_path), progress=False,
          variables={"k": 2, "language": "examples"})
    assert len(teacher.calls) == 1  # already written
