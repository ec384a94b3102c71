"""Read materialised teacher outputs (written by fiat_jax/teachers/materialise.py, the only writer) and join them
to task examples by ``id``.

Layout (docs/CONTRACTS.md, "Materialised teacher outputs"): ``<teacher_dir>/<task>/<split>.jsonl``, one JSON row
per example: ``{"id", "task", "split", "recipe", "recipe_hash", "teacher", "output", ...}``. One file holds one
teacher and one recipe hash; an example of the split with no teacher row is reported (strict mode: an error).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable
from typing import Any

from fiat_jax.data import readers
from fiat_jax.data.readers import BadRow, RowReport
from fiat_jax.errors import UserError

log = logging.getLogger(__name__)
REQUIRED = ("id", "task", "split", "recipe_hash", "teacher", "output")


@dataclasses.dataclass(frozen=True)
class TeacherOutputs:
    path: str
    teacher: str
    recipe_hash: str
    recipe: str
    outputs: dict[str, str]  # example id -> teacher output


def teacher_file(teacher_dir: str, task: str, split: str) -> str:
    return os.path.join(teacher_dir, task, f"{split}.jsonl")


def read_teacher_outputs(teacher_dir: str, task: str, split: str, *, strict: bool = False) -> TeacherOutputs:
    path = readers.require_file(teacher_file(teacher_dir, task, split), "teacher")
    report = RowReport(strict=strict)

    def parse(row: dict[str, Any]) -> dict[str, Any]:
        for key in REQUIRED:
            if key not in row:
                raise BadRow(f"missing field {key!r}")
        if not isinstance(row["output"], str) or not row["output"].strip():
            raise BadRow("empty text in field 'output'")
        if row["task"] != task or row["split"] != split:
            raise BadRow(f"row is for {row['task']}/{row['split']}, file is for {task}/{split}")
        return row

    rows = [row for _, row in readers.read_jsonl(path, parse, report)]
    report.log_summary()
    if not rows:
        raise UserError(f"{path}: no usable teacher outputs")
    identities = {(r["teacher"], r["recipe_hash"]) for r in rows}
    if len(identities) != 1:
        raise UserError(f"{path}: mixes teachers/recipes {sorted(identities)}; write one file per teacher+recipe")
    (teacher, recipe_hash), = identities
    outputs: dict[str, str] = {}
    for row in rows:
        if row["id"] in outputs and outputs[row["id"]] != row["output"]:
            raise UserError(f"{path}: two different outputs for id {row['id']!r}")
        outputs[str(row["id"])] = row["output"]
    return TeacherOutputs(path=path, teacher=teacher, recipe_hash=str(recipe_hash),
                          recipe=str(rows[0].get("recipe", "")), outputs=outputs)


def join(examples: Iterable[dict[str, Any]], outputs: TeacherOutputs, *, strict: bool = False
         ) -> list[dict[str, Any]]:
    """Examples with ``teacher_output``, ``teacher`` and ``recipe_hash`` added; a missing id is reported."""
    joined, missing = [], []
    for ex in examples:
        ex_id = ex["id"].decode() if isinstance(ex["id"], bytes) else str(ex["id"])
        if ex_id not in outputs.outputs:
            missing.append(ex_id)
            continue
        joined.append(dict(ex, teacher_output=outputs.outputs[ex_id], teacher=outputs.teacher,
                           recipe_hash=outputs.recipe_hash))
    if missing:
        msg = (f"{outputs.path}: no teacher output for {len(missing)} of {len(missing) + len(joined)} examples "
               f"(first: {missing[0]})")
        if strict:
            raise UserError(msg + " (strict mode)")
        log.warning("%s; those examples are left out", msg)
    return joined
