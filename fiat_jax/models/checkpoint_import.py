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
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from fiat_jax.errors import UserError

Flat = dict[str, np.ndarray]
PathLike = str | os.PathLike

# --------------------------------------------------------------------------------------------------------------
# Flat <-> nested trees
# --------------------------------------------------------------------------------------------------------------


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def target_shapes(target: Any) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{"layers_0.attention.query.kernel": (shape, dtype)}`` of an NNX module, its Param state or a nested dict."""
    import jax

    tree = target
    try:
        from flax import nnx

        if isinstance(target, nnx.Module):
            tree = nnx.state(target, nnx.Param)
        if isinstance(tree, nnx.State):
            tree = tree.to_pure_dict()
    except ImportError:  # pragma: no cover - flax is a hard dependency
        pass
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [_key_name(k) for k in path]
        if len(names) > 1 and names[-1] == "value":
            names = names[:-1]
        out[".".join(names)] = (tuple(int(d) for d in leaf.shape), np.dtype(leaf.dtype))
    return out


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Flat:
    """Nested dict -> ``{"a.b.c": array}``."""
    out: Flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b.c": array}`` -> nested dict (the shape of ``nnx.state(model, nnx.Param).to_pure_dict()``)."""
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        node = nested
        parts = name.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def load_into(model: Any, params: Mapping[str, Any], *, source: str = "params") -> None:
    """Write a nested param dict into an NNX model in place, strictly matched, keeping each parameter's dtype and
    sharding (so a model already placed on a mesh stays placed)."""
    import jax
    from flax import nnx

    matched = match_to_target(flatten(params), model, source=source)
    state = nnx.state(model, nnx.Param)
    current = state.to_pure_dict()
    new = _int_keys_like(current, matched)

    def place(old: Any, value: Any) -> Any:
        sharding = getattr(old, "sharding", None)
        value = np.asarray(value, dtype=old.dtype)
        return jax.device_put(value, sharding) if sharding is not None else jax.numpy.asarray(value)

    state.replace_by_pure_dict(jax.tree.map(place, current, new))
    nnx.update(model, state)


def _int_keys_like(template: Any, params: Any) -> Any:
    """Our flat names are strings; NNX lists use int keys. Rebuild ``params`` with ``template``'s key types."""
    if not isinstance(template, Mapping):
        return params
    by_str = {str(k): k for k in template}
    return {by_str.get(str(k), k): _int_keys_like(template.get(by_str.get(str(k), k)), v) for k, v in params.items()}


# --------------------------------------------------------------------------------------------------------------
# Strict matching
# --------------------------------------------------------------------------------------------------------------


def _merge_compatible(src: tuple[int, ...], dst: tuple[int, ...]) -> bool:
    """True when one shape is the other with some runs of adjacent dims merged ([D,H,hd] ~ [D,H*hd])."""
    if src == dst:
        return True
    if math.prod(src) != math.prod(dst):
        return False
    long, short = (src, dst) if len(src) >= len(dst) else (dst, src)
    i = 0
    for size in short:
        acc = 1
        while i < len(long) and acc < size:
            acc *= long[i]
            i += 1
        if acc != size:
            return False
    return i == len(long)


def match_to_target(flat: Mapping[str, np.ndarray], target: Any, *, source: str,
                    unrecognised: Iterable[str] = ()) -> dict[str, Any]:
    """Check ``flat`` (our names) against the model's parameter tree; return a nested dict cast to target dtypes.

    Collects every missing, unexpected (incl. source tensors no rule recognised) and mis-shaped tensor and raises
    them all in one ``UserError`` naming ``source``.
    """
    shapes = target_shapes(target)
    missing = sorted(set(shapes) - set(flat))
    unexpected = sorted(set(flat) - set(shapes)) + [f"{n} (unrecognised source tensor)" for n in unrecognised]
    misshaped = []
    out: Flat = {}
    for name in sorted(set(shapes) & set(flat)):
        want, dtype = shapes[name]
        have = tuple(flat[name].shape)
        if not _merge_compatible(have, want):
            misshaped.append(f"{name} {list(have)} != model {list(want)}")
            continue
        out[name] = np.asarray(flat[name]).reshape(want).astype(dtype, copy=False)
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            shown = ", ".join(items[:12]) + (f", ... ({len(items) - 12} more)" if len(items) > 12 else "")
            problems.append(f"{len(items)} {label}: {shown}")
    if problems:
        raise UserError(f"checkpoint {source} does not fit the model: " + "; ".join(problems))
    return unflatten(out)


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
# Safetensors (our own reader: exact truncation errors, bf16 via ml_dtypes, lazy memmap)
# --------------------------------------------------------------------------------------------------------------

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
              "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _st_dtype(code: str, path: PathLike) -> np.dtype:
    if code == "BF16":
        import ml_dtypes

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
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=dict(metadata or {}))


