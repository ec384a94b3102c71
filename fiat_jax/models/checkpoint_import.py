"""Pretrained weights from GGUF, Hugging Face safetensors and T5X / orbax checkpoints -> our NNX parameter trees.

Every reader returns a flat ``{source_name: np.ndarray}``; a per-architecture name table (one place per family)
turns it into our T5X-style names (``layers_0.attention.query.kernel`` ...), with HF's ``[out, in]`` Linear weights
transposed to ``[in, out]`` kernels and attention heads split out (``[embed, heads, head_dim]``). The result is
matched *strictly* against the model's parameter tree: every missing, unexpected and mis-shaped tensor is collected
and reported in ONE :class:`~fiat_jax.errors.UserError`, never silently dropped or broadcast.

Layouts handled
- GGUF (llama.cpp): F32 / F16 / BF16 and Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K-Q6_K blocks, dequantised with
  ``gguf.quants.dequantize``. llama.cpp's converter permutes the rows of ``attn_q`` / ``attn_k`` so RoPE can rotate
  adjacent pairs; we undo it (:func:`unpermute_rope_rows`) because our rotary embedding (like HF) rotates halves.
- HF safetensors: a single ``model.safetensors`` or a sharded ``model.safetensors.index.json``; Llama family
  (``model.layers.N.self_attn.q_proj.weight`` ...) and T5 / mT5 / Flan-T5 (``encoder.block.N.layer.0.SelfAttention.q``).
- T5X: the classic T5X directory ``checkpoint_N/`` (a msgpack ``checkpoint`` file whose large leaves are
  TensorStore specs pointing at zarr arrays beside it; params under ``optimizer/target``) and the orbax
  checkpoints our trainer writes (``MODEL_DIR/checkpoints/N/state``, params under ``params``). Both already use
  our names, so they go straight to the strict matcher.

Export: :func:`export_safetensors` writes our tree under our names or under HF names (inverse of the import
table), so transformers can load what we trained.

This module is the facade: the work lives in ``checkpoint_match`` (trees, strict matching), ``checkpoint_names``
(HF <-> ours tables, configs from canonical fields), ``checkpoint_hf`` (safetensors, config.json),
``checkpoint_gguf``, ``checkpoint_t5x`` (T5X, orbax) and ``checkpoint_export``; every name importable from here
before the split still is.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

from fiat_jax.errors import UserError
from fiat_jax.models.checkpoint_export import (  # noqa: F401
    _HF_TO_GGUF_LAYER, _HF_TO_GGUF_TOP, _cfg, _flat_values, export_gguf, export_safetensors, hf_config_from)
from fiat_jax.models.checkpoint_gguf import (  # noqa: F401
    _GGUF_LLAMA_ARCHES, _GGUF_TO_HF_LAYER, _GGUF_TO_HF_TOP, SUPPORTED_GGUF_TYPES, GGUFFile, _gguf_llama_shape,
    config_from_gguf, gguf_to_hf_names, permute_rope_rows, read_gguf_params, unpermute_rope_rows)
from fiat_jax.models.checkpoint_hf import (  # noqa: F401
    _LLAMA_MODEL_TYPES, _ST_DTYPES, _T5_MODEL_TYPES, _hf_llama_shape, _hf_t5_shape, _read_json, _save_safetensors,
    _st_dtype, _t5_activation_fields, config_from_hf, read_hf_params, read_hf_safetensors, read_safetensors)
from fiat_jax.models.checkpoint_match import (  # noqa: F401
    Flat, PathLike, _int_keys_like, _key_name, _merge_compatible, flatten, load_into, match_to_target,
    target_shapes, unflatten)
from fiat_jax.models.checkpoint_names import (  # noqa: F401
    _FIELD_ALIASES, _OPTIONAL_FIELDS, _T5_ALIASES, LlamaShape, Rule, T5Shape, _build_config, _decoder_config,
    _t5_config, apply_rules, llama_rules, t5_rules)
from fiat_jax.models.checkpoint_t5x import (  # noqa: F401
    _flatten_t5x, _is_ts_spec, _read_t5x_leaf, read_orbax_params, read_t5x_checkpoint)

# --------------------------------------------------------------------------------------------------------------
# One entry point
# --------------------------------------------------------------------------------------------------------------


def detect_format(path: PathLike) -> str:
    """"gguf", "safetensors", "t5x" or "orbax" from the path."""
    p = pathlib.Path(path)
    if p.suffix == ".gguf":
        return "gguf"
    if p.name.endswith(".safetensors") or p.name.endswith(".safetensors.index.json"):
        return "safetensors"
    if p.is_dir():
        if (p / "model.safetensors").exists() or (p / "model.safetensors.index.json").exists():
            return "safetensors"
        if (p / "checkpoint").is_file():
            return "t5x"
        return "orbax"
    if p.name == "checkpoint":
        return "t5x"
    if not p.exists():
        raise UserError(f"checkpoint not found: {p}")
    raise UserError(f"{p}: unknown checkpoint format (expected .gguf, .safetensors, a T5X or orbax directory)")


def read_params(path: PathLike, *, fmt: str | None = None) -> tuple[Flat, list[str]]:
    """Any supported checkpoint -> (flat params under our names, unrecognised source tensor names)."""
    fmt = fmt or detect_format(path)
    readers: dict[str, Callable[[PathLike], tuple[Flat, list[str]]]] = {
        "gguf": read_gguf_params,
        "safetensors": _read_safetensors_any,
        "t5x": lambda p: (read_t5x_checkpoint(p), []),
        "orbax": lambda p: (read_orbax_params(p), []),
    }
    if fmt not in readers:
        raise UserError(f"unknown checkpoint format {fmt!r} (one of {sorted(readers)})")
    return readers[fmt](path)


def _read_safetensors_any(path: PathLike) -> tuple[Flat, list[str]]:
    """HF names when a config.json is beside the file; otherwise a file we exported under our own names."""
    p = pathlib.Path(path)
    folder = p if p.is_dir() else p.parent
    if (folder / "config.json").exists():
        return read_hf_params(p)
    return dict(read_hf_safetensors(p)), []


def load_params(path: PathLike, target: Any, *, fmt: str | None = None) -> dict[str, Any]:
    """Read a checkpoint and strictly match it to ``target`` (an NNX model, its Param state, or a nested dict of
    arrays / ShapeDtypeStructs). Returns the nested param dict; :func:`load_into` writes it into a model."""
    flat, unrecognised = read_params(path, fmt=fmt)
    return match_to_target(flat, target, source=str(path), unrecognised=unrecognised)
