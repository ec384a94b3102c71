"""Export: our parameter tree to safetensors under our names or HF names (inverse of the import tables, with a
matching ``config.json``) so transformers can load what we trained, and to GGUF for llama.cpp."""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import gguf
import numpy as np

from fiat_jax.errors import UserError
from fiat_jax.models.checkpoint_gguf import _GGUF_TO_HF_LAYER, _GGUF_TO_HF_TOP, permute_rope_rows
from fiat_jax.models.checkpoint_hf import _LLAMA_MODEL_TYPES, _hf_llama_shape, _hf_t5_shape, _save_safetensors
from fiat_jax.models.checkpoint_match import Flat, PathLike, flat_leaves
from fiat_jax.models.checkpoint_names import _FIELD_ALIASES, llama_rules, t5_rules


# --------------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------------


def export_safetensors(params: Any, path: PathLike, *, names: str = "ours", config: Any = None) -> None:
    """Write params (model, Param state or nested dict) to safetensors under our names or HF names.

    ``names="hf"`` needs ``config`` (our DecoderConfig / T5Config): it selects the HF table and writes a
    ``config.json`` beside the file, so ``transformers`` (and :func:`load_params`) can read it back.
    """
    flat = {n: np.asarray(v, np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v)
            for n, v in _flat_values(params).items()}
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if names == "ours":
        _save_safetensors(flat, path, {"format": "fiat_jax"})
        return
    if names != "hf":
        raise UserError(f"export names must be 'ours' or 'hf', not {names!r}")
    if config is None:
        raise UserError("export_safetensors(names='hf') needs the model config")
    hf_config = hf_config_from(config)
    rules = (llama_rules(_hf_llama_shape(hf_config)) if hf_config["model_type"] in _LLAMA_MODEL_TYPES
             else t5_rules(_hf_t5_shape(hf_config)))
    by_ours = {r.ours: r for r in rules}
    unknown = sorted(set(flat) - set(by_ours))
    if unknown:
        raise UserError(f"no HF name for {len(unknown)} params: {', '.join(unknown[:8])}")
    missing = sorted(set(by_ours) - set(flat))
    if missing:
        raise UserError(f"cannot export to HF names: {len(missing)} params missing: {', '.join(missing[:8])}")
    tensors = {by_ours[n].hf: by_ours[n].to_hf(x) for n, x in flat.items()}
    _save_safetensors(tensors, path, {"format": "pt"})
    (path.parent / "config.json").write_text(json.dumps(hf_config, indent=2))


def _flat_values(params: Any) -> Flat:
    return {name: np.asarray(leaf) for name, leaf in flat_leaves(params).items()}