# --------------------------------------------------------------------------------------------------------------
# GGUF
# --------------------------------------------------------------------------------------------------------------

SUPPORTED_GGUF_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K",
                        "Q5_K", "Q6_K")


class GGUFFile:
    """Metadata and tensors of one GGUF file; tensors are dequantised to float32 on access."""

    def __init__(self, path: PathLike):
        import gguf

        self.path = pathlib.Path(path)
        if not self.path.exists():
            raise UserError(f"GGUF file not found: {self.path}")
        try:
            self._reader = gguf.GGUFReader(self.path)
        except Exception as err:  # the reader raises ValueError / IndexError / struct errors on damaged files
            raise UserError(f"{self.path}: not a readable GGUF file (corrupt or truncated: {err})") from err
        self.metadata: dict[str, Any] = {}
        for key, field in self._reader.fields.items():
            if key.startswith("GGUF."):
                continue
            try:
                self.metadata[key] = field.contents()
            except Exception:  # pragma: no cover - unknown field layout
                continue
        self._tensors = {t.name: t for t in self._reader.tensors}
        size = self.path.stat().st_size
        for t in self._reader.tensors:
            if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
                raise UserError(f"{self.path}: truncated; tensor {t.name} needs bytes up to "
                                f"{t.data_offset + t.n_bytes}, the file has {size}")

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "?"))

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.metadata:
            raise UserError(f"{self.path}: GGUF metadata lacks {key}")
        return self.metadata[key]

    def tensor_names(self) -> list[str]:
        return list(self._tensors)

    def tensor_type(self, name: str) -> str:
        return self._tensors[name].tensor_type.name

    def tensor(self, name: str) -> np.ndarray:
        """Dequantised float32 array in numpy (row-major) order: a 2-D weight is ``[rows=out, cols=in]``."""
        import gguf

        t = self._tensors[name]
        kind = t.tensor_type.name
        if kind not in SUPPORTED_GGUF_TYPES:
            raise UserError(f"{self.path}: tensor {name} has GGUF type {kind}, which is not supported "
                            f"(supported: {', '.join(SUPPORTED_GGUF_TYPES)})")
        if kind == "F32":
            x = np.asarray(t.data, np.float32)
        elif kind == "F16":
            x = np.asarray(t.data).astype(np.float32)
        else:
            x = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32, copy=False)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        return x.reshape(shape)


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's ``permute`` of q/k rows (``convert_hf_to_gguf.LlamaModel.permute``).

    llama.cpp reorders each head's rows from [first half | second half] (HF's rotate-half RoPE) to interleaved
    pairs (x0, x_{d/2}, x1, ...) for its adjacent-pair RoPE. Reading back, row ``2j + k`` of a head goes to row
    ``k * d/2 + j``.
    """
    rows = w.shape[0]
    head_dim = rows // n_heads
    return w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's permutation (HF rotate-half rows -> interleaved pairs); used to write GGUF test files."""
    rows = w.shape[0]
    head_dim = rows // n_heads
    return w.reshape(n_heads, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_TO_HF_LAYER = {
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GGUF_TO_HF_TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                   "output.weight": "lm_head.weight"}
_GGUF_LLAMA_ARCHES = ("llama", "mistral")


def _gguf_llama_shape(g: GGUFFile) -> LlamaShape:
    arch = g.architecture
    if arch not in _GGUF_LLAMA_ARCHES:
        raise UserError(f"{g.path}: GGUF architecture {arch!r} is not supported (supported: "
                        f"{', '.join(_GGUF_LLAMA_ARCHES)})")
    d = int(g.require(f"{arch}.embedding_length"))
    h = int(g.require(f"{arch}.attention.head_count"))
    kv = int(g.get(f"{arch}.attention.head_count_kv", h))
    hd = int(g.get(f"{arch}.attention.key_length", d // h))
    return LlamaShape(num_layers=int(g.require(f"{arch}.block_count")), num_heads=h, num_kv_heads=kv,
                      head_dim=hd, d_model=d, tied_embeddings="output.weight" not in g.tensor_names())


def gguf_to_hf_names(g: GGUFFile) -> tuple[Flat, list[str]]:
    """GGUF tensors -> HF Llama names (dequantised, q/k rows un-permuted); plus names with no HF counterpart."""
    s = _gguf_llama_shape(g)
    out: Flat = {}
    unknown = []
    for name in g.tensor_names():
        m = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
        if m and m.group(2) in _GGUF_TO_HF_LAYER:
            hf = f"model.layers.{m.group(1)}.{_GGUF_TO_HF_LAYER[m.group(2)]}"
        elif name in _GGUF_TO_HF_TOP:
            hf = _GGUF_TO_HF_TOP[name]
        else:
            unknown.append(name)
            continue
        x = g.tensor(name)
        if hf.endswith("q_proj.weight"):
            x = unpermute_rope_rows(x, s.num_heads)
        elif hf.endswith("k_proj.weight"):
            x = unpermute_rope_rows(x, s.num_kv_heads)
        out[hf] = x
    return out, unknown


def read_gguf_params(path: PathLike) -> tuple[Flat, list[str]]:
    """GGUF file -> (our flat names, unrecognised GGUF tensor names)."""
    g = GGUFFile(path)
    hf, unknown = gguf_to_hf_names(g)
    ours, unrecognised = apply_rules(hf, llama_rules(_gguf_llama_shape(g)))
    return ours, sorted(unknown + unrecognised)


def config_from_gguf(path: PathLike | GGUFFile, **overrides: Any):
    """A :class:`~fiat_jax.models.decoder.DecoderConfig` for the model in a GGUF file (Llama family)."""
    g = path if isinstance(path, GGUFFile) else GGUFFile(path)
    s = _gguf_llama_shape(g)
    arch = g.architecture
    vocab = g.get(f"{arch}.vocab_size") or len(g.require("tokenizer.ggml.tokens"))
    if g.get(f"{arch}.rope.scaling.type") not in (None, "none"):
        raise UserError(f"{g.path}: RoPE scaling {g.get(f'{arch}.rope.scaling.type')!r} is not supported")
    ffn = g.require(f"{arch}.feed_forward_length")
    return _decoder_config(
        vocab_size=int(vocab), d_model=s.d_model, num_layers=s.num_layers, num_heads=s.num_heads,
        num_kv_heads=s.num_kv_heads, head_dim=s.head_dim, mlp_dim=int(ffn),
        rope_theta=float(g.get(f"{arch}.rope.freq_base", 10000.0)),
        norm_eps=float(g.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        max_length=int(g.get(f"{arch}.context_length", 2048)), tie_embeddings=s.tied_embeddings, **overrides)


# --------------------------------------------------------------------------------------------------------------
# HF config.json -> our configs
# --------------------------------------------------------------------------------------------------------------


def _decoder_config(**values: Any):
    """Build DecoderConfig from canonical field names, mapping onto whatever its fields are called."""
    from fiat_jax.models import decoder

    return _build_config(decoder.DecoderConfig, values)


def _t5_config(**values: Any):
    from fiat_jax.models import t5

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
    return cls(**kwargs)


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


def config_from_hf(config_json: PathLike | Mapping[str, Any], **overrides: Any):
    """HF ``config.json`` (path, directory or dict) -> ``DecoderConfig`` (Llama family) or ``T5Config``."""
    c = dict(config_json) if isinstance(config_json, Mapping) else _read_json(config_json)
    kind = c.get("model_type")
    if kind in _LLAMA_MODEL_TYPES:
        s = _hf_llama_shape(c)
        if c.get("rope_scaling"):
            raise UserError(f"HF config: rope_scaling {c['rope_scaling']} is not supported")
        return _decoder_config(
            vocab_size=int(c["vocab_size"]), d_model=s.d_model, num_layers=s.num_layers, num_heads=s.num_heads,
            num_kv_heads=s.num_kv_heads, head_dim=s.head_dim, mlp_dim=int(c["intermediate_size"]),
            rope_theta=float(c.get("rope_theta", 10000.0)), norm_eps=float(c.get("rms_norm_eps", 1e-6)),
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
    from fiat_jax.models import t5

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


# --------------------------------------------------------------------------------------------------------------
# T5X and orbax checkpoints (already in our names)
# --------------------------------------------------------------------------------------------------------------


def _is_ts_spec(x: Any) -> bool:
    return isinstance(x, Mapping) and {"driver", "kvstore"} <= set(x)


def read_t5x_checkpoint(path: PathLike) -> Flat:
    """Classic T5X ``checkpoint_N`` dir (or its ``checkpoint`` file) -> params ``optimizer/target`` flat."""
    from flax import serialization

    path = pathlib.Path(path)
    ckpt_dir = path if path.is_dir() else path.parent
    ckpt_file = ckpt_dir / "checkpoint"
    try:
        contents = serialization.msgpack_restore(ckpt_file.read_bytes())
    except OSError as err:
        raise UserError(f"cannot read T5X checkpoint {ckpt_file}: {err}") from err
    except Exception as err:
        raise UserError(f"{ckpt_file}: corrupt T5X checkpoint (msgpack: {err})") from err
    if contents.get("version", 0) < 2 or "optimizer" not in contents:
        raise UserError(f"{ckpt_file}: T5X checkpoint version {contents.get('version', 0)} is not supported")
    target = contents["optimizer"].get("target")
    if not isinstance(target, Mapping):
        raise UserError(f"{ckpt_file}: no optimizer/target params in this T5X checkpoint")
    return {name: _read_t5x_leaf(value, ckpt_dir, name) for name, value in _flatten_t5x(target).items()}


def _flatten_t5x(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and not _is_ts_spec(value):
            out.update(_flatten_t5x(value, name + "."))
        else:
            out[name] = value
    return out


def _read_t5x_leaf(value: Any, ckpt_dir: pathlib.Path, name: str) -> np.ndarray:
    if not _is_ts_spec(value):
        return np.asarray(value)
    import tensorstore as ts

    spec = json.loads(json.dumps(value))
    kvstore = spec["kvstore"]
    if kvstore.get("driver") not in ("file", "gfile"):
        raise UserError(f"{ckpt_dir}: {name} is stored on {kvstore.get('driver')!r}; copy the checkpoint to a "
                        f"local directory first")
    kvstore["driver"] = "file"
    kvstore["path"] = str(ckpt_dir / kvstore["path"])
    try:
        return ts.open(spec, open=True, read=True).result().read().result()
    except Exception as err:
        raise UserError(f"{ckpt_dir}: cannot read {name} ({err})") from err


def read_orbax_params(path: PathLike) -> Flat:
    """Params of a checkpoint our trainer wrote: ``MODEL_DIR``, ``MODEL_DIR/checkpoints``, a step dir or its
    ``state`` item dir (the newest step when not given)."""
    import orbax.checkpoint as ocp

    path = pathlib.Path(path)
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    steps = sorted((int(p.name), p) for p in path.iterdir() if p.name.isdigit()) if path.is_dir() else []
    if steps:
        path = steps[-1][1]
    if (path / "state").is_dir():
        path = path / "state"
    try:
        restored = ocp.PyTreeCheckpointer().restore(path)
    except Exception as err:
        raise UserError(f"cannot read orbax checkpoint {path}: {err}") from err
    params = restored.get("params", restored) if isinstance(restored, Mapping) else None
    if not isinstance(params, Mapping):
        raise UserError(f"{path}: no params in this orbax checkpoint")
    return {k: np.asarray(v) for k, v in flatten(params).items()}


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
    import jax

    tree = params
    from flax import nnx

    if isinstance(params, nnx.Module):
        tree = nnx.state(params, nnx.Param)
    if isinstance(tree, nnx.State):
        tree = tree.to_pure_dict()
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [_key_name(k) for k in path]
        if len(names) > 1 and names[-1] == "value":
            names = names[:-1]
        out[".".join(names)] = np.asarray(leaf)
    return out


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
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
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
    import gguf

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
