"""``fiat generate``: chat with a pretrained model, printing the answer as it is generated.

The model comes from the ``CHECKPOINT`` gin macro (``gin_configs/models/smollm2_135m.gin`` binds
``generate.checkpoint = %CHECKPOINT``; default: the embedded SmolLM2-135M-Instruct). The prompt is a user message,
wrapped with the model's own chat template; tokens stream out through the decoder's per-step callback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import gin
import numpy as np

from fiat_jax.errors import UserError
from fiat_jax.models import decoding
from fiat_jax.models.embedded import EMBEDDED_SOURCE, Pretrained, load_pretrained


class TextStreamer:
    """Turns a growing list of token ids into newly completed text (holds back split UTF-8 characters)."""

    def __init__(self, vocabulary: Any, write: Callable[[str], Any]):
        self.vocabulary = vocabulary
        self.write = write
        self.ids: list[int] = []
        self.printed = ""

    def push(self, new_ids: Sequence[int]) -> None:
        self.ids.extend(int(i) for i in new_ids)
        text = self.vocabulary.decode(self.ids)
        if text.endswith("\ufffd"):  # a multi-byte character not complete yet
            return
        if text.startswith(self.printed):
            self.write(text[len(self.printed):])
            self.printed = text

    def finish(self) -> str:
        text = self.vocabulary.decode(self.ids)
        if text.startswith(self.printed) and text != self.printed:
            self.write(text[len(self.printed):])
        self.printed = text
        return text


def prompt_ids(pretrained: Pretrained, prompt: str, *, chat: bool = True, system: str | None = None) -> list[int]:
    """Token ids of ``prompt``, chat-formatted when the model has a template and ``chat`` is set."""
    if pretrained.vocabulary is None:
        raise UserError(f"{pretrained.source}: no tokenizer found beside the weights")
    text = prompt
    if chat and pretrained.chat_template is not None:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user",
                                                                                   "content": prompt}]
        text = pretrained.chat_template.format(messages, add_generation_prompt=True)
    ids = list(pretrained.vocabulary.encode(text))
    if not ids:
        raise UserError("the prompt is empty")
    return ids


@gin.configurable
def generate(*, prompt: str, checkpoint: str = EMBEDDED_SOURCE, max_new_tokens: int = 256,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None, seed: int = 0,
             chat: bool = True, system: str | None = None, stream: TextIO | None = None,
             model: Any = None) -> str:
    """Generate an answer to ``prompt`` and print it as it comes; returns the answer text.

    ``temperature=0`` is greedy. Generation stops at the vocabulary's EOS (``<|im_end|>`` for SmolLM2-Instruct)
    or after ``max_new_tokens``. ``model`` lets a caller reuse an already built model for ``checkpoint``.
    """
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise UserError(f"temperature must be >= 0, got {temperature}")
    out = sys.stdout if stream is None else stream
    pretrained = load_pretrained(checkpoint)
    ids = prompt_ids(pretrained, prompt, chat=chat, system=system)
    model = pretrained.build_model() if model is None else model
    vocab = pretrained.vocabulary

    def write(text: str) -> None:
        out.write(text)
        out.flush()

    streamer = TextStreamer(vocab, write)
    new_ids = _decode(model, ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                      top_p=top_p, seed=seed, eos_id=vocab.eos_id, on_tokens=streamer.push)
    streamer.ids = [int(i) for i in new_ids]
    text = streamer.finish()
    write("\n")
    return text


def _decode(model: Any, ids: list[int], *, max_new_tokens: int, temperature: float, top_k: int | None,
            top_p: float | None, seed: int, eos_id: int | None, on_tokens: Callable[[Sequence[int]], None],
            ) -> list[int]:
    """Run ``decoding.generate`` on one prompt; returns the new ids (up to, excluding, EOS)."""
    # lazy: JAX loads only when a run computes, not when gin configs or the CLI import this module
    import jax

    prompt = np.asarray([ids], np.int32)
    seen = [0]

    def callback(step_tokens: Any) -> None:
        tok = np.asarray(step_tokens).reshape(-1)
        token = int(tok[0])
        if eos_id is not None and token == eos_id:
            seen[0] = -1
            return
        if seen[0] >= 0:
            on_tokens([token])
            seen[0] += 1

    result = decoding.generate(model, prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                               top_k=top_k, top_p=top_p, rng=jax.random.key(seed), eos_id=eos_id,
                               callback=callback)
    tokens = np.asarray(getattr(result, "tokens", result))[0].tolist()
    out = []
    for t in tokens:
        if eos_id is not None and int(t) == eos_id:
            break
        out.append(int(t))
    return out
