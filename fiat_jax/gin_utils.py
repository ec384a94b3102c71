"""t5x-style gin handling: ``--gin_file`` (searched), ``--gin.X=Y`` overrides, REQUIRED macros, config.gin.

Gin's own errors are turned into one-line :class:`UserError`s naming the file or flag at fault, because a
researcher launching a sweep wants "MODEL_DIR is required" rather than a traceback.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import logging
import math
import numbers
import os
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import gin
from gin import config as gin_config

from fiat_jax.errors import UserError

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_GIN_DIR = REPO_ROOT / "gin_configs"
_BINDING_KEY = re.compile(r"^[A-Za-z_][\w./]*$")


def search_paths(extra: Iterable[str] = ()) -> list[pathlib.Path]:
    """Where gin files are looked for: the current directory, ``--gin_search_paths``, then gin_configs/."""
    paths = [pathlib.Path.cwd()]
    for entry in extra:
        paths.extend(pathlib.Path(p).expanduser() for p in str(entry).split(",") if p)
    paths.append(DEFAULT_GIN_DIR)
    return paths


def resolve_gin_file(name: str, paths: Sequence[pathlib.Path]) -> pathlib.Path:
    """The first existing ``name`` (``.gin`` optional) under ``paths``; a UserError listing where it looked."""
    candidates = [name] if name.endswith(".gin") else [name, name + ".gin"]
    for candidate in candidates:
        path = pathlib.Path(candidate).expanduser()
        if path.is_absolute():
            if path.is_file():
                return path
            continue
        for root in paths:
            if (root / path).is_file():
                return (root / path).resolve()
    where = ", ".join(str(p) for p in paths)
    raise UserError(f"gin file {name!r} not found (searched: {where})")


def binding_from_flag(flag: str) -> str:
    """``MODEL_DIR=/tmp/run`` -> ``MODEL_DIR = '/tmp/run'``; values gin can parse are kept as they are."""
    key, sep, value = flag.partition("=")
    key = key.strip()
    if not sep or not _BINDING_KEY.match(key):
        raise UserError(f"malformed --gin.{flag}: expected --gin.NAME=VALUE or --gin.function.param=VALUE")
    value = value.strip()
    if not value:
        raise UserError(f"malformed --gin.{flag}: empty value for {key}")
    if not _gin_literal(value):
        value = repr(value)
    return f"{key} = {value}"


def _gin_literal(value: str) -> bool:
    if value.startswith(("@", "%")) or value in ("True", "False", "None"):
        return True
    try:
        ast.literal_eval(value)
        return True
    except (ValueError, SyntaxError):
        return False


def split_gin_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate ``--gin.X=Y`` flags (gin bindings) from the other arguments."""
    bindings, rest = [], []
    it = iter(argv)
    for arg in it:
        if arg.startswith("--gin."):
            body = arg[len("--gin."):]
            if "=" not in body:  # "--gin.X Y" form
                try:
                    body = f"{body}={next(it)}"
                except StopIteration:
                    raise UserError(f"malformed {arg}: expected --gin.NAME=VALUE") from None
            bindings.append(body)
        else:
            rest.append(arg)
    return bindings, rest


def _error_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    where = next((line for line in lines[1:] if line.startswith("In ")), "")
    return f"{lines[0]} {where}".strip()


def _drop_search_misses(record: logging.LogRecord) -> bool:
    """gin logs an ERROR for every search path an ``include`` is *not* found in before the one it is found in."""
    return record.msg != "Path not found: %s"


@contextlib.contextmanager
def _quiet_include_search():
    root = logging.getLogger()
    root.addFilter(_drop_search_misses)
    try:
        yield
    finally:
        root.removeFilter(_drop_search_misses)


