"""Prompt recipes: versioned text files (``fiat_jax/teachers/recipes/*.txt``) plus the parser of their replies.

A recipe file is ``key: value`` header lines (values are JSON when they parse as JSON), ``---``, then the prompt
template (``str.format`` fields such as ``{input}``; literal braces doubled). ``#`` lines in the header are
comments. Header keys: ``name``, ``version``, ``scope`` (``example``: one output per task example; ``task``: one per
task, e.g. instruction writing), ``parser`` (see :data:`PARSERS`), ``max_new_tokens``, ``temperature``, ``stop``,
``expand`` (``sentences``: one prompt per sentence of ``{document}``), ``defaults`` (variable defaults),
``example_block`` (the template of one labelled example, ``{inputs}``/``{input}`` and ``{targets}``: what
:meth:`Recipe.examples_block` repeats for the ``{examples}`` of a few-shot prompt) and ``answer_header`` (put
after each ``{input}`` as ``{answer_header}``, unless that input already ends in its own header, a ``:``).

Every word a teacher reads is in these files; code only chooses the values of the fields.

``text_hash`` = sha256 of the recipe file's text + its version: any edit to a recipe changes the hash stored with
every output, so outputs of different prompts never mix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin

from fiat_jax.data import exemplars as exemplars_lib
from fiat_jax.data.text import split_sentences
from fiat_jax.errors import UserError

__all__ = ["ParseError", "Recipe", "available", "cot_exemplars", "load", "parse_first_line", "parse_instruction",
           "parse_lines", "parse_score", "parse_text", "parse_verdict", "recipe_path", "split_sentences"]

RECIPE_DIR = pathlib.Path(__file__).resolve().parent / "recipes"
SCOPES = ("example", "task")


class ParseError(ValueError):
    """A teacher reply that does not fit the recipe's expected form."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    version: str
    template: str
    text: str  # the whole file: what the hash covers
    path: str
    scope: str = "example"
    parser: str = "text"
    max_new_tokens: int = 256
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    expand: str | None = None
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    example_block: str | None = None
    answer_header: str | None = None

    @property
    def text_hash(self) -> str:
        """sha256 of the recipe text + version (hex)."""
        return hashlib.sha256(f"{self.text}\n{self.version}".encode("utf-8")).hexdigest()

    @property
    def fields(self) -> list[str]:
        """The variables the template uses."""
        return sorted({f for _, f, _, _ in string.Formatter().parse(self.template) if f})

    def render(self, variables: Mapping[str, Any]) -> str:
        """The prompt for ``variables`` (recipe defaults fill the gaps); a UserError names a missing one."""
        return self._fill(self.template, self._framed({**self.defaults, **variables}))

    def examples_block(self, examples: Sequence[Mapping[str, Any]]) -> str:
        """The ``example_block`` filled in for each example, joined: the ``{examples}`` of a few-shot prompt (an
        example's missing ``inputs``/``targets`` read as empty)."""
        if self.example_block is None:
            raise UserError(f"recipe {self.name}: no example_block in its header (the form of one example)")
        blocks = []
        for example in examples:
            values = {"inputs": "", "targets": "", **example}
            values.setdefault("input", values["inputs"])
            blocks.append(self._fill(self.example_block, self._framed(values)))
        return "".join(blocks)

    def _framed(self, values: dict[str, Any]) -> dict[str, Any]:
        """With an ``answer_header``: ``{input}`` right-stripped, and ``{answer_header}`` empty when that input
        already ends in its own header (XCOPA's "Answer:", MGSM's "Step-by-Step Answer:")."""
        if self.answer_header is None or "input" not in values:
            return values
        text = str(values["input"]).rstrip()
        return {**values, "input": text, "answer_header": "" if text.endswith(":") else self.answer_header}

    def _fill(self, template: str, values: Mapping[str, Any]) -> str:
        fields = sorted({f for _, f, _, _ in string.Formatter().parse(template) if f})
        missing = [f for f in fields if f not in values]
        if missing:
            raise UserError(f"recipe {self.name}: no value for {{{missing[0]}}} (have: "
                            f"{', '.join(sorted(values)) or 'nothing'}); bind teach.variables")
        return template.format_map({k: values[k] for k in fields})

    def parse(self, reply: str) -> str:
        """The reply in its canonical form (raises :class:`ParseError`)."""
        return PARSERS[self.parser](reply)


