"""GGUF import: hand-computed dequantisation, llama.cpp's RoPE row permutation, strict errors, round trips."""

from __future__ import annotations

import dataclasses
import struct

import gguf
import numpy as np
import pytest

from fiat_jax.errors import UserError
from fiat_jax.models import checkpoint_import as ci


@dataclasses.dataclass(frozen=True)
class TinyLlama:
    """Only the fields export needs (stands in for DecoderConfig)."""

    vocab_size: int = 64
    d_model: int = 32
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 8
    mlp_dim: int = 64
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    max_length: int = 128
    tie_embeddings: bool = True


def tiny_params(cfg: TinyLlama, seed: int = 0) -> dict[str, np.ndarray]:
    """Random params under our names, shapes from the import table (independent of the model code)."""
    rng = np.random.default_rng(seed)
    shape = ci.LlamaShape(cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_model,
                          cfg.tie_embeddings)
    out = {}
    for rule in ci.llama_rules(shape):
        if rule.shape is not None:
            s = rule.shape
        elif rule.ours.endswith("scale"):
            s = (cfg.d_model,)
        elif rule.ours == "token_embedder.embedding":
            s = (cfg.vocab_size, cfg.d_model)
        elif rule.ours.endswith("wo.kernel"):
            s = (cfg.mlp_dim, cfg.d_model)
        elif rule.ours == "logits_dense.kernel":
            s = (cfg.d_model, cfg.vocab_size)
        else:
            s = (cfg.d_model, cfg.mlp_dim)
        out[rule.ours] = rng.normal(size=s).astype(np.float32)
    return out


def _write(path, tensors: dict[str, tuple[np.ndarray, gguf.GGMLQuantizationType | None]], **kv) -> None:
    w = gguf.GGUFWriter(str(path), arch="llama")
    for key, value in kv.items():
        getattr(w, f"add_{key}")(value)
    for name, (x, raw) in tensors.items():
        w.add_tensor(name, x, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_q8_0_and_q4_1_dequantise_as_computed_by_hand(tmp_path):
    rng = np.random.default_rng(1)
    rows, blocks = 3, 2  # 3 rows of 64 values = 2 blocks of 32 each
    # Q8_0 block: fp16 scale d, 32 int8 q; value = d * q.
    d8 = rng.uniform(0.01, 0.1, size=(rows, blocks)).astype(np.float16)
    q8 = rng.integers(-128, 128, size=(rows, blocks, 32), dtype=np.int8)
    raw8 = b"".join(struct.pack("<e", float(d8[r, b])) + q8[r, b].tobytes()
                    for r in range(rows) for b in range(blocks))
    want8 = (d8.astype(np.float32)[..., None] * q8.astype(np.float32)).reshape(rows, 64)
    # Q4_1 block: fp16 d, fp16 m, 16 bytes; byte j holds value j (low nibble) and value j+16 (high nibble);
    # value = d * q + m.
    d4 = rng.uniform(0.01, 0.1, size=(rows, blocks)).astype(np.float16)
    m4 = rng.uniform(-1, 1, size=(rows, blocks)).astype(np.float16)
    q4 = rng.integers(0, 16, size=(rows, blocks, 32), dtype=np.uint8)
    packed = (q4[..., :16] | (q4[..., 16:] << 4)).astype(np.uint8)
    raw4 = b"".join(struct.pack("<ee", float(d4[r, b]), float(m4[r, b])) + packed[r, b].tobytes()
                    for r in range(rows) for b in range(blocks))
    want4 = (d4.astype(np.float32)[..., None] * q4 + m4.astype(np.float32)[..., None]).reshape(rows, 64)
    path = tmp_path / "q.gguf"
    _write(path, {"a": (np.frombuffer(raw8, np.uint8).reshape(rows, -1), gguf.GGMLQuantizationType.Q8_0),
                  "b": (np.frombuffer(raw4, np.uint8).reshape(rows, -1), gguf.GGMLQuantizationType.Q4_1)})
    g = ci.GGUFFile(path)
    assert g.tensor_type("a") == "Q8_0" and g.tensor_type("b") == "Q4_1"
    np.testing.assert_allclose(g.tensor("a"), want8, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g.tensor("b"), want4, rtol=1e-6, atol=1e-6)


def _rope_half(x, pos, theta=10000.0):
    """HF rotate-half RoPE on [..., d]: pairs (i, i + d/2)."""
    d = x.shape[-1]
    freq = theta ** (-np.arange(0, d, 2) / d)
    ang = pos * freq
    cos, sin = np.cos(ang), np.sin(ang)
    a, b = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)


def _rope_interleaved(x, pos, theta=10000.0):
    """llama.cpp's normal RoPE: pairs (2i, 2i + 1)."""
    d = x.shape[-1]
    freq = theta ** (-np.arange(0, d, 2) / d)
    ang = pos * freq
    cos, sin = np.cos(ang), np.sin(ang)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = b * cos + a * sin
    return out


