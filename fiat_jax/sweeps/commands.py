"""The argv of a sweep's runs: gin files resolved to absolute paths and bindings written as ``--gin.K=V``
flags that the CLI parses back to the same values."""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from fiat_jax import gin_utils
from fiat_jax.errors import UserError
from fiat_jax.sweeps.plan import RunSpec


def gin_flag(key: str, value: Any) -> str:
    """``--gin.KEY=VALUE`` that the CLI parses back to the same Python value (plain paths stay unquoted)."""
    if isinstance(value, str):
        plain = value and value == value.strip() and not _looks_literal(value)
        if plain or value.startswith(("@", "%")):
            return f"--gin.{key}={value}"
    return f"--gin.{key}={value!r}"


def _looks_literal(text: str) -> bool:
    """Whether the CLI would read ``text`` as a Python literal (then a string must be quoted to stay one)."""
    if text in ("True", "False", "None"):
        return True
    try:
        ast.literal_eval(text)
        return True
    except (ValueError, SyntaxError):
        return False


def subcommands(subcommand: str | Sequence[str]) -> list[str]:
    """``"run"`` -> ``["run"]``; ``["train", "eval"]`` stays a list (each run executes them in order)."""
    names = [subcommand] if isinstance(subcommand, str) else list(subcommand)
    if not names:
        raise UserError("sweep.subcommand is empty: name the fiat subcommand(s) each run executes")
    return names


def run_commands(spec: RunSpec, *, run_dir: pathlib.Path, resolved_files: Mapping[str, pathlib.Path],
                 subcommand: str | Sequence[str], command: Sequence[str], python: str,
                 gin_search_paths: Sequence[str] = ()) -> list[list[str]]:
    """The argv of each subprocess of one run (gin files as absolute paths so the working directory does not
    matter); several when the run executes several subcommands (e.g. ``train`` then ``eval``)."""
    shared = [f"--gin_file={resolved_files[name]}" for name in spec.gin_files]
    shared += [f"--gin_search_paths={pathlib.Path(path).expanduser().resolve()}" for path in gin_search_paths]
    shared.append(gin_flag("MODEL_DIR", str(run_dir)))
    shared += [gin_flag(k, v) for k, v in spec.bindings]
    return [[python, *command, *([name] if name else []), *shared] for name in subcommands(subcommand)]


def resolve_gin_files(runs: Sequence[RunSpec], gin_search_paths: Sequence[str] = ()) -> dict[str, pathlib.Path]:
    """Absolute path of every gin file the runs use; a UserError naming all that are missing."""
    paths = gin_utils.search_paths(gin_search_paths)
    resolved, missing = {}, []
    for name in dict.fromkeys(f for run in runs for f in run.gin_files):
        try:
            resolved[name] = gin_utils.resolve_gin_file(name, paths)
        except UserError:
            missing.append(name)
    if missing:
        raise UserError(f"sweep: gin file(s) not found: {', '.join(missing)} "
                        f"(searched: {', '.join(str(p) for p in paths)})")
    return resolved
