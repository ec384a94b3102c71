"""Safetensors (ours / HF names, sharded), T5X msgpack+TensorStore and orbax checkpoints -> strict param trees."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from test_modelio_gguf import TinyLlama, tiny_params

from fiat_jax.errors import UserError
from fiat_jax.models import checkpoint_import as ci


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Only the fields the HF export table reads (stands in for fiat_jax.models.t5.T5Config)."""

    vocab_size: int = 40
    d_model: int = 16
    num_encoder_layers: int = 2
    num_decoder_layers: int = 1
    num_heads: int = 2
    head_dim: int = 4
    mlp_dim: int = 24
    mlp_activations: tuple[str, ...] = ("gelu", "linear")
    tie_embeddings: bool = False


def tiny_t5_params(cfg: T5Config, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = ci.T5Shape(cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.num_heads, cfg.head_dim, cfg.d_model,
                       gated_mlp=True, tied_embeddings=cfg.tie_embeddings)
    out = {}
    for r in ci.t5_rules(shape):
        if r.shape is not None:
            s = r.shape
        elif r.ours.endswith("scale"):
            s = (cfg.d_model,)
        elif r.ours == "token_embedder.embedding":
            s = (cfg.vocab_size, cfg.d_model)
        elif r.ours.endswith("rel_embedding"):
            s = (cfg.num_heads, 32)
        elif r.ours.endswith("logits_dense.kernel"):
            s = (cfg.d_model, cfg.vocab_size)
        elif r.ours.endswith("wo.kernel"):
            s = (cfg.mlp_dim, cfg.d_model)
        else:
            s = (cfg.d_model, cfg.mlp_dim)
        out[r.ours] = rng.normal(size=s).astype(np.float32)
    return out


def _target(params):
    return ci.unflatten({k: np.zeros(v.shape, np.float32) for k, v in params.items()})


def _assert_same(loaded, params):
    flat = ci.flatten(loaded)
    assert set(flat) == set(params)
    for k, v in params.items():
        np.testing.assert_array_equal(flat[k], v, err_msg=k)


def test_our_names_round_trip(tmp_path):
    params = tiny_params(TinyLlama())
    ci.export_safetensors(ci.unflatten(params), tmp_path / "ours.safetensors")
    _assert_same(ci.load_params(tmp_path / "ours.safetensors", _target(params)), params)


def test_llama_hf_names_round_trip_single_and_sharded(tmp_path):
    cfg = TinyLlama(tie_embeddings=False)
    params = tiny_params(cfg)
    out = tmp_path / "hf"
    ci.export_safetensors(ci.unflatten(params), out / "model.safetensors", names="hf", config=cfg)
    hf_cfg = json.loads((out / "config.json").read_text())
    assert hf_cfg["num_key_value_heads"] == 2 and hf_cfg["model_type"] == "llama"
    tensors = ci.read_safetensors(out / "model.safetensors")
    assert tensors["model.layers.0.self_attn.k_proj.weight"].shape == (2 * 8, 32)  # HF [out, in]
    assert tensors["model.layers.1.self_attn.o_proj.weight"].shape == (32, 4 * 8)
    _assert_same(ci.load_params(out, _target(params)), params)

    # Shard it the way transformers does: two files plus model.safetensors.index.json.
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    names = sorted(tensors)
    from safetensors.numpy import save_file

    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        shard = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: np.array(tensors[n]) for n in part}, str(sharded / shard))
        weight_map |= {n: shard for n in part}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (sharded / "config.json").write_text((out / "config.json").read_text())
    _assert_same(ci.load_params(sharded / "model.safetensors.index.json", _target(params)), params)


