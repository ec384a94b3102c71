"""Our T5 and Llama logits == HF transformers' PyTorch models with the same random weights (fp32, CPU).

transformers writes the safetensors + config.json; we import them with ``config_from_hf`` + ``load_params``.
Needs the ``reference`` extra (torch, transformers); skipped cleanly without it.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.reference


def _ours(path):
    pytest.importorskip("fiat_jax.models.decoder")
    pytest.importorskip("fiat_jax.models.t5")
    from fiat_jax.models import checkpoint_import as ci, embedded

    config = ci.config_from_hf(path / "config.json")
    flat, unknown = ci.read_hf_params(path)
    assert unknown == []
    return embedded.build_model(config, ci.unflatten(flat), source=str(path))


def test_llama_logits_match_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # random norms too, so a wrong scale mapping cannot hide
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    hf.save_pretrained(tmp_path)
    tokens = np.random.default_rng(0).integers(1, 96, size=(2, 12)).astype(np.int32)
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    model = _ours(tmp_path)
    got = np.asarray(model.logits_from_batch({"decoder_input_tokens": tokens, "decoder_target_tokens": tokens,
                                              "decoder_loss_weights": np.ones_like(tokens)}))
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-4


def test_t5_logits_match_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.T5Config(vocab_size=80, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
                                   num_heads=4, relative_attention_num_buckets=32,
                                   relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
                                   tie_word_embeddings=False, dropout_rate=0.0, decoder_start_token_id=0,
                                   pad_token_id=0, eos_token_id=1)
    hf = transformers.T5ForConditionalGeneration(hf_cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "layer_norm" in name:
                p.uniform_(0.5, 1.5)
    hf.save_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    enc = rng.integers(2, 80, size=(2, 10)).astype(np.int32)
    tgt = rng.integers(2, 80, size=(2, 7)).astype(np.int32)
    dec = np.concatenate([np.zeros((2, 1), np.int32), tgt[:, :-1]], axis=1)
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(enc, dtype=torch.long),
                  decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy()
    model = _ours(tmp_path)
    got = np.asarray(model.logits_from_batch({"encoder_input_tokens": enc, "decoder_input_tokens": dec,
                                              "decoder_target_tokens": tgt,
                                              "decoder_loss_weights": np.ones_like(tgt)}))
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-4


@pytest.mark.slow
def test_smollm2_gguf_logits_match_transformers_gguf_loader():
    """transformers' GGUF loader (its own dequantiser and q/k un-permutation) gives the same logits as ours."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("fiat_jax.models.decoder")
    from fiat_jax.models import embedded

    path = embedded.embedded_gguf_path()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                          dtype=torch.float32).eval()
    pre = embedded.load_embedded()
    tokens = np.asarray([pre.vocabulary.encode("The capital of France is Paris, and the capital of Italy")],
                        np.int32)
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    got = np.asarray(pre.build_model().logits_from_batch({"decoder_input_tokens": tokens,
                                                          "decoder_target_tokens": tokens,
                                                          "decoder_loss_weights": np.ones_like(tokens)}))
    assert np.abs(got - want).max() < 2e-3 * np.abs(want).max()
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.95
