"""A fiat_jax model as teacher (default: the embedded SmolLM2-135M-Instruct), decoded in batches with the KV cache.

Prompts are wrapped in the model's chat template, tokenised and sorted by length; consecutive runs of the sorted
prompts form batches whose row count follows a token budget (``batch_tokens`` = rows x (prompt bucket + new
tokens), at most ``batch_size`` rows, a power of two): short prompts go many to a batch, long ones fewer, and
every batch costs about the same. Prompt lengths are padded to powers of two (:func:`fiat_jax.models.decoding.
generate`) and ``max_new_tokens`` is rounded up to a power of two (outputs cut back), and the last batch is
padded to its bucket's row count: a whole run compiles one program per prompt-length bucket, once (and with the
persistent compilation cache, once across processes). Batches run in a seeded shuffled order, so the rows per
second seen after the first batches are those of the whole run (an honest ETA), not those of the longest prompts.
The loaded model is kept per process and checkpoint (loading the GGUF takes seconds).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import gin
import jax
import numpy as np

from fiat_jax.errors import UserError
from fiat_jax.models import decoding, generate
from fiat_jax.models.decoding import bucket_size
from fiat_jax.models.embedded import load_pretrained
from fiat_jax.teachers import base

_log = logging.getLogger(__name__)
DEFAULT_CHECKPOINT = "embedded:smollm2-135m-instruct"

_LOADED: dict[str, tuple[Any, Any]] = {}
_LOAD_LOCK = threading.Lock()


def load_model(checkpoint: str) -> tuple[Any, Any]:
    """``(Pretrained, model)`` for ``checkpoint``, built once per process."""
    with _LOAD_LOCK, base.late_imports():
        if checkpoint not in _LOADED:
            pre = load_pretrained(checkpoint)
            if pre.vocabulary is None:
                raise UserError(f"local teacher {checkpoint}: no tokenizer beside the weights")
            _LOADED[checkpoint] = (pre, pre.build_model())
        return _LOADED[checkpoint]


def _new_tokens_bucket(n: int) -> int:
    b = 16
    while b < n:
        b *= 2
    return b


def _pow2_floor(n: int) -> int:
    return 1 << (max(int(n), 1).bit_length() - 1)


def plan_batches(lengths: Sequence[int], *, new_tokens: int, batch_size: int, batch_tokens: int | None,
                 seed: int = 0) -> list[tuple[list[int], int]]:
    """``[(prompt indices, rows)]``: prompts sorted longest first, cut into consecutive batches whose row count
    (a power of two, padded to when short) fits ``batch_tokens`` for the batch's longest prompt bucket; returned in
    a seeded shuffled order. ``batch_tokens=None``: every batch has ``batch_size`` rows (bucketed)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    # never more rows than the whole call needs (a call of 12 prompts gets one batch of 16 rows, not 32)
    cap = min(_pow2_floor(batch_size), bucket_size(len(lengths), minimum=1))
    batches: list[tuple[list[int], int]] = []
    start = 0
    while start < len(order):
        if batch_tokens is None:
            rows = cap
        else:
            per_row = bucket_size(lengths[order[start]]) + new_tokens
            rows = min(cap, _pow2_floor(max(1, batch_tokens // per_row)))
        idx = order[start:start + rows]
        batches.append((idx, rows))
        start += rows
    random.Random(seed).shuffle(batches)
    return batches


class LocalTeacher:
    """The Teacher API over an in-process fiat_jax model (see the module docstring)."""

    def __init__(self, *, checkpoint: str = DEFAULT_CHECKPOINT, batch_size: int = 32, seed: int = 0,
                 chat: bool = True, system: str | None = None, bucket_new_tokens: bool = True,
                 batch_tokens: int | None = 8192, pretrained: Any = None, model: Any = None):
        if batch_size < 1:
            raise UserError(f"local teacher: batch_size must be >= 1, got {batch_size}")
        if batch_tokens is not None and batch_tokens < 1:
            raise UserError(f"local teacher: batch_tokens must be >= 1 (or None), got {batch_tokens}")
        self.batch_tokens = None if batch_tokens is None else int(batch_tokens)
        self.checkpoint = str(checkpoint)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.chat = bool(chat)
        self.system = system
        self.bucket_new_tokens = bool(bucket_new_tokens)
        self._pretrained, self._model = pretrained, model
        self.generated_tokens = 0  # new tokens produced (EOS excluded), for throughput figures
        self.decode_s = 0.0  # wall time inside decoding.generate (compiles included), for the decode share

    def __repr__(self) -> str:
        return (f"LocalTeacher(checkpoint={self.checkpoint!r}, batch_size={self.batch_size}, "
                f"batch_tokens={self.batch_tokens})")

    @property
    def identity(self) -> str:
        suffix = "" if self.chat else "+raw"
        suffix += f"+system:{self.system}" if self.system else ""
        return f"local:{self.checkpoint}{suffix}"

    def _loaded(self) -> tuple[Any, Any]:
        if self._model is None:
            self._pretrained, self._model = load_model(self.checkpoint)
        return self._pretrained, self._model

    def check(self) -> None:
        self._loaded()

    def prompt_ids(self, prompt: str) -> list[int]:
        pre, _ = self._loaded()
        return generate.prompt_ids(pre, prompt, chat=self.chat, system=self.system)

    def generate_stream(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                        stop: Sequence[str] = ()) -> Iterator[tuple[int, str | base.Failure]]:
        """Batches of similar length (see :func:`plan_batches`); yields each batch's replies as it finishes."""
        stop = base.check_request(max_new_tokens, temperature, stop)
        if not prompts:
            return
        pre, model = self._loaded()
        vocab = pre.vocabulary
        eos = vocab.eos_id
        rows = [self.prompt_ids(p) for p in prompts]
        steps = _new_tokens_bucket(max_new_tokens) if self.bucket_new_tokens else int(max_new_tokens)
        plan = plan_batches([len(r) for r in rows], new_tokens=steps, batch_size=self.batch_size,
                            batch_tokens=self.batch_tokens, seed=self.seed)
        for b, (idx, n_rows) in enumerate(plan):
            batch = [rows[i] for i in idx]  # a short batch is padded to its bucket's rows: no new compile
            rng = jax.random.fold_in(jax.random.key(self.seed), b)
            started = time.perf_counter()
            with base.late_imports():  # model code may import modules that register configurables
                result = decoding.generate(model, batch, max_new_tokens=steps, temperature=float(temperature),
                                           eos_id=eos, rng=rng, min_batch=n_rows)
            tokens = np.asarray(result.tokens)
            self.decode_s += time.perf_counter() - started
            for j, i in enumerate(idx):
                n = min(int(result.lengths[j]), int(max_new_tokens))
                self.generated_tokens += n
                text = vocab.decode(tokens[j, :n].tolist())
                if n == max_new_tokens:  # cut mid-character by the token limit: drop the broken tail
                    text = text.rstrip("\ufffd")
                yield i, base.cut_at_stop(text, stop)
        _log.info("local teacher: %d prompts in %d batches, %d new tokens so far, %.1f s decoding so far",
                  len(prompts), len(plan), self.generated_tokens, self.decode_s)

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                 stop: Sequence[str] = ()) -> list[str]:
        return base.collect(self.generate_stream(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                                                 stop=stop), len(prompts), what=self.identity)

    def score(self, prompt: str, options: Sequence[str]) -> list[float]:
        """Summed log-likelihood of each option's tokens after the chat-formatted prompt."""
        if not options:
            return []
        pre, model = self._loaded()
        p = self.prompt_ids(prompt)
        targets = [list(pre.vocabulary.encode(o)) for o in options]
        if any(not t for t in targets):
            raise UserError("local teacher score: an option is empty")
        with base.late_imports():
            return [float(x) for x in decoding.score(model, [p] * len(targets), targets)]


@gin.configurable
def local_teacher(*, checkpoint: str = DEFAULT_CHECKPOINT, batch_size: int = 32, seed: int = 0, chat: bool = True,
                  system: str | None = None, bucket_new_tokens: bool = True,
                  batch_tokens: int | None = 8192) -> LocalTeacher:
    """The local teacher (``TEACHER = @teacher/lazy_call()`` with ``teacher/lazy_call.target =
    'fiat_jax.teachers.local:local_teacher'``). The model loads on first use, once per process.

    ``batch_size``: most rows per batch; ``batch_tokens``: rows x (prompt bucket + new tokens) per batch, the
    memory budget (the KV cache and the prefill's activations grow with it); None = always ``batch_size`` rows."""
    return LocalTeacher(checkpoint=checkpoint, batch_size=batch_size, seed=seed, chat=chat, system=system,
                        bucket_new_tokens=bucket_new_tokens, batch_tokens=batch_tokens)
