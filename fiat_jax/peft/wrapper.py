"""``PeftModel``: the module every PEFT transform returns, wrapping a model from fiat_jax/models unchanged.

Why a wrapper: the models' dense layers take no ``deterministic`` flag, so LoRA dropout learns whether this trace
is a training one from :func:`is_training`, which the wrapper sets (trace-time Python state, nothing stored in the
graph) around ``logits_from_batch`` / ``__call__`` / ``encode`` / ``decode``. It also owns the optional soft
prompt (``soft_prompt [P, D]``, :mod:`fiat_jax.peft.prompt_tuning`) and prepends it on every entry point the
trainer and ``fiat_jax.models.decoding`` use, so generation and scoring see the prompt exactly as training did:

* encoder-decoder: the prompt goes before the encoder input in ``encode`` / ``__call__`` / ``logits_from_batch``;
  ``init_cache`` / ``decode`` are forwarded unchanged.
* decoder-only: ``init_cache`` reserves ``P`` more slots and marks the cache "prompt pending"; the first cached
  call (the prefill) then runs ``[prompt; tokens]`` in one chunk (so a prefix-LM prompt attends bidirectionally
  as in training) and later calls shift explicit ``positions`` by ``P``. Uncached calls prepend the prompt and
  drop its ``P`` output positions.

Parameter paths gain a ``model/`` prefix (``model/layers_0/attention/query/lora_a``); regexes written as
``.*attention/...`` match either way. ``model_kind``, ``config`` and any other attribute are forwarded.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import Any

import gin
import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

_TRAINING: contextvars.ContextVar[bool] = contextvars.ContextVar("fiat_jax_peft_training", default=False)
PROMPT_PENDING = "peft_prompt_pending"  # cache key: the decoder-only prefill still has to prepend the prompt


def is_training() -> bool:
    """True inside a wrapped call made with ``deterministic=False`` (LoRA dropout active)."""
    return _TRAINING.get()


@contextlib.contextmanager
def training(flag: bool) -> Iterator[None]:
    token = _TRAINING.set(bool(flag))
    try:
        yield
    finally:
        _TRAINING.reset(token)


class PeftModel(nnx.Module):
    """A model plus its PEFT state; see the module docstring. Build it through the transforms, not directly."""

    def __init__(self, model: nnx.Module):
        self.model = model

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("model", "soft_prompt"):
            raise AttributeError(name)
        return getattr(self.model, name)

    # -- forwarded identity ------------------------------------------------------------------------------------
    @property
    def model_kind(self) -> str:
        return self.model.model_kind

    @property
    def config(self) -> Any:
        return self.model.config

    def prompt_embeddings(self) -> Array | None:
        """The soft prompt as ``[1, P, D]`` (None when this wrapper has none)."""
        p = vars(self).get("soft_prompt")
        return None if p is None else p[...][None]

    @property
    def prompt_length(self) -> int:
        p = vars(self).get("soft_prompt")
        return 0 if p is None else int(p.shape[0])

    def _prompt_or(self, given: Array | None) -> Array | None:
        return given if given is not None else self.prompt_embeddings()

    # -- training entry point ----------------------------------------------------------------------------------
    def logits_from_batch(self, batch: Mapping[str, Array], *, deterministic: bool = True,
                          prompt_embeddings: Array | None = None) -> Array:
        with training(not deterministic):
            return self.model.logits_from_batch(batch, deterministic=deterministic,
                                                prompt_embeddings=self._prompt_or(prompt_embeddings))

    def hidden_from_batch(self, batch: Mapping[str, Array], *, deterministic: bool = True,
                          prompt_embeddings: Array | None = None) -> Array:
        with training(not deterministic):
            return self.model.hidden_from_batch(batch, deterministic=deterministic,
                                                prompt_embeddings=self._prompt_or(prompt_embeddings))

    def logits_from_hidden(self, hidden: Array, *, deterministic: bool = True) -> Array:
        with training(not deterministic):
            return self.model.logits_from_hidden(hidden, deterministic=deterministic)

    # -- encoder-decoder ---------------------------------------------------------------------------------------
    def encode(self, encoder_input_tokens: Array | None, *, prompt_embeddings: Array | None = None,
               deterministic: bool = True, **kwargs: Any) -> Any:
        with training(not deterministic):
            return self.model.encode(encoder_input_tokens, prompt_embeddings=self._prompt_or(prompt_embeddings),
                                     deterministic=deterministic, **kwargs)

    def decode(self, *args: Any, deterministic: bool = True, **kwargs: Any) -> Any:
        with training(not deterministic):
            return self.model.decode(*args, deterministic=deterministic, **kwargs)

    # -- both kinds ----------------------------------------------------------------------------------------------
    def init_cache(self, batch_size: int, max_len: int, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if self.model_kind == "encoder_decoder" or self.prompt_length == 0:
            return self.model.init_cache(batch_size, max_len, *args, **kwargs)
        cache = self.model.init_cache(batch_size, max_len + self.prompt_length, *args, **kwargs)
        cache[PROMPT_PENDING] = jnp.zeros((0,), jnp.int32)
        return cache

    def __call__(self, *args: Any, deterministic: bool = True, **kwargs: Any) -> Any:
        with training(not deterministic):
            if self.model_kind == "encoder_decoder":
                kwargs["prompt_embeddings"] = self._prompt_or(kwargs.get("prompt_embeddings"))
                return self.model(*args, deterministic=deterministic, **kwargs)
            if self.prompt_length == 0:
                return self.model(*args, deterministic=deterministic, **kwargs)
            return self._decoder_call(*args, deterministic=deterministic, **kwargs)

    def _decoder_call(self, tokens: Array | None, *, positions: Array | None = None,
                      segment_ids: Array | None = None, causal_attention: Array | None = None,
                      embeddings: Array | None = None, input_mask: Array | None = None,
                      cache: dict[str, Any] | None = None, deterministic: bool = True, head: bool = True) -> Any:
        """Decoder-only forward with the soft prompt (see the module docstring for the cache protocol);
        ``head=False`` returns final hidden states, as the wrapped model does."""
        p = self.prompt_length
        if cache is not None and PROMPT_PENDING not in cache:  # a later decode step: the prompt is cached
            if positions is not None:
                positions = positions + p
            return self.model(tokens, positions=positions, segment_ids=segment_ids,
                              causal_attention=causal_attention, embeddings=embeddings, input_mask=input_mask,
                              cache=cache, deterministic=deterministic, head=head)
        if cache is not None:
            cache = {k: v for k, v in cache.items() if k != PROMPT_PENDING}
        x = self.model.token_embedder(tokens) if embeddings is None else embeddings
        b = x.shape[0]
        pe = jnp.broadcast_to(self.prompt_embeddings().astype(x.dtype), (b, p, x.shape[-1]))
        x = jnp.concatenate([pe, x], axis=1)
        ones = jnp.ones((b, p), bool)
        if positions is not None:
            positions = jnp.concatenate([jnp.broadcast_to(jnp.arange(p), (b, p)), positions + p], axis=1)
        if segment_ids is not None:
            segment_ids = jnp.concatenate([jnp.repeat(segment_ids[:, :1], p, axis=1), segment_ids], axis=1)
        if causal_attention is not None:
            causal_attention = jnp.concatenate([ones.astype(causal_attention.dtype), causal_attention], axis=1)
        if input_mask is not None:
            input_mask = jnp.concatenate([ones, input_mask.astype(bool)], axis=1)
        out = self.model(None, positions=positions, segment_ids=segment_ids, causal_attention=causal_attention,
                         embeddings=x, input_mask=input_mask, cache=cache, deterministic=deterministic,
                         head=head)
        if cache is None:
            return out[:, p:]
        logits, new_cache = out
        return logits[:, p:], new_cache


def wrap(model: nnx.Module) -> PeftModel:
    """``model`` itself when already wrapped, else a new :class:`PeftModel` around it."""
    return model if isinstance(model, PeftModel) else PeftModel(model)


def unwrap(model: nnx.Module) -> nnx.Module:
    """The wrapped model (``model`` itself when not wrapped)."""
    return model.model if isinstance(model, PeftModel) else model


@gin.configurable
def chain_transforms(*, transforms: Any) -> Any:
    """One ``model -> model`` transform applying ``transforms`` in order (``lora+prompt`` in gin)."""
    transforms = tuple(transforms)

    def apply(model: nnx.Module) -> nnx.Module:
        for t in transforms:
            model = t(model)
        return model

    return apply
