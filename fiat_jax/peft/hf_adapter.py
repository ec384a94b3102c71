"""LoRA adapters <-> the HF peft on-disk layout: ``adapter_model.safetensors`` + ``adapter_config.json``.

Names come from ``checkpoint_import``'s HF tables (``llama_rules`` / ``t5_rules``), so an adapter on our
``layers_3/attention/query`` is ``base_model.model.model.layers.3.self_attn.q_proj.lora_{A,B}.weight`` (Llama) or
``base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_{A,B}.weight`` (T5). Shapes: HF ``lora_A.weight
[r, in]`` = our ``lora_a [*in, r]`` flattened over the input axes and transposed; ``lora_B.weight [out, r]`` = our
``lora_b [r, *out]`` flattened and transposed — the same flattening ``Rule.to_hf`` applies to the base kernels
(``out [H, hd, D]`` reads as ``o_proj [D, H*hd]``). No RoPE row permutation is involved: our decoder uses HF's
rotate-half layout (the GGUF permutation is undone on import), so ``q_proj`` rows are in HF order.

``adapter_config.json`` lists the exact HF module names in ``target_modules``; ``lora_alpha`` / ``r`` /
``use_rslora`` reproduce our scale. The safetensors header also records the base model's shape
(``fiat_jax_base``) so loading an adapter made for another base is refused with one clear line.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import struct
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from fiat_jax.errors import UserError
from fiat_jax.models import checkpoint_import as ci
from fiat_jax.peft import lora, wrapper

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_PREFIX = "base_model.model."
_BASE_KEYS = ("model_type", "vocab_size", "hidden_size", "d_model", "num_hidden_layers", "num_layers",
              "num_decoder_layers", "num_attention_heads", "num_heads", "num_key_value_heads", "head_dim", "d_kv",
              "intermediate_size", "d_ff")


def _is_t5(hf: Mapping[str, Any]) -> bool:
    return hf["model_type"] in ("t5", "mt5")


def _hf_tables(model: nnx.Module) -> tuple[dict[str, Any], dict[str, ci.Rule]]:
    """``(hf config dict, {our module path 'a/b/c': Rule})`` for the model's architecture."""
    config = getattr(wrapper.unwrap(model), "config", None)
    if config is None:
        raise UserError(f"{type(model).__name__} has no config: cannot name its adapters for HF peft")
    hf = ci.hf_config_from(config)
    if _is_t5(hf):
        rules = ci.t5_rules(ci.T5Shape(
            num_encoder_layers=hf["num_layers"], num_decoder_layers=hf["num_decoder_layers"],
            num_heads=hf["num_heads"], head_dim=hf["d_kv"], d_model=hf["d_model"],
            gated_mlp=str(hf["feed_forward_proj"]).startswith("gated"), tied_embeddings=hf["tie_word_embeddings"]))
    else:
        rules = ci.llama_rules(ci.LlamaShape(
            num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
            num_kv_heads=hf["num_key_value_heads"], head_dim=hf["head_dim"], d_model=hf["hidden_size"],
            tied_embeddings=hf["tie_word_embeddings"]))
    by_module = {r.ours.removesuffix(".kernel").replace(".", "/"): r for r in rules if r.ours.endswith(".kernel")}
    return hf, by_module


def _base_signature(hf: Mapping[str, Any]) -> dict[str, Any]:
    return {k: hf[k] for k in _BASE_KEYS if k in hf}


def export_peft(model: nnx.Module, directory: str | os.PathLike, *,
                base_model_name_or_path: str | None = None) -> pathlib.Path:
    """Write the model's LoRA adapters as an HF peft adapter directory; returns the directory."""
    mods = lora.lora_modules(model)
    if not mods:
        raise UserError("export_peft: the model has no LoRA adapters")
    settings = vars(model).get("lora_settings") if isinstance(model, wrapper.PeftModel) else None
    if settings is None:
        raise UserError("export_peft: the model's LoRA settings are unknown (apply adapters with fiat_jax.peft.lora)")
    hf, by_module = _hf_tables(model)
    tensors: dict[str, np.ndarray] = {}
    targets = []
    for path, m in sorted(mods.items()):
        rule = by_module.get(path)
        if rule is None:
            raise UserError(f"export_peft: {path} has no HF counterpart")
        hf_module = rule.hf.removesuffix(".weight")
        targets.append(hf_module)
        a = np.asarray(jax.device_get(m.lora_a.get_value()), np.float32)
        b = np.asarray(jax.device_get(m.lora_b.get_value()), np.float32)
        tensors[f"{_PREFIX}{hf_module}.lora_A.weight"] = a.reshape(-1, m.rank).T
        tensors[f"{_PREFIX}{hf_module}.lora_B.weight"] = b.reshape(m.rank, -1).T
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "fiat_jax_base": json.dumps(_base_signature(hf), sort_keys=True)}
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(directory / ADAPTER_WEIGHTS),
              metadata=meta)
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_2_SEQ_LM" if _is_t5(hf) else "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": settings.rank, "lora_alpha": settings.alpha, "lora_dropout": settings.dropout,
        "use_rslora": settings.rslora, "target_modules": targets, "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
    }
    tmp = directory / (ADAPTER_CONFIG + ".tmp")
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, directory / ADAPTER_CONFIG)
    return directory