def test_t5_hf_names_round_trip(tmp_path):
    cfg = T5Config()
    params = tiny_t5_params(cfg)
    ci.export_safetensors(ci.unflatten(params), tmp_path / "model.safetensors", names="hf", config=cfg)
    hf_cfg = json.loads((tmp_path / "config.json").read_text())
    assert hf_cfg["feed_forward_proj"] == "gated-gelu_new" and hf_cfg["num_decoder_layers"] == 1
    tensors = ci.read_safetensors(tmp_path / "model.safetensors")
    rel = tensors["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    assert rel.shape == (32, 2)  # HF [buckets, heads]; T5X [heads, buckets]
    assert "decoder.block.0.layer.1.EncDecAttention.q.weight" in tensors
    _assert_same(ci.load_params(tmp_path, _target(params)), params)


def test_hf_extra_tensor_and_missing_config_are_errors(tmp_path):
    cfg = TinyLlama()
    params = tiny_params(cfg)
    ci.export_safetensors(ci.unflatten(params), tmp_path / "model.safetensors", names="hf", config=cfg)
    tensors = dict(ci.read_safetensors(tmp_path / "model.safetensors"))
    tensors["model.layers.7.mlp.gate_proj.weight"] = np.zeros((4, 4), np.float32)
    tensors.pop("model.norm.weight")
    from safetensors.numpy import save_file

    save_file({k: np.array(v) for k, v in tensors.items()}, str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError) as err:
        ci.load_params(tmp_path, _target(params))
    assert "1 missing: decoder_norm.scale" in str(err.value)
    assert "model.layers.7.mlp.gate_proj.weight (unrecognised source tensor)" in str(err.value)
    (tmp_path / "config.json").unlink()
    with pytest.raises(UserError, match="no config.json"):
        ci.read_hf_params(tmp_path / "model.safetensors")


def test_truncated_and_corrupt_safetensors(tmp_path):
    params = tiny_params(TinyLlama())
    path = tmp_path / "m.safetensors"
    ci.export_safetensors(ci.unflatten(params), path)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-100])
    with pytest.raises(UserError, match=r"cut.safetensors: truncated; tensor"):
        ci.load_params(tmp_path / "cut.safetensors", _target(params))
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(UserError, match="bad.safetensors: corrupt"):
        ci.read_safetensors(tmp_path / "bad.safetensors")


def test_bf16_safetensors_are_read(tmp_path):
    import ml_dtypes
    from safetensors.numpy import save_file

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    save_file({"a.kernel": x.astype(ml_dtypes.bfloat16)}, str(tmp_path / "b.safetensors"))
    out = ci.load_params(tmp_path / "b.safetensors", {"a": {"kernel": np.zeros((2, 3), np.float32)}})
    np.testing.assert_array_equal(out["a"]["kernel"], x)
    assert out["a"]["kernel"].dtype == np.float32


def test_t5x_msgpack_tensorstore_checkpoint(tmp_path):
    """The classic T5X layout: msgpack ``checkpoint`` with TensorStore specs (relative paths) for big arrays."""
    import tensorstore as ts
    from flax import serialization

    ckpt = tmp_path / "checkpoint_1000"
    ckpt.mkdir()
    kernel = np.random.default_rng(0).normal(size=(4, 2, 3)).astype(np.float32)
    rel = "target.encoder.layers_0.attention.query.kernel"
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": rel},
            "metadata": {"shape": list(kernel.shape), "chunks": list(kernel.shape), "dtype": "<f4",
                         "compressor": {"id": "gzip"}}}
    store = ts.open(dict(spec, kvstore={"driver": "file", "path": str(ckpt / rel)}), create=True).result()
    store.write(kernel).result()
    scale = np.linspace(0, 1, 4).astype(np.float32)
    state = {"version": 3, "state": {"step": 1000},
             "optimizer": {"target": {"encoder": {"layers_0": {"attention": {"query": {"kernel": spec}}},
                                                  "encoder_norm": {"scale": scale}}},
                           "state": {"param_states": {}}}}
    (ckpt / "checkpoint").write_bytes(serialization.msgpack_serialize(state))
    target = {"encoder": {"layers_0": {"attention": {"query": {"kernel": np.zeros((4, 6), np.float32)}}},
                          "encoder_norm": {"scale": np.zeros(4, np.float32)}}}
    out = ci.load_params(ckpt, target)
    np.testing.assert_array_equal(out["encoder"]["layers_0"]["attention"]["query"]["kernel"], kernel.reshape(4, 6))
    np.testing.assert_array_equal(out["encoder"]["encoder_norm"]["scale"], scale)
    (ckpt / "checkpoint").write_bytes(b"\xc1garbage")
    with pytest.raises(UserError, match="corrupt T5X checkpoint"):
        ci.load_params(ckpt, target)


def test_orbax_checkpoint_from_our_trainer(tmp_path):
    from fiat_jax.train.checkpoints import Checkpoints

    params = tiny_params(TinyLlama(num_layers=1))
    ckpts = Checkpoints(tmp_path, async_save=False)
    ckpts.save(3, {"params": ci.unflatten(params), "step": np.int32(3)}, meta={"note": "test"})
    ckpts.close()
    _assert_same(ci.load_params(tmp_path, _target(params), fmt="orbax"), params)
    _assert_same(ci.load_params(tmp_path / "checkpoints" / "3", _target(params)), params)
