"""A SIMULATED teacher of known quality, for FIAT's teacher-quality axis: for each example it writes reasoning
that leads to the gold answer with probability ``q``, and reasoning that leads to a wrong answer otherwise.

It is not a language model: it reads the example's gold answer (``targets``), which a real teacher never sees,
so that a sweep over ``q`` shows how much the *student* side of FIAT gains from better reasoning when the
teacher's quality is the only thing that changes. Its identity starts with ``simulated:``, and that identity is
what results.json (``teacher``; a sweep's rows carry it under ``extra``) and the materialised teacher outputs
record, so its numbers cannot pass for a real teacher's. FIAT asks the teacher at inference too, so the evaluation examples' reasoning comes from their gold
answers as well: at ``q = 1`` a student that copies the stated answer scores 100%, at ``q = 0`` one that copies it
scores 0%. What the axis measures is how much the student relies on (and is misled by) reasoning of a known
quality, never a teacher's skill.

- Deterministic per ``(seed, example id)``: the draw is ``u = hash(seed, id)`` in [0, 1), consistent when
  ``u < q``. One seed gives nested sets: every example consistent at ``q`` is consistent at any larger ``q``.
- The wrong answer (deterministic too): the other option of a choice task (``choice1``/``choice2``... with
  targets "1", "2"...), the other word of a yes/no-style pair, a nearby different number for a numeric answer,
  else a span of the input with as many words as the gold answer that is not (and does not contain) it.
- Reasoning reads ``"Let's think step by step. <a clause about the input>. So the answer is <answer>."``; the
  misleading kind names the wrong answer and never the gold one (:func:`claimed_answer` reads it back).
- It answers only prompts built from examples (``generate_for_examples``): the student instruction and any
  other request must come from the config (``STUDENT_INSTRUCTION``), and it cannot score.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import gin

from fiat_jax.errors import UserError
from fiat_jax.teachers import base

ANSWER_LEAD = "So the answer is "
_PAIRS = {"yes": "no", "no": "yes", "true": "false", "false": "true", "ndiyo": "hapana", "hapana": "ndiyo"}
_NUMBER = re.compile(r"^-?\d[\d,]*(\.\d+)?$")


def unit_draw(seed: int, key: str, salt: str = "q") -> float:
    """A number in [0, 1) fixed by ``(seed, key, salt)`` (sha256; no global random state)."""
    h = hashlib.sha256(f"{int(seed)}\x00{salt}\x00{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0 ** 64


def claimed_answer(reasoning: str) -> str | None:
    """The answer a controlled-teacher reasoning leads to (the text after its last "So the answer is ")."""
    i = reasoning.rfind(ANSWER_LEAD)
    if i < 0:
        return None
    return reasoning[i + len(ANSWER_LEAD):].rstrip().removesuffix(".")


def _choices(example: Mapping[str, Any]) -> list[str]:
    out, k = [], 1
    while f"choice{k}" in example:
        out.append(str(example[f"choice{k}"]))
        k += 1
    return out


def wrong_answer(example: Mapping[str, Any], gold: str, *, seed: int) -> str:
    """A deterministic answer that is not ``gold`` (see the module docstring for the rule per answer type)."""
    key = str(example.get("id", ""))
    pick = unit_draw(seed, key, "wrong")
    choices = _choices(example)
    if choices and gold.isdigit() and 1 <= int(gold) <= len(choices) and len(choices) > 1:
        others = [str(k) for k in range(1, len(choices) + 1) if str(k) != gold]
        return others[int(pick * len(others))]
    if gold.lower() in _PAIRS:
        other = _PAIRS[gold.lower()]
        return other.capitalize() if gold[:1].isupper() else other
    if _NUMBER.match(gold):
        value = float(gold.replace(",", ""))
        step = max(1, int(abs(value) * 0.5 * pick) + 1)
        sign = 1 if unit_draw(seed, key, "sign") < 0.5 or value - step < 0 else -1
        wrong = value + sign * step
        text = str(int(wrong)) if wrong == int(wrong) and "." not in gold else f"{wrong:g}"
        return text if text != gold else str(int(wrong) + 1)
    words = re.findall(r"[^\s.,;:!?\"()]+", str(example.get("inputs", "")))
    n = max(1, len(gold.split()))
    spans = [" ".join(words[i:i + n]) for i in range(max(0, len(words) - n + 1))]
    low = gold.lower()
    spans = [s for s in spans if low not in s.lower() and s.lower() not in low]
    if not spans:
        return "none of these" if "none of these" not in low else "something else"
    return spans[int(pick * len(spans))]


def _evidence(example: Mapping[str, Any], *, hide: str | None = None) -> str:
    """A short clause about the input, so the reasoning reads like it was written for this example; ``hide``
    (the gold answer, in misleading reasoning) is blanked out of it."""
    words = str(example.get("inputs", "")).split()
    head = " ".join(words[:12]).rstrip(".,;:!?")
    if hide:
        head = re.sub(rf"(?<!\w){re.escape(hide)}(?!\w)", "...", head, flags=re.IGNORECASE)
    return f"The question says: {head}" if head else "Reading the question carefully"


@gin.configurable
class ControlledTeacher:
    """Simulated reasoning of quality ``q`` (see the module docstring). ``identity``:
    ``simulated:controlled-teacher:q=<q>:seed=<seed>``."""

    def __init__(self, *, q: float, seed: int = 0, answer_key: str = "targets"):
        q = float(q)
        if not 0.0 <= q <= 1.0:
            raise UserError(f"controlled teacher: q must be in [0, 1], got {q}")
        self.q = q
        self.seed = int(seed)
        self.answer_key = str(answer_key)

    def __repr__(self) -> str:
        return f"ControlledTeacher(q={self.q}, seed={self.seed}) [simulated]"

    @property
    def identity(self) -> str:
        return f"simulated:controlled-teacher:q={self.q:g}:seed={self.seed}"

    def consistent(self, example_id: str) -> bool:
        """Does this example get reasoning that leads to its gold answer?"""
        return unit_draw(self.seed, str(example_id)) < self.q

    def reasoning(self, example: Mapping[str, Any]) -> str:
        if "id" not in example:
            raise UserError("controlled teacher: an example without an 'id' (the draw is keyed by it)")
        if self.answer_key not in example:
            raise UserError(f"controlled teacher: example {example['id']} has no gold answer "
                            f"{self.answer_key!r}")
        gold = str(example[self.answer_key]).strip()
        if self.consistent(str(example["id"])):
            return f"Let's think step by step. {_evidence(example)}. {ANSWER_LEAD}{gold}."
        wrong = wrong_answer(example, gold, seed=self.seed)
        return f"Let's think step by step. {_evidence(example, hide=gold)}. {ANSWER_LEAD}{wrong}."

    def generate_for_examples(self, examples: Sequence[Mapping[str, Any]], prompts: Sequence[str], *,
                              max_new_tokens: int, temperature: float = 0.0,
                              stop: Sequence[str] = ()) -> list[str]:
        del prompts  # the reasoning depends on the example only (documented: a simulation, not a reading)
        stop = base.check_request(max_new_tokens, temperature, stop)
        return [base.cut_at_stop(self.reasoning(ex), stop) for ex in examples]

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                 stop: Sequence[str] = ()) -> list[str]:
        raise UserError("the controlled teacher (simulated) writes reasoning for examples only; it cannot answer "
                        "a free prompt such as the student-instruction request: bind STUDENT_INSTRUCTION "
                        "(fiat_method.student_instruction)")

    def score(self, prompt: str, options: Sequence[str]) -> list[float]:
        raise UserError("the controlled teacher (simulated) cannot score options: it has no likelihoods")