def _read_header_metadata(path: pathlib.Path) -> dict[str, str]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return dict(json.loads(f.read(n)).get("__metadata__") or {})


def load_peft(model: nnx.Module, directory: str | os.PathLike) -> nnx.Module:
    """Load an HF peft LoRA adapter into ``model``; adapters are added (from ``adapter_config.json``) when the
    model has none. Returns the (wrapped) model. A foreign base model, rank or target set -> ``UserError``."""
    directory = pathlib.Path(directory)
    cfg_path, w_path = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    for p in (cfg_path, w_path):
        if not p.exists():
            raise UserError(f"load_peft: {p} not found")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as err:
        raise UserError(f"load_peft: {cfg_path} is not JSON ({err})") from err
    if cfg.get("peft_type") != "LORA":
        raise UserError(f"load_peft: {cfg_path} is a {cfg.get('peft_type')!r} adapter, not LORA")
    if cfg.get("fan_in_fan_out"):
        raise UserError(f"load_peft: {cfg_path} has fan_in_fan_out=true (Conv1D layout), unsupported")
    rank, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", cfg["r"]))
    rslora = bool(cfg.get("use_rslora", False))
    hf, by_module = _hf_tables(model)
    recorded = _read_header_metadata(w_path).get("fiat_jax_base")
    if recorded:
        theirs, ours = json.loads(recorded), _base_signature(hf)
        for k in sorted(set(theirs) | set(ours)):
            if theirs.get(k) != ours.get(k):
                raise UserError(f"load_peft: {w_path} was made for another base model "
                                f"({k}={theirs.get(k)}, this model has {ours.get(k)})")
    tensors = ci.read_safetensors(w_path)
    by_hf = {r.hf.removesuffix(".weight"): path for path, r in by_module.items()}
    wanted: dict[str, str] = {}
    pattern = re.compile(re.escape(_PREFIX) + r"(.+)\.lora_A(?:\.default)?\.weight")
    for name in tensors:
        mt = pattern.fullmatch(name)
        if mt is None:
            continue
        if mt.group(1) not in by_hf:
            raise UserError(f"load_peft: {w_path} adapts {mt.group(1)}, which this base model lacks "
                            f"(an adapter for another base model?)")
        wanted[by_hf[mt.group(1)]] = mt.group(1)
    if not wanted:
        raise UserError(f"load_peft: {w_path} holds no LoRA tensors named {_PREFIX}<module>.lora_A.weight")
    mods = lora.lora_modules(model)
    if not mods:
        targets = "|".join(re.escape(p + "/kernel") for p in sorted(wanted))
        model = lora.apply_lora(model, targets=targets, rank=rank, alpha=alpha, rslora=rslora,
                                dropout=float(cfg.get("lora_dropout", 0.0)))
        mods = lora.lora_modules(model)
    elif set(mods) != set(wanted):
        extra = sorted(set(wanted) ^ set(mods))
        raise UserError(f"load_peft: {w_path} adapts a different set of modules than the model's adapters "
                        f"(e.g. {extra[0]})")
    scale = lora.lora_scale(alpha, rank, rslora=rslora)
    for path, hf_module in sorted(wanted.items()):
        m = mods[path]
        if m.rank != rank or not math.isclose(m.scale, scale, rel_tol=1e-6):
            raise UserError(f"load_peft: {cfg_path} has rank {rank} / scale {scale:g}, the model's adapter "
                            f"{path} has rank {m.rank} / scale {m.scale:g}")
        a_name, b_name = f"{_PREFIX}{hf_module}.lora_A.weight", f"{_PREFIX}{hf_module}.lora_B.weight"
        if b_name not in tensors:
            raise UserError(f"load_peft: {w_path} lacks {b_name}")
        a, b = np.asarray(tensors[a_name]), np.asarray(tensors[b_name])
        want_a, want_b = (m.rank, math.prod(m.in_shape)), (math.prod(m.out_shape), m.rank)
        if a.shape != want_a or b.shape != want_b:
            raise UserError(f"load_peft: {w_path}: {a_name} {a.shape} / lora_B {b.shape} do not fit {path} "
                            f"(expected {want_a} / {want_b}: another base model or rank?)")
        _assign(m.lora_a, a.T.reshape(m.in_shape + (m.rank,)))
        _assign(m.lora_b, b.T.reshape((m.rank,) + m.out_shape))
    return model


def _assign(var: nnx.Variable, value: np.ndarray) -> None:
    old = var.get_value()
    new = jax.numpy.asarray(value, old.dtype)
    sharding = getattr(old, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        new = jax.device_put(new, sharding)
    var.set_value(new)