def recipe_path(name_or_path: str) -> pathlib.Path:
    """A packaged recipe by name (``fiat_reasoning``) or a path to a recipe file."""
    path = pathlib.Path(str(name_or_path)).expanduser()
    if path.suffix == ".txt" or path.exists() or "/" in str(name_or_path):
        if not path.is_file():
            raise UserError(f"recipe file {path} not found")
        return path
    packaged = RECIPE_DIR / f"{name_or_path}.txt"
    if not packaged.is_file():
        raise UserError(f"unknown recipe {name_or_path!r} (packaged: {', '.join(available())}; or give a path)")
    return packaged


def available() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.txt"))


def load(name_or_path: str) -> Recipe:
    """Read and validate a recipe file (see the module docstring for the format)."""
    path = recipe_path(name_or_path)
    text = path.read_text(encoding="utf-8")
    head, sep, template = text.partition("\n---\n")
    if not sep:
        raise UserError(f"recipe {path}: no '---' line between the header and the template")
    meta: dict[str, Any] = {}
    for n, line in enumerate(head.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise UserError(f"recipe {path}:{n}: expected 'key: value', got {line!r}")
        value = value.strip()
        try:
            meta[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            meta[key.strip()] = value
    for key in ("name", "version"):
        if key not in meta:
            raise UserError(f"recipe {path}: header lacks {key!r}")
    known = {"name", "version", "scope", "parser", "max_new_tokens", "temperature", "stop", "expand", "defaults",
             "example_block", "answer_header"}
    unknown = sorted(set(meta) - known)
    if unknown:
        raise UserError(f"recipe {path}: unknown header key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    parser = str(meta.get("parser", "text"))
    if parser not in PARSERS:
        raise UserError(f"recipe {path}: unknown parser {parser!r} (known: {', '.join(sorted(PARSERS))})")
    scope = str(meta.get("scope", "example"))
    if scope not in SCOPES:
        raise UserError(f"recipe {path}: scope must be one of {SCOPES}, got {scope!r}")
    expand = meta.get("expand")
    if expand not in (None, "sentences"):
        raise UserError(f"recipe {path}: expand must be 'sentences' or absent, got {expand!r}")
    stop = meta.get("stop", [])
    stop = (stop,) if isinstance(stop, str) else tuple(str(s) for s in stop)
    blocks = {key: meta[key] for key in ("example_block", "answer_header") if key in meta}
    for key, value in blocks.items():
        if not isinstance(value, str):
            raise UserError(f"recipe {path}: {key} must be a JSON string, got {value!r}")
    for what, text_ in (("template", template), *blocks.items()):
        try:
            list(string.Formatter().parse(text_))
        except ValueError as err:
            raise UserError(f"recipe {path}: bad {what} ({err}; double literal braces)") from None
    return Recipe(name=str(meta["name"]), version=str(meta["version"]), template=template.strip("\n"), text=text,
                  path=str(path), scope=scope, parser=parser, max_new_tokens=int(meta.get("max_new_tokens", 256)),
                  temperature=float(meta.get("temperature", 0.0)), stop=stop, expand=expand,
                  defaults=dict(meta.get("defaults") or {}), example_block=blocks.get("example_block"),
                  answer_header=blocks.get("answer_header"))


# ---------------------------------------------------------------------------------------------------------------
# Parsers: reply -> canonical output text.

_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")


def parse_text(reply: str) -> str:
    out = (reply or "").strip()
    if not out:
        raise ParseError("empty reply")
    return out


def parse_lines(reply: str) -> str:
    """One statement per non-empty line, bullets and numbering removed."""
    lines = [_BULLET.sub("", ln).strip() for ln in (reply or "").splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise ParseError("no statements in the reply")
    return "\n".join(lines)


_LABEL = re.compile(r"^\s*(?:\*\*)?\s*(?:instruction|task instruction)\s*(?:\*\*)?\s*:\s*(?:\*\*)?\s*", re.I)


def parse_instruction(reply: str) -> str:
    """The first non-empty paragraph, without an "Instruction:" label or surrounding quotes."""
    text = (reply or "").strip()
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if not paragraphs:
        raise ParseError("empty reply")
    first = _LABEL.sub("", paragraphs[0]).strip()
    if not first and len(paragraphs) > 1:
        first = paragraphs[1]
    first = " ".join(first.split()).strip("\"'“”` ")
    if not first:
        raise ParseError("no instruction in the reply")
    return first


_NUM = r"(\d+(?:[.,]5)?|\b(?:one|two|three|four|five)\b)"
_WORDS = {"one": 1.0, "two": 2.0, "three": 3.0, "four": 4.0, "five": 5.0}
_SCORE_PATTERNS = (
    re.compile(_NUM + r"\s*(?:/|out\s+of|of)\s*5\b", re.I),                                  # 4/5, 4 out of 5
    re.compile(r"\b(?:score|rating|difficulty|rate|rated|level)\b[^\d\n]{0,25}?" + _NUM + r"\b", re.I),
    re.compile(r"\*\*\s*" + _NUM + r"\s*\*\*", re.I),                                         # **3**
)


def _value(token: str) -> float:
    token = token.lower().replace(",", ".")
    return _WORDS[token] if token in _WORDS else float(token)


def parse_score(reply: str) -> str:
    """A difficulty score in [1, 5] (halves allowed) as text ("4", "2.5"): "Score: 4", "4/5", "**3**", "I'd rate
    it a four", or a reply whose only number in range is the score. Anything else is a ParseError."""
    text = (reply or "").strip()
    if not text:
        raise ParseError("empty reply")
    for pattern in _SCORE_PATTERNS:
        for m in pattern.finditer(text):
            value = _value(m.group(1))
            if 1.0 <= value <= 5.0:
                return f"{value:g}"
    candidates = {_value(t) for t in re.findall(r"(?<![\w.])(\d+(?:\.5)?)(?!\w|\.\d)", text)}
    candidates |= {_WORDS[w.lower()] for w in re.findall(r"\b(one|two|three|four|five)\b", text, re.I)}
    in_range = {v for v in candidates if 1.0 <= v <= 5.0}
    if len(in_range) == 1:
        return f"{in_range.pop():g}"
    raise ParseError(f"no score 1-5 in the reply ({'ambiguous: ' + str(sorted(in_range)) if in_range else 'none'})")


_TIE = re.compile(r"\b(tie|equal|same)\b", re.IGNORECASE)
_VERDICT = re.compile(r"\b([AB])\b")  # upper case only: "a" is usually the article


def parse_first_line(reply: str) -> str:
    """A direct answer: the reply's first non-empty line, stripped (a model may go on with the next example's
    input); an empty reply is an empty answer (it is scored as wrong, never re-asked)."""
    return next((ln.strip() for ln in (reply or "").splitlines() if ln.strip()), "")


def parse_verdict(reply: str) -> str:
    """A pairwise judge's verdict as "A", "B" or "tie" (the first of them in its reply; anything else is a tie,
    so this parser never fails)."""
    text = (reply or "").strip()
    if _TIE.search(text):
        return "tie"
    match = _VERDICT.search(text)
    return "tie" if match is None else match.group(1)


PARSERS: dict[str, Callable[[str], str]] = {"text": parse_text, "lines": parse_lines,
                                             "instruction": parse_instruction, "score_1_5": parse_score,
                                             "verdict": parse_verdict, "first_line": parse_first_line}


# ---------------------------------------------------------------------------------------------------------------
# Variables computed per task.

@gin.configurable
def cot_exemplars(*, k: int = 4, data_dir: str | None = None) -> Callable[[str], str]:
    """``teach.variables = {'exemplars': @cot_exemplars()}``: per task, the first ``k`` published MGSM
    chain-of-thought exemplars of its language for ``mgsm_<lang>`` tasks, nothing for other tasks."""

    def exemplars(task: str) -> str:
        # Lazy: the exemplars module imports TensorFlow (preprocessors), which `fiat teach` start-up avoids.

        return exemplars_lib.mgsm_cot_prefix(task, k=k, data_dir=data_dir)

    return exemplars
