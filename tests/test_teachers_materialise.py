"""teachers/materialise.py, the one writer of teacher outputs: resume after a kill or a torn line without
duplicates, examples handed to teachers that need them, one hash, failures reported; and two source checks: no
other module writes teacher outputs, no prompt text outside the recipe files."""
from __future__ import annotations

import ast
import json
import pathlib
import re

import pytest

from fiat_jax.errors import UserError
from fiat_jax.teachers import base, materialise as M, recipes

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = [{"id": f"e{i}", "inputs": f"{i} + 1"} for i in range(10)]


class Counting:
    """Answers every prompt; dies (like a killed process: not an Exception) once ``die_after`` prompts are asked."""

    identity = "counting/v1"

    def __init__(self, die_after: int | None = None):
        self.asked: list[str] = []
        self.die_after = die_after

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, stop=()):
        out = []
        for p in prompts:
            if self.die_after is not None and len(self.asked) >= self.die_after:
                raise KeyboardInterrupt("killed")
            self.asked.append(p)
            out.append("reasoning for " + p.splitlines()[-2])
        return out


def _rows(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run(teacher, tmp_path, examples=EXAMPLES, **kw):
    return M.materialise(teacher, "fiat_reasoning", examples, out_dir=tmp_path, task="toy_en", split="train",
                         progress=False, chunk_size=2, **kw)


def test_killed_mid_run_then_torn_line_rerun_completes_without_duplicates(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _run(Counting(die_after=5), tmp_path)
    path = tmp_path / "toy_en" / "train.jsonl"
    assert [r["id"] for r in _rows(path)] == ["e0", "e1", "e2", "e3"]  # each completed chunk is on disk
    with open(path, "a") as f:
        f.write(json.dumps(_rows(path)[0])[:25])  # the torn half line a kill during a write leaves
    again = Counting()
    result = _run(again, tmp_path)
    rows = _rows(path)
    assert [r["id"] for r in rows] == [f"e{i}" for i in range(10)]  # repaired, each id exactly once
    assert len(again.asked) == 6 and result.summary.already == 4 and result.summary.written == 6
    assert result.outputs == {r["id"]: r["output"] for r in rows} and not result.failures
    third = Counting()
    assert _run(third, tmp_path).outputs == result.outputs and third.asked == []  # nothing asked twice


def test_hash_covers_recipe_variables_decoding_and_teacher(tmp_path):
    rec = recipes.load("fiat_reasoning")
    dec = M.decoding_for(rec)
    h = M.recipe_hash(rec, {"instruction": "a"}, dec, "t1")
    assert len(h) == 16
    assert len({h, M.recipe_hash(rec, {"instruction": "b"}, dec, "t1"),
                M.recipe_hash(rec, {"instruction": "a"}, M.decoding_for(rec, max_new_tokens=9), "t1"),
                M.recipe_hash(rec, {"instruction": "a"}, dec, "t2")}) == 4
    _run(Counting(), tmp_path, examples=EXAMPLES[:2], variables={"instruction": "Add."})
    with pytest.raises(UserError, match="one file holds one teacher and recipe"):
        _run(Counting(), tmp_path, examples=EXAMPLES[:2], variables={"instruction": "Sum."})
    other = Counting()
    _run(other, tmp_path, examples=EXAMPLES[:2], variables={"instruction": "Sum."}, replace_other=True)
    assert len(other.asked) == 2 and {r["recipe_hash"] for r in _rows(tmp_path / "toy_en" / "train.jsonl")} == {
        M.recipe_hash(rec, {"instruction": "Sum."}, dec, "counting/v1")}


class ByExample:
    identity = "by-example"

    def __init__(self):
        self.seen: list[str] = []

    def generate_for_examples(self, examples, prompts, *, max_new_tokens, temperature=0.0, stop=()):
        self.seen += [str(ex["id"]) for ex in examples]
        return [f"- fact of {ex['id']}" for ex in examples]

    def generate(self, prompts, **kw):
        raise AssertionError("the examples must come with the prompts")


def test_examples_reach_teachers_that_need_them_and_sentences_get_their_own_ids():
    docs = [{"id": "d", "document": "A is B. C is D."}]
    t = ByExample()
    out = M.materialise(t, "augment_local", docs, out_dir=None, task="docs", progress=False)
    assert t.seen == ["d/local/0", "d/local/1"] and out.outputs == {"d": "fact of d/local/0\nfact of d/local/1"}


class Flaky:
    identity = "flaky"

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, stop=()):
        if any("3 + 1" in p for p in prompts):
            raise RuntimeError("server error")
        return ["" if "4 + 1" in p else "ok" for p in prompts]


def test_failures_are_reported_not_written_and_unparseable_replies_retried(tmp_path, capsys):
    result = _run(Flaky(), tmp_path, examples=EXAMPLES[:6])
    failed = {f["id"]: f for f in result.failures}
    assert set(failed) == {"e2", "e3", "e4"}  # e2 shares e3's chunk; e4's reply is empty at every temperature
    assert failed["e4"]["attempts"] == 3 and "unparseable" in failed["e4"]["reason"]
    assert {r["id"] for r in _rows(tmp_path / "toy_en" / "train.jsonl")} == {"e0", "e1", "e5"}
    assert {json.loads(x)["id"] for x in (tmp_path / "toy_en" / "train.failures.ndjson").read_text().splitlines()
            } == set(failed)
    assert "3 failed" in capsys.readouterr().err
    with pytest.raises(base.TeacherError, match="3 of 6 teacher prompts failed"):
        result.require_all("toy")
    kept = M.materialise(Flaky(), "augment_global", [{"id": "x", "document": "4 + 1"}], out_dir=None, task="t",
                         keep_unparsed=True, progress=False)
    assert kept.outputs == {"x": ""} and not kept.failures  # an empty reply is an answer for augmentation


class Rater:
    identity = "rater"

    def __init__(self):
        self.asked = 0

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, stop=()):
        self.asked += len(prompts)
        return [f"Score: {1 + len(p) % 5}" for p in prompts]


