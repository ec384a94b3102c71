"""HF RoPE settings in both spellings (transformers 5 ``rope_parameters``, transformers 4 ``rope_theta`` /
``rope_scaling``): the right theta and Llama 3 scaling load, every other scaling is refused with one line.
The reference tests use configs written by transformers 5 itself and compare logits."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fiat_jax.errors import UserError
from fiat_jax.models import checkpoint_import as ci

BASE = {"model_type": "llama", "vocab_size": 96, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


def test_transformers5_rope_parameters_theta():
    config = ci.config_from_hf({**BASE, "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}})
    assert config.rope_theta == 500000.0 and config.rope_scaling is None


def test_transformers4_top_level_theta_and_default():
    assert ci.config_from_hf({**BASE, "rope_theta": 250000.0}).rope_theta == 250000.0
    assert ci.config_from_hf(BASE).rope_theta == 10000.0  # HF LlamaConfig's default


def test_llama3_scaling_in_both_spellings():
    new = ci.config_from_hf({**BASE, "rope_parameters": {**LLAMA3, "rope_theta": 500000.0}})
    old = ci.config_from_hf({**BASE, "rope_theta": 500000.0, "rope_scaling": LLAMA3})
    assert new == old
    assert new.rope_theta == 500000.0 and new.rope_scaling == (8.0, 1.0, 4.0, 64.0)


@pytest.mark.parametrize("settings,match", [
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}}, "rope_type 'yarn' is not supported"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_type 'linear' is not supported"),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, "rope_type 'dynamic' is not supported"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, "lacks low_freq_factor"),
    ({"rope_theta": 1e4, "rope_parameters": {"rope_theta": 5e5}}, "disagree"),
    ({"rope_parameters": {"rope_theta": 1e4, "partial_rotary_factor": 0.5}}, "partial_rotary_factor"),
    ({"rope_parameters": {"full_attention": {"rope_theta": 1e4}, "sliding_attention": {"rope_theta": 1e4}}},
     "per-layer-type"),
], ids=["yarn", "linear", "dynamic", "llama3-incomplete", "theta-conflict", "partial", "per-layer"])
def test_unsupported_rope_is_refused_in_one_line(settings, match):
    with pytest.raises(UserError, match=match) as err:
        ci.config_from_hf({**BASE, **settings})
    assert "\n" not in str(err.value)


def _save_hf(tmp_path, transformers, torch, **rope):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   rms_norm_eps=1e-5, tie_word_embeddings=False, **rope)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # sharp attention, so positions (and so RoPE) move the logits visibly
        for name, p in hf.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                p.normal_(0.0, 0.5)
    hf.save_pretrained(tmp_path)
    return hf


def _ours(path, **overrides):
    from fiat_jax.models import embedded

    config = ci.config_from_hf(path / "config.json")
    config = dataclasses.replace(config, **overrides)
    flat, unknown = ci.read_hf_params(path)
    assert unknown == []
    return config, embedded.build_model(config, ci.unflatten(flat), source=str(path))


def _logits(model, tokens):
    return np.asarray(model.logits_from_batch({"decoder_input_tokens": tokens}))


@pytest.mark.reference
@pytest.mark.parametrize("rope,want_scaling,ignored", [
    ({"rope_theta": 500000.0}, None, {"rope_theta": 10000.0}),
    ({"rope_parameters": {**LLAMA3, "rope_theta": 500000.0}}, (8.0, 1.0, 4.0, 64.0), {"rope_scaling": None}),
], ids=["theta-500k", "llama3"])
def test_transformers5_config_loads_with_matching_logits(tmp_path, rope, want_scaling, ignored):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = _save_hf(tmp_path, transformers, torch, **rope)
    written = (tmp_path / "config.json").read_text()
    assert '"rope_parameters"' in written  # the transformers-5 spelling, not top-level rope_theta
    config, model = _ours(tmp_path)
    assert config.rope_theta == 500000.0 and config.rope_scaling == want_scaling
    tokens = np.random.default_rng(0).integers(1, 96, size=(2, 40)).astype(np.int32)
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    got = _logits(model, tokens)
    print(f"ours vs transformers ({rope}): max |diff| {np.abs(got - want).max():.2e}")
    assert np.abs(got - want).max() < 1e-4
    # The setting mattered: the same weights with it ignored (theta 10000 / no scaling) compute other logits.
    _, plain = _ours(tmp_path, **ignored)
    assert np.abs(_logits(plain, tokens) - want).max() > 1e-2


@pytest.mark.reference
def test_transformers5_yarn_config_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    _save_hf(tmp_path, transformers, torch, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64})
    with pytest.raises(UserError, match="rope_type 'yarn' is not supported"):
        ci.config_from_hf(tmp_path / "config.json")