def check_gin_inputs(*, gin_files: Sequence[str] = (), bindings: Sequence[str] = (),
                     gin_search_paths: Sequence[str] = ()) -> list[pathlib.Path]:
    """Find the gin files and check the ``--gin.X=Y`` flags' form without importing any configurable's module.

    The CLI calls this before it imports the subcommand (and with it TensorFlow / JAX), so a misspelt file or a
    malformed flag is reported in a fraction of a second; returns the resolved files.
    """
    paths = search_paths(gin_search_paths)
    resolved = [resolve_gin_file(name, paths) for name in gin_files]
    for flag in bindings:
        binding_from_flag(flag)
    return resolved


def parse_gin(*, gin_files: Sequence[str] = (), bindings: Sequence[str] = (),
              gin_search_paths: Sequence[str] = (), finalize: bool = True) -> list[pathlib.Path]:
    """Parse gin files then ``--gin.X=Y`` bindings (later wins); returns the resolved files.

    Raises UserError for a missing file, an unknown configurable or parameter, a syntax error, or a malformed flag.
    """
    paths = search_paths(gin_search_paths)
    for root in paths:
        gin.add_config_file_search_path(str(root))
    resolved = [resolve_gin_file(name, paths) for name in gin_files]
    binding_lines = [binding_from_flag(flag) for flag in bindings]
    for path in resolved:
        try:
            with _quiet_include_search():
                gin.parse_config_file(str(path))
        except (ValueError, SyntaxError, TypeError, ImportError, OSError) as err:
            raise UserError(f"in gin file {path}: {_error_line(err)}") from err
    for line in binding_lines:
        try:
            gin.parse_config(line)
        except (ValueError, SyntaxError, TypeError, ImportError) as err:
            raise UserError(f"in --gin.{line.replace(' = ', '=', 1)}: {_error_line(err)}") from err
    check_required_macros()
    if finalize:
        try:
            gin.finalize()
        except ValueError as err:
            match = re.match(r"(\S+?)(?:/macro\.value)? set to `%gin.REQUIRED`", str(err))
            if match:
                name = match.group(1)
                raise UserError(f"required gin binding not set: {name} (pass --gin.{name}=...)") from err
            raise UserError(_error_line(err)) from err
    return resolved


def _references(value) -> Iterable[gin_config.ConfigurableReference]:
    if isinstance(value, gin_config.ConfigurableReference):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _references(item)
    elif isinstance(value, (list, tuple, set)):
        for item in value:
            yield from _references(item)


def _is_required(value) -> bool:
    return isinstance(value, gin_config.ConfigurableReference) and value.scoped_selector.startswith("gin.REQUIRED")


def unset_required_macros() -> list[str]:
    """Macros still bound to ``%gin.REQUIRED`` that some binding uses (directly or through other macros)."""
    macros = {scope: params.get("value") for (scope, selector), params in gin_config._CONFIG.items()
              if selector == "gin.macro"}
    referenced: set[str] = set()
    for (scope, selector), params in gin_config._CONFIG.items():
        for value in params.values():
            for ref in _references(value):
                if ref.configurable.selector == "gin.macro":
                    referenced.add(ref.scoped_selector.split("/")[0])
    return sorted(name for name in referenced if _is_required(macros.get(name)))


def check_required_macros() -> None:
    missing = unset_required_macros()
    if missing:
        flags = " ".join(f"--gin.{name}=..." for name in missing)
        raise UserError(f"required gin macro(s) not set: {', '.join(missing)} (pass {flags})")


