"""The one writer of teacher outputs: run a teacher with a prompt recipe over examples and materialise the replies.

Every teacher call of the project goes through :func:`materialise`: ``fiat teach``, FIAT's reasoning and student
instruction, augmented fine-tuning's local/global inferences, phased difficulty scoring and the win-rate judge.

Layout (docs/CONTRACTS.md, "Materialised teacher outputs"): ``<out_dir>/<task>/<split>.jsonl``, one row per example,
``{"id", "task", "split", "recipe", "recipe_version", "recipe_hash", "recipe_text_hash", "teacher", "output"[,
"raw", "score", "temperature"]}``, appended and fsync'd as each completes. A rerun keeps the rows already there
(deduplicated by id, a torn last line from a killed run dropped) and asks only for the rest; the teacher's own
cache (teachers/cache.py) answers whatever was asked before. Prompts that fail (backend errors past their
retries, replies the recipe cannot parse after ``parse_retries`` re-asks at ``retry_temperatures``) are never
written as outputs: they go to ``<split>.failures.ndjson``. Recipes with ``scope: task`` (instruction writing)
write one ``<split>.<recipe>.json`` per task instead. ``out_dir=None`` keeps everything in memory.

``recipe_hash`` (the one hash scheme): sha256 (16 hex) of the recipe's text hash (file text + version), the fixed
variables, the decoding parameters and the teacher identity: same hash <=> same prompts, decoding and teacher, so
one file holds one (teacher, recipe_hash) pair.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pathlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fiat_jax.atomic_files import Appender, atomic_write_lines
from fiat_jax.errors import UserError
from fiat_jax.teachers import base, recipes

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Summary:
    """What one materialisation did (printed at its end)."""

    path: str
    total: int
    already: int
    written: int
    failed: int
    requests: int | None
    seconds: float
    failures_path: str | None = None


@dataclasses.dataclass(frozen=True)
class Materialised:
    """The outputs of one run: ``outputs`` (example id -> output; for ``scope: task`` recipes, task -> output)
    for every example that has one (rows already there included), the rows themselves, and the failures."""

    outputs: dict[str, str]
    rows: dict[str, dict[str, Any]]
    failures: list[dict[str, Any]]
    recipe_hash: str
    summary: Summary

    def require_all(self, what: str) -> dict[str, str]:
        """``outputs``, or a :class:`~fiat_jax.teachers.base.TeacherError` naming the first failure (methods need
        every output; the rows that did complete stay materialised for the rerun)."""
        if self.failures:
            first = self.failures[0]
            raise base.TeacherError(f"{what}: {len(self.failures)} of {self.summary.total} teacher prompts failed "
                                    f"(first: {first['id']}: {first['reason']}); rerun to retry them")
        return self.outputs


# ---------------------------------------------------------------------------------------------------------------
# The recipe's parameters and their hash.

def identity_of(teacher: Any) -> str:
    """The teacher's identity (backend + model), its class name for a bare stand-in without one."""
    return str(getattr(teacher, "identity", None) or type(teacher).__name__)


def resolve_variables(variables: Mapping[str, Any] | None, task: str) -> dict[str, str]:
    """Fixed template variables as text; a value may be a callable of the task name (``@cot_exemplars()``)."""
    out = {}
    for key, value in (variables or {}).items():
        value = value(task) if callable(value) else value
        out[str(key)] = "" if value is None else str(value)
    return out


def decoding_for(recipe: recipes.Recipe, *, max_new_tokens: int | None = None, temperature: float | None = None,
                 stop: Sequence[str] | None = None) -> dict[str, Any]:
    """The recipe's decoding parameters, each overridable; checked."""
    decoding = {"max_new_tokens": int(max_new_tokens or recipe.max_new_tokens),
                "temperature": float(recipe.temperature if temperature is None else temperature),
                "stop": list(base.check_stop(recipe.stop if stop is None else stop))}
    base.check_decoding(decoding["max_new_tokens"], decoding["temperature"])
    return decoding


