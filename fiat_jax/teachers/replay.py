"""A teacher that replays recorded replies from a JSONL file: reasoning (or augmentations) written by a large model
elsewhere, brought to a run here without that model.

File format (docs/CONTRACTS.md, "Replay teacher file"), one JSON object per line:

  ``{"id": "mgsm_sw/17", "output": "Juma has 3 ... so the answer is 7."}``   keyed by example id
  ``{"prompt": "<the exact prompt text>", "output": "..."}``              keyed by prompt
  (a row may carry both keys; ``teacher`` names the model that wrote it; other fields are ignored, so the
  materialised teacher outputs of ``fiat teach`` / a FIAT run replay as they are)

A prompt built from an example (FIAT's reasoning step, augmentation) is looked up by the example's id first,
then by its exact text; a prompt with no example (e.g. the student-instruction request) by its text only. A
prompt with no recording goes to the ``fallback`` teacher when one is bound, else stops the run with one line
naming the example and the file. A recording holds text, not log-likelihoods: ``score`` needs the fallback.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import gin

from fiat_jax.data import readers
from fiat_jax.errors import UserError
from fiat_jax.teachers import base


def _short(text: str, n: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[:n - 1] + "…"


def read_replay_file(path: str) -> tuple[dict[str, str], dict[str, str], str, str | None]:
    """``(by_id, by_prompt, content hash, the teacher named in the rows)``; a bad row is a UserError naming the
    file, the line and the field."""
    if not os.path.isfile(path):
        raise UserError(f"replay teacher: no file {path}")
    by_id: dict[str, str] = {}
    by_prompt: dict[str, str] = {}
    seen_at: dict[tuple[str, str], int] = {}
    names: set[str] = set()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        raw = fh.read()
    digest.update(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"replay teacher: {path} is not UTF-8 ({err})") from err
    for lineno, row in readers.json_object_lines(text.splitlines(), what="replay teacher", path=path):
        where = f"replay teacher: {path}:{lineno}"
        if "output" not in row:
            raise UserError(f"{where}: missing field 'output'")
        if not isinstance(row["output"], str):
            raise UserError(f"{where}: field 'output' must be a string")
        if "id" not in row and "prompt" not in row:
            raise UserError(f"{where}: missing field 'id' (or 'prompt'): a row needs a key")
        if "prompt" in row and not isinstance(row["prompt"], str):
            raise UserError(f"{where}: field 'prompt' must be a string")
        for field, table in (("id", by_id), ("prompt", by_prompt)):
            if field not in row:
                continue
            key = str(row[field])
            if key in table and table[key] != row["output"]:
                raise UserError(f"{where}: field '{field}': {_short(key)!r} already recorded with another output "
                                f"on line {seen_at[(field, key)]}")
            table[key] = row["output"]
            seen_at.setdefault((field, key), lineno)
        if row.get("teacher"):
            names.add(str(row["teacher"]))
    if not by_id and not by_prompt:
        raise UserError(f"replay teacher: {path} holds no recordings")
    return by_id, by_prompt, digest.hexdigest()[:12], (names.pop() if len(names) == 1 else None)


class ReplayTeacher:
    """The Teacher API over a recordings file (see the module docstring).

    ``identity`` is ``replay:<name>:<file hash>``: the name is ``name`` if given, else the ``teacher`` the rows
    name (when they all name one), else the file's name; the hash of the file's contents makes an edited file a
    new teacher for the caches and the materialised outputs.
    """

    def __init__(self, *, path: str, name: str | None = None, fallback: Any = None):
        self.path = str(path)
        self.by_id, self.by_prompt, self.content_hash, recorded = read_replay_file(self.path)
        self.name = name or recorded or os.path.basename(self.path)
        self.fallback = fallback
        self.replayed = 0     # replies served from the file
        self.fell_back = 0    # replies asked of the fallback teacher

    def __repr__(self) -> str:
        return f"ReplayTeacher(path={self.path!r}, fallback={self.fallback!r})"

    @property
    def identity(self) -> str:
        own = f"replay:{self.name}:{self.content_hash}"
        if self.fallback is None:
            return own
        return f"{own}+fallback:{getattr(self.fallback, 'identity', type(self.fallback).__name__)}"

    def check(self) -> None:
        check = getattr(self.fallback, "check", None)
        if check is not None:
            check()

    def _lookup(self, example: Mapping[str, Any] | None, prompt: str) -> str | None:
        if example is not None and "id" in example and str(example["id"]) in self.by_id:
            return self.by_id[str(example["id"])]
        return self.by_prompt.get(prompt)

    def _replies(self, examples: Sequence[Mapping[str, Any] | None], prompts: Sequence[str], *,
                 max_new_tokens: int, temperature: float, stop: Sequence[str]) -> list[str]:
        stop = base.check_request(max_new_tokens, temperature, stop)
        out: list[str | None] = [self._lookup(ex, p) for ex, p in zip(examples, prompts)]
        missing = [i for i, o in enumerate(out) if o is None]
        if missing and self.fallback is None:
            ex = examples[missing[0]]
            what = (f"example {ex['id']}" if ex is not None and "id" in ex
                    else f"prompt {_short(prompts[missing[0]])!r}")
            raise UserError(f"replay teacher: no recording for {what} in {self.path} ({len(missing)} of "
                            f"{len(prompts)} missing; add rows keyed by 'id' or 'prompt', or bind a fallback "
                            f"teacher)")
        if missing:
            asked = base.generate_for(self.fallback, [examples[i] or {} for i in missing],
                                      [prompts[i] for i in missing], max_new_tokens=max_new_tokens,
                                      temperature=temperature, stop=stop)
            for i, reply in zip(missing, asked):
                out[i] = reply
            self.fell_back += len(missing)
        self.replayed += len(prompts) - len(missing)
        # Recorded text is cut like a generated reply: at the first stop string (the token limit is the
        # recording model's business).
        return [base.cut_at_stop(str(o), stop) for o in out]

    def generate_for_examples(self, examples: Sequence[Mapping[str, Any]], prompts: Sequence[str], *,
                              max_new_tokens: int, temperature: float = 0.0,
                              stop: Sequence[str] = ()) -> list[str]:
        return self._replies(list(examples), prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                             stop=stop)

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                 stop: Sequence[str] = ()) -> list[str]:
        return self._replies([None] * len(prompts), prompts, max_new_tokens=max_new_tokens,
                             temperature=temperature, stop=stop)

    def score(self, prompt: str, options: Sequence[str]) -> list[float]:
        if self.fallback is None:
            raise UserError(f"replay teacher ({self.path}) cannot score: a recording holds text, not "
                            f"log-likelihoods (bind replay_teacher.fallback to a teacher that scores, e.g. the "
                            f"local teacher)")
        return list(self.fallback.score(prompt, options))


@gin.configurable
def replay_teacher(*, path: str, name: str | None = None, fallback: Any = None) -> ReplayTeacher:
    """The replay teacher (gin_configs/teachers/replay.gin: ``TEACHER = @replay_teacher()``,
    ``replay_teacher.path = %REPLAY_FILE``); ``fallback`` answers what the file lacks (default: nothing does)."""
    return ReplayTeacher(path=path, name=name, fallback=fallback)
