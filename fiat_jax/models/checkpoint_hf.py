"""Hugging Face checkpoints: safetensors (our own reader: exact truncation errors, bf16 via ml_dtypes, lazy
memmap; single file or sharded index) and ``config.json`` -> ``DecoderConfig`` (Llama family) / ``T5Config``."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import struct
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from fiat_jax.errors import UserError
from fiat_jax.models import t5
from fiat_jax.models.checkpoint_match import Flat, PathLike
from fiat_jax.models.checkpoint_names import (
    _T5_ALIASES, LlamaShape, T5Shape, _decoder_config, _t5_config, apply_rules, llama_rules, t5_rules)


# --------------------------------------------------------------------------------------------------------------
# Safetensors (our own reader: exact truncation errors, bf16 via ml_dtypes, lazy memmap)
# --------------------------------------------------------------------------------------------------------------

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
              "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _st_dtype(code: str, path: PathLike) -> np.dtype:
    if code == "BF16":
        return np.dtype(ml_dtypes.bfloat16)
    if code not in _ST_DTYPES:
        raise UserError(f"{path}: unsupported safetensors dtype {code}")
    return np.dtype(_ST_DTYPES[code])


def read_safetensors(path: PathLike) -> Flat:
    """One ``.safetensors`` file -> ``{name: array}`` (memory-mapped); truncated or corrupt -> UserError."""
    path = pathlib.Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{path}: not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise UserError(f"{path}: corrupt or truncated safetensors header ({n} bytes claimed, "
                                f"{size - 8} present)")
            header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: corrupt safetensors header ({err})") from err
    except OSError as err:
        raise UserError(f"cannot read {path}: {err}") from err
    header.pop("__metadata__", None)
    base = 8 + n
    data = np.memmap(path, dtype=np.uint8, mode="r") if size > base else np.zeros(0, np.uint8)
    out: Flat = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        dtype = _st_dtype(info["dtype"], path)
        if base + end > size:
            raise UserError(f"{path}: truncated; tensor {name} ends at byte {base + end} but the file has {size}")
        shape = tuple(info["shape"])
        if (end - start) != math.prod(shape) * dtype.itemsize:
            raise UserError(f"{path}: corrupt entry for {name} (byte range does not match {info['dtype']} {shape})")
        out[name] = data[base + start:base + end].view(dtype).reshape(shape)
    return out


def read_hf_safetensors(path: PathLike) -> Flat:
    """A safetensors file, a ``model.safetensors.index.json`` (sharded) or a directory holding either."""
    path = pathlib.Path(path)
    if path.is_dir():
        for candidate in ("model.safetensors.index.json", "model.safetensors"):
            if (path / candidate).exists():
                return read_hf_safetensors(path / candidate)
        raise UserError(f"{path}: no model.safetensors or model.safetensors.index.json in this directory")
    if path.name.endswith(".index.json"):
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"{path}: not a safetensors index ({err})") from err
        out: Flat = {}
        for shard in sorted(set(weight_map.values())):
            tensors = read_safetensors(path.parent / shard)
            wanted = {n for n, s in weight_map.items() if s == shard}
            lost = wanted - set(tensors)
            if lost:
                raise UserError(f"{path.parent / shard}: the index lists tensors this shard lacks: {sorted(lost)[:5]}")
            out.update({n: tensors[n] for n in wanted})
        return out
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    return read_safetensors(path)


def _save_safetensors(tensors: Mapping[str, np.ndarray], path: PathLike, metadata: Mapping[str, str] | None) -> None:
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=dict(metadata or {}))




def _read_json(path: PathLike) -> dict[str, Any]:
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read HF config {path}: {err}") from err


def _hf_llama_shape(c: Mapping[str, Any]) -> LlamaShape:
    h = int(c["num_attention_heads"])
    d = int(c["hidden_size"])
    return LlamaShape(num_layers=int(c["num_hidden_layers"]), num_heads=h,
                      num_kv_heads=int(c.get("num_key_value_heads") or h),
                      head_dim=int(c.get("head_dim") or d // h), d_model=d,
                      tied_embeddings=bool(c.get("tie_word_embeddings", False)))


def _hf_t5_shape(c: Mapping[str, Any]) -> T5Shape:
    act = str(c.get("feed_forward_proj", "relu"))
    return T5Shape(num_encoder_layers=int(c["num_layers"]),
                   num_decoder_layers=int(c.get("num_decoder_layers") or c["num_layers"]),
                   num_heads=int(c["num_heads"]), head_dim=int(c["d_kv"]), d_model=int(c["d_model"]),
                   gated_mlp=act.startswith("gated"), tied_embeddings=bool(c.get("tie_word_embeddings", True)))


_LLAMA_MODEL_TYPES = ("llama", "mistral")
_T5_MODEL_TYPES = ("t5", "mt5")


_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _hf_rope(c: Mapping[str, Any]) -> tuple[float, tuple[float, ...] | None]:
    """HF RoPE settings -> ``(rope_theta, DecoderConfig.rope_scaling)``.

    Reads both spellings: transformers 5's ``rope_parameters: {rope_theta, rope_type, ...}`` and transformers 4's
    top-level ``rope_theta`` / ``rope_scaling``. Only the default RoPE and Llama 3's rescaling (``"llama3"``) are
    computed by our decoder; any other scaling is refused, since loading it unscaled gives wrong logits."""
    params = c.get("rope_parameters")
    if params is not None and not isinstance(params, Mapping):
        raise UserError(f"HF config: rope_parameters must be a mapping, not {params!r}")
    if params and all(isinstance(v, Mapping) for v in params.values()):
        raise UserError(f"HF config: per-layer-type rope_parameters ({', '.join(sorted(params))}) are not "
                        f"supported")
    legacy = c.get("rope_scaling")
    if legacy is not None and not isinstance(legacy, Mapping):
        raise UserError(f"HF config: rope_scaling must be a mapping, not {legacy!r}")
    settings = {**(legacy or {}), **(params or {})}
    top, nested = c.get("rope_theta"), (params or {}).get("rope_theta")
    if top is not None and nested is not None and float(top) != float(nested):
        raise UserError(f"HF config: rope_theta {top} and rope_parameters.rope_theta {nested} disagree")
    theta = float(nested if nested is not None else top if top is not None else 10000.0)
    partial = settings.get("partial_rotary_factor", c.get("partial_rotary_factor"))
    if partial is not None and float(partial) != 1.0:
        raise UserError(f"HF config: partial_rotary_factor {partial} is not supported (RoPE on every dimension only)")
    kind = settings.get("rope_type", settings.get("type", "default"))
    if kind in ("default", None):
        return theta, None
    if kind != "llama3":
        raise UserError(f"HF config: RoPE scaling rope_type {kind!r} is not supported (only rope_type 'llama3' "
                        f"or the default; loading it unscaled would give wrong logits)")
    lost = [k for k in _LLAMA3_KEYS if settings.get(k) is None]
    if lost:
        raise UserError(f"HF config: rope_type 'llama3' lacks {', '.join(lost)}")
    return theta, tuple(float(settings[k]) for k in _LLAMA3_KEYS)


def config_from_hf(config_json: PathLike | Mapping[str, Any], **overrides: Any):
    """HF ``config.json`` (path, directory or dict) -> ``DecoderConfig`` (Llama family) or ``T5Config``."""
    c = dict(config_json) if isinstance(config_json, Mapping) else _read_json(config_json)
    kind = c.get("model_type")
    if kind in _LLAMA_MODEL_TYPES:
        s = _hf_llama_shape(c)
        theta, scaling = _hf_rope(c)
        if scaling is not None:
            overrides = {"rope_scaling": scaling, **overrides}
        return _decoder_config(
            vocab_size=int(c["vocab_size"]), d_model=s.d_model, num_layers=s.num_layers, num_heads=s.num_heads,
            num_kv_heads=s.num_kv_heads, head_dim=s.head_dim, mlp_dim=int(c["intermediate_size"]),
            rope_theta=theta, norm_eps=float(c.get("rms_norm_eps", 1e-6)),
            max_length=int(c.get("max_position_embeddings", 2048)), tie_embeddings=s.tied_embeddings,
            **overrides)
    if kind in _T5_MODEL_TYPES:
        s = _hf_t5_shape(c)
        act = str(c.get("feed_forward_proj", "relu")).removeprefix("gated-")
        act = {"gelu": "gelu_new", "gelu_new": "gelu_new"}.get(act, act)
        return _t5_config(
            vocab_size=int(c["vocab_size"]), d_model=s.d_model, num_encoder_layers=s.num_encoder_layers,
            num_decoder_layers=s.num_decoder_layers, num_heads=s.num_heads, head_dim=s.head_dim,
            mlp_dim=int(c["d_ff"]), norm_eps=float(c.get("layer_norm_epsilon", 1e-6)),
            relative_attention_num_buckets=int(c.get("relative_attention_num_buckets", 32)),
            relative_attention_max_distance=int(c.get("relative_attention_max_distance", 128)),
            tie_embeddings=s.tied_embeddings, **_t5_activation_fields(act, s.gated_mlp),
            **({"scale_tied_logits": bool(c["scale_decoder_outputs"])} if "scale_decoder_outputs" in c else {}),
            **overrides)
    raise UserError(f"HF model_type {kind!r} is not supported (supported: "
                    f"{', '.join(_LLAMA_MODEL_TYPES + _T5_MODEL_TYPES)})")


def _t5_activation_fields(act: str, gated: bool) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(t5.T5Config)}
    ours = {"gelu_new": "gelu", "relu": "relu", "silu": "silu"}.get(act, act)
    if "mlp_activations" in fields:
        return {"mlp_activations": (ours, "linear") if gated else (ours,)}
    out: dict[str, Any] = {}
    if "gated_mlp" in fields:
        out["gated_mlp"] = gated
    if "mlp_activation" in fields:
        out["mlp_activation"] = ours
    return out


def read_hf_params(path: PathLike, config: Mapping[str, Any] | None = None) -> tuple[Flat, list[str]]:
    """HF safetensors (+ config.json beside it) -> (our flat names, unrecognised HF names)."""
    path = pathlib.Path(path)
    if config is None:
        folder = path if path.is_dir() else path.parent
        if not (folder / "config.json").exists():
            raise UserError(f"{folder}: no config.json beside the safetensors (needed to know the architecture)")
        config = _read_json(folder / "config.json")
    tensors = read_hf_safetensors(path)
    kind = config.get("model_type")
    if kind in _LLAMA_MODEL_TYPES:
        return apply_rules(tensors, llama_rules(_hf_llama_shape(config)),
                           ignore=[n for n in tensors if n.endswith("rotary_emb.inv_freq")])
    if kind in _T5_MODEL_TYPES:
        return apply_rules(tensors, t5_rules(_hf_t5_shape(config)), ignore=_T5_ALIASES)
    raise UserError(f"{path}: HF model_type {kind!r} is not supported")