def _cfg(config: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        if hasattr(config, n):
            return getattr(config, n)
    if default is not None:
        return default
    raise UserError(f"{type(config).__name__} lacks {names[0]} (needed for HF export)")


def hf_config_from(config: Any) -> dict[str, Any]:
    """Our DecoderConfig / T5Config -> an HF ``config.json`` dict (LlamaConfig / T5Config)."""
    a = _FIELD_ALIASES
    if type(config).__name__ == "T5Config":
        acts = _cfg(config, "mlp_activations", default=("relu",))
        gated = bool(_cfg(config, "gated_mlp", default=len(tuple(acts)) > 1))
        act = tuple(acts)[0] if not isinstance(acts, str) else acts
        act = {"gelu": "gelu_new"}.get(act, act)
        n_enc = int(_cfg(config, *a["num_encoder_layers"], *a["num_layers"]))
        return {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"],
                "vocab_size": int(_cfg(config, *a["vocab_size"])), "d_model": int(_cfg(config, *a["d_model"])),
                "d_kv": int(_cfg(config, *a["head_dim"])), "d_ff": int(_cfg(config, *a["mlp_dim"])),
                "num_layers": n_enc, "num_decoder_layers": int(_cfg(config, *a["num_decoder_layers"], default=n_enc)),
                "num_heads": int(_cfg(config, *a["num_heads"])),
                "relative_attention_num_buckets": int(_cfg(config, *a["relative_attention_num_buckets"],
                                                           default=32)),
                "relative_attention_max_distance": int(_cfg(config, *a["relative_attention_max_distance"],
                                                            default=128)),
                "layer_norm_epsilon": float(_cfg(config, *a["norm_eps"], default=1e-6)),
                "feed_forward_proj": ("gated-" if gated else "") + act, "dropout_rate": 0.0,
                "tie_word_embeddings": bool(_cfg(config, *a["tie_embeddings"], default=False)),
                "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1, "is_encoder_decoder": True}
    heads = int(_cfg(config, *a["num_heads"]))
    d = int(_cfg(config, *a["d_model"]))
    scaling = getattr(config, "rope_scaling", None)
    extra = {} if not scaling else {"rope_scaling": {
        "rope_type": "llama3", "factor": float(scaling[0]), "low_freq_factor": float(scaling[1]),
        "high_freq_factor": float(scaling[2]), "original_max_position_embeddings": int(scaling[3])}}
    return {**extra, "model_type": "llama", "architectures": ["LlamaForCausalLM"],
            "vocab_size": int(_cfg(config, *a["vocab_size"])), "hidden_size": d,
            "intermediate_size": int(_cfg(config, *a["mlp_dim"])),
            "num_hidden_layers": int(_cfg(config, *a["num_layers"])), "num_attention_heads": heads,
            "num_key_value_heads": int(_cfg(config, *a["num_kv_heads"], default=heads)),
            "head_dim": int(_cfg(config, *a["head_dim"], default=d // heads)),
            "rms_norm_eps": float(_cfg(config, *a["norm_eps"], default=1e-5)),
            "rope_theta": float(_cfg(config, *a["rope_theta"], default=10000.0)),
            "max_position_embeddings": int(_cfg(config, *a["max_length"], default=2048)),
            "tie_word_embeddings": bool(_cfg(config, *a["tie_embeddings"], default=False)),
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False}


_HF_TO_GGUF_LAYER = {v: k for k, v in _GGUF_TO_HF_LAYER.items()}
_HF_TO_GGUF_TOP = {v: k for k, v in _GGUF_TO_HF_TOP.items()}


def export_gguf(params: Any, path: PathLike, *, config: Any, quant: str = "F32",
                tokenizer: Mapping[str, Any] | None = None, name: str = "fiat_jax") -> None:
    """Write a Llama-family model as a llama.cpp GGUF file (q/k rows permuted the way llama.cpp expects).

    ``quant``: F32, F16, Q8_0, Q4_0 or Q4_1 for the 2-D weights (norms stay F32, as llama.cpp keeps them).
    ``tokenizer``: optional ``{"tokens": [...], "merges": [...], "token_types": [...], "pre": "smollm",
    "eos_id": int, "bos_id": int, "unk_id": int, "chat_template": str}`` stored as llama.cpp's keys.
    """
    if getattr(config, "rope_scaling", None):
        raise UserError("GGUF export of a model with Llama 3 RoPE scaling is not supported (export safetensors)")
    qtype = getattr(gguf.GGMLQuantizationType, quant, None)
    if quant not in ("F32", "F16", "Q8_0", "Q4_0", "Q4_1") or qtype is None:
        raise UserError(f"GGUF export quant must be F32, F16, Q8_0, Q4_0 or Q4_1, not {quant!r}")
    hf_config = hf_config_from(config)
    if hf_config["model_type"] not in _LLAMA_MODEL_TYPES:
        raise UserError("GGUF export supports decoder-only (Llama family) models only")
    s = _hf_llama_shape(hf_config)
    flat = _flat_values(params)
    by_ours = {r.ours: r for r in llama_rules(s)}
    unknown = sorted(set(flat) - set(by_ours))
    if unknown:
        raise UserError(f"no GGUF name for {len(unknown)} params: {', '.join(unknown[:8])}")
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name(name)
    w.add_block_count(s.num_layers)
    w.add_context_length(int(hf_config["max_position_embeddings"]))
    w.add_embedding_length(s.d_model)
    w.add_feed_forward_length(int(hf_config["intermediate_size"]))
    w.add_head_count(s.num_heads)
    w.add_head_count_kv(s.num_kv_heads)
    w.add_rope_freq_base(float(hf_config["rope_theta"]))
    w.add_layer_norm_rms_eps(float(hf_config["rms_norm_eps"]))
    w.add_vocab_size(int(hf_config["vocab_size"]))
    w.add_rope_dimension_count(s.head_dim)
    if s.head_dim * s.num_heads != s.d_model:
        w.add_key_length(s.head_dim)
        w.add_value_length(s.head_dim)
    if tokenizer:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(str(tokenizer.get("pre", "default")))
        w.add_token_list(list(tokenizer["tokens"]))
        w.add_token_types([int(t) for t in tokenizer.get("token_types", [1] * len(tokenizer["tokens"]))])
        w.add_token_merges(list(tokenizer.get("merges", [])))
        for key, add in (("eos_id", w.add_eos_token_id), ("bos_id", w.add_bos_token_id),
                         ("unk_id", w.add_unk_token_id), ("pad_id", w.add_pad_token_id)):
            if tokenizer.get(key) is not None:
                add(int(tokenizer[key]))
        if tokenizer.get("chat_template"):
            w.add_chat_template(str(tokenizer["chat_template"]))
    for ours_name in sorted(flat):
        rule = by_ours[ours_name]
        x = np.asarray(rule.to_hf(flat[ours_name]), np.float32)
        if rule.hf.endswith("q_proj.weight"):
            x = permute_rope_rows(x, s.num_heads)
        elif rule.hf.endswith("k_proj.weight"):
            x = permute_rope_rows(x, s.num_kv_heads)
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", rule.hf)
        gname = f"blk.{m.group(1)}.{_HF_TO_GGUF_LAYER[m.group(2)]}" if m else _HF_TO_GGUF_TOP[rule.hf]
        if x.ndim == 1 or quant == "F32":
            w.add_tensor(gname, np.ascontiguousarray(x))
        elif quant == "F16":
            w.add_tensor(gname, x.astype(np.float16))
        else:
            w.add_tensor(gname, gguf.quants.quantize(x, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