def test_phased_difficulty_scoring_is_materialised(tmp_path):
    from fiat_jax.methods import phased

    rows = [{"id": f"a{i}", "inputs": "x" * i, "targets": "y"} for i in range(4)]
    t = Rater()
    scored = phased.score_difficulty(t, rows, task="alpaca", out_dir=str(tmp_path))
    assert [r["id"] for r in scored] == ["a0", "a1", "a2", "a3"] and all(1 <= r["score"] <= 5 for r in scored)
    assert {r["id"]: r["score"] for r in _rows(tmp_path / "alpaca" / "train.jsonl")} == {
        r["id"]: r["score"] for r in scored}
    assert phased.score_difficulty(t, rows, task="alpaca", out_dir=str(tmp_path)) == scored and t.asked == 4
    assert phased.assign_stages(scored, thresholds=(3.0,), allow_empty=True)  # ready for the stages


# ---- source checks ---------------------------------------------------------------------------------------------

_WRITES = {"write_text", "write_bytes", "write_jsonl", "atomic_write_lines", "Appender"}


def _writes(call: ast.Call) -> bool:
    name = getattr(call.func, "attr", None) or getattr(call.func, "id", None)
    if name != "open":
        return name in _WRITES
    if getattr(call.func, "attr", None) == "open" and getattr(call.func.value, "id", None) == "os":
        return True  # os.open: flags, an append
    mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
    return isinstance(mode, ast.Constant) and any(c in str(mode.value) for c in "wax+")


def writes_teacher_outputs(source: str) -> bool:
    """Does this module write files and build teacher-output rows (a dict with a ``"recipe_hash"`` key)?"""
    tree = ast.parse(source)
    rows = any(isinstance(n, ast.Dict) and any(isinstance(k, ast.Constant) and k.value == "recipe_hash"
                                               for k in n.keys) for n in ast.walk(tree))
    return rows and any(isinstance(n, ast.Call) and _writes(n) for n in ast.walk(tree))


def test_exactly_one_module_writes_teacher_outputs():
    writers = sorted(str(p.relative_to(REPO)) for d in ("fiat_jax", "tasks") for p in (REPO / d).rglob("*.py")
                     if writes_teacher_outputs(p.read_text(encoding="utf-8")))
    assert writers == ["fiat_jax/teachers/materialise.py"]
    # The check catches the writers it replaced (FIAT's own loop rewrote the file with write_jsonl).
    assert writes_teacher_outputs('rows.append({"id": i, "recipe_hash": h, "output": o})\nwrite_jsonl(path, rows)')
    assert writes_teacher_outputs('row = {"recipe_hash": h}\nwith open(p, "a") as f:\n    f.write(json.dumps(row))')
    assert not writes_teacher_outputs('row = {"recipe_hash": h}\nwith open(p) as f:\n    rows = f.read()')


_FIELD = re.compile(r"\{[A-Za-z_]\w*\}")
_MARKER = re.compile(r"\b(Answer|Question|Reply|Write|Rate|Instruction|Response|Document|Sentence|step by step)\b"
                     r"|\b(Input|Output):")


def _template_text(node: ast.AST) -> str | None:
    """A string literal's text as a template: an f-string's replacement fields read as ``{field}``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{field}" for v in node.values)
    return None


def prompt_literals(source: str) -> list[str]:
    """String literals and f-strings (docstrings aside) that read like a prompt template: a ``{field}`` (an
    f-string's replacement field counts) and a prompt word or an ``Input:``/``Output:`` label."""
    tree = ast.parse(source)
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    texts = [(n, _template_text(n)) for n in ast.walk(tree) if id(n) not in docs]
    return [t for _, t in texts if t is not None and _FIELD.search(t) and _MARKER.search(t)]


# Not prompts: the replies the simulated (controlled) teacher writes, in the form a real teacher's reasoning has.
_SIMULATED_REPLIES = {("fiat_jax/teachers/controlled.py", "Let's think step by step. {field}. {field}{field}.")}


def test_no_prompt_text_outside_recipe_files():
    found = {path: [t for t in prompt_literals(p.read_text(encoding="utf-8")) if (path, t) not in _SIMULATED_REPLIES]
             for d in ("fiat_jax", "tasks") for p in (REPO / d).rglob("*.py")
             for path in [str(p.relative_to(REPO))]}
    assert {k: v for k, v in found.items() if v} == {}
    # The check catches the constants the recipes replaced.
    assert prompt_literals('TEACHER_PROMPT = ("{instruction}\\n\\n{exemplars}Question: {input}\\nLet\'s think '
                           'step by step.")')
    assert prompt_literals('JUDGE_PROMPT = ("Decide. Reply with A or B.\\n\\nInstruction:\\n{instruction}")')
    assert not prompt_literals('def f():\n    """Fill {input} in the Question."""\n')
    # f-strings too: ICL's framing and instruction writing's example blocks were built in code.
    assert prompt_literals('def framed(text):\n    return f"Input: {text}"\n')
    assert prompt_literals('B = "".join(f"Input: {ex.get(\'inputs\', \'\')}\\nOutput: {ex[\'targets\']}" for ex in xs)')
    assert not prompt_literals('raise UserError(f"recipe {path}: no value for {name}")')
