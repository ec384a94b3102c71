"""Readers of each published data set, file layout as released, into plain example dicts per native split.

Every example has a stable ``id`` (used to join teacher outputs) and a ``language``. The TFDS builders in
``tfds_builders.py`` turn these into TFRecords; the functions here are plain Python so they are easy to test.

Expected layouts under ``data_dir`` (the DATA_DIR gin macro):
  mgsm/mgsm_<lang>.tsv, mgsm/exemplars.json            question<TAB>answer; 250 rows per language
  xcopa/val.<lang>.jsonl, xcopa/test.<lang>.jsonl      100 / 500 rows per language, no train split (carved:
                                                       seeded 80 train + 20 validation of val, test as published)
  tydiqa_goldp/<language>_dev.json                     SQuAD v1.1 JSON, one dev file per language
  alpaca_scored/en-alpaca52k-stage3.jsonl              {"id", "score", "data": [instruction, response]}
  xor_attriqa/in-language/<lang>.jsonl                 test rows per language (bn fi ja ru te), plus
  xor_attriqa/in-language/{train,val}.jsonl            mixed-language train (50/lang) and validation (100/lang)
  xtreme_up/<qa_in_lang|qa_cross_lang>/<train|validation|test>/<lang>.jsonl   (dev/ is read for validation too)
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

from fiat_jax.data import readers
from fiat_jax.data.readers import BadRow, RowReport
from fiat_jax.errors import UserError

Examples = dict[str, list[dict[str, Any]]]  # native split -> examples

MGSM_LANGUAGES = ("bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")
XCOPA_LANGUAGES = ("et", "ht", "id", "it", "qu", "sw", "ta", "th", "tr", "vi", "zh")
TYDIQA_LANGUAGES = {"ar": "arabic", "bn": "bengali", "en": "english", "fi": "finnish", "id": "indonesian",
                    "ko": "korean", "ru": "russian", "sw": "swahili", "te": "telugu"}
XOR_ATTRIQA_LANGUAGES = ("bn", "fi", "ja", "ru", "te")
XTREME_UP_QA_LANGUAGES = ("ar", "bn", "en", "fi", "id", "ko", "ru", "sw", "te")
_LANGUAGE_NAMES = {"bengali": "bn", "finnish": "fi", "japanese": "ja", "russian": "ru", "telugu": "te"}


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One published data set: its languages, feature kinds and a reader into native splits."""

    name: str
    languages: tuple[str, ...]
    features: dict[str, str]  # feature -> "text" | "int" | "float" | "text_list"
    read: Callable[[str, str, RowReport], Examples]
    # One file that must exist for the language to be available (tasks are left out of mixtures otherwise).
    probe: Callable[[str, str], str]
    # The input fields that make two examples the same item (the disjointness check compares them normalised).
    content_fields: tuple[str, ...] = ()
    # Where the published files live under DATA_DIR (the prepared-data cache is keyed by their contents).
    subdir: str = ""
    # A source without a train split carves one out of a published split: (that split, {piece: fraction}),
    # seeded; XCOPA's 100 validation items become 80 train + 20 validation, its 500 test items stay the test.
    carve: tuple[str, dict[str, float]] | None = None

    def split_origins(self) -> dict[str, str]:
        """Where each split a task of this source reads comes from, in words (``fiat tasks list``)."""
        if self.carve is not None:
            native, pieces = self.carve
            return {**{name: f"seeded {fraction:.0%} of published {native}" for name, fraction in pieces.items()},
                    "test": "published test"}
        return {}


# ---------------------------------------------------------------- MGSM
def read_mgsm(data_dir: str, lang: str, report: RowReport) -> Examples:
    path = readers.require_file(os.path.join(data_dir, "mgsm", f"mgsm_{lang}.tsv"), "mgsm")

    def parse(fields: list[str]) -> dict[str, Any]:
        if len(fields) != 2:
            raise BadRow(f"expected 2 tab-separated fields (question, answer), got {len(fields)}")
        question, answer = fields[0].strip(), fields[1].strip()
        if not question:
            raise BadRow("empty question")
        if not _is_number(answer):
            raise BadRow(f"bad label: answer {answer!r} is not a number")
        return {"question": question, "answer": answer}

    rows = [dict(ex, id=f"mgsm/{lang}/{line:04d}", language=lang)
            for line, ex in readers.read_tsv(path, parse, report)]
    return {"test": rows}