def test_unpermuted_q_k_give_llama_cpp_attention_scores():
    """Scores from GGUF rows with llama.cpp's interleaved RoPE == scores from our rows with rotate-half RoPE."""
    rng = np.random.default_rng(2)
    heads, hd, d = 3, 8, 12
    wq_gguf = rng.normal(size=(heads * hd, d))
    wk_gguf = rng.normal(size=(heads * hd, d))
    x1, x2 = rng.normal(size=d), rng.normal(size=d)
    wq, wk = ci.unpermute_rope_rows(wq_gguf, heads), ci.unpermute_rope_rows(wk_gguf, heads)
    for p1, p2 in ((0, 0), (3, 1), (7, 2)):
        ref = [_rope_interleaved((wq_gguf @ x1).reshape(heads, hd)[h], p1)
               @ _rope_interleaved((wk_gguf @ x2).reshape(heads, hd)[h], p2) for h in range(heads)]
        ours = [_rope_half((wq @ x1).reshape(heads, hd)[h], p1)
                @ _rope_half((wk @ x2).reshape(heads, hd)[h], p2) for h in range(heads)]
        np.testing.assert_allclose(ours, ref, rtol=1e-10)
    np.testing.assert_array_equal(ci.permute_rope_rows(wq, heads), wq_gguf)


@pytest.mark.parametrize("quant,tol", [("F32", 0.0), ("F16", 2e-3), ("Q8_0", 3e-2), ("Q4_1", 0.35)])
def test_export_gguf_round_trip(tmp_path, quant, tol):
    cfg = TinyLlama(tie_embeddings=False)
    params = tiny_params(cfg)
    path = tmp_path / f"m.{quant}.gguf"
    ci.export_gguf(ci.unflatten(params), path, config=cfg, quant=quant)
    flat, unknown = ci.read_gguf_params(path)
    assert unknown == [] and set(flat) == set(params)
    for name, x in params.items():
        err = np.abs(flat[name] - x).max()
        assert err <= tol * max(1.0, np.abs(x).max()), (name, err)
    target = {k: np.zeros(v.shape, np.float32) for k, v in params.items()}
    loaded = ci.flatten(ci.match_to_target(flat, ci.unflatten(target), source=str(path)))
    assert all(loaded[k].shape == params[k].shape for k in params)


def test_strict_errors_list_missing_unexpected_and_misshaped_together(tmp_path):
    cfg = TinyLlama()
    params = tiny_params(cfg)
    path = tmp_path / "m.gguf"
    ci.export_gguf(ci.unflatten(params), path, config=cfg)
    target = {k: np.zeros(v.shape, np.float32) for k, v in params.items()}
    del target["layers_1.mlp.wo.kernel"]  # -> unexpected in the checkpoint
    target["layers_0.attention.query.kernel"] = np.zeros((cfg.d_model, 8, 4), np.float32)  # mis-shaped
    target["layers_0.extra.kernel"] = np.zeros((2, 2), np.float32)  # missing from the checkpoint
    with pytest.raises(UserError) as err:
        ci.load_params(path, ci.unflatten(target))
    msg = str(err.value)
    assert "1 missing: layers_0.extra.kernel" in msg
    assert "1 unexpected: layers_1.mlp.wo.kernel" in msg
    assert "layers_0.attention.query.kernel [32, 4, 8] != model [32, 8, 4]" in msg
    assert str(path) in msg and "\n" not in msg


def test_merged_head_dims_are_accepted():
    flat = {"q.kernel": np.arange(24.0).reshape(2, 3, 4)}
    out = ci.match_to_target(flat, {"q": {"kernel": np.zeros((2, 12), np.float32)}}, source="x")
    np.testing.assert_array_equal(out["q"]["kernel"], np.arange(24.0).reshape(2, 12))
    assert not ci._merge_compatible((2, 3, 4), (6, 4, 1, 2))
    assert not ci._merge_compatible((576, 9, 64), (576, 8, 72))


def test_truncated_gguf_is_a_clear_error(tmp_path):
    cfg = TinyLlama()
    path = tmp_path / "m.gguf"
    ci.export_gguf(ci.unflatten(tiny_params(cfg)), path, config=cfg)
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(UserError, match="cut.gguf.*truncated"):
        ci.read_gguf_params(cut)
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\x00" * 10)
    with pytest.raises(UserError, match="junk.gguf"):
        ci.read_gguf_params(tmp_path / "junk.gguf")


def test_unsupported_quant_type_names_tensor_and_type(tmp_path):
    path = tmp_path / "q81.gguf"
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_1][1]
    _write(path, {"token_embd.weight": (np.zeros((4, block), np.uint8), gguf.GGMLQuantizationType.Q8_1)},
           block_count=0, embedding_length=32, head_count=4)
    with pytest.raises(UserError, match=r"token_embd.weight has GGUF type Q8_1, which is not supported"):
        ci.read_gguf_params(path)


def test_other_architecture_is_rejected(tmp_path):
    path = tmp_path / "other.gguf"
    w = gguf.GGUFWriter(str(path), arch="mamba")
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UserError, match="architecture 'mamba' is not supported"):
        ci.read_gguf_params(path)
