"""Prompt tuning: the soft prompt reaches training, scoring and KV-cache generation the same way."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fiat_jax.errors import UserError
from fiat_jax.models import build_model, decoding
from fiat_jax.models.decoder import DecoderConfig
from fiat_jax.models.t5 import T5Config
from fiat_jax.peft import lora, prompt_tuning, trainable

DEC = DecoderConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
                    max_length=64)
T5 = T5Config(vocab_size=64, d_model=32, num_encoder_layers=2, num_decoder_layers=2, num_heads=4, head_dim=8,
              mlp_dim=64)
PROMPTS = [[5, 6, 7, 9, 11], [8, 9]]


def _model(cfg, length=3, lora_too=False):
    model = build_model(config=cfg, seed=0)
    if lora_too:
        model = lora.apply_lora(model, rank=2)
        for m in lora.lora_modules(model).values():
            m.lora_b.set_value(jnp.full(m.lora_b.shape, 0.05, m.lora_b.dtype))
    return prompt_tuning.apply_prompt(model, length=length, init="random", seed=1)


def _jitted_logits(model):
    """``logits_from_batch`` of ``model`` under one jit (fixed shapes below keep it to one compile)."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda batch: nnx.merge(graphdef, state).logits_from_batch(batch))


def _greedy_uncached(model, prompt: list[int], n: int, *, prefix: bool, width: int = 16) -> list[int]:
    """Greedy continuation recomputing the whole (right-padded) sequence each step, no KV cache."""
    fn = _jitted_logits(model)
    seq = list(prompt)
    for _ in range(n):
        tok = np.zeros((1, width), np.int32)
        tok[0, :len(seq)] = seq
        batch = {"decoder_input_tokens": tok}
        if prefix:
            batch["decoder_causal_attention"] = (np.arange(width) < len(prompt))[None].astype(np.int32)
        seq.append(int(np.argmax(np.asarray(fn(batch))[0, len(seq) - 1])))
    return seq[len(prompt):]


@pytest.mark.parametrize("prefix", [False, True], ids=["causal", "prefix_lm"])
def test_decoder_generate_with_prompt_matches_uncached(prefix):
    model = _model(DEC, lora_too=True)
    out = decoding.generate(model, PROMPTS, max_new_tokens=4, prefix_bidirectional=prefix).tokens
    for i, p in enumerate(PROMPTS):
        assert out[i].tolist() == _greedy_uncached(model, p, 4, prefix=prefix), i
    # the prompt matters: the bare model continues differently
    bare = decoding.generate(model.model, PROMPTS, max_new_tokens=4).tokens
    assert not np.array_equal(bare, decoding.generate(model, PROMPTS, max_new_tokens=4).tokens)


def test_decoder_score_with_prompt_matches_logits_from_batch():
    model = _model(DEC)
    targets = [[3, 4], [10]]
    got = decoding.score(model, PROMPTS, targets)
    for i, (p, t) in enumerate(zip(PROMPTS, targets)):
        seq = np.asarray([p + t], np.int32)
        lp = np.asarray(jax.nn.log_softmax(model.logits_from_batch({"decoder_input_tokens": seq}), axis=-1))
        want = sum(lp[0, len(p) - 1 + j, tok] for j, tok in enumerate(t))
        np.testing.assert_allclose(got[i], want, atol=1e-4)


def test_t5_generate_and_score_with_prompt():
    model = _model(T5, lora_too=True)
    out = decoding.generate(model, PROMPTS, max_new_tokens=3).tokens
    fn = _jitted_logits(model)
    for i, p in enumerate(PROMPTS):
        dec = [0]
        for _ in range(3):
            enc, din = np.zeros((1, 8), np.int32), np.zeros((1, 4), np.int32)
            enc[0, :len(p)], din[0, :len(dec)] = p, dec
            logits = np.asarray(fn({"encoder_input_tokens": enc, "decoder_input_tokens": din}))
            dec.append(int(np.argmax(logits[0, len(dec) - 1])))
        assert out[i].tolist() == dec[1:], i
    scores = decoding.score(model, PROMPTS, [[3, 4], [10]])
    enc = np.zeros((1, 8), np.int32)
    enc[0, :2] = PROMPTS[1]
    lp = jax.nn.log_softmax(fn({"encoder_input_tokens": enc, "decoder_input_tokens": np.zeros((1, 4), np.int32)}))
    np.testing.assert_allclose(scores[1], float(lp[0, 0, 10]), atol=1e-4)  # the prompt is in the scored encoder


def test_prompt_init_and_metadata():
    model = build_model(config=DEC, seed=0)
    emb = np.asarray(model.token_embedder.embedding.get_value())
    p = prompt_tuning.apply_prompt(model, length=5, init="text", token_ids=[3, 4])
    np.testing.assert_array_equal(np.asarray(p.soft_prompt.get_value()), emb[[3, 4, 3, 4, 3]])
    assert isinstance(p.soft_prompt, prompt_tuning.PromptParam)
    assert p.soft_prompt.get_metadata()["out_sharding"] == ("prompt_len", "embed")
    v = prompt_tuning.initial_prompt(build_model(config=DEC, seed=0), length=4, init="vocab", vocab_sample_size=10)
    rows = {tuple(r) for r in np.asarray(v)}
    assert rows <= {tuple(r) for r in emb[1:10]}
    assert len(jnp.asarray(nnx.state(p, trainable.peft_filter(mode="prompt"))["soft_prompt"].get_value())) == 5
    with pytest.raises(UserError, match="already has a soft prompt"):
        prompt_tuning.apply_prompt(p, length=2)
    with pytest.raises(UserError, match="needs prompt_transform.text"):
        prompt_tuning.prompt_transform(length=2, init="text")(build_model(config=DEC, seed=0))
    with pytest.raises(UserError, match="choose one of"):
        prompt_tuning.prompt_transform(init="zeros")