def write_operative_config(model_dir: str | os.PathLike, *, filename: str = "config.gin") -> pathlib.Path | None:
    """Write the operative gin config next to a run's checkpoints (process 0 only); returns the path."""
    import jax  # lazy: gin_utils checks gin inputs for the CLI before any heavy import

    if jax.process_index() != 0:
        return None
    path = pathlib.Path(model_dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    text = gin.operative_config_str() or gin.config_str()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Declared argument checks: one validation pass over a configurable's operative values before any heavy work, so
# ``--gin.train.batch_size=abc`` is one line naming the binding and the expected type, not a traceback later.

@dataclasses.dataclass(frozen=True)
class Check:
    """What one argument must be: ``kind`` ("int", "number", "bool", "str", "lengths"), a range, choices."""

    kind: str
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    optional: bool = False  # None allowed

    def describe(self) -> str:
        if self.choices is not None:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            text = {"int": "an integer", "number": "a number", "bool": "True or False", "str": "a non-empty string",
                    "lengths": "a dict of feature name -> integer >= 1"}[self.kind]
            if self.min is not None and self.max is not None:
                text += f" in [{self.min:g}, {self.max:g}]"
            elif self.min is not None:
                text += f" >= {self.min:g}"
            elif self.max is not None:
                text += f" <= {self.max:g}"
        return text + (" or None" if self.optional else "")

    def convert(self, value: Any) -> Any:
        """``value`` in its checked form (an integral float becomes an int); ValueError when it does not fit."""
        if value is None:
            if self.optional:
                return None
            raise ValueError
        if self.choices is not None:
            if value not in self.choices:
                raise ValueError
            return value
        if self.kind == "bool":
            if not isinstance(value, bool) and not _numpy_bool(value):
                raise ValueError
            return bool(value)
        if self.kind == "str":
            if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
                raise ValueError
            return value
        if self.kind == "lengths":
            if not isinstance(value, Mapping) or not value:
                raise ValueError
            return {k: _INT_AT_LEAST_1.convert(v) for k, v in value.items()}
        if isinstance(value, bool) or _numpy_bool(value) or not isinstance(value, numbers.Real):
            raise ValueError
        if self.kind == "int":
            if not isinstance(value, numbers.Integral):
                if not float(value).is_integer():
                    raise ValueError
            value = int(value)
        elif self.kind == "number":
            if not math.isfinite(value):
                raise ValueError
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise ValueError
        return value


def _numpy_bool(value: Any) -> bool:
    """numpy's bool scalar (not an int subclass, and not imported here: gin_utils stays light)."""
    return type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")


def integer(*, min: int | None = None, max: int | None = None, optional: bool = False) -> Check:  # noqa: A002
    return Check("int", min=min, max=max, optional=optional)


def number(*, min: float | None = None, max: float | None = None, optional: bool = False) -> Check:  # noqa: A002
    return Check("number", min=min, max=max, optional=optional)


def boolean() -> Check:
    return Check("bool")


def string(*, optional: bool = False) -> Check:
    return Check("str", optional=optional)


def one_of(*choices: Any, optional: bool = False) -> Check:
    return Check("choice", choices=tuple(choices), optional=optional)


def lengths() -> Check:
    return Check("lengths")


_INT_AT_LEAST_1 = integer(min=1)


def _binding_source(configurable: str, param: str) -> str | None:
    """The gin macro a parameter is bound to (``%TRAIN_STEPS`` -> "TRAIN_STEPS"), or None."""
    try:
        value = gin.query_parameter(f"{configurable}.{param}")
    except (ValueError, KeyError):
        return None
    if isinstance(value, gin_config.ConfigurableReference) and value.configurable.selector == "gin.macro":
        return value.scoped_selector.rsplit("/gin.macro", 1)[0]
    return None


def check_arguments(configurable: str, values: Mapping[str, Any], checks: Mapping[str, Check]) -> dict[str, Any]:
    """Check ``values`` (a function's arguments) against ``checks``; returns them converted.

    Raises one UserError for the first bad value, naming the gin binding (and the macro it comes from, which is
    what the user typed: ``--gin.TRAIN_STEPS=ten``) and the expected type or range.
    """
    out = dict(values)
    for param, check in checks.items():
        if param not in values:
            continue
        try:
            out[param] = check.convert(values[param])
        except (ValueError, TypeError):
            binding = f"{configurable}.{param}"
            macro = _binding_source(configurable, param)
            name = f"{macro} (bound to {binding})" if macro else binding
            shown = values[param]
            shown = f"{shown!r}" if isinstance(shown, (str, int, float, bool, type(None), dict, list, tuple)) \
                else type(shown).__name__
            raise UserError(f"{name} = {shown:.80}: expected {check.describe()}") from None
    return out