def recipe_hash(recipe: recipes.Recipe, fixed: Mapping[str, str], decoding: Mapping[str, Any], teacher: str) -> str:
    """The one hash of teacher outputs (module docstring)."""
    blob = json.dumps({"recipe": recipe.text_hash, "variables": dict(fixed), "decoding": dict(decoding),
                       "teacher": teacher}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def example_variables(example: Mapping[str, Any], task: str) -> dict[str, Any]:
    """An example's template variables: its fields, plus ``input`` (= ``inputs``), ``document`` (``text`` or
    ``inputs``), ``language`` (the task name's suffix) unless the example has them, and ``task``."""
    ex = dict(example)
    inputs = ex.get("inputs", "")
    ex.setdefault("input", inputs)
    ex.setdefault("document", ex.get("text") or inputs)
    ex.setdefault("language", task.rsplit("_", 1)[-1])
    ex["task"] = task
    return ex


def prompt_for(recipe: recipes.Recipe, example: Mapping[str, Any], *, task: str, fixed: Mapping[str, Any]) -> str:
    """The prompt the teacher is asked for ``example``: the recipe filled with its variables and the fixed ones
    (what a caller that keeps its prompts, e.g. ICL's predictions file, shows)."""
    return recipe.render({**example_variables(example, task), **fixed})


# ---------------------------------------------------------------------------------------------------------------
# The output file: read back (repaired), appended.

def read_existing(path: pathlib.Path, *, teacher: str, recipe_hash: str, replace_other: bool = False
                  ) -> dict[str, dict[str, Any]]:
    """Rows already in ``path`` by id. A torn or unreadable line (a killed run) and repeated ids are dropped and
    the file rewritten clean. Rows of another teacher or recipe are an error (one file, one pair), or, with
    ``replace_other`` (a method's private cache under its MODEL_DIR), dropped."""
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
            if replace_other:
                dirty = True
                continue
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
    # Lazy: tqdm is only needed once there is something to ask (keeps `fiat teach --help` start-up light).
    # lazy: progress bars only when one is shown
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="row", disable=not enabled or total == 0, file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5, smoothing=0.1)


