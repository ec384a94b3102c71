"""``fiat teach``: run a teacher with a prompt recipe over a seqio task split and materialise the outputs.

Writes ``<output_dir>/<task>/<split>.jsonl`` in the "Materialised teacher outputs" layout (docs/CONTRACTS.md):
one row per example, appended and fsync'd as it completes; a rerun keeps the rows already there (deduplicated by
id, a torn last line from a killed run dropped) and asks only for the rest, and the teacher's cache answers
whatever was asked before. Prompts that fail (server errors past their retries, replies the recipe cannot parse)
are never written as outputs: they go to ``<split>.failures.ndjson`` with their example id, and the run ends with
a summary (and exit status 2 when any failed). Recipes with ``scope: task`` (instruction writing) write one
``<split>.<recipe>.json`` per task instead. The operative gin config goes to ``<task>/<split>.config.gin``.

``recipe_hash`` in every row is the sha256 (16 hex) of the recipe's text hash (file text + version), the run's
fixed variables (instruction, exemplars, ...) and the decoding parameters: same hash <=> same prompts and
decoding, so one file holds one (teacher, recipe_hash) pair; ``recipe_text_hash`` is the recipe file's own hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin

from fiat_jax import run_dirs
from fiat_jax.errors import UserError
from fiat_jax.teachers import base, recipes

_log = logging.getLogger(__name__)


@dataclasses.dataclass
class TeachSummary:
    path: str
    total: int
    already: int
    written: int
    failed: int
    requests: int | None
    seconds: float
    failures_path: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# The output file: append + fsync, repaired on open.

def _fsync_dir(path: pathlib.Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_lines(path: pathlib.Path, lines: Sequence[str]) -> None:
    """Replace ``path`` by ``lines`` atomically (temp file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def read_existing(path: pathlib.Path, *, teacher: str, recipe_hash: str) -> dict[str, dict[str, Any]]:
    """Rows already in ``path`` by id. A torn or unreadable line (a killed run) and repeated ids are dropped and
    the file rewritten clean; rows of another teacher or recipe are an error (one file, one pair)."""
    if not path.exists():
        return {}
    raw = path.read_bytes()
    rows: dict[str, dict[str, Any]] = {}
    keep: list[str] = []
    dirty = bool(raw) and not raw.endswith(b"\n")
    for n, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            dirty = True
            continue
        try:
            row = json.loads(line)
            ok = isinstance(row, dict) and isinstance(row.get("output"), str) and "id" in row
        except json.JSONDecodeError:
            ok = False
        if not ok:
            _log.warning("%s:%d: unreadable row dropped (an interrupted write)", path, n)
            dirty = True
            continue
        if (row.get("teacher"), row.get("recipe_hash")) != (teacher, recipe_hash):
            raise UserError(f"{path} holds outputs of teacher {row.get('teacher')!r} recipe_hash "
                            f"{row.get('recipe_hash')!r}, this run is {teacher!r} {recipe_hash!r}: use another "
                            f"OUTPUT_DIR (one file holds one teacher and recipe)")
        key = str(row["id"])
        if key in rows:
            dirty = True
            continue
        rows[key] = row
        keep.append(json.dumps(row, ensure_ascii=False))
    if dirty:
        _log.warning("%s: repaired (kept %d rows)", path, len(keep))
        atomic_write_lines(path, keep)
    return rows


class _Appender:
    """Appends one JSON row per call, flushed and fsync'd before returning."""

    def __init__(self, path: pathlib.Path):
        self._path = path
        self._fd: int | None = None  # opened at the first row: a run that gets no reply creates no file

    def write(self, row: Mapping[str, Any]) -> None:
        if self._fd is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(str(self._path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# ---------------------------------------------------------------------------------------------------------------
# Prompts

def _example_variables(example: Mapping[str, Any], task: str) -> dict[str, Any]:
    ex = dict(example)
    inputs = ex.get("inputs", "")
    ex.setdefault("input", inputs)
    ex.setdefault("document", ex.get("text") or inputs)
    ex.setdefault("language", task.rsplit("_", 1)[-1])
    ex["task"] = task
    return ex


def _resolve(variables: Mapping[str, Any] | None, task: str) -> dict[str, str]:
    out = {}
    for key, value in (variables or {}).items():
        value = value(task) if callable(value) else value
        out[str(key)] = "" if value is None else str(value)
    return out


def recipe_hash(recipe: recipes.Recipe, fixed: Mapping[str, str], decoding: Mapping[str, Any]) -> str:
    blob = json.dumps({"recipe": recipe.text_hash, "variables": dict(fixed), "decoding": dict(decoding)},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _identity(teacher: Any) -> str:
    identity = getattr(teacher, "identity", None)
    if not identity:
        raise UserError(f"teach: the teacher {type(teacher).__name__} has no identity")
    return str(identity)


def _requests(teacher: Any) -> int | None:
    for obj in (teacher, getattr(teacher, "backend", None)):
        if obj is not None and isinstance(getattr(obj, "requests", None), int):
            return obj.requests
    return None


def _preflight(teacher: Any, prompts: Sequence[str], decoding: Mapping[str, Any]) -> None:
    """The backend's check (server reachable, model known), only when something must be asked of it."""
    if not prompts:
        return
    missing = getattr(teacher, "missing", None)
    if missing is not None:
        if missing(prompts, **decoding) and hasattr(teacher, "check"):
            teacher.check()
    elif hasattr(teacher, "check"):
        teacher.check()


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="row", disable=not enabled or total == 0, file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5, smoothing=0.1)


# ---------------------------------------------------------------------------------------------------------------

@gin.configurable
def teach(*, teacher: Any, recipe: str, task: str, output_dir: str, split: str = "train",
          register_tasks: Callable[[], Any] | None = None, variables: Mapping[str, Any] | None = None,
          num_examples: int | None = None, max_new_tokens: int | None = None, temperature: float | None = None,
          stop: Sequence[str] | None = None, parse_retries: int = 2,
          retry_temperatures: Sequence[float] = (0.7, 1.0), progress: bool = True,
          fail_on_failures: bool = True) -> TeachSummary:
    """Run ``teacher`` with ``recipe`` over ``task``/``split`` into ``output_dir`` (see the module docstring).

    ``variables``: fixed template variables, a value may be a callable of the task name (e.g.
    ``@cot_exemplars()``). ``num_examples``: the first N examples only. ``max_new_tokens``/``temperature``/``stop``
    override the recipe's. A reply the recipe cannot parse is asked again up to ``parse_retries`` times, at
    ``retry_temperatures`` (the row then records its ``temperature``). ``fail_on_failures``: end with a UserError
    (exit 2) when some prompts failed.
    """
    start = time.perf_counter()
    if teacher is None:
        raise UserError("teach: no teacher (bind teach.teacher, e.g. in gin_configs/teachers/local_smollm2.gin)")
    rec = recipes.load(recipe)
    if not output_dir:
        raise UserError("teach: no output directory (pass --gin.OUTPUT_DIR=...)")
    run_dirs.check_writable_dir(output_dir, what="OUTPUT_DIR")
    run_dirs.check_writable_dir(pathlib.Path(output_dir).expanduser() / task, what="teach output directory")
    identity = _identity(teacher)
    if register_tasks is not None:
        register_tasks()
    with base.late_imports():
        from fiat_jax.methods.examples import task_examples

    import seqio

    try:
        if isinstance(seqio.get_mixture_or_task(task), seqio.Mixture):
            raise UserError(f"teach: {task} is a mixture; run one task at a time (outputs go to <output_dir>/<task>)")
    except ValueError:
        raise UserError(f"teach: unknown task {task!r} (are the tasks registered? `fiat tasks list` shows them)"
                        ) from None
    examples = task_examples(task, split, limit=num_examples)
    if not examples:
        raise UserError(f"teach: task {task} has no {split!r} examples")
    if any("id" not in ex for ex in examples):
        raise UserError(f"teach: task {task} examples have no 'id' feature (needed to join outputs)")
    with base.late_imports():
        fixed = _resolve(variables, task)
    decoding = {"max_new_tokens": int(max_new_tokens or rec.max_new_tokens),
                "temperature": float(rec.temperature if temperature is None else temperature),
                "stop": list(base.check_stop(rec.stop if stop is None else stop))}
    base.check_decoding(decoding["max_new_tokens"], decoding["temperature"])
    rhash = recipe_hash(rec, fixed, decoding)
    task_dir = pathlib.Path(output_dir).expanduser() / task
    meta = {"task": task, "split": split, "recipe": rec.name, "recipe_version": rec.version, "recipe_hash": rhash,
            "recipe_text_hash": rec.text_hash, "teacher": identity}
    if rec.scope == "task":
        return _teach_task_scope(teacher, rec, examples, fixed, decoding, meta, task_dir, start)

    path = task_dir / f"{split}.jsonl"
    done = read_existing(path, teacher=identity, recipe_hash=rhash)
    todo = [ex for ex in examples if str(ex["id"]) not in done]
    # Prompts (several per example when the recipe expands a document into sentences).
    prompts: list[str] = []
    owner: list[int] = []
    for k, ex in enumerate(todo):
        values = {**_example_variables(ex, task), **fixed}
        if rec.expand == "sentences":
            sentences = recipes.split_sentences(str(values.get("document", ""))) or [str(values.get("document"))]
            for sentence in sentences:
                prompts.append(rec.render({**values, "sentence": sentence}))
                owner.append(k)
        else:
            prompts.append(rec.render(values))
            owner.append(k)
    _preflight(teacher, prompts, decoding)
    config_written = False

    def first_reply() -> None:
        """The run's config goes next to its outputs once there is a reply to describe (a refused key or a dead
        server on the first request leaves the previous run's config as it was)."""
        nonlocal config_written
        if not config_written:
            task_dir.mkdir(parents=True, exist_ok=True)
            _write_config(task_dir / f"{split}.config.gin")
            config_written = True

    parts: dict[int, dict[int, str]] = {}
    need = [0] * len(todo)
    for k in owner:
        need[k] += 1
    failures: dict[int, dict[str, Any]] = {}
    written = 0
    # A reply the recipe cannot parse is asked again at each retry temperature (distinct cache keys, so a rerun
    # replays the same sequence from the cache), then recorded as a failure.
    rounds = [decoding] + [dict(decoding, temperature=float(t)) for t in tuple(retry_temperatures)[:parse_retries]]
    appender = _Appender(path)
    bar = _progress(len(todo), f"teach {task}/{split}", progress)
    try:
        asking = list(range(len(prompts)))
        for r, dec in enumerate(rounds):
            unparsed: list[int] = []
            for jj, res in base.stream(teacher, [prompts[j] for j in asking], **dec):
                j = asking[jj]
                k = owner[j]
                if k in failures:
                    continue
                ex_id = str(todo[k]["id"])
                first_reply()
                if isinstance(res, base.Failure):
                    failures[k] = {"id": ex_id, "reason": res.reason, "attempts": res.attempts}
                    bar.update(1)
                    continue
                try:
                    parsed = rec.parse(res)
                except recipes.ParseError as err:
                    if r + 1 < len(rounds):
                        unparsed.append(j)
                    else:
                        failures[k] = {"id": ex_id, "reason": f"unparseable reply: {err}", "raw": res,
                                       "attempts": len(rounds)}
                        bar.update(1)
                    continue
                parts.setdefault(k, {})[j] = parsed
                if len(parts[k]) < need[k]:
                    continue
                got = parts.pop(k)
                output = "\n".join(got[i] for i in sorted(got))
                row = {"id": ex_id, **meta, "output": output}
                if rec.parser == "score_1_5":
                    row["score"] = float(output)
                if need[k] == 1 and output != res:
                    row["raw"] = res
                if r:
                    row["temperature"] = dec["temperature"]  # answered on a retry after an unparseable reply
                appender.write(row)
                written += 1
                bar.update(1)
            asking = [j for j in unparsed if owner[j] not in failures]
            if not asking:
                break
    finally:
        bar.close()
        appender.close()
    failures_path = task_dir / f"{split}.failures.ndjson"
    if failures:
        atomic_write_lines(failures_path, [json.dumps({**v, "task": task, "split": split, "recipe_hash": rhash,
                                                       "teacher": identity}, ensure_ascii=False)
                                           for _, v in sorted(failures.items())])
    elif failures_path.exists():
        failures_path.unlink()
    summary = TeachSummary(path=str(path), total=len(examples), already=len(done), written=written,
                           failed=len(failures), requests=_requests(teacher), seconds=time.perf_counter() - start,
                           failures_path=str(failures_path) if failures else None)
    _report(summary, failures)
    if failures and fail_on_failures:
        raise UserError(f"teach: {len(failures)} of {len(todo)} prompts failed (ids and reasons in "
                        f"{failures_path}); rerun to retry them")
    return summary


def _write_config(path: pathlib.Path) -> None:
    text = gin.operative_config_str() or gin.config_str()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _report(summary: TeachSummary, failures: Mapping[int, Mapping[str, Any]]) -> None:
    reqs = "" if summary.requests is None else f", {summary.requests} teacher requests"
    msg = (f"teach: {summary.path}: {summary.already + summary.written} of {summary.total} examples "
           f"({summary.written} new, {summary.already} already there, {summary.failed} failed{reqs}) "
           f"in {summary.seconds:.1f} s")
    print(msg, file=sys.stderr)
    _log.debug(msg)
    if failures:
        reasons: dict[str, int] = {}
        for f in failures.values():
            reason = str(f["reason"]).split(" (gave up")[0].split(":")[0]
            reasons[reason] = reasons.get(reason, 0) + 1
        for reason, n in sorted(reasons.items(), key=lambda x: -x[1]):
            print(f"  {n} x {reason}", file=sys.stderr)
        print(f"  ids and replies: {summary.failures_path}", file=sys.stderr)


def _teach_task_scope(teacher: Any, rec: recipes.Recipe, examples: Sequence[Mapping[str, Any]],
                      fixed: Mapping[str, str], decoding: Mapping[str, Any], meta: Mapping[str, Any],
                      task_dir: pathlib.Path, start: float) -> TeachSummary:
    """One reply per task (instruction writing): the first ``k`` examples in the prompt."""
    values = {"task": meta["task"].rsplit("_", 1)[0], "language": meta["task"].rsplit("_", 1)[-1],
              **rec.defaults, **fixed}
    k = int(values.get("k", 4))
    shots = list(examples[:k])
    if values.get("language") in ("examples", "auto"):
        values["language"] = "the same language as the examples"
    values["examples"] = "".join(f"Input: {ex.get('inputs', '')}\nOutput: {ex.get('targets', '')}\n\n"
                                 for ex in shots)
    prompt = rec.render(values)
    path = task_dir / f"{meta['split']}.{rec.name}.json"
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            old = {}
        if old.get("recipe_hash") == meta["recipe_hash"] and old.get("teacher") == meta["teacher"]:
            print(f"teach: {path} already written", file=sys.stderr)
            return TeachSummary(str(path), 1, 1, 0, 0, _requests(teacher), time.perf_counter() - start)
    _preflight(teacher, [prompt], decoding)
    (_, res), = list(base.stream(teacher, [prompt], **decoding))
    task_dir.mkdir(parents=True, exist_ok=True)
    _write_config(task_dir / f"{meta['split']}.config.gin")  # after the reply (see first_reply in teach)
    reason = res.reason if isinstance(res, base.Failure) else None
    if reason is None:
        try:
            output = rec.parse(res)
        except recipes.ParseError as err:
            reason = f"unparseable reply: {err} ({res[:200]!r})"
    if reason is not None:
        raise UserError(f"teach: {rec.name} for {meta['task']} failed: {reason}")
    row = {**meta, "output": output, "raw": res, "example_ids": [str(ex["id"]) for ex in shots], "k": k}
    atomic_write_lines(path, [json.dumps(row, ensure_ascii=False, indent=None)])
    summary = TeachSummary(str(path), 1, 0, 1, 0, _requests(teacher), time.perf_counter() - start)
    _report(summary, {})
    return summary