def mgsm_exemplars(data_dir: str, lang: str) -> list[dict[str, str]]:
    """The 8 hand-translated chain-of-thought exemplars of a language: [{"q", "a"}] in their published order."""
    path = readers.require_file(os.path.join(data_dir, "mgsm", "exemplars.json"), "mgsm")
    with open(path, encoding="utf-8") as f:
        table = json.load(f)["MGSM_EXEMPLARS"]
    if lang not in table:
        raise UserError(f"{path}: no exemplars for language {lang!r}")
    return [table[lang][k] for k in sorted(table[lang], key=int)]


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- XCOPA
def read_xcopa(data_dir: str, lang: str, report: RowReport) -> Examples:
    out: Examples = {}
    for split, stem in (("validation", "val"), ("test", "test")):
        path = readers.require_file(os.path.join(data_dir, "xcopa", f"{stem}.{lang}.jsonl"), "xcopa")

        def parse(row: dict[str, Any], split=split) -> dict[str, Any]:
            ex = {k: readers.text_field(row, k) for k in ("premise", "choice1", "choice2")}
            ex["question"] = readers.label_field(row, "question", ("cause", "effect"))
            ex["label"] = int(readers.label_field(row, "label", (0, 1)))
            if "idx" not in row:
                raise BadRow("missing field 'idx'")
            ex["id"] = f"xcopa/{lang}/{split}/{row['idx']}"
            return ex

        out[split] = [dict(ex, language=lang) for _, ex in readers.read_jsonl(path, parse, report)]
    return out


# ---------------------------------------------------------------- SQuAD-format QA (TyDi QA GoldP)
def read_squad_json(path: str, lang: str, report: RowReport, *, id_prefix: str) -> list[dict[str, Any]]:
    """Questions of a SQuAD v1.1 JSON file; a question without answers or text is reported as bad."""
    with open(path, encoding="utf-8") as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from err
    rows = []
    for a_i, article in enumerate(doc.get("data", [])):
        for p_i, para in enumerate(article.get("paragraphs", [])):
            for q_i, qa in enumerate(para.get("qas", [])):
                where = f"data[{a_i}].paragraphs[{p_i}].qas[{q_i}]"
                try:
                    context = readers.text_field(para, "context")
                    question = readers.text_field(qa, "question")
                    qid = readers.text_field(qa, "id")
                    answers = [a.get("text", "") for a in qa.get("answers", [])]
                    if not answers or not all(isinstance(t, str) and t.strip() for t in answers):
                        raise BadRow("missing or empty answers")
                except BadRow as err:
                    report.bad(path, 0, f"{where}: {err}")
                    continue
                report.read += 1
                rows.append({"id": f"{id_prefix}/{qid}", "language": lang, "title": article.get("title", ""),
                             "context": context, "question": question, "answers": answers})
    return rows


def read_tydiqa(data_dir: str, lang: str, report: RowReport) -> Examples:
    path = readers.require_file(
        os.path.join(data_dir, "tydiqa_goldp", f"{TYDIQA_LANGUAGES[lang]}_dev.json"), "tydiqa_goldp")
    return {"validation": read_squad_json(path, lang, report, id_prefix=f"tydiqa/{lang}")}


# ---------------------------------------------------------------- Alpaca-scored
def read_alpaca_scored(data_dir: str, lang: str, report: RowReport) -> Examples:
    path = readers.require_file(os.path.join(data_dir, "alpaca_scored", "en-alpaca52k-stage3.jsonl"),
                                "alpaca_scored")

    def parse(row: dict[str, Any]) -> dict[str, Any]:
        data = row.get("data")
        if not isinstance(data, list) or len(data) != 2:
            raise BadRow("field 'data' must be [instruction, response]")
        instruction, response = data
        if not isinstance(instruction, str) or not instruction.strip():
            raise BadRow("empty instruction")
        if not isinstance(response, str) or not response.strip():
            raise BadRow("empty response")
        try:
            score = float(row.get("score"))
        except (TypeError, ValueError):
            raise BadRow(f"bad label: score {row.get('score')!r}") from None
        if not 1.0 <= score <= 5.0:
            raise BadRow(f"bad label: score {score} outside 1..5")
        if "id" not in row:
            raise BadRow("missing field 'id'")
        return {"id": f"alpaca/{row['id']}", "language": "en", "instruction": instruction,
                "response": response, "score": score}

    return {"train": [ex for _, ex in readers.read_jsonl(path, parse, report)]}


