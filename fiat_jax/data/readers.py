"""Row readers for the published data files: every bad row is counted and reported with file and line.

A row with a missing field, a bad label or empty text never disappears silently: the reader records it in a
``RowReport`` (logged as one warning per file) and, in strict mode, raises ``UserError`` at the first one.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from fiat_jax.errors import UserError

log = logging.getLogger(__name__)

# How to obtain each data set; quoted in the one-line error for a missing file.
HOW_TO_GET: dict[str, str] = {
    "mgsm": "get mgsm_<lang>.tsv from github.com/google-research/url-nlp (mgsm/) and exemplars.json "
            "(see ../shared/data/README.md)",
    "xcopa": "get val.<lang>.jsonl / test.<lang>.jsonl from github.com/cambridgeltl/xcopa (data/)",
    "tydiqa_goldp": "get <language>_dev.json from github.com/sagorbrur/tydiqa-language-specific (language_data/)",
    "alpaca_scored": "get en-alpaca52k-stage3.jsonl from github.com/xubuvd/PhasedSFT (Alpaca-scored/)",
    "xor_attriqa": "unzip storage.googleapis.com/gresearch/xor_attriqa/xor_attriqa.zip into DATA_DIR/xor_attriqa",
    "xtreme_up": "untar storage.googleapis.com/xtreme-up/xtreme-up-v1.1.jsonl.tgz into DATA_DIR/xtreme_up "
                 "(giving xtreme_up/qa_in_lang/<split>/<lang>.jsonl)",
    "teacher": "run `fiat teach` for this task and split (see docs/CONTRACTS.md, Materialised teacher outputs)",
}


def require_file(path: str | os.PathLike, dataset: str) -> str:
    """The path as str, or one ``UserError`` naming it and how to get the data."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"missing data file {path} ({dataset}): {HOW_TO_GET.get(dataset, 'see README')}; "
                        f"point DATA_DIR at the directory that holds it")
    return path


@dataclasses.dataclass(frozen=True)
class RowIssue:
    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclasses.dataclass
class RowReport:
    """Counts of rows read and rows rejected (with file:line and reason), per reader call."""

    strict: bool = False
    read: int = 0
    issues: list[RowIssue] = dataclasses.field(default_factory=list)

    def bad(self, path: str, line: int, reason: str) -> None:
        issue = RowIssue(path, line, reason)
        if self.strict:
            raise UserError(f"bad row {issue} (strict mode)")
        self.issues.append(issue)

    def log_summary(self) -> None:
        if self.issues:
            shown = "; ".join(str(i) for i in self.issues[:5])
            more = f" (+{len(self.issues) - 5} more)" if len(self.issues) > 5 else ""
            log.warning("skipped %d bad rows of %d: %s%s", len(self.issues), self.read + len(self.issues),
                        shown, more)


def json_object_lines(lines: Iterable[str], *, what: str, path: str | os.PathLike
                      ) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` for each non-blank line of a JSONL file whose every row must be a JSON object: a bad
    line is one UserError line ``{what}: {path}:{line}: ...`` (user files that must be right, not skipped)."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{what}: {path}:{lineno}: not JSON ({err.msg})") from err
        if not isinstance(row, dict):
            raise UserError(f"{what}: {path}:{lineno}: a row must be a JSON object")
        yield lineno, row


class BadRow(ValueError):
    """Raised by a row parser for a row that must be reported and skipped."""


def read_jsonl(path: str, parse: Callable[[dict[str, Any]], dict[str, Any]], report: RowReport
               ) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, parsed example) for each good row; bad JSON or ``BadRow`` goes to the report."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise BadRow("not a JSON object")
                example = parse(row)
            except json.JSONDecodeError as err:
                report.bad(path, line_no, f"invalid JSON ({err.msg})")
                continue
            except BadRow as err:
                report.bad(path, line_no, str(err))
                continue
            report.read += 1
            yield line_no, example


def read_tsv(path: str, parse: Callable[[list[str]], dict[str, Any]], report: RowReport
             ) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, parsed example) for each good TSV row (no header, no quoting)."""
    with open(path, encoding="utf-8", newline="") as f:
        for line_no, fields in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if not fields or not any(x.strip() for x in fields):
                continue
            try:
                example = parse(fields)
            except BadRow as err:
                report.bad(path, line_no, str(err))
                continue
            report.read += 1
            yield line_no, example


def text_field(row: dict[str, Any], key: str) -> str:
    """A required non-empty string field, or ``BadRow``."""
    if key not in row or row[key] is None:
        raise BadRow(f"missing field {key!r}")
    value = row[key]
    if not isinstance(value, str):
        raise BadRow(f"field {key!r} is not text: {value!r}")
    if not value.strip():
        raise BadRow(f"empty text in field {key!r}")
    return value


def label_field(row: dict[str, Any], key: str, allowed: Sequence[Any]) -> Any:
    """A required field whose value is one of ``allowed``, or ``BadRow``."""
    if key not in row:
        raise BadRow(f"missing field {key!r}")
    if row[key] not in allowed:
        raise BadRow(f"bad label {key}={row[key]!r} (expected one of {list(allowed)})")
    return row[key]
