"""Decoder-only transformer of the Llama family (SmolLM2, Llama 2/3, Mistral shapes), Flax NNX.

Parameter tree (``D`` d_model, ``H`` heads, ``K`` kv heads, ``hd`` head_dim, ``F`` mlp_dim, ``V`` vocab); names follow
T5X so checkpoint import (``checkpoint_import.llama_rules``) and LoRA regexes work unchanged::

    token_embedder.embedding                       [V, D]      (vocab, embed)
    layers_{i}.pre_attention_layer_norm.scale      [D]         (embed,)
    layers_{i}.attention.query.kernel              [D, H, hd]  (embed, heads, kv)
    layers_{i}.attention.key.kernel                [D, K, hd]  (embed, kv_heads, kv)
    layers_{i}.attention.value.kernel              [D, K, hd]  (embed, kv_heads, kv)
    layers_{i}.attention.out.kernel                [H, hd, D]  (heads, kv, embed)
    layers_{i}.pre_mlp_layer_norm.scale            [D]         (embed,)
    layers_{i}.mlp.wi_0.kernel                     [D, F]      (embed, mlp)   gate (SiLU)
    layers_{i}.mlp.wi_1.kernel                     [D, F]      (embed, mlp)   up
    layers_{i}.mlp.wo.kernel                       [F, D]      (mlp, embed)   down
    decoder_norm.scale                             [D]         (embed,)
    logits_dense.kernel                            [D, V]      (embed, vocab) only when tie_embeddings=False

RoPE uses the HF "rotate half" layout (GGUF q/k rows are un-permuted on import); queries are scaled by
``1/sqrt(hd)`` in the forward pass.

Gin binding style (all ``gin_configs/models/*.gin``)::

    train.model_factory = @fiat_jax.models.build_model
    build_model.config = @DecoderConfig()          # or @T5Config()
    DecoderConfig.num_layers = 2 ...

``build_model(*, config, seed=0, rngs=None)`` returns the ``Decoder`` / ``EncoderDecoder`` for the config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import gin
import jax
import jax.numpy as jnp
from flax import nnx

import fiat_jax.models.layers as layers
from fiat_jax.models.layers import Array, constrain


@gin.configurable
@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class DecoderConfig(layers.TransformerConfig):
    """Shapes of a Llama-family decoder (defaults: SmolLM2-135M); the fields every model has and their meaning in
    :class:`~fiat_jax.models.layers.TransformerConfig`."""

    FIELD_ORDER = ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
                   "rope_theta", "rope_scaling", "norm_eps", "tie_embeddings", "max_length", "mlp_activations",
                   "dropout_rate", "embedding_init_std", "dtype", "param_dtype", "remat")

    vocab_size: int = 49152
    d_model: int = 576
    num_layers: int = 30
    num_heads: int = 9
    num_kv_heads: int = 3
    mlp_dim: int = 1536
    rope_theta: float = 100000.0
    # Llama 3.1/3.2 RoPE rescaling (HF rope_scaling rope_type "llama3"): (factor, low_freq_factor,
    # high_freq_factor, original_max_position_embeddings); None = plain RoPE.
    rope_scaling: tuple[float, ...] | None = None
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    max_length: int = 8192
    mlp_activations: tuple[str, ...] = ("silu", "linear")
    embedding_init_std: float = 0.02


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        kw = layers.dtype_kwargs(cfg, rngs)
        self.pre_attention_layer_norm = layers.pre_norm(cfg, **kw)
        self.attention = layers.Attention(cfg.d_model, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
                                          head_dim=cfg.head_dim, query_scale=cfg.head_dim ** -0.5,
                                          rope_theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling,
                                          dropout_rate=cfg.dropout_rate, **kw)
        layers.add_mlp_sublayer(self, cfg, **kw)

    def __call__(self, x: Array, *, mask: Array, positions: Array, cache: dict | None, cache_index: Array | None,
                 deterministic: bool) -> tuple[Array, dict | None]:
        h, new_cache = self.attention(self.pre_attention_layer_norm(x), mask=mask, q_positions=positions,
                                      cache=cache, cache_index=cache_index, deterministic=deterministic)
        x = x + self.dropout(h, deterministic=deterministic)
        return layers.mlp_residual(self, x, deterministic=deterministic), new_cache


class Decoder(nnx.Module):
    """Llama-family decoder-only LM. See the module docstring for the parameter tree."""

    model_kind = "decoder"

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
        self.config = config
        kw = layers.dtype_kwargs(config, rngs)
        self.token_embedder = layers.Embed(config.vocab_size, config.d_model, init_std=config.embedding_init_std,
                                           **kw)
        layers.add_layers(self, config.num_layers, lambda: DecoderLayer(config, rngs=rngs))
        layers.add_output_head(self, config, **kw)

    # -- cache -------------------------------------------------------------------------------------------------
    def init_cache(self, batch_size: int, max_len: int, dtype: Any = None) -> dict[str, Any]:
        """Empty functional KV cache: per layer ``k/v [B, S, K, hd]``; ``valid``/``causal`` ``[B, S]`` slot flags;
        ``index`` the next slot to write."""
        c = self.config
        dt = layers.as_dtype(dtype or c.dtype)
        shape = (batch_size, max_len, c.num_kv_heads, c.head_dim)
        cache: dict[str, Any] = {f"layers_{i}": {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}
                                 for i in range(c.num_layers)}
        cache["valid"] = jnp.zeros((batch_size, max_len), bool)
        cache["causal"] = jnp.zeros((batch_size, max_len), bool)
        cache["index"] = jnp.zeros((), jnp.int32)
        return cache

    # -- forward -----------------------------------------------------------------------------------------------
    def __call__(self, tokens: Array | None, *, positions: Array | None = None, segment_ids: Array | None = None,
                 causal_attention: Array | None = None, embeddings: Array | None = None,
                 input_mask: Array | None = None, cache: dict[str, Any] | None = None,
                 deterministic: bool = True, head: bool = True) -> Array | tuple[Array, dict[str, Any]]:
        """Logits ``[B, T, V]`` (and the new cache when ``cache`` is given); with ``head=False`` the final hidden
        states ``[B, T, D]`` instead, for a loss that applies :meth:`logits_from_hidden` only where it counts.

        ``embeddings [B, T, D]`` replaces the token lookup (soft prompts). ``segment_ids``: packing (0 = padding).
        ``causal_attention``: prefix-LM span attended bidirectionally. ``input_mask [B, T]``: which positions are
        real (left padding); keys outside it are never attended and positions count only real tokens.
        With ``cache``: the chunk is written at ``cache["index"]`` and attends to every valid earlier slot.
        """
        x = self.token_embedder(tokens) if embeddings is None else embeddings.astype(layers.as_dtype(self.config.dtype))
        b, t = x.shape[:2]
        x = constrain(x, ("batch", "length", "embed"))
        x = self.dropout(x, deterministic=deterministic)
        if cache is None:
            idx = jnp.arange(t)
            mask = layers.causal_mask(idx, idx)
            if causal_attention is not None:
                mask = mask | layers.prefix_mask(causal_attention, causal_attention)
            if segment_ids is not None:
                mask = mask & layers.segment_mask(segment_ids, segment_ids)
            if input_mask is not None:
                mask = mask & input_mask.astype(bool)[:, None, None, :]
            if positions is None:
                positions = (jnp.maximum(jnp.cumsum(input_mask.astype(jnp.int32), axis=-1) - 1, 0)
                             if input_mask is not None else jnp.broadcast_to(idx, (b, t)))
            index = None
        else:
            index = cache["index"]
            s = cache["valid"].shape[1]
            chunk_valid = jnp.ones((b, t), bool) if input_mask is None else input_mask.astype(bool)
            valid = jax.lax.dynamic_update_slice(cache["valid"], chunk_valid, (0, index))
            slots = index + jnp.arange(t)
            mask = layers.causal_mask(slots, jnp.arange(s))
            chunk_causal = (jnp.zeros((b, t), bool) if causal_attention is None
                            else causal_attention.astype(bool))
            causal = jax.lax.dynamic_update_slice(cache["causal"], chunk_causal, (0, index))
            mask = (mask | layers.prefix_mask(chunk_causal, causal)) & valid[:, None, None, :]
            if positions is None:
                positions = jnp.broadcast_to(slots, (b, t))
        new_cache: dict[str, Any] = {}
        stack = [getattr(self, f"layers_{i}") for i in range(self.config.num_layers)]
        if cache is None:  # training and scoring: layers.apply_layers (remat in training, scan when enabled)
            x = layers.apply_layers(stack, lambda m, x, mask, pos: m(
                x, mask=mask, positions=pos, cache=None, cache_index=None, deterministic=deterministic)[0],
                x, mask, positions, remat=self.config.remat, training=not deterministic)
        else:
            for i, layer in enumerate(stack):
                x, new_cache[f"layers_{i}"] = layer(x, mask=mask, positions=positions, cache=cache[f"layers_{i}"],
                                                    cache_index=index, deterministic=deterministic)
        x = self.decoder_norm(x)
        x = self.dropout(x, deterministic=deterministic)
        out = self.logits_from_hidden(x, deterministic=deterministic) if head else x
        if cache is None:
            return out
        new_cache.update(valid=valid, causal=causal, index=index + t)
        return out, new_cache

    def logits_from_hidden(self, x: Array, *, deterministic: bool = True) -> Array:
        """The LM head on final hidden states ``[..., D]`` -> ``[..., V]`` (any leading shape: the loss passes only
        its loss-bearing positions). ``deterministic`` is for PEFT wrappers (LoRA dropout on the head)."""
        del deterministic
        logits = self.token_embedder.attend(x) if self.config.tie_embeddings else self.logits_dense(x)
        if logits.ndim == 3:
            logits = constrain(logits, ("batch", "length", "vocab"))
        return logits

    def logits_from_batch(self, batch: Mapping[str, Array], *, deterministic: bool = True,
                          prompt_embeddings: Array | None = None) -> Array:
        """Prefix-LM logits aligned with ``decoder_target_tokens`` (docs/CONTRACTS.md). A soft prompt
        ``[B or 1, P, D]`` is prepended (bidirectional with the inputs when the batch is prefix-LM, in the first
        segment when packed) and its P output positions are dropped."""
        return self.logits_from_hidden(self.hidden_from_batch(batch, deterministic=deterministic,
                                                              prompt_embeddings=prompt_embeddings),
                                       deterministic=deterministic)

    def hidden_from_batch(self, batch: Mapping[str, Array], *, deterministic: bool = True,
                          prompt_embeddings: Array | None = None) -> Array:
        """Final hidden states ``[B, T, D]`` aligned with ``decoder_target_tokens``: ``logits_from_batch`` before
        the LM head (see there)."""
        tokens = jnp.asarray(batch["decoder_input_tokens"])
        seg = batch.get("decoder_segment_ids")
        pos = batch.get("decoder_positions")
        ca = batch.get("decoder_causal_attention")
        if prompt_embeddings is None:
            return self(tokens, positions=pos, segment_ids=seg, causal_attention=ca, deterministic=deterministic,
                        head=False)
        b = tokens.shape[0]
        p = prompt_embeddings.shape[1]
        emb = self.token_embedder(tokens)
        pe = jnp.broadcast_to(prompt_embeddings.astype(emb.dtype), (b, p, emb.shape[-1]))
        emb = jnp.concatenate([pe, emb], axis=1)
        if seg is not None:
            seg = jnp.concatenate([jnp.repeat(jnp.asarray(seg)[:, :1], p, axis=1), seg], axis=1)
        if pos is not None:
            pos = jnp.concatenate([jnp.broadcast_to(jnp.arange(p), (b, p)), jnp.asarray(pos) + p], axis=1)
        if ca is not None:
            ca = jnp.concatenate([jnp.ones((b, p), jnp.asarray(ca).dtype), ca], axis=1)
        hidden = self(None, embeddings=emb, positions=pos, segment_ids=seg, causal_attention=ca,
                      deterministic=deterministic, head=False)
        return hidden[:, p:]
