"""The user's own documents and probes as a task source for augmented fine-tuning (docs/CONTRACTS.md, "Documents
and probe files"): what the synthetic facts world (``data/synthetic.py``) is for the paper, a company's handbook
is for a user.

- documents file (JSONL, one document per row): ``{"id": str, "text": str, "language": str (optional)}``;
- probe file (JSONL, one multiple-choice item per row): ``{"prompt": str, "options": [str, ...], "answer": str
  (one of the options), "kind": str, "id": str (optional, default "probe<line>")}``. ``kind`` groups the accuracy
  (e.g. ``rephrase``, ``reversal``, ``syllogism``, ``held_out``); each option is scored as the statement
  ``"<prompt> <option>"`` by the student's likelihood, as the synthetic items are.

Rows come back in the shapes the synthetic world uses (documents ``{"id", "language", "text"}``, items
``{"id", "language", "kind", "question", "options", "answer": index}``), so the method has one code path. A bad
row is a UserError of one line naming the file, the line and the field.
"""

from __future__ import annotations

import os
from typing import Any

from fiat_jax.data import readers
from fiat_jax.errors import UserError


def _rows(path: str, what: str) -> list[tuple[int, dict[str, Any]]]:
    if not os.path.isfile(path):
        raise UserError(f"{what}: no file {path}")
    with open(path, encoding="utf-8") as fh:
        out = list(readers.json_object_lines(fh, what=what, path=path))
    if not out:
        raise UserError(f"{what}: {path} has no rows")
    return out


def _text(row: dict[str, Any], field: str, where: str, *, required: bool = True) -> str | None:
    if field not in row or row[field] is None:
        if required:
            raise UserError(f"{where}: missing field '{field}'")
        return None
    value = row[field]
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: field '{field}' must be a non-empty string")
    return value.strip()


def _claim_id(seen: dict[str, int], item_id: str, *, where: str, lineno: int) -> str:
    """``item_id``, once per file: a second use is a UserError naming the line of the first."""
    if item_id in seen:
        raise UserError(f"{where}: field 'id': {item_id!r} already used on line {seen[item_id]}")
    seen[item_id] = lineno
    return item_id


def _language(row: dict[str, Any], where: str) -> str:
    return _text(row, "language", where, required=False) or ""


def read_documents(path: str) -> list[dict[str, Any]]:
    """The documents of a documents file (see the module docstring); ids must be unique."""
    docs: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for lineno, row in _rows(path, "documents file"):
        where = f"documents file {path}:{lineno}"
        doc_id = _claim_id(seen, _text(row, "id", where), where=where, lineno=lineno)
        docs.append({"id": doc_id, "language": _language(row, where), "text": _text(row, "text", where)})
    return docs


def read_probes(path: str) -> list[dict[str, Any]]:
    """The multiple-choice items of a probe file (see the module docstring); ids must be unique."""
    items: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for lineno, row in _rows(path, "probe file"):
        where = f"probe file {path}:{lineno}"
        prompt = _text(row, "prompt", where)
        kind = _text(row, "kind", where)
        if "options" not in row:
            raise UserError(f"{where}: missing field 'options'")
        options = row["options"]
        if (not isinstance(options, list) or len(options) < 2
                or not all(isinstance(o, str) and o.strip() for o in options)):
            raise UserError(f"{where}: field 'options' must be a list of at least 2 non-empty strings")
        options = [o.strip() for o in options]
        if len(set(options)) != len(options):
            raise UserError(f"{where}: field 'options' repeats an option")
        answer = _text(row, "answer", where)
        if answer not in options:
            raise UserError(f"{where}: field 'answer': {answer!r} is not one of the options {options}")
        item_id = _claim_id(seen, _text(row, "id", where, required=False) or f"probe{lineno}", where=where,
                            lineno=lineno)
        items.append({"id": item_id, "language": _language(row, where), "kind": kind, "question": prompt, "options": options, "answer": options.index(answer)})
    return items


def documents_task_name(documents: list[dict[str, Any]]) -> str:
    """``documents_<language>`` when every document names the same language, else ``documents``."""
    languages = {d.get("language") or "" for d in documents}
    return f"documents_{languages.pop()}" if len(languages) == 1 and "" not in languages else "documents"
