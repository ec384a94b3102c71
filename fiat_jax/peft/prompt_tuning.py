"""Prompt tuning (Lester et al. 2021) as a model transform: a learned soft prompt ``[P, D]`` prepended to the
encoder input (T5) or the decoder input (decoder-only), the base model frozen.

The prompt is a :class:`PromptParam` (an ``nnx.Param`` subclass, logical axes ``('prompt_len', 'embed')``) held
by the :class:`~fiat_jax.peft.wrapper.PeftModel` the transform returns; the wrapper prepends it in
``logits_from_batch`` (training, scoring) and in ``encode`` / ``__call__`` / ``init_cache`` (so
``fiat_jax.models.decoding.generate`` / ``score`` see it too; see the wrapper's docstring for the KV-cache
protocol). Initialisation: ``"vocab"`` = embeddings of ``length`` token ids drawn from the first
``vocab_sample_size`` ids (the paper's "sampled vocabulary"), ``"text"`` = embeddings of a text's tokens (cycled
to ``length``), ``"random"`` = uniform(±0.5).

One prompt per model: per-task prompts for a mixture are not implemented.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fiat_jax import partitioning
from fiat_jax.errors import UserError
from fiat_jax.peft import wrapper

INITS = ("vocab", "text", "random")


class PromptParam(nnx.Param):
    """The soft prompt; trainable in ``peft_filter`` modes ``prompt`` / ``lora+prompt`` / ``peft``."""


def _embedding_table(model: nnx.Module) -> nnx.Variable:
    base = wrapper.unwrap(model)
    emb = getattr(getattr(base, "token_embedder", None), "embedding", None)
    if emb is None:
        raise UserError(f"prompt tuning: {type(base).__name__} has no token_embedder.embedding")
    return emb


def initial_prompt(model: nnx.Module, *, length: int, init: str = "vocab", token_ids: Sequence[int] | None = None,
                   text: str | None = None, vocabulary: Any = None, vocab_sample_size: int = 5000,
                   seed: int = 0) -> jax.Array:
    """The initial prompt ``[length, D]`` in the embedding's dtype (see the module docstring)."""
    if length < 1:
        raise UserError(f"prompt length must be >= 1, got {length}")
    if init not in INITS:
        raise UserError(f"prompt init {init!r}: choose one of {', '.join(INITS)}")
    emb = _embedding_table(model)
    table = emb.get_value()
    vocab, d = table.shape
    rng = np.random.default_rng(seed)
    if init == "random":
        return jnp.asarray(rng.uniform(-0.5, 0.5, (length, d)), table.dtype)
    if init == "vocab":
        high = max(2, min(int(vocab_sample_size), vocab))
        ids = rng.integers(1, high, size=length)  # id 0 is padding
    else:
        if token_ids is None:
            if text is None:
                raise UserError("prompt init 'text' needs prompt_transform.text (or token_ids)")
            if vocabulary is None:
                from fiat_jax.data.vocab import get_vocabulary  # lazy: seqio (TensorFlow) only for a text init

                vocabulary = get_vocabulary()
            token_ids = list(vocabulary.encode(text))
        ids = np.asarray(list(token_ids), np.int64)
        if ids.size == 0:
            raise UserError("prompt init 'text': the text has no tokens")
        if ids.min() < 0 or ids.max() >= vocab:
            raise UserError(f"prompt init 'text': token ids must be in [0, {vocab}), got {ids.min()}..{ids.max()}")
        ids = np.resize(ids, length)
    return jnp.take(table, jnp.asarray(ids, jnp.int32), axis=0)


def apply_prompt(model: nnx.Module, *, length: int = 20, init: str = "vocab",
                 token_ids: Sequence[int] | None = None, text: str | None = None, vocabulary: Any = None,
                 vocab_sample_size: int = 5000, seed: int = 0) -> wrapper.PeftModel:
    """Wrap ``model`` (or reuse its wrapper) and give it a soft prompt of ``length`` vectors."""
    peft = wrapper.wrap(model)
    if peft.prompt_length:
        raise UserError("apply_prompt: the model already has a soft prompt")
    value = initial_prompt(peft, length=length, init=init, token_ids=token_ids, text=text, vocabulary=vocabulary,
                           vocab_sample_size=vocab_sample_size, seed=seed)
    with nnx.use_eager_sharding(False):
        peft.soft_prompt = PromptParam(value, sharding_names=("prompt_len", "embed"))
    sharding = getattr(_embedding_table(peft).get_value(), "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh.size > 1:
        state = nnx.state(peft, PromptParam)
        nnx.update(peft, jax.device_put(state, partitioning.param_shardings(state, sharding.mesh)))
    return peft


@gin.configurable
def prompt_transform(*, length: int = 20, init: str = "vocab", token_ids: Sequence[int] | None = None,
                     text: str | None = None, vocabulary: Any = None, vocab_sample_size: int = 5000,
                     seed: int = 0) -> Callable[[nnx.Module], nnx.Module]:
    """``train.model_transform``: a ``model -> model`` callable applying :func:`apply_prompt`."""
    if length < 1:
        raise UserError(f"prompt_transform: length must be >= 1, got {length}")
    if init not in INITS:
        raise UserError(f"prompt_transform: init {init!r}: choose one of {', '.join(INITS)}")

    def transform(model: nnx.Module) -> nnx.Module:
        return apply_prompt(model, length=length, init=init, token_ids=token_ids, text=text,
                            vocabulary=vocabulary, vocab_sample_size=vocab_sample_size, seed=seed)

    transform.__name__ = transform.__qualname__ = f"prompt_transform(length={length}, init={init!r})"
    return transform
