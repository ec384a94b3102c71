"""Prompt recipes: the packaged files load, hash (text + version), render, and their parsers are robust."""
from __future__ import annotations

import pytest

from fiat_jax.errors import UserError
from fiat_jax.teachers import recipes


def test_packaged_recipes_load_with_distinct_hashes():
    names = recipes.available()
    assert {"fiat_reasoning", "instruction_writing", "student_instruction", "augment_local", "augment_global",
            "difficulty"} <= set(names)
    loaded = [recipes.load(n) for n in names]
    assert len({r.text_hash for r in loaded}) == len(loaded)
    assert all(len(r.text_hash) == 64 and r.version for r in loaded)


def test_hash_changes_with_text_or_version(tmp_path):
    src = recipes.recipe_path("difficulty").read_text()
    a = tmp_path / "a.txt"
    a.write_text(src)
    assert recipes.load(str(a)).text_hash == recipes.load("difficulty").text_hash
    a.write_text(src.replace("version: 1", "version: 2"))
    assert recipes.load(str(a)).text_hash != recipes.load("difficulty").text_hash
    a.write_text(src + " ")
    assert recipes.load(str(a)).text_hash != recipes.load("difficulty").text_hash


def test_render_fills_defaults_and_names_missing_variables():
    r = recipes.load("fiat_reasoning")
    prompt = r.render({"input": "Question: 2 + 2?\nStep-by-Step Answer:", "exemplars": "Q\nA\n\n"})
    assert prompt.startswith("Answer the question. Reason step by step")
    assert prompt.endswith("Q\nA\n\nQuestion: 2 + 2?\nStep-by-Step Answer:\nLet's think step by step.")
    assert r.stop == ("\n\nQuestion:",) and r.scope == "example"
    with pytest.raises(UserError, match=r"recipe fiat_reasoning: no value for \{input\}"):
        r.render({})
    with pytest.raises(UserError, match="unknown recipe 'nope'"):
        recipes.load("nope")


@pytest.mark.parametrize("reply, score", [
    ("Score: 4", "4"), ("4/5", "4"), ("**3**", "3"), ("Difficulty: 2", "2"), ("I would rate it four.", "4"),
    ("Score: **5**\nBecause it needs proofs.", "5"), ("It is 2 out of 5.", "2"), ("Rating - 1", "1"),
    ("3", "3"), ("  five ", "5"), ("Score: 3.5", "3.5"), ("This needs 3 steps; score 4/5", "4"),
])
def test_score_parser_accepts_common_forms(reply, score):
    assert recipes.parse_score(reply) == score


@pytest.mark.parametrize("reply", ["", "hard", "Score: 7", "either 1 or 5", "10/10", "id a5b3 is 3.75",
                                   "Score: none given"])
def test_score_parser_rejects_what_it_cannot_read(reply):
    with pytest.raises(recipes.ParseError):
        recipes.parse_score(reply)


def test_other_parsers():
    assert recipes.parse_lines("1. A is B.\n- B is A.\n\n") == "A is B.\nB is A."
    assert recipes.parse_instruction('Instruction: "Add the numbers."\n\nThat is all.') == "Add the numbers."
    with pytest.raises(recipes.ParseError):
        recipes.parse_text("  \n")
    assert recipes.split_sentences("A is B. C is D! E?") == ["A is B.", "C is D!", "E?"]


class _Recording:
    identity = "recording"

    def __init__(self, reply):
        self.prompts, self.reply = [], reply

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, stop=()):
        self.prompts += list(prompts)
        return [self.reply for _ in prompts]


def test_methods_prompts_are_the_recipes_templates():
    """Recipes are the single source of the teacher prompts the methods use: each method names a packaged recipe,
    and what it sends is that recipe rendered (tests/test_teachers_materialise.py checks no copy is left in code)."""
    from fiat_jax.methods import augmentation, fiat, phased, winrate

    names = (augmentation.LOCAL_RECIPE, augmentation.GLOBAL_RECIPE, fiat.REASONING_RECIPE,
             fiat.STUDENT_INSTRUCTION_RECIPE, phased.DIFFICULTY_RECIPE, winrate.JUDGE_RECIPE)
    assert set(names) <= set(recipes.available())
    t = _Recording("- B is A.")
    augmentation.teacher_augment(t, ["A is B. C is D."], local=True, global_=True)
    local, global_ = recipes.load("augment_local"), recipes.load("augment_global")
    assert t.prompts == [local.render({"document": "A is B. C is D.", "sentence": "A is B."}),
                         local.render({"document": "A is B. C is D.", "sentence": "C is D."}),
                         global_.render({"document": "A is B. C is D."})]
    t = _Recording("Add them.")
    assert fiat.write_student_instruction(t, task="mgsm_sw", out_dir=None) == "Add them."
    assert t.prompts == [recipes.load("student_instruction").render({"task": "mgsm", "language": "sw"})]
    t = _Recording("A")
    winrate.pairwise_win_rate(t, ["Say hi."], ["hi"], ["hello"])
    judge = recipes.load("judge_pairwise")
    assert t.prompts == [judge.render({"instruction": "Say hi.", "a": "hi", "b": "hello"}),
                         judge.render({"instruction": "Say hi.", "a": "hello", "b": "hi"})]


def test_example_block_and_answer_header_come_from_the_recipe_file(tmp_path):
    """Few-shot blocks and the answer header are recipe text: a recipe file changes them, code only fills them."""
    icl = recipes.load("icl")
    shots = [{"inputs": "1 + 2 ", "targets": "3"}, {"inputs": "Premise: y\nAnswer:", "targets": "2"}]
    assert icl.examples_block(shots) == "Input: 1 + 2\nAnswer: 3\n\nInput: Premise: y\nAnswer: 2\n\n"
    assert icl.render({"input": "Premise: x\nAnswer:", "examples": ""}) == \
        "Answer the question.\n\nInput: Premise: x\nAnswer:"
    assert recipes.parse_first_line("\n 7 \nInput: more") == "7" and recipes.parse_first_line("") == ""
    own = tmp_path / "own.txt"
    own.write_text('name: own\nversion: 1\nparser: first_line\nanswer_header: " =>"\n'
                   'example_block: "Q {input}{answer_header} {targets}; "\n---\n{examples}Q {input}{answer_header}')
    rec = recipes.load(str(own))
    assert rec.render({"input": "2 + 2", "examples": rec.examples_block(shots)}) == \
        "Q 1 + 2 => 3; Q Premise: y\nAnswer: 2; Q 2 + 2 =>"
    with pytest.raises(UserError, match="recipe student_instruction: no example_block"):
        recipes.load("student_instruction").examples_block(shots)
    own.write_text("name: own\nversion: 1\nexample_block: 3\n---\n{examples}")
    with pytest.raises(UserError, match="example_block must be a JSON string"):
        recipes.load(str(own))
    own.write_text('name: own\nversion: 1\nexample_block: "In {input"\n---\n{examples}')
    with pytest.raises(UserError, match="bad example_block"):
        recipes.load(str(own))
