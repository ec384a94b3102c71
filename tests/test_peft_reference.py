"""Our LoRA adapters <-> HF peft on transformers' LlamaForCausalLM: same logits both ways (fp32, CPU).

transformers writes the base weights; we import them with ``checkpoint_import``; the adapter crosses in the HF
peft layout (``adapter_model.safetensors`` + ``adapter_config.json``). Needs the ``reference`` extra.
"""

from __future__ import annotations

import numpy as np
import pytest

from fiat_jax.peft import hf_adapter, lora

pytestmark = pytest.mark.reference

TARGETS = r".*(attention/(query|key|value|out)|mlp/(wi_0|wo))/kernel"


def _hf_base(tmp_path, transformers, torch):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path / "base")
    return hf


def _ours(path):
    from fiat_jax.models import checkpoint_import as ci, embedded

    config = ci.config_from_hf(path / "config.json")
    flat, unknown = ci.read_hf_params(path)
    assert unknown == []
    return embedded.build_model(config, ci.unflatten(flat), source=str(path))


def _logits(model, tokens):
    return np.asarray(model.logits_from_batch({"decoder_input_tokens": tokens}))


@pytest.mark.parametrize("rslora", [False, True])
def test_exported_adapter_loads_into_hf_peft(tmp_path, rslora):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    hf = _hf_base(tmp_path, transformers, torch)
    model = lora.apply_lora(_ours(tmp_path / "base"), targets=TARGETS, rank=4, alpha=8.0, rslora=rslora)
    rng = np.random.default_rng(1)
    for m in lora.lora_modules(model).values():
        m.lora_b.set_value(rng.normal(0, 0.2, m.lora_b.shape).astype(np.float32))
    hf_adapter.export_peft(model, tmp_path / "adapter")
    tokens = rng.integers(1, 96, size=(2, 12)).astype(np.int32)
    got = _logits(model, tokens)
    hf_peft = peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    assert len([n for n, _ in hf_peft.named_parameters() if "lora_A" in n]) == len(lora.lora_modules(model))
    with torch.no_grad():
        want = hf_peft(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    print(f"ours vs HF peft (rslora={rslora}): max |diff| {np.abs(got - want).max():.2e}")
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(got - _logits(_ours(tmp_path / "base"), tokens)).max() > 1e-2  # the adapter mattered


def test_hf_peft_adapter_loads_into_ours(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    hf = _hf_base(tmp_path, transformers, torch)
    config = peft.LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"],
                             lora_dropout=0.0, init_lora_weights=False)  # random A and B
    hf_peft = peft.get_peft_model(hf, config).eval()
    hf_peft.save_pretrained(str(tmp_path / "hf_adapter"))
    tokens = np.random.default_rng(2).integers(1, 96, size=(2, 12)).astype(np.int32)
    with torch.no_grad():
        want = hf_peft(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    model = hf_adapter.load_peft(_ours(tmp_path / "base"), tmp_path / "hf_adapter")
    assert "layers_1/mlp/wi_1" in lora.lora_modules(model) and len(lora.lora_modules(model)) == 10
    print(f"HF peft adapter in ours: max |diff| {np.abs(_logits(model, tokens) - want).max():.2e}")
    assert np.abs(_logits(model, tokens) - want).max() < 1e-4
