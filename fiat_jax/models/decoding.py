"""Batched autoregressive decoding with the functional KV cache, and sequence log-likelihood scoring.

``generate(model, prompts, ...)`` works for both model kinds (``model.model_kind``):

* decoder-only: prompts are left-padded (positions count real tokens only, padded key slots are never attended),
  prefilled in one pass, then decoded one token per step;
* encoder-decoder: prompts are the encoder inputs, right-padded; decoding starts from token 0 (T5X convention)
  with cross-attention K/V computed once.

Prompt lengths and batch sizes are padded up to power-of-two buckets and the whole prefill + decode loop is one
``jax.jit`` (a ``lax.while_loop`` that stops early once every row has emitted EOS), so each
(batch bucket, length bucket, max_new_tokens, sampling mode) compiles once per model graph and is reused.
Sampling: greedy (``temperature=0``), temperature, top-k, top-p (nucleus). ``callback(tokens [B])`` is called on
the host after every step (``jax.debug.callback``, ordered) so a CLI can stream.

``score(model, prompts, targets)`` returns each row's summed log-likelihood of ``targets`` given ``prompts``
(multiple-choice evaluation, teacher ``score``).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fiat_jax.errors import UserError

Array = jax.Array
TokenRows = Sequence[Sequence[int]] | np.ndarray

_CALLBACKS: dict[int, Callable[[np.ndarray], Any]] = {}
_CALLBACK_IDS = itertools.count(1)
_CALLBACK_LOCK = threading.Lock()


@dataclasses.dataclass
class GenerateResult:
    """``tokens [B, max_new_tokens]``: generated ids, EOS included, 0 after it; ``lengths [B]``: tokens before
    EOS (or all of them)."""

    tokens: np.ndarray
    lengths: np.ndarray


def bucket_size(n: int, *, minimum: int = 8) -> int:
    """Smallest power of two >= ``n`` (and >= ``minimum``)."""
    b = minimum
    while b < n:
        b *= 2
    return b


def _batch_bucket(n: int) -> int:
    return bucket_size(n, minimum=1)


def _rows(prompts: TokenRows, lengths: Sequence[int] | np.ndarray | None, what: str) -> list[list[int]]:
    if isinstance(prompts, np.ndarray) or hasattr(prompts, "shape"):
        arr = np.asarray(prompts)
        if arr.ndim != 2:
            raise UserError(f"{what} must be [batch, length], got shape {arr.shape}")
        lens = [arr.shape[1]] * arr.shape[0] if lengths is None else [int(n) for n in lengths]
        rows = [arr[i, :n].tolist() for i, n in enumerate(lens)]
    else:
        rows = [[int(t) for t in r] for r in prompts]
        if lengths is not None:
            rows = [r[:int(n)] for r, n in zip(rows, lengths)]
    if not rows:
        raise UserError(f"{what}: empty batch")
    return rows


def _pack(rows: list[list[int]], batch: int, length: int, *, left: bool) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.zeros((batch, length), np.int32)
    mask = np.zeros((batch, length), bool)
    for i in range(batch):
        r = rows[i] if i < len(rows) else rows[0][:1]  # batch padding rows: one real token, output dropped
        if left:
            tokens[i, length - len(r):], mask[i, length - len(r):] = r, True
        else:
            tokens[i, :len(r)], mask[i, :len(r)] = r, True
    return tokens, mask


# ---------------------------------------------------------------------------------------------------------------
# Sampling


def sample_logits(logits: Array, rng: Array, *, greedy: bool, temperature: Array, top_k: int | None,
                  top_p: Array | None) -> Array:
    """``logits [B, V]`` -> token ids ``[B]``."""
    logits = logits.astype(jnp.float32)
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # probability mass strictly above each token
        keep = before < top_p
        cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _dispatch(cb_id: np.ndarray, tokens: np.ndarray) -> None:
    fn = _CALLBACKS.get(int(cb_id))
    if fn is not None:
        fn(np.asarray(tokens))


# ---------------------------------------------------------------------------------------------------------------
# The jitted loop


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "greedy", "top_k", "use_top_p",
                                              "has_eos", "has_callback", "prefix_bidirectional"))
def _generate_jit(graphdef: nnx.GraphDef, state: Any, tokens: Array, mask: Array, rng: Array, temperature: Array,
                  top_p: Array, eos_id: Array, cb_id: Array, *, max_new_tokens: int, greedy: bool,
                  top_k: int | None, use_top_p: bool, has_eos: bool, has_callback: bool,
                  prefix_bidirectional: bool) -> tuple[Array, Array]:
    model = nnx.merge(graphdef, state)
    b, length = tokens.shape
    if model.model_kind == "encoder_decoder":
        encoded, valid, _ = model.encode(tokens, input_mask=mask)
        cache = model.init_cache(b, max_new_tokens, encoded, valid)
        logits, cache = model.decode(jnp.zeros((b, 1), jnp.int32), cache=cache)
        positions = None
    else:
        cache = model.init_cache(b, length + max_new_tokens)
        positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)
        # The prefill needs the next-token distribution at the last slot only (prompts are left-padded, so it is
        # every row's last real token): the LM head runs on that one hidden state, not on [B, L, vocab].
        hidden, cache = model(tokens, positions=positions, input_mask=mask, cache=cache,
                              causal_attention=mask if prefix_bidirectional else None, head=False)
        logits = model.logits_from_hidden(hidden[:, -1:])
        positions = jnp.sum(mask.astype(jnp.int32), axis=-1)  # next position per row
    logits = logits[:, -1]

    def cond(carry):
        i, _, _, done, _, _, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, logits, cache, done, pos, out, rng = carry
        rng, step_rng = jax.random.split(rng)
        tok = sample_logits(logits, step_rng, greedy=greedy, temperature=temperature, top_k=top_k,
                            top_p=top_p if use_top_p else None)
        tok = jnp.where(done, 0, tok)
        out = jax.lax.dynamic_update_index_in_dim(out, tok, i, axis=1)
        if has_callback:
            jax.debug.callback(_dispatch, cb_id, tok, ordered=True)
        if has_eos:
            done = done | (tok == eos_id)
        if model.model_kind == "encoder_decoder":
            step_logits, cache = model.decode(tok[:, None], cache=cache)
        else:
            step_logits, cache = model(tok[:, None], positions=pos[:, None], cache=cache)
            pos = pos + 1
        return i + 1, step_logits[:, -1], cache, done, pos, out, rng

    out = jnp.zeros((b, max_new_tokens), jnp.int32)
    pos0 = jnp.zeros((b,), jnp.int32) if positions is None else positions
    carry = (jnp.zeros((), jnp.int32), logits, cache, jnp.zeros((b,), bool), pos0, out, rng)
    i, _, _, done, _, out, _ = jax.lax.while_loop(cond, body, carry)
    return out, i


def _check_context(model: Any, prompt_len: int, max_new_tokens: int) -> None:
    """A decoder-only model's ``config.max_length`` bounds prompt + generated tokens (its trained context):
    beyond it positions were never seen, so refuse with one clear error instead of generating garbage."""
    if getattr(model, "model_kind", "decoder") == "encoder_decoder":
        return
    limit = getattr(getattr(model, "config", None), "max_length", None)
    if not isinstance(limit, int):
        return
    if prompt_len >= limit:
        raise UserError(f"the prompt has {prompt_len} tokens but the model's context is {limit} "
                        f"(config.max_length): shorten the prompt")
    if prompt_len + max_new_tokens > limit:
        raise UserError(f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                        f"context of {limit} tokens (config.max_length): ask for at most "
                        f"{limit - prompt_len} new tokens or shorten the prompt")


def generate(model: Any, prompts: TokenRows, *, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, rng: Array | None = None,
             eos_id: int | None = None, callback: Callable[[np.ndarray], Any] | None = None,
             prompt_lengths: Sequence[int] | None = None, prefix_bidirectional: bool = False,
             min_batch: int = 1, min_prompt_length: int = 1) -> GenerateResult:
    """Generate up to ``max_new_tokens`` per prompt.

    ``prompts``: ragged token lists, or a ``[B, L]`` array (all of each row, or its first ``prompt_lengths[i]``).
    ``temperature=0`` is greedy; ``top_k`` / ``top_p`` restrict sampling. Rows stop at ``eos_id``.
    ``prefix_bidirectional``: attend the prompt bidirectionally (decoder-only students trained as prefix LMs).
    ``min_batch`` / ``min_prompt_length``: pad the batch at least this far (then up to its power-of-two bucket)
    and prompts to exactly ``min_prompt_length`` when all fit, so a caller with many batches of one known maximum
    shape (the evaluator) compiles once, without padding its longest prompts further.
    """
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise UserError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"top_p must be in (0, 1], got {top_p}")
    rows = _rows(prompts, prompt_lengths, "prompts")
    if any(len(r) == 0 for r in rows):
        raise UserError("generate: a prompt is empty")
    _check_context(model, max(len(r) for r in rows), max_new_tokens)
    n = len(rows)
    batch = _batch_bucket(max(n, min_batch))
    longest = max(len(r) for r in rows)
    length = min_prompt_length if 1 < min_prompt_length and longest <= min_prompt_length else bucket_size(longest)
    left = getattr(model, "model_kind", "decoder") != "encoder_decoder"
    tokens, mask = _pack(rows, batch, length, left=left)
    graphdef, state = nnx.split(model)
    cb_id = 0
    if callback is not None:
        with _CALLBACK_LOCK:
            cb_id = next(_CALLBACK_IDS)
            _CALLBACKS[cb_id] = lambda toks: callback(toks[:n])
    try:
        out, _ = _generate_jit(
            graphdef, state, jnp.asarray(tokens), jnp.asarray(mask),
            jax.random.key(0) if rng is None else rng, jnp.float32(max(temperature, 1e-6)),
            jnp.float32(1.0 if top_p is None else top_p), jnp.int32(-1 if eos_id is None else eos_id),
            jnp.int32(cb_id), max_new_tokens=max_new_tokens, greedy=temperature == 0, top_k=top_k,
            use_top_p=top_p is not None and temperature > 0, has_eos=eos_id is not None,
            has_callback=callback is not None, prefix_bidirectional=prefix_bidirectional)
        out = np.asarray(out)[:n]
        if callback is not None:
            jax.effects_barrier()
    finally:
        _CALLBACKS.pop(cb_id, None)
    if eos_id is None:
        lengths = np.full((n,), max_new_tokens, np.int32)
    else:
        is_eos = out == eos_id
        lengths = np.where(is_eos.any(axis=1), is_eos.argmax(axis=1), max_new_tokens).astype(np.int32)
    return GenerateResult(tokens=out, lengths=lengths)


# ---------------------------------------------------------------------------------------------------------------
# Scoring


@functools.partial(jax.jit, static_argnames=("graphdef", "prefix_bidirectional"))
def _score_jit(graphdef: nnx.GraphDef, state: Any, inputs: Array, input_mask: Array, dec_in: Array,
               targets: Array, weights: Array, positions: Array | None, real: Array | None, *,
               prefix_bidirectional: bool) -> Array:
    """Decoder-only: ``positions [B, Tt]`` are the slots whose next-token distributions are scored (``targets``
    and ``weights`` aligned with them; the LM head runs there only, not over the whole prompt) and ``real [B, L]``
    the slots that are tokens (prompt and all but the last target token)."""
    model = nnx.merge(graphdef, state)
    if model.model_kind == "encoder_decoder":
        encoded, valid, _ = model.encode(inputs, input_mask=input_mask)
        logits = model.decode(dec_in, encoded, encoder_valid=valid)
    else:
        hidden = model(dec_in, input_mask=real, causal_attention=input_mask if prefix_bidirectional else None,
                       head=False)
        logits = model.logits_from_hidden(jnp.take_along_axis(hidden, positions[..., None], axis=1))
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    tok = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(tok * weights, axis=-1)


def score(model: Any, prompts: TokenRows, targets: TokenRows, *, prefix_bidirectional: bool = False
          ) -> np.ndarray:
    """Summed log-likelihood ``[B]`` of each ``targets[i]`` given ``prompts[i]`` (ragged lists of ids).

    Decoder-only: ``prompt + target`` in one causal pass (prompts must be non-empty). Encoder-decoder: prompt as
    encoder input, target teacher-forced from start token 0.
    """
    p_rows, t_rows = _rows(prompts, None, "prompts"), _rows(targets, None, "targets")
    if len(p_rows) != len(t_rows):
        raise UserError(f"score: {len(p_rows)} prompts but {len(t_rows)} targets")
    n = len(p_rows)
    batch = _batch_bucket(n)
    graphdef, state = nnx.split(model)
    if getattr(model, "model_kind", "decoder") == "encoder_decoder":
        inputs, in_mask = _pack(p_rows, batch, bucket_size(max(len(r) for r in p_rows)), left=False)
        t_len = bucket_size(max(len(r) for r in t_rows))
        tgt, w = _pack(t_rows, batch, t_len, left=False)
        dec_in = np.zeros_like(tgt)
        dec_in[:, 1:] = tgt[:, :-1]
    else:
        if any(len(r) == 0 for r in p_rows):
            raise UserError("score: a decoder-only prompt is empty (nothing predicts the first target token)")
        seqs = [p + t for p, t in zip(p_rows, t_rows)]
        length = bucket_size(max(len(s) for s in seqs))
        dec_in, _ = _pack(seqs, batch, length, left=False)
        in_mask = np.zeros((batch, length), bool)
        t_len = bucket_size(max(len(r) for r in t_rows))
        positions = np.zeros((batch, t_len), np.int32)  # slot lp-1+j predicts target token j
        tgt = np.zeros((batch, t_len), np.int32)
        w = np.zeros((batch, t_len), bool)
        real = np.zeros((batch, length), bool)
        for i in range(batch):
            lp, lt = (len(p_rows[i]), len(t_rows[i])) if i < n else (1, 0)
            in_mask[i, :lp] = True
            real[i, :lp + max(lt - 1, 0)] = True
            positions[i] = np.minimum(lp - 1 + np.arange(t_len), length - 1)
            tgt[i, :lt] = t_rows[i] if i < n else []
            w[i, :lt] = True
        inputs = dec_in
    out = _score_jit(graphdef, state, jnp.asarray(inputs), jnp.asarray(in_mask), jnp.asarray(dec_in),
                     jnp.asarray(tgt), jnp.asarray(w, jnp.float32),
                     *((None, None) if getattr(model, "model_kind", "decoder") == "encoder_decoder"
                       else (jnp.asarray(positions), jnp.asarray(real))),
                     prefix_bidirectional=prefix_bidirectional)
    return np.asarray(out)[:n]


# ---------------------------------------------------------------------------------------------------------------
# Scoring many continuations of one shared prefix (ICL with documents in context: every probe after one document)


@functools.partial(jax.jit, static_argnames=("graphdef", "first"))
def _score_shared_prefix_jit(graphdef: nnx.GraphDef, state: Any, prefix: Array, prefix_causal: Array, chunk: Array,
                             chunk_causal: Array, targets: Array, weights: Array, *, first: int) -> Array:
    """Per-row sums ``[B]`` of ``weights * log p(targets)``: the shared ``prefix [1, R]`` runs once into a KV cache,
    which every row's ``chunk [B, T]`` (its tokens after the prefix) then attends to. ``targets``/``weights``
    ``[B, R - first + T]`` are aligned with positions ``first .. R + T - 1``."""
    model = nnx.merge(graphdef, state)
    b, t = chunk.shape
    r = prefix.shape[1]
    cache = model.init_cache(1, r + t)
    prefix_hidden, cache = model(prefix, causal_attention=prefix_causal, cache=cache, head=False)
    cache = jax.tree.map(lambda a: jnp.broadcast_to(a, (b,) + a.shape[1:]) if a.ndim else a, cache)
    chunk_hidden, _ = model(chunk, causal_attention=chunk_causal, cache=cache, head=False)
    shared = jnp.broadcast_to(prefix_hidden[:, first:], (b, r - first, prefix_hidden.shape[-1]))
    hidden = jnp.concatenate([shared, chunk_hidden], axis=1)
    logp = jax.nn.log_softmax(model.logits_from_hidden(hidden).astype(jnp.float32), axis=-1)
    tok = jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.sum(tok * weights, axis=-1)


def shared_prefix(batch: Mapping[str, np.ndarray], *, minimum: int = 64) -> tuple[int, int] | None:
    """``(first, r)`` when every row of a prefix-LM batch (``decoder_*`` features, no packing) has the same first
    ``r`` input tokens (and causal-attention flags) and no loss before position ``first``: ``r`` spans the
    bidirectional prefix too, so the shared tokens see exactly what they see in the full pass. None when rows
    differ there or ``r < minimum`` (too short to be worth a second program)."""
    weights = np.asarray(batch["decoder_loss_weights"]) > 0
    if not weights.any(axis=1).all() or "decoder_segment_ids" in batch:
        return None
    first = int(weights.argmax(axis=1).min())
    causal = batch.get("decoder_causal_attention")
    span = int(np.asarray(causal).sum(axis=1).max()) if causal is not None else 0
    r = max(first, span)
    tokens = np.asarray(batch["decoder_input_tokens"])
    if r < minimum or r >= tokens.shape[1] or not (tokens[:, :r] == tokens[:1, :r]).all():
        return None
    if causal is not None and not (np.asarray(causal)[:, :r] == np.asarray(causal)[:1, :r]).all():
        return None
    return first, r


def score_shared_prefix(model: Any, batch: Mapping[str, np.ndarray], *, first: int, r: int, length: int) -> np.ndarray:
    """:func:`shared_prefix`'s batch scored with the prefix computed once (``_score_shared_prefix_jit``); each row's
    tokens after the prefix padded to ``length`` (one program for every batch of a call). Equals the full pass
    (``tests/test_models_shared_prefix.py``)."""
    tokens = np.asarray(batch["decoder_input_tokens"])
    causal = np.asarray(batch.get("decoder_causal_attention", np.zeros_like(tokens)))

    def cut(a: np.ndarray, start: int, stop: int) -> np.ndarray:
        a = np.asarray(a)[:, start:stop]
        return np.pad(a, ((0, 0), (0, stop - start - a.shape[1])))

    graphdef, state = nnx.split(model)
    out = _score_shared_prefix_jit(
        graphdef, state, jnp.asarray(tokens[:1, :r]), jnp.asarray(causal[:1, :r], bool),
        jnp.asarray(cut(tokens, r, r + length)), jnp.asarray(cut(causal, r, r + length), bool),
        jnp.asarray(cut(batch["decoder_target_tokens"], first, r + length)),
        jnp.asarray(cut(batch["decoder_loss_weights"], first, r + length), jnp.float32), first=first)
    return np.asarray(out)
