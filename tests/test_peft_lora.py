"""LoRA transform: exact base reproduction with B = 0, merge, logical axes, dropout, bad input, HF-layout export."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fiat_jax import partitioning
from fiat_jax.errors import UserError
from fiat_jax.models import build_model
from fiat_jax.models.decoder import DecoderConfig
from fiat_jax.models.t5 import T5Config
from fiat_jax.peft import hf_adapter, lora, wrapper

DEC = DecoderConfig(vocab_size=128, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
                    max_length=64)
T5 = T5Config(vocab_size=128, d_model=32, num_encoder_layers=2, num_decoder_layers=2, num_heads=4, head_dim=8,
              mlp_dim=64)


def _batch(kind: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tok = rng.integers(1, 128, (2, 7)).astype(np.int32)
    if kind == "decoder":
        return {"decoder_input_tokens": tok, "decoder_causal_attention": (np.arange(7) < 3)[None].repeat(2, 0)
                .astype(np.int32)}
    return {"encoder_input_tokens": rng.integers(1, 128, (2, 5)).astype(np.int32), "decoder_input_tokens": tok}


def _randomise_b(model, seed: int = 1, scale: float = 0.2) -> None:
    for i, m in enumerate(lora.lora_modules(model).values()):
        key = jax.random.fold_in(jax.random.key(seed), i)
        m.lora_b.set_value(jax.random.normal(key, m.lora_b.shape, m.lora_b.dtype) * scale)


@pytest.mark.parametrize("cfg", [DEC, T5], ids=["llama", "t5"])
def test_zero_b_is_exact_and_merge_matches(cfg):
    kind = "decoder" if cfg is DEC else "t5"
    batch = _batch(kind)
    base = build_model(config=cfg, seed=0)
    ref = np.asarray(base.logits_from_batch(batch))
    model = lora.apply_lora(base, rank=4, alpha=8.0, include_mlp=True)
    assert isinstance(model, wrapper.PeftModel) and model.model_kind == base.model_kind and model.config == cfg
    n_attn = 4 * (cfg.num_layers if cfg is DEC else cfg.num_encoder_layers + 2 * cfg.num_decoder_layers)
    n_mlp = 3 * (cfg.num_layers if cfg is DEC else cfg.num_encoder_layers + cfg.num_decoder_layers)
    assert len(lora.lora_modules(model)) == n_attn + n_mlp
    np.testing.assert_array_equal(np.asarray(model.logits_from_batch(batch)), ref)  # bit-exact with B = 0
    _randomise_b(model)
    adapted = np.asarray(model.logits_from_batch(batch))
    assert np.abs(adapted - ref).max() > 1e-2
    merged = lora.merge(model)
    assert type(merged) is type(base) and not lora.lora_modules(merged)
    assert not jax.tree.leaves(nnx.state(merged, nnx.LoRAParam))
    np.testing.assert_allclose(np.asarray(merged.logits_from_batch(batch)), adapted, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(np.asarray(model.logits_from_batch(batch)), adapted)  # merge copied by default


def test_adapter_shapes_logical_axes_and_partitioning():
    model = lora.apply_lora(build_model(config=DEC, seed=0), rank=4, alpha=8.0)
    q = lora.lora_modules(model)["layers_0/attention/query"]
    o = lora.lora_modules(model)["layers_0/attention/out"]
    assert q.lora_a.shape == (32, 4) and q.lora_b.shape == (4, 4, 8)
    assert q.lora_a.get_metadata()["out_sharding"] == ("embed", "lora_rank")
    assert q.lora_b.get_metadata()["out_sharding"] == ("lora_rank", "heads", "kv")
    assert o.lora_a.shape == (4, 8, 4) and o.lora_a.get_metadata()["out_sharding"] == ("heads", "kv", "lora_rank")
    assert o.lora_b.get_metadata()["out_sharding"] == ("lora_rank", "embed")
    assert q.kernel.get_metadata()["out_sharding"] == ("embed", "heads", "kv")  # the base kernel kept its path
    paths = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert "model/layers_0/attention/query/kernel" in paths and "model/layers_0/attention/query/lora_a" in paths
    if jax.device_count() >= 8:
        mesh = partitioning.make_mesh("data=2,fsdp=2,model=2")
        sh = partitioning.param_shardings(nnx.state(model, nnx.LoRAParam), mesh)
        flat = {"/".join(map(str, p)): s for p, s in nnx.to_flat_state(sh)}
        assert tuple(flat["model/layers_0/attention/query/lora_b"].spec) == (None, "model", None)
        assert tuple(flat["model/layers_0/attention/query/lora_a"].spec) == ("fsdp", None)


def test_scale_rslora_and_dropout_only_when_training():
    assert lora.lora_scale(16, 4) == 4.0 and lora.lora_scale(16, 4, rslora=True) == 8.0
    batch = _batch("decoder")
    model = lora.apply_lora(build_model(config=DEC, seed=0), rank=4, alpha=8.0, dropout=0.5)
    _randomise_b(model)
    a = np.asarray(model.logits_from_batch(batch, deterministic=True))
    np.testing.assert_array_equal(a, np.asarray(model.logits_from_batch(batch, deterministic=True)))
    assert np.abs(np.asarray(model.logits_from_batch(batch, deterministic=False)) - a).max() > 1e-4
    np.testing.assert_array_equal(np.asarray(model(jnp.asarray(batch["decoder_input_tokens"]))),
                                  np.asarray(model.model(jnp.asarray(batch["decoder_input_tokens"]))))


def test_bad_input_raises_one_user_error():
    with pytest.raises(UserError, match="match no dense kernel"):
        lora.apply_lora(build_model(config=DEC, seed=0), targets=r".*attention/(qq|vv)/kernel")
    with pytest.raises(UserError, match="rank 40 exceeds layers_0/attention/key/kernel"):
        lora.apply_lora(build_model(config=DEC, seed=0), targets=r".*/key/kernel", rank=40)
    with pytest.raises(UserError, match="not a valid regex"):
        lora.lora_transform(targets="(")(build_model(config=DEC, seed=0))
    with pytest.raises(UserError, match="already has LoRA"):
        lora.apply_lora(lora.apply_lora(build_model(config=DEC, seed=0)))
    with pytest.raises(UserError, match="no LoRA adapters"):
        lora.merge(build_model(config=DEC, seed=0))


@pytest.mark.parametrize("cfg", [DEC, T5], ids=["llama", "t5"])
def test_export_load_roundtrip_in_hf_layout(tmp_path, cfg):
    kind = "decoder" if cfg is DEC else "t5"
    batch = _batch(kind)
    model = lora.apply_lora(build_model(config=cfg, seed=0), rank=4, alpha=8.0, rslora=True)
    _randomise_b(model)
    want = np.asarray(model.logits_from_batch(batch))
    out = hf_adapter.export_peft(model, tmp_path / "adapter", base_model_name_or_path="tiny")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0 and config["use_rslora"] is True
    from fiat_jax.models import checkpoint_import as ci

    tensors = ci.read_safetensors(out / "adapter_model.safetensors")
    if cfg is DEC:
        assert config["task_type"] == "CAUSAL_LM" and "model.layers.1.self_attn.o_proj" in config["target_modules"]
        assert tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, 32)
        assert tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].shape == (32, 4)
        assert tensors["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"].shape == (16, 4)
        assert tensors["base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight"].shape == (4, 32)
    else:
        assert config["task_type"] == "SEQ_2_SEQ_LM"
        assert "base_model.model.decoder.block.1.layer.1.EncDecAttention.o.lora_B.weight" in tensors
    fresh = build_model(config=cfg, seed=0)
    loaded = hf_adapter.load_peft(fresh, out)
    np.testing.assert_allclose(np.asarray(loaded.logits_from_batch(batch)), want, atol=1e-6, rtol=0)
    # into a model that already has adapters of the same rank: values replaced
    again = lora.apply_lora(build_model(config=cfg, seed=0), rank=4, alpha=8.0, rslora=True)
    np.testing.assert_allclose(np.asarray(hf_adapter.load_peft(again, out).logits_from_batch(batch)), want, atol=1e-6)


def test_load_refuses_other_rank_or_base(tmp_path):
    model = lora.apply_lora(build_model(config=DEC, seed=0), rank=4, alpha=8.0)
    out = hf_adapter.export_peft(model, tmp_path / "adapter")
    with pytest.raises(UserError, match="rank 4 .* has rank 2"):
        hf_adapter.load_peft(lora.apply_lora(build_model(config=DEC, seed=0), rank=2, alpha=4.0), out)
    other = DecoderConfig(**{**DEC.__dict__, "d_model": 48})
    with pytest.raises(UserError, match="another base model \\(hidden_size=32, this model has 48\\)"):
        hf_adapter.load_peft(build_model(config=other, seed=0), out)
    deeper = DecoderConfig(**{**DEC.__dict__, "num_layers": 1})
    (out / "adapter_model.safetensors").write_bytes(_strip_metadata(out / "adapter_model.safetensors"))
    with pytest.raises(UserError, match="model.layers.1.self_attn.*which this base model lacks"):
        hf_adapter.load_peft(build_model(config=deeper, seed=0), out)
    with pytest.raises(UserError, match="adapter_config.json not found"):
        hf_adapter.load_peft(build_model(config=DEC, seed=0), tmp_path)


def _strip_metadata(path) -> bytes:
    """The same tensors without our ``fiat_jax_base`` header entry (as HF peft would write them)."""
    from safetensors.numpy import load_file, save_file

    tmp = path.with_suffix(".plain")
    save_file(load_file(str(path)), str(tmp), metadata={"format": "pt"})
    return tmp.read_bytes()