# ---------------------------------------------------------------- XOR-AttriQA
def _truthy(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return int(value.strip().lower() == "true")
    raise BadRow(f"bad label: ais={value!r} (expected true/false)")


def read_xor_attriqa(data_dir: str, lang: str, report: RowReport) -> Examples:
    """In-language setting: query + prediction + passage (in language or English, as retrieved) -> ais."""
    base = os.path.join(data_dir, "xor_attriqa", "in-language")
    out: Examples = {}
    val_path = os.path.join(base, "validation.jsonl")
    files = {"train": os.path.join(base, "train.jsonl"),
             "validation": val_path if os.path.isfile(val_path) else os.path.join(base, "val.jsonl"),
             "test": os.path.join(base, f"{lang}.jsonl")}
    for split, path in files.items():
        readers.require_file(path, "xor_attriqa")
        stem = os.path.splitext(os.path.basename(path))[0]

        def parse(row: dict[str, Any]) -> dict[str, Any]:
            row_lang = readers.text_field(row, "query_language").strip().lower()
            row_lang = _LANGUAGE_NAMES.get(row_lang, row_lang)
            retrieved = str(row.get("passage_retrieved_language", row_lang)).strip().lower()
            use_en = _LANGUAGE_NAMES.get(retrieved, retrieved) == "en"
            passage = readers.text_field(row, "passage_en" if use_en else "passage_in_language")
            return {"language": row_lang, "query": readers.text_field(row, "query"),
                    "prediction": readers.text_field(row, "prediction"), "passage": passage,
                    "passage_language": "en" if use_en else row_lang, "label": _truthy(row.get("ais"))}

        rows = [dict(ex, id=f"xor_attriqa/{stem}/{line:05d}")
                for line, ex in readers.read_jsonl(path, parse, report)]
        out[split] = [ex for ex in rows if ex["language"] == lang]
    return out


# ---------------------------------------------------------------- XTREME-UP QA
def read_xtreme_up_qa(data_dir: str, lang: str, report: RowReport, *, setting: str) -> Examples:
    base = os.path.join(data_dir, "xtreme_up", setting)
    out: Examples = {}
    for split, dirs in (("train", ("train",)), ("validation", ("validation", "dev")), ("test", ("test",))):
        paths = [os.path.join(base, d, f"{lang}.jsonl") for d in dirs]
        path = next((p for p in paths if os.path.isfile(p)), paths[0])
        readers.require_file(path, "xtreme_up")

        def parse(row: dict[str, Any]) -> dict[str, Any]:
            return {"question": readers.text_field(row, "question"), "context": readers.text_field(row, "context"),
                    "title": str(row.get("title") or ""), "answers": [readers.text_field(row, "target")],
                    "source_id": str(row.get("id", ""))}

        out[split] = [{"id": f"xtreme_up/{setting}/{lang}/{split}/{ex.pop('source_id') or line}",
                       "language": lang, **ex} for line, ex in readers.read_jsonl(path, parse, report)]
    return out


def _xtreme_up_qa_source(setting: str) -> SourceSpec:
    """XTREME-UP QA in one setting (``qa_in_lang`` / ``qa_cross_lang``): same fields, its own test files."""
    return SourceSpec(
        f"xtreme_up_{setting}", XTREME_UP_QA_LANGUAGES,
        {"title": "text", "context": "text", "question": "text", "answers": "text_list"},
        lambda d, lang, r: read_xtreme_up_qa(d, lang, r, setting=setting),
        lambda d, lang: os.path.join(d, "xtreme_up", setting, "test", f"{lang}.jsonl"),
        content_fields=("context", "question"), subdir=os.path.join("xtreme_up", setting))


SOURCES: dict[str, SourceSpec] = {
    "mgsm": SourceSpec("mgsm", MGSM_LANGUAGES, {"question": "text", "answer": "text"}, read_mgsm,
                       lambda d, lang: os.path.join(d, "mgsm", f"mgsm_{lang}.tsv"), content_fields=("question",),
                       subdir="mgsm"),
    "xcopa": SourceSpec("xcopa", XCOPA_LANGUAGES,
                        {"premise": "text", "choice1": "text", "choice2": "text", "question": "text",
                         "label": "int"}, read_xcopa,
                        lambda d, lang: os.path.join(d, "xcopa", f"test.{lang}.jsonl"),
                        content_fields=("premise", "choice1", "choice2", "question"), subdir="xcopa",
                        carve=("validation", {"train": 0.8, "validation": 0.2})),
    "tydiqa_goldp": SourceSpec("tydiqa_goldp", tuple(TYDIQA_LANGUAGES),
                               {"title": "text", "context": "text", "question": "text", "answers": "text_list"},
                               read_tydiqa,
                               lambda d, lang: os.path.join(d, "tydiqa_goldp", f"{TYDIQA_LANGUAGES[lang]}_dev.json"),
                               content_fields=("context", "question"), subdir="tydiqa_goldp"),
    "alpaca_scored": SourceSpec("alpaca_scored", ("en",),
                                {"instruction": "text", "response": "text", "score": "float"}, read_alpaca_scored,
                                lambda d, lang: os.path.join(d, "alpaca_scored", "en-alpaca52k-stage3.jsonl"),
                                content_fields=("instruction",), subdir="alpaca_scored"),
    "xor_attriqa": SourceSpec("xor_attriqa", XOR_ATTRIQA_LANGUAGES,
                              {"query": "text", "prediction": "text", "passage": "text", "passage_language": "text",
                               "label": "int"}, read_xor_attriqa,
                              lambda d, lang: os.path.join(d, "xor_attriqa", "in-language", f"{lang}.jsonl"),
                              content_fields=("query", "prediction", "passage"), subdir="xor_attriqa"),
    **{f"xtreme_up_{setting}": _xtreme_up_qa_source(setting) for setting in ("qa_in_lang", "qa_cross_lang")},
}
