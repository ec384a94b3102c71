"""Name tables HF <-> ours (one place per architecture family) and config construction from canonical fields.

HF's ``[out, in]`` Linear weights become ``[in, out]`` kernels with attention heads split out
(``[embed, heads, head_dim]``); :func:`apply_rules` maps a flat HF-named dict to our T5X-style names.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from fiat_jax.errors import UserError
from fiat_jax.models import decoder, t5
from fiat_jax.models.checkpoint_match import Flat, _merge_compatible


# --------------------------------------------------------------------------------------------------------------
# Name tables: HF <-> ours
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
    """One tensor: HF name <-> our name. ``kind``: "copy", "linear" (HF [out,in] -> kernel [in,out], then split to
    ``shape``), or "transpose". ``in_ndims``: how many leading dims of our kernel are the Linear's input."""

    hf: str
    ours: str
    kind: str = "copy"
    shape: tuple[int, ...] | None = None
    in_ndims: int = 1

    def to_ours(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "linear":
            if x.ndim != 2:
                return x  # the strict matcher reports the shape
            x = x.T
            if self.shape is not None and math.prod(self.shape) == x.size and _merge_compatible(x.shape, self.shape):
                x = x.reshape(self.shape)
        elif self.kind == "transpose":
            x = x.T
        return x

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "linear":
            x = np.asarray(x)
            return x.reshape(math.prod(x.shape[:self.in_ndims]), -1).T
        if self.kind == "transpose":
            return np.asarray(x).T
        return np.asarray(x)


@dataclasses.dataclass(frozen=True)
class LlamaShape:
    """What the name table needs to know about a decoder-only checkpoint."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    d_model: int
    tied_embeddings: bool


def llama_rules(s: LlamaShape) -> list[Rule]:
    """HF Llama/Mistral/SmolLM2 names <-> our decoder names (see fiat_jax/models/decoder.py)."""
    d, h, kv, hd = s.d_model, s.num_heads, s.num_kv_heads, s.head_dim
    rules = [Rule("model.embed_tokens.weight", "token_embedder.embedding"),
             Rule("model.norm.weight", "decoder_norm.scale")]
    if not s.tied_embeddings:
        rules.append(Rule("lm_head.weight", "logits_dense.kernel", "linear"))
    for i in range(s.num_layers):
        p, q = f"model.layers.{i}.", f"layers_{i}."
        rules += [
            Rule(p + "input_layernorm.weight", q + "pre_attention_layer_norm.scale"),
            Rule(p + "post_attention_layernorm.weight", q + "pre_mlp_layer_norm.scale"),
            Rule(p + "self_attn.q_proj.weight", q + "attention.query.kernel", "linear", (d, h, hd)),
            Rule(p + "self_attn.k_proj.weight", q + "attention.key.kernel", "linear", (d, kv, hd)),
            Rule(p + "self_attn.v_proj.weight", q + "attention.value.kernel", "linear", (d, kv, hd)),
            Rule(p + "self_attn.o_proj.weight", q + "attention.out.kernel", "linear", (h, hd, d), in_ndims=2),
            Rule(p + "mlp.gate_proj.weight", q + "mlp.wi_0.kernel", "linear"),
            Rule(p + "mlp.up_proj.weight", q + "mlp.wi_1.kernel", "linear"),
            Rule(p + "mlp.down_proj.weight", q + "mlp.wo.kernel", "linear"),
        ]
    return rules


@dataclasses.dataclass(frozen=True)
class T5Shape:
    num_encoder_layers: int
    num_decoder_layers: int
    num_heads: int
    head_dim: int
    d_model: int
    gated_mlp: bool  # T5 v1.1 / mT5 / Flan-T5: wi_0, wi_1; original T5: wi
    tied_embeddings: bool


def t5_rules(s: T5Shape) -> list[Rule]:
    """HF T5 names <-> T5X names (as t5x/examples/t5/network.py lays them out)."""
    d, h, hd = s.d_model, s.num_heads, s.head_dim

    def attention(hf: str, ours: str) -> list[Rule]:
        return [Rule(f"{hf}.q.weight", f"{ours}.query.kernel", "linear", (d, h, hd)),
                Rule(f"{hf}.k.weight", f"{ours}.key.kernel", "linear", (d, h, hd)),
                Rule(f"{hf}.v.weight", f"{ours}.value.kernel", "linear", (d, h, hd)),
                Rule(f"{hf}.o.weight", f"{ours}.out.kernel", "linear", (h, hd, d), in_ndims=2)]

    def mlp(hf: str, ours: str) -> list[Rule]:
        wi = ([Rule(f"{hf}.wi_0.weight", f"{ours}.wi_0.kernel", "linear"),
               Rule(f"{hf}.wi_1.weight", f"{ours}.wi_1.kernel", "linear")] if s.gated_mlp
              else [Rule(f"{hf}.wi.weight", f"{ours}.wi.kernel", "linear")])
        return wi + [Rule(f"{hf}.wo.weight", f"{ours}.wo.kernel", "linear")]

    rules = [Rule("shared.weight", "token_embedder.embedding"),
             Rule("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                  "encoder.relpos_bias.rel_embedding", "transpose"),
             Rule("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                  "decoder.relpos_bias.rel_embedding", "transpose"),
             Rule("encoder.final_layer_norm.weight", "encoder.encoder_norm.scale"),
             Rule("decoder.final_layer_norm.weight", "decoder.decoder_norm.scale")]
    if not s.tied_embeddings:
        rules.append(Rule("lm_head.weight", "decoder.logits_dense.kernel", "linear"))
    for i in range(s.num_encoder_layers):
        p, q = f"encoder.block.{i}.layer.", f"encoder.layers_{i}."
        rules += attention(p + "0.SelfAttention", q + "attention")
        rules += [Rule(p + "0.layer_norm.weight", q + "pre_attention_layer_norm.scale"),
                  Rule(p + "1.layer_norm.weight", q + "pre_mlp_layer_norm.scale")]
        rules += mlp(p + "1.DenseReluDense", q + "mlp")
    for i in range(s.num_decoder_layers):
        p, q = f"decoder.block.{i}.layer.", f"decoder.layers_{i}."
        rules += attention(p + "0.SelfAttention", q + "self_attention")
        rules += attention(p + "1.EncDecAttention", q + "encoder_decoder_attention")
        rules += [Rule(p + "0.layer_norm.weight", q + "pre_self_attention_layer_norm.scale"),
                  Rule(p + "1.layer_norm.weight", q + "pre_cross_attention_layer_norm.scale"),
                  Rule(p + "2.layer_norm.weight", q + "pre_mlp_layer_norm.scale")]
        rules += mlp(p + "2.DenseReluDense", q + "mlp")
    return rules


# HF saves these copies of ``shared.weight`` (tied inside transformers); they carry nothing of their own.
_T5_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def apply_rules(tensors: Mapping[str, np.ndarray], rules: Iterable[Rule], *,
                ignore: Iterable[str] = ()) -> tuple[Flat, list[str]]:
    """HF-named tensors -> our names; also returns the source names no rule claimed."""
    by_hf = {r.hf: r for r in rules}
    ignored = set(ignore)
    out: Flat = {}
    unrecognised = []
    for name, x in tensors.items():
        rule = by_hf.get(name)
        if rule is None:
            if name not in ignored:
                unrecognised.append(name)
            continue
        out[rule.ours] = rule.to_ours(np.asarray(x))
    return out, sorted(unrecognised)


# --------------------------------------------------------------------------------------------------------------
# HF config.json -> our configs
# --------------------------------------------------------------------------------------------------------------


def _decoder_config(**values: Any):
    """Build DecoderConfig from canonical field names, mapping onto whatever its fields are called."""
    return _build_config(decoder.DecoderConfig, values)


def _t5_config(**values: Any):
    return _build_config(t5.T5Config, values)


# Canonical name -> alternatives a config class might use.
_FIELD_ALIASES = {
    "vocab_size": ("vocab_size", "num_embeddings"),
    "d_model": ("d_model", "emb_dim", "embed_dim", "hidden_size"),
    "num_layers": ("num_layers", "num_decoder_layers", "n_layers"),
    "num_encoder_layers": ("num_encoder_layers",),
    "num_decoder_layers": ("num_decoder_layers",),
    "num_heads": ("num_heads", "n_heads"),
    "num_kv_heads": ("num_kv_heads", "n_kv_heads", "num_key_value_heads"),
    "head_dim": ("head_dim", "d_kv", "kv_dim"),
    "mlp_dim": ("mlp_dim", "d_ff", "intermediate_size"),
    "rope_theta": ("rope_theta", "rope_base", "rope_max_wavelength"),
    "norm_eps": ("norm_eps", "layer_norm_epsilon", "rms_norm_eps", "epsilon"),
    "max_length": ("max_length", "max_position_embeddings", "max_seq_len"),
    "tie_embeddings": ("tie_embeddings", "tie_word_embeddings", "logits_via_embedding"),
    "relative_attention_num_buckets": ("relative_attention_num_buckets", "relpos_buckets", "num_buckets"),
    "relative_attention_max_distance": ("relative_attention_max_distance", "relpos_max_distance",
                                        "max_distance"),
    "mlp_activations": ("mlp_activations",),
    "rope_scaling": ("rope_scaling",),
    "gated_mlp": ("gated_mlp",),
}


# Values a config class may lack without changing the maths (they only bound lengths or describe defaults).
_OPTIONAL_FIELDS = ("max_length",)


def _build_config(cls: type, values: Mapping[str, Any]):
    """``cls(**values)`` with canonical names mapped onto ``cls``'s field names; a value it cannot hold is an
    error (silently dropping, say, ``rope_theta`` would give a model that loads but computes nonsense)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    unplaced = []
    for key, value in values.items():
        name = next((n for n in _FIELD_ALIASES.get(key, (key,)) if n in fields), None)
        if name is not None:
            kwargs[name] = value
        elif key not in _OPTIONAL_FIELDS:
            unplaced.append(f"{key}={value!r}")
    if unplaced:
        raise UserError(f"{cls.__name__} has no field for {', '.join(unplaced)}: this checkpoint's architecture "
                        f"cannot be represented")
    # Every field explicitly: the config classes are gin-configurable, and a model gin's bindings (say
    # ``DecoderConfig.dropout_rate``) must not leak into a checkpoint's own config built in the same process.
    for f in dataclasses.fields(cls):
        if f.name not in kwargs and f.default is not dataclasses.MISSING:
            kwargs[f.name] = f.default
    return cls(**kwargs)
