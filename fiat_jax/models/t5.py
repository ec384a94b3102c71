"""T5 v1.1 / mT5 / Flan-T5 encoder-decoder with T5X's parameter names and layouts (Flax NNX).

Written after ``t5x/examples/t5/network.py`` (t5x itself is not installable on this stack). Parameter tree
(``D`` d_model, ``H`` heads, ``hd`` head_dim, ``F`` mlp_dim, ``V`` vocab, ``N`` relative buckets)::

    token_embedder.embedding                                      [V, D]      (vocab, embed)
    encoder.relpos_bias.rel_embedding                             [H, N]      (heads, relpos_buckets)
    encoder.layers_{i}.pre_attention_layer_norm.scale             [D]
    encoder.layers_{i}.attention.{query,key,value}.kernel         [D, H, hd]  (embed, heads, kv)
    encoder.layers_{i}.attention.out.kernel                       [H, hd, D]  (heads, kv, embed)
    encoder.layers_{i}.pre_mlp_layer_norm.scale                   [D]
    encoder.layers_{i}.mlp.wi_0.kernel / wi_1.kernel              [D, F]      (embed, mlp)  (``wi`` if ungated)
    encoder.layers_{i}.mlp.wo.kernel                              [F, D]      (mlp, embed)
    encoder.encoder_norm.scale                                    [D]
    decoder.relpos_bias.rel_embedding                             [H, N]
    decoder.layers_{i}.pre_self_attention_layer_norm.scale        [D]
    decoder.layers_{i}.self_attention.{query,key,value,out}.kernel
    decoder.layers_{i}.pre_cross_attention_layer_norm.scale       [D]
    decoder.layers_{i}.encoder_decoder_attention.{query,key,value,out}.kernel
    decoder.layers_{i}.pre_mlp_layer_norm.scale                   [D]
    decoder.layers_{i}.mlp.{wi_0,wi_1,wo}.kernel
    decoder.decoder_norm.scale                                    [D]
    decoder.logits_dense.kernel                                   [D, V]      (embed, vocab) only when untied

As in T5X: no attention-logit scaling (folded into the query init), relative position biases shared across the
layers of a stack (bidirectional in the encoder, causal in the decoder), tied logits scaled by ``1/sqrt(D)``.
Gin binding style: see ``fiat_jax/models/decoder.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import gin
import jax.numpy as jnp
from flax import nnx

import fiat_jax.models.layers as layers
from fiat_jax.models.layers import Array, constrain


@gin.configurable
@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class T5Config(layers.TransformerConfig):
    """T5 v1.1 shapes (defaults: t5.1.1 small); the fields every model has and their meaning in
    :class:`~fiat_jax.models.layers.TransformerConfig`."""

    FIELD_ORDER = ("vocab_size", "d_model", "num_encoder_layers", "num_decoder_layers", "num_heads", "head_dim",
                   "mlp_dim", "mlp_activations", "norm_eps", "relative_attention_num_buckets",
                   "relative_attention_max_distance", "tie_embeddings", "scale_tied_logits", "dropout_rate", "dtype",
                   "param_dtype", "remat")

    vocab_size: int = 32128
    d_model: int = 512
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    num_heads: int = 6
    mlp_activations: tuple[str, ...] = ("gelu", "linear")
    mlp_dim: int = 1024
    norm_eps: float = 1e-6
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    tie_embeddings: bool = False
    # Original T5 (and T5X) rescale tied-head logits by d_model**-0.5; None follows tie_embeddings. HF
    # transformers 5 always ties T5 and records the rescale separately (config.json "scale_decoder_outputs").
    scale_tied_logits: bool | None = None


def _attention(cfg: T5Config, rngs: nnx.Rngs) -> layers.Attention:
    return layers.Attention(cfg.d_model, num_heads=cfg.num_heads, head_dim=cfg.head_dim,
                            dropout_rate=cfg.dropout_rate, **layers.dtype_kwargs(cfg, rngs))


class EncoderLayer(nnx.Module):
    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        kw = layers.dtype_kwargs(cfg, rngs)
        self.pre_attention_layer_norm = layers.pre_norm(cfg, **kw)
        self.attention = _attention(cfg, rngs)
        layers.add_mlp_sublayer(self, cfg, **kw)

    def __call__(self, x: Array, *, mask: Array, bias: Array, deterministic: bool) -> Array:
        h, _ = self.attention(self.pre_attention_layer_norm(x), mask=mask, bias=bias, deterministic=deterministic)
        x = x + self.dropout(h, deterministic=deterministic)
        return layers.mlp_residual(self, x, deterministic=deterministic)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        kw = layers.dtype_kwargs(cfg, rngs)
        self.pre_self_attention_layer_norm = layers.pre_norm(cfg, **kw)
        self.self_attention = _attention(cfg, rngs)
        self.pre_cross_attention_layer_norm = layers.pre_norm(cfg, **kw)
        self.encoder_decoder_attention = _attention(cfg, rngs)
        layers.add_mlp_sublayer(self, cfg, **kw)

    def __call__(self, x: Array, encoded: Array | None, *, self_mask: Array, bias: Array, cross_mask: Array,
                 cross_kv: tuple[Array, Array] | None, cache: dict | None, cache_index: Array | None,
                 deterministic: bool) -> tuple[Array, dict | None]:
        h, new_cache = self.self_attention(self.pre_self_attention_layer_norm(x), mask=self_mask, bias=bias,
                                           cache=cache, cache_index=cache_index, deterministic=deterministic)
        x = x + self.dropout(h, deterministic=deterministic)
        h, _ = self.encoder_decoder_attention(self.pre_cross_attention_layer_norm(x), encoded, mask=cross_mask,
                                              kv=cross_kv, deterministic=deterministic)
        x = x + self.dropout(h, deterministic=deterministic)
        return layers.mlp_residual(self, x, deterministic=deterministic), new_cache


def _relpos_bias(cfg: T5Config, rngs: nnx.Rngs, *, bidirectional: bool) -> layers.RelativePositionBiases:
    return layers.RelativePositionBiases(
        num_buckets=cfg.relative_attention_num_buckets, max_distance=cfg.relative_attention_max_distance,
        num_heads=cfg.num_heads, bidirectional=bidirectional, **layers.dtype_kwargs(cfg, rngs))


class Encoder(nnx.Module):
    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.num_layers = cfg.num_encoder_layers
        self.remat = cfg.remat
        self.relpos_bias = _relpos_bias(cfg, rngs, bidirectional=True)
        layers.add_layers(self, cfg.num_encoder_layers, lambda: EncoderLayer(cfg, rngs=rngs))
        self.encoder_norm = layers.pre_norm(cfg, **layers.dtype_kwargs(cfg, rngs))
        self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)

    def __call__(self, x: Array, *, mask: Array, deterministic: bool) -> Array:
        t = x.shape[1]
        bias = self.relpos_bias(jnp.arange(t), jnp.arange(t))
        x = self.dropout(x, deterministic=deterministic)
        x = layers.apply_layers([getattr(self, f"layers_{i}") for i in range(self.num_layers)],
                                lambda m, x, mask, bias: m(x, mask=mask, bias=bias, deterministic=deterministic),
                                x, mask, bias, remat=self.remat, training=not deterministic)
        return self.dropout(self.encoder_norm(x), deterministic=deterministic)


class Decoder(nnx.Module):
    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.num_layers = cfg.num_decoder_layers
        self.relpos_bias = _relpos_bias(cfg, rngs, bidirectional=False)
        layers.add_layers(self, cfg.num_decoder_layers, lambda: DecoderLayer(cfg, rngs=rngs))
        layers.add_output_head(self, cfg, **layers.dtype_kwargs(cfg, rngs))


class EncoderDecoder(nnx.Module):
    """T5 v1.1-style encoder-decoder; see the module docstring for the parameter tree."""

    model_kind = "encoder_decoder"

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.config = config
        kw = layers.dtype_kwargs(config, rngs)
        self.token_embedder = layers.Embed(config.vocab_size, config.d_model, init_std=1.0, **kw)
        self.encoder = Encoder(config, rngs=rngs)
        self.decoder = Decoder(config, rngs=rngs)

    # -- encoder -----------------------------------------------------------------------------------------------
    def encode(self, encoder_input_tokens: Array | None, *, segment_ids: Array | None = None,
               input_mask: Array | None = None, prompt_embeddings: Array | None = None,
               deterministic: bool = True) -> tuple[Array, Array, Array | None]:
        """-> ``(encoded [B, P+Ti, D], key_valid [B, P+Ti], segment_ids or None)``. Padding is token 0 (seqio)
        unless ``input_mask`` says otherwise; a soft prompt ``[B or 1, P, D]`` is prepended (valid, first
        segment)."""
        tokens = jnp.asarray(encoder_input_tokens)
        valid = (tokens > 0) if input_mask is None else input_mask.astype(bool)
        x = self.token_embedder(tokens)
        if prompt_embeddings is not None:
            b, p = tokens.shape[0], prompt_embeddings.shape[1]
            pe = jnp.broadcast_to(prompt_embeddings.astype(x.dtype), (b, p, x.shape[-1]))
            x = jnp.concatenate([pe, x], axis=1)
            valid = jnp.concatenate([jnp.ones((b, p), bool), valid], axis=1)
            if segment_ids is not None:
                seg = jnp.asarray(segment_ids)
                segment_ids = jnp.concatenate([jnp.repeat(seg[:, :1], p, axis=1), seg], axis=1)
        x = constrain(x, ("batch", "length", "embed"))
        mask = layers.padding_mask(valid, valid)
        if segment_ids is not None:
            mask = mask & layers.segment_mask(segment_ids, segment_ids)
        return self.encoder(x, mask=mask, deterministic=deterministic), valid, segment_ids

    # -- decoder -----------------------------------------------------------------------------------------------
    def init_cache(self, batch_size: int, max_len: int, encoded: Array, encoder_valid: Array,
                   dtype: Any = None) -> dict[str, Any]:
        """Decode cache: per layer self-attention ``k/v [B, S, H, hd]`` and cross-attention K/V precomputed from
        ``encoded``; ``encoder_valid [B, Ti]``; ``index`` the next decoder slot."""
        c = self.config
        dt = layers.as_dtype(dtype or c.dtype)
        shape = (batch_size, max_len, c.num_heads, c.head_dim)
        cache: dict[str, Any] = {}
        for i in range(c.num_decoder_layers):
            layer = getattr(self.decoder, f"layers_{i}")
            ck, cv = layer.encoder_decoder_attention.project_kv(encoded)
            cache[f"layers_{i}"] = {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt), "cross_k": ck,
                                    "cross_v": cv}
        cache["encoder_valid"] = encoder_valid.astype(bool)
        cache["index"] = jnp.zeros((), jnp.int32)
        return cache

    def decode(self, decoder_input_tokens: Array, encoded: Array | None = None, *,
               encoder_valid: Array | None = None, encoder_segment_ids: Array | None = None,
               decoder_segment_ids: Array | None = None, cache: dict[str, Any] | None = None,
               deterministic: bool = True, head: bool = True) -> Array | tuple[Array, dict[str, Any]]:
        """Decoder logits ``[B, To, V]``; with ``cache`` (from ``init_cache``) the chunk is written at
        ``cache["index"]`` and ``(logits, new_cache)`` is returned. ``head=False``: final hidden states
        ``[B, To, D]`` instead (the loss applies :meth:`logits_from_hidden` only at its loss positions)."""
        c = self.config
        tokens = jnp.asarray(decoder_input_tokens)
        b, t = tokens.shape
        x = self.token_embedder(tokens)
        x = constrain(x, ("batch", "length", "embed"))
        dec = self.decoder
        x = dec.dropout(x, deterministic=deterministic)
        if cache is None:
            idx = jnp.arange(t)
            self_mask = layers.causal_mask(idx, idx)
            if decoder_segment_ids is not None:
                self_mask = self_mask & layers.segment_mask(decoder_segment_ids, decoder_segment_ids)
            bias = dec.relpos_bias(idx, idx)
            if decoder_segment_ids is not None and encoder_segment_ids is not None:
                cross_mask = layers.segment_mask(decoder_segment_ids, encoder_segment_ids)
            else:
                cross_mask = jnp.broadcast_to(encoder_valid[:, None, None, :], (b, 1, t, encoder_valid.shape[1]))
            index = None
        else:
            index = cache["index"]
            s = cache["layers_0"]["k"].shape[1] if c.num_decoder_layers else t
            slots = index + jnp.arange(t)
            self_mask = layers.causal_mask(slots, jnp.arange(s))
            bias = dec.relpos_bias(slots, jnp.arange(s))
            ev = cache["encoder_valid"]
            cross_mask = jnp.broadcast_to(ev[:, None, None, :], (b, 1, t, ev.shape[1]))
        new_cache: dict[str, Any] = {}
        stack = [getattr(dec, f"layers_{i}") for i in range(c.num_decoder_layers)]
        if cache is None:  # training and scoring: layers.apply_layers (remat in training, scan when enabled)
            x = layers.apply_layers(stack, lambda m, x, enc, sm, b, cm: m(
                x, enc, self_mask=sm, bias=b, cross_mask=cm, cross_kv=None, cache=None, cache_index=None,
                deterministic=deterministic)[0], x, encoded, self_mask, bias, cross_mask, remat=c.remat,
                training=not deterministic)
        else:
            for i, layer in enumerate(stack):
                lc = cache[f"layers_{i}"]
                x, nc = layer(x, encoded, self_mask=self_mask, bias=bias, cross_mask=cross_mask,
                              cross_kv=(lc["cross_k"], lc["cross_v"]), cache={"k": lc["k"], "v": lc["v"]},
                              cache_index=index, deterministic=deterministic)
                new_cache[f"layers_{i}"] = {**lc, **nc}
        x = dec.dropout(dec.decoder_norm(x), deterministic=deterministic)
        out = self.logits_from_hidden(x, deterministic=deterministic) if head else x
        if cache is None:
            return out
        new_cache.update(encoder_valid=cache["encoder_valid"], index=index + t)
        return out, new_cache

    def logits_from_hidden(self, x: Array, *, deterministic: bool = True) -> Array:
        """The LM head (T5X's tied-logit rescale included) on decoder hidden states ``[..., D]`` -> ``[..., V]``;
        ``deterministic`` is for PEFT wrappers (LoRA dropout on the head)."""
        del deterministic
        c = self.config
        if c.tie_embeddings:
            logits = self.token_embedder.attend(x)
            if c.tie_embeddings if c.scale_tied_logits is None else c.scale_tied_logits:
                logits = logits / jnp.sqrt(jnp.asarray(c.d_model, logits.dtype))
        else:
            logits = self.decoder.logits_dense(x)
        if logits.ndim == 3:
            logits = constrain(logits, ("batch", "length", "vocab"))
        return logits

    def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array, *,
                 encoder_segment_ids: Array | None = None, decoder_segment_ids: Array | None = None,
                 prompt_embeddings: Array | None = None, deterministic: bool = True, head: bool = True) -> Array:
        encoded, valid, enc_seg = self.encode(encoder_input_tokens, segment_ids=encoder_segment_ids,
                                              prompt_embeddings=prompt_embeddings, deterministic=deterministic)
        return self.decode(decoder_input_tokens, encoded, encoder_valid=valid, encoder_segment_ids=enc_seg,
                           decoder_segment_ids=decoder_segment_ids, deterministic=deterministic, head=head)

    def logits_from_batch(self, batch: Mapping[str, Array], *, deterministic: bool = True,
                          prompt_embeddings: Array | None = None) -> Array:
        """Logits aligned with ``decoder_target_tokens`` (docs/CONTRACTS.md); the soft prompt goes before the
        encoder input."""
        return self.logits_from_hidden(self.hidden_from_batch(batch, deterministic=deterministic,
                                                              prompt_embeddings=prompt_embeddings),
                                       deterministic=deterministic)

    def hidden_from_batch(self, batch: Mapping[str, Array], *, deterministic: bool = True,
                          prompt_embeddings: Array | None = None) -> Array:
        """Decoder hidden states ``[B, To, D]``: ``logits_from_batch`` before the LM head."""
        return self(batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                    encoder_segment_ids=batch.get("encoder_segment_ids"),
                    decoder_segment_ids=batch.get("decoder_segment_ids"),
                    prompt_embeddings=prompt_embeddings, deterministic=deterministic, head=False)
