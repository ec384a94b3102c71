"""GGUF (llama.cpp) files: F32 / F16 / BF16 and Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K-Q6_K blocks, dequantised with
``gguf.quants.dequantize``; Llama-family tensors renamed to HF names, then to ours.

llama.cpp's converter permutes the rows of ``attn_q`` / ``attn_k`` so RoPE can rotate adjacent pairs; we undo it
(:func:`unpermute_rope_rows`) because our rotary embedding (like HF) rotates halves.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

import gguf
import numpy as np

from fiat_jax.errors import UserError
from fiat_jax.models.checkpoint_match import Flat, PathLike
from fiat_jax.models.checkpoint_names import LlamaShape, _decoder_config, apply_rules, llama_rules


# --------------------------------------------------------------------------------------------------------------
# GGUF
# --------------------------------------------------------------------------------------------------------------

SUPPORTED_GGUF_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K",
                        "Q5_K", "Q6_K")


class GGUFFile:
    """Metadata and tensors of one GGUF file; tensors are dequantised to float32 on access."""

    def __init__(self, path: PathLike):
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


def read_gguf_params(path: PathLike | GGUFFile) -> tuple[Flat, list[str]]:
    """GGUF file (or one already opened: parsing its metadata is most of a small model's load) -> (our flat
    names, unrecognised GGUF tensor names)."""
    g = path if isinstance(path, GGUFFile) else GGUFFile(path)
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
