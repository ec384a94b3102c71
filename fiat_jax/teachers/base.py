"""The Teacher API every backend implements, plus the per-prompt failure type used when streaming.

``generate`` returns text or raises; ``generate_stream`` (optional, richer) yields ``(index, text | Failure)`` in
completion order, so ``fiat teach`` can write each row as soon as it exists and record failures per prompt
instead of losing a whole batch to one bad reply.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from fiat_jax.errors import UserError


@runtime_checkable
class Teacher(Protocol):
    """A frozen LLM. Prompts are plain user messages; backends apply their chat templates."""

    @property
    def identity(self) -> str:
        """Backend + model, e.g. ``local:embedded:smollm2-135m-instruct``; part of every cache key."""

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                 stop: Sequence[str] = ()) -> list[str]:
        """One reply per prompt (greedy when ``temperature == 0``), cut before the first ``stop`` string."""

    def score(self, prompt: str, options: Sequence[str]) -> list[float]:
        """Summed log-likelihood of each option given the prompt."""


@contextlib.contextmanager
def late_imports() -> Iterator[None]:
    """Lets modules imported lazily (after the CLI has locked gin) register their configurables."""
    # lazy: kept out of the protocol module's import path
    import gin

    with gin.unlock_config():
        yield


@dataclasses.dataclass(frozen=True)
class Failure:
    """A prompt the teacher could not answer (after its retries): why, and how many attempts were made."""

    reason: str
    attempts: int = 1


class TeacherError(UserError):
    """Some prompts failed after their retries (``generate`` cannot return a partial list)."""


def check_stop(stop: Sequence[str] | str) -> tuple[str, ...]:
    """``stop`` as a tuple of non-empty strings (a lone string is one stop sequence, not its characters)."""
    if isinstance(stop, str):
        stop = (stop,)
    out = tuple(str(s) for s in stop)
    if any(not s for s in out):
        raise UserError("teacher stop sequences must be non-empty strings")
    return out


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (excluding) the earliest stop string."""
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if 0 <= i < cut:
            cut = i
    return text[:cut]


def check_decoding(max_new_tokens: int, temperature: float) -> None:
    if int(max_new_tokens) < 1:
        raise UserError(f"teacher max_new_tokens must be >= 1, got {max_new_tokens}")
    if float(temperature) < 0:
        raise UserError(f"teacher temperature must be >= 0, got {temperature}")


def check_request(max_new_tokens: int, temperature: float, stop: Sequence[str] | str) -> tuple[str, ...]:
    """:func:`check_decoding` and :func:`check_stop` at once, as a teacher's ``generate_stream`` starts."""
    check_decoding(max_new_tokens, temperature)
    return check_stop(stop)


def stream(teacher: object, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
           stop: Sequence[str] = (), chunk_size: int = 8) -> Iterator[tuple[int, str | Failure]]:
    """``(index, text | Failure)`` for every prompt: the teacher's own ``generate_stream`` when it has one, else
    ``generate`` on chunks (an exception in a chunk marks each of its prompts as failed)."""
    own = getattr(teacher, "generate_stream", None)
    if own is not None:
        yield from own(prompts, max_new_tokens=max_new_tokens, temperature=temperature, stop=stop)
        return
    for start in range(0, len(prompts), chunk_size):
        chunk = list(prompts[start:start + chunk_size])
        try:
            outs = teacher.generate(chunk, max_new_tokens=max_new_tokens,  # type: ignore[attr-defined]
                                    temperature=temperature, stop=stop)
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - a backend error is recorded per prompt
            for i in range(len(chunk)):
                yield start + i, Failure(f"{type(err).__name__}: {err}")
            continue
        for i, out in enumerate(outs):
            yield start + i, out


def stream_for(teacher: object, examples: Sequence[Mapping[str, Any]], prompts: Sequence[str], *,
               max_new_tokens: int, temperature: float = 0.0, stop: Sequence[str] = (),
               chunk_size: int = 8) -> Iterator[tuple[int, str | Failure]]:
    """:func:`stream` for prompts built from ``examples``: a teacher that needs the examples (an
    :class:`ExampleTeacher`: replay by id, the controlled teacher's gold answer) gets them through
    ``generate_for_examples`` on chunks (an exception in a chunk marks each of its prompts as failed); any other
    teacher streams the prompts alone."""
    if len(examples) != len(prompts):
        raise ValueError(f"{len(examples)} examples for {len(prompts)} prompts")
    own = getattr(teacher, "generate_for_examples", None)
    if own is None:
        yield from stream(teacher, prompts, max_new_tokens=max_new_tokens, temperature=temperature, stop=stop,
                          chunk_size=chunk_size)
        return
    for start in range(0, len(prompts), chunk_size):
        try:
            outs = own(list(examples[start:start + chunk_size]), list(prompts[start:start + chunk_size]),
                       max_new_tokens=max_new_tokens, temperature=temperature, stop=stop)
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - a backend error is recorded per prompt
            for i in range(len(prompts[start:start + chunk_size])):
                yield start + i, Failure(f"{type(err).__name__}: {err}")
            continue
        for i, out in enumerate(outs):
            yield start + i, out


def collect(results: Iterator[tuple[int, str | Failure]], n: int, *, what: str) -> list[str]:
    """The texts of a stream in prompt order; a :class:`TeacherError` naming the first failure if any failed."""
    out: list[str | None] = [None] * n
    failures: list[tuple[int, Failure]] = []
    for i, res in results:
        if isinstance(res, Failure):
            failures.append((i, res))
        else:
            out[i] = res
    if failures:
        i, first = min(failures, key=lambda f: f[0])
        raise TeacherError(f"{what}: {len(failures)} of {n} prompts failed (first: prompt {i}: {first.reason})")
    return [o if o is not None else "" for o in out]


@runtime_checkable
class ExampleTeacher(Protocol):
    """A teacher that also needs to know *which* example a prompt is for (optional, beside :class:`Teacher`).

    The replay teacher looks its recordings up by example id; the controlled (simulated) teacher reads the
    gold answer. Callers that build prompts from examples (FIAT's reasoning step, augmentation) hand both over
    through :func:`generate_for`, so no teacher has to reach into global state to find them.
    """

    def generate_for_examples(self, examples: Sequence[Mapping[str, Any]], prompts: Sequence[str], *,
                              max_new_tokens: int, temperature: float = 0.0,
                              stop: Sequence[str] = ()) -> list[str]:
        """One reply per (example, prompt) pair, in order."""


def generate_for(teacher: object, examples: Sequence[Mapping[str, Any]], prompts: Sequence[str], *,
                 max_new_tokens: int, temperature: float = 0.0, stop: Sequence[str] = ()) -> list[str]:
    """Replies for prompts built from ``examples``: the teacher's ``generate_for_examples`` when it has one, else
    its plain ``generate`` (the examples are only context; every ordinary backend ignores them)."""
    if len(examples) != len(prompts):
        raise ValueError(f"{len(examples)} examples for {len(prompts)} prompts")
    own = getattr(teacher, "generate_for_examples", None)
    if own is not None:
        return list(own(examples, prompts, max_new_tokens=max_new_tokens, temperature=temperature, stop=stop))
    return list(teacher.generate(prompts, max_new_tokens=max_new_tokens,  # type: ignore[attr-defined]
                                 temperature=temperature, stop=stop))
