"""Reading a sweep's ``results.jsonl`` as the report does: one row per run, a later row with the same
``config_hash`` (a rerun) replacing an earlier one. Shared by the evidence tables of every paper."""

from __future__ import annotations

import pathlib
from typing import Any

from fiat_jax.data import readers
from fiat_jax.errors import UserError


def read_rows(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """The rows of ``path``, the last one per config hash; a missing file or a line that is not JSON is a UserError."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise UserError(f"evidence: no results file {path} (run `make evidence` first)")
    rows: dict[str, dict[str, Any]] = {}
    for number, row in readers.json_object_lines(path.read_text().splitlines(), what="evidence", path=path):
        rows[str(row.get("config_hash") or row.get("run_id") or number)] = row
    return list(rows.values())