def _report(summary: Summary, failures: Sequence[Mapping[str, Any]], what: str) -> None:
    reqs = "" if summary.requests is None else f", {summary.requests} teacher requests"
    msg = (f"{what}: {summary.path}: {summary.already + summary.written} of {summary.total} examples "
           f"({summary.written} new, {summary.already} already there, {summary.failed} failed{reqs}) "
           f"in {summary.seconds:.1f} s")
    print(msg, file=sys.stderr)
    _log.debug(msg)
    if failures:
        reasons: dict[str, int] = {}
        for f in failures:
            reason = str(f["reason"]).split(" (gave up")[0].split(":")[0]
            reasons[reason] = reasons.get(reason, 0) + 1
        for reason, n in sorted(reasons.items(), key=lambda x: -x[1]):
            print(f"  {n} x {reason}", file=sys.stderr)
        if summary.failures_path:
            print(f"  ids and replies: {summary.failures_path}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------------

def materialise(teacher: Any, recipe: str | recipes.Recipe, examples: Sequence[Mapping[str, Any]], *,
                out_dir: str | pathlib.Path | None, task: str, split: str = "train",
                variables: Mapping[str, Any] | None = None, max_new_tokens: int | None = None,
                temperature: float | None = None, stop: Sequence[str] | None = None, parse_retries: int = 2,
                retry_temperatures: Sequence[float] = (0.7, 1.0), keep_unparsed: bool = False,
                replace_other: bool = False, chunk_size: int = 8, progress: bool = True,
                on_first_reply: Callable[[], None] | None = None, what: str = "teach",
                teacher_sees_examples: bool = True) -> Materialised:
    """Ask ``teacher`` the ``recipe``'s prompt for every example not yet in ``out_dir/<task>/<split>.jsonl``
    (see the module docstring); examples need an ``id``.

    ``variables``: fixed template variables (resolved per task). ``max_new_tokens``/``temperature``/``stop``
    override the recipe's. ``keep_unparsed``: a reply the recipe cannot parse is kept as its stripped text instead
    of re-asked (callers for whom an empty reply is an answer: augmentation's "no statements"). ``replace_other``:
    see :func:`read_existing`. ``on_first_reply`` runs once, before the first output is written (``fiat teach``
    writes its config then). ``what`` names the caller in the summary line. ``teacher_sees_examples=False``: a
    teacher that reads examples (replay by id, the controlled teacher's gold answer) gets the prompts alone, as
    any other teacher (ICL: the answer must come from the prompt).
    """
    start = time.perf_counter()
    rec = recipe if isinstance(recipe, recipes.Recipe) else recipes.load(recipe)
    identity = identity_of(teacher)
    fixed = resolve_variables(variables, task)
    decoding = decoding_for(rec, max_new_tokens=max_new_tokens, temperature=temperature, stop=stop)
    rhash = recipe_hash(rec, fixed, decoding, identity)
    task_dir = None if out_dir is None else pathlib.Path(out_dir).expanduser() / task
    meta = {"task": task, "split": split, "recipe": rec.name, "recipe_version": rec.version, "recipe_hash": rhash,
            "recipe_text_hash": rec.text_hash, "teacher": identity}
    if rec.scope == "task":
        return _task_scope(teacher, rec, examples, fixed, decoding, meta, task_dir, start, on_first_reply, what)

    path = None if task_dir is None else task_dir / f"{split}.jsonl"
    done = {} if path is None else read_existing(path, teacher=identity, recipe_hash=rhash,
                                                 replace_other=replace_other)
    todo = list({str(ex["id"]): ex for ex in examples if str(ex["id"]) not in done}.values())
    # Prompts, several per example when the recipe expands a document into sentences; each prompt goes with its
    # example (a sentence's id is ``<id>/local/<k>``) for teachers that look examples up (base.stream_for).
    prompts: list[str] = []
    contexts: list[Mapping[str, Any]] = []
    owner: list[int] = []
    for k, ex in enumerate(todo):
        if rec.expand == "sentences":
            values = {**example_variables(ex, task), **fixed}
            document = str(values.get("document", ""))
            for n, sentence in enumerate(recipes.split_sentences(document) or [document]):
                prompts.append(rec.render({**values, "sentence": sentence}))
                contexts.append({**ex, "id": f"{ex['id']}/local/{n}", "document": document, "sentence": sentence})
                owner.append(k)
        else:
            prompts.append(prompt_for(rec, ex, task=task, fixed=fixed))
            contexts.append(ex)
            owner.append(k)
    _preflight(teacher, prompts, decoding)
    need = [0] * len(todo)
    for k in owner:
        need[k] += 1
    parts: dict[int, dict[int, str]] = {}
    failures: dict[int, dict[str, Any]] = {}
    new: dict[str, dict[str, Any]] = {}
    first_reply = on_first_reply
    # A reply the recipe cannot parse is asked again at each retry temperature (distinct cache keys, so a rerun
    # replays the same sequence from the cache), then recorded as a failure.
    retries = [] if keep_unparsed else tuple(retry_temperatures)[:parse_retries]
    rounds = [decoding] + [dict(decoding, temperature=float(t)) for t in retries]
    appender = None if path is None else Appender(path)
    bar = _progress(len(todo), f"{what} {task}/{split}", progress)
    try:
        asking = list(range(len(prompts)))
        for r, dec in enumerate(rounds):
            unparsed: list[int] = []
            ask = [prompts[j] for j in asking]
            replies = (base.stream_for(teacher, [contexts[j] for j in asking], ask, chunk_size=chunk_size, **dec)
                       if teacher_sees_examples else base.stream(teacher, ask, chunk_size=chunk_size, **dec))
            for jj, res in replies:
                j = asking[jj]
                k = owner[j]
                if k in failures:
                    continue
                ex_id = str(todo[k]["id"])
                if first_reply is not None:
                    first_reply, call = None, first_reply
                    call()
                if isinstance(res, base.Failure):
                    failures[k] = {"id": ex_id, "reason": res.reason, "attempts": res.attempts}
                    bar.update(1)
                    continue
                try:
                    parsed = rec.parse(res)
                except recipes.ParseError as err:
                    if keep_unparsed:
                        parsed = (res or "").strip()
                    elif r + 1 < len(rounds):
                        unparsed.append(j)
                        continue
                    else:
                        failures[k] = {"id": ex_id, "reason": f"unparseable reply: {err}", "raw": res,
                                       "attempts": len(rounds)}
                        bar.update(1)
                        continue
                parts.setdefault(k, {})[j] = parsed
                if len(parts[k]) < need[k]:
                    continue
                got = parts.pop(k)
                output = "\n".join(p for p in (got[i] for i in sorted(got)) if p or need[k] == 1)
                row = {"id": ex_id, **meta, "output": output}
                if rec.parser == "score_1_5":
                    row["score"] = float(output)
                if need[k] == 1 and output != res:
                    row["raw"] = res
                if r:
                    row["temperature"] = dec["temperature"]  # answered on a retry after an unparseable reply
                if appender is not None:
                    appender.write(json.dumps(row, ensure_ascii=False))
                new[ex_id] = row
                bar.update(1)
            asking = [j for j in unparsed if owner[j] not in failures]
            if not asking:
                break
    finally:
        bar.close()
        if appender is not None:
            appender.close()
    failed = [v for _, v in sorted(failures.items())]
    failures_path = None if task_dir is None else task_dir / f"{split}.failures.ndjson"
    if failures_path is not None and failed:
        atomic_write_lines(failures_path, [json.dumps({**v, "task": task, "split": split, "recipe_hash": rhash,
                                                       "teacher": identity}, ensure_ascii=False) for v in failed])
    elif failures_path is not None and failures_path.exists():
        failures_path.unlink()
    summary = Summary(path=str(path) if path is not None else f"(in memory) {task}/{split}", total=len(examples),
                      already=len(done), written=len(new), failed=len(failed), requests=_requests(teacher),
                      seconds=time.perf_counter() - start,
                      failures_path=str(failures_path) if failed and failures_path is not None else None)
    if prompts or path is not None:
        _report(summary, failed, what)
    rows = {**done, **new}
    wanted = [str(ex["id"]) for ex in examples if str(ex["id"]) in rows]
    return Materialised(outputs={i: rows[i]["output"] for i in wanted}, rows={i: rows[i] for i in wanted},
                        failures=failed, recipe_hash=rhash, summary=summary)


def _task_scope(teacher: Any, rec: recipes.Recipe, examples: Sequence[Mapping[str, Any]], fixed: Mapping[str, str],
                decoding: Mapping[str, Any], meta: Mapping[str, Any], task_dir: pathlib.Path | None, start: float,
                on_first_reply: Callable[[], None] | None, what: str) -> Materialised:
    """One reply per task (instruction writing): the task family and language from the task name (language
    ``examples``/``auto``: the recipe's ``language_of_examples``), and the first ``k`` examples in ``{examples}``
    (the recipe's ``example_block`` each)."""
    task = meta["task"]
    values = {"task": task.rsplit("_", 1)[0], "language": task.rsplit("_", 1)[-1], **rec.defaults, **fixed}
    k = int(values.get("k", 4))
    shots = list(examples[:k])
    if values.get("language") in ("examples", "auto"):
        if "language_of_examples" not in values:
            raise UserError(f"recipe {rec.name}: language {values['language']!r} needs a 'language_of_examples' "
                            f"default (the words the prompt names the examples' language with)")
        values["language"] = values["language_of_examples"]
    if "examples" in rec.fields:
        values["examples"] = rec.examples_block(shots)
    prompt = rec.render(values)
    path = None if task_dir is None else task_dir / f"{meta['split']}.{rec.name}.json"
    if path is not None and path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            old = {}
        if old.get("recipe_hash") == meta["recipe_hash"] and old.get("teacher") == meta["teacher"]:
            print(f"{what}: {path} already written", file=sys.stderr)
            summary = Summary(str(path), 1, 1, 0, 0, _requests(teacher), time.perf_counter() - start)
            return Materialised({task: old["output"]}, {task: old}, [], meta["recipe_hash"], summary)
    _preflight(teacher, [prompt], decoding)
    (_, res), = list(base.stream(teacher, [prompt], **decoding))
    if on_first_reply is not None:
        on_first_reply()
    reason = res.reason if isinstance(res, base.Failure) else None
    if reason is None:
        try:
            output = rec.parse(res)
        except recipes.ParseError as err:
            reason = f"unparseable reply: {err} ({res[:200]!r})"
    if reason is not None:
        raise UserError(f"{what}: {rec.name} for {task} failed: {reason}")
    row = {**meta, "output": output, "raw": res, "example_ids": [str(ex["id"]) for ex in shots], "k": k}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_lines(path, [json.dumps(row, ensure_ascii=False)])
    summary = Summary(str(path) if path is not None else f"(in memory) {task}", 1, 0, 1, 0, _requests(teacher),
                      time.perf_counter() - start)
    _report(summary, [], what)
    return Materialised({task: output}, {task: row}, [], meta["recipe_hash"], summary)
