"""A fiat_jax model as teacher (default: the embedded SmolLM2-135M-Instruct), decoded in batches with the KV cache.

Prompts are wrapped in the model's chat template, tokenised, sorted by length and decoded ``batch_size`` at a
time with :func:`fiat_jax.models.decoding.generate`, which pads batch sizes and prompt lengths to powers of two;
``max_new_tokens`` is rounded up to a power of two too (outputs cut back): so a whole run compiles a handful of
shapes, once each. The loaded model is kept per process and checkpoint
(loading the GGUF takes seconds).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import gin

from fiat_jax.errors import UserError
from fiat_jax.teachers import base

_log = logging.getLogger(__name__)
DEFAULT_CHECKPOINT = "embedded:smollm2-135m-instruct"

_LOADED: dict[str, tuple[Any, Any]] = {}
_LOAD_LOCK = threading.Lock()


def load_model(checkpoint: str) -> tuple[Any, Any]:
    """``(Pretrained, model)`` for ``checkpoint``, built once per process."""
    with _LOAD_LOCK, base.late_imports():
        if checkpoint not in _LOADED:
            from fiat_jax import partitioning  # noqa: F401 - imported while gin is unlocked
            from fiat_jax.models import decoding, generate  # noqa: F401
            from fiat_jax.models.embedded import load_pretrained

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


class LocalTeacher:
    """The Teacher API over an in-process fiat_jax model (see the module docstring)."""

    def __init__(self, *, checkpoint: str = DEFAULT_CHECKPOINT, batch_size: int = 8, seed: int = 0,
                 chat: bool = True, system: str | None = None, bucket_new_tokens: bool = True,
                 pretrained: Any = None, model: Any = None):
        if batch_size < 1:
            raise UserError(f"local teacher: batch_size must be >= 1, got {batch_size}")
        self.checkpoint = str(checkpoint)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.chat = bool(chat)
        self.system = system
        self.bucket_new_tokens = bool(bucket_new_tokens)
        self._pretrained, self._model = pretrained, model
        self.generated_tokens = 0  # new tokens produced (EOS excluded), for throughput figures

    def __repr__(self) -> str:
        return f"LocalTeacher(checkpoint={self.checkpoint!r}, batch_size={self.batch_size})"

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
        with base.late_imports():
            from fiat_jax.models.generate import prompt_ids

        pre, _ = self._loaded()
        return prompt_ids(pre, prompt, chat=self.chat, system=self.system)

    def generate_stream(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                        stop: Sequence[str] = ()) -> Iterator[tuple[int, str | base.Failure]]:
        """Batches of similar length, longest first; yields each batch's replies as it finishes."""
        import jax
        import numpy as np

        from fiat_jax.models import decoding

        base.check_decoding(max_new_tokens, temperature)
        stop = base.check_stop(stop)
        if not prompts:
            return
        pre, model = self._loaded()
        vocab = pre.vocabulary
        eos = vocab.eos_id
        rows = [self.prompt_ids(p) for p in prompts]
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        steps = _new_tokens_bucket(max_new_tokens) if self.bucket_new_tokens else int(max_new_tokens)
        for b, start in enumerate(range(0, len(order), self.batch_size)):
            idx = order[start:start + self.batch_size]
            batch = [rows[i] for i in idx]  # decoding pads rows to a power of two (a partial last batch
            # costs at most one more compilation, and no wasted prefill for a full batch of padding)
            rng = jax.random.fold_in(jax.random.key(self.seed), b)
            with base.late_imports():  # model code may import modules that register configurables
                result = decoding.generate(model, batch, max_new_tokens=steps, temperature=float(temperature),
                                           eos_id=eos, rng=rng)
            tokens = np.asarray(result.tokens)
            for j, i in enumerate(idx):
                n = min(int(result.lengths[j]), int(max_new_tokens))
                self.generated_tokens += n
                text = vocab.decode(tokens[j, :n].tolist())
                if n == max_new_tokens:  # cut mid-character by the token limit: drop the broken tail
                    text = text.rstrip("\ufffd")
                yield i, base.cut_at_stop(text, stop)

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                 stop: Sequence[str] = ()) -> list[str]:
        return base.collect(self.generate_stream(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                                                 stop=stop), len(prompts), what=self.identity)

    def score(self, prompt: str, options: Sequence[str]) -> list[float]:
        """Summed log-likelihood of each option's tokens after the chat-formatted prompt."""
        from fiat_jax.models import decoding

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
def local_teacher(*, checkpoint: str = DEFAULT_CHECKPOINT, batch_size: int = 8, seed: int = 0, chat: bool = True,
                  system: str | None = None, bucket_new_tokens: bool = True) -> LocalTeacher:
    """The local teacher (``TEACHER = @teacher/lazy_call()`` with ``teacher/lazy_call.target =
    'fiat_jax.teachers.local:local_teacher'``). The model loads on first use, once per process."""
    return LocalTeacher(checkpoint=checkpoint, batch_size=batch_size, seed=seed, chat=chat, system=system,
                        bucket_new_tokens=bucket_new_tokens)
