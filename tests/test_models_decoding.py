"""KV-cache decoding == full recomputation, left-padding invariance, sampling modes, scoring (tiny models)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fiat_jax.models import build_model, decoding
from fiat_jax.models.decoder import DecoderConfig
from fiat_jax.models.t5 import T5Config

V = 97


def tiny_decoder(**kw):
    cfg = DecoderConfig(vocab_size=V, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                        mlp_dim=64, rope_theta=10000.0, tie_embeddings=False, embedding_init_std=1.0, **kw)
    return build_model(config=cfg, seed=0)


def tiny_t5(**kw):
    cfg = T5Config(vocab_size=V, d_model=32, num_encoder_layers=2, num_decoder_layers=2, num_heads=4, head_dim=8,
                   mlp_dim=64, relative_attention_num_buckets=8, relative_attention_max_distance=16, **kw)
    return build_model(config=cfg, seed=1)


@pytest.fixture(scope="module")
def dec():
    return tiny_decoder()


@pytest.fixture(scope="module")
def t5():
    return tiny_t5()


PROMPTS = [[5, 17, 33, 2, 8], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50], [9]]


def _full_recompute_decoder(model, prompt, steps):
    """Greedy decoding without a cache: a full causal forward per step. The sequence is right-padded to its final
    length so one compiled shape serves every step (a causal model's logits at t ignore later positions)."""
    fwd = jax.jit(lambda toks: model(toks))
    seq = np.zeros((1, len(prompt) + steps), np.int32)
    seq[0, :len(prompt)] = prompt
    for t in range(len(prompt), len(prompt) + steps):
        logits = fwd(jnp.asarray(seq))
        seq[0, t] = int(jnp.argmax(logits[0, t - 1]))
    return seq[0, len(prompt):].tolist()


def _full_recompute_t5(model, prompt, steps):
    """As above for T5: the whole encoder and a right-padded decoder input recomputed every step."""
    fwd = jax.jit(lambda enc, dec: model(enc, dec))
    out = np.zeros((1, steps + 1), np.int32)  # decoder input: BOS (0) then the tokens so far
    for t in range(steps):
        logits = fwd(jnp.asarray([prompt], jnp.int32), jnp.asarray(out))
        out[0, t + 1] = int(jnp.argmax(logits[0, t]))
    return out[0, 1:].tolist()


def test_decoder_cache_matches_full_recompute_and_left_padding(dec):
    steps = 32
    got = decoding.generate(dec, PROMPTS, max_new_tokens=steps)
    assert got.tokens.shape == (3, steps)
    for i, p in enumerate(PROMPTS):
        want = _full_recompute_decoder(dec, p, steps)
        assert got.tokens[i].tolist() == want, i
        # the same prompt alone (no left padding at all) gives the same tokens
        alone = decoding.generate(dec, [p], max_new_tokens=steps)
        assert alone.tokens[0].tolist() == want


def test_t5_cache_matches_full_recompute(t5):
    steps = 32
    got = decoding.generate(t5, PROMPTS, max_new_tokens=steps)
    for i, p in enumerate(PROMPTS):
        assert got.tokens[i].tolist() == _full_recompute_t5(t5, p, steps), i


def test_eos_stops_and_pads(dec):
    free = decoding.generate(dec, PROMPTS[:1], max_new_tokens=12).tokens[0]
    eos = int(free[3])
    first = free.tolist().index(eos)
    res = decoding.generate(dec, PROMPTS[:1], max_new_tokens=12, eos_id=eos)
    assert res.lengths[0] == first
    assert res.tokens[0, :first + 1].tolist() == free[:first + 1].tolist()
    assert (res.tokens[0, first + 1:] == 0).all()


def test_sampling_modes(dec):
    greedy = decoding.generate(dec, PROMPTS, max_new_tokens=8).tokens
    k1 = decoding.generate(dec, PROMPTS, max_new_tokens=8, temperature=1.0, top_k=1, rng=jax.random.key(3)).tokens
    np.testing.assert_array_equal(k1, greedy)
    p0 = decoding.generate(dec, PROMPTS, max_new_tokens=8, temperature=0.7, top_p=1e-6, rng=jax.random.key(4))
    np.testing.assert_array_equal(p0.tokens, greedy)
    hot = [decoding.generate(dec, PROMPTS, max_new_tokens=8, temperature=5.0, rng=jax.random.key(s)).tokens
           for s in (0, 1)]
    assert not np.array_equal(hot[0], hot[1])  # real sampling differs with the key
    again = decoding.generate(dec, PROMPTS, max_new_tokens=8, temperature=5.0, rng=jax.random.key(0)).tokens
    np.testing.assert_array_equal(again, hot[0])


def test_sample_logits_top_p_keeps_nucleus():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    draws = {int(decoding.sample_logits(logits, jax.random.key(s), greedy=False, temperature=jnp.float32(1.0),
                                        top_k=None, top_p=jnp.float32(0.7))[0]) for s in range(40)}
    assert draws == {0, 1}
    draws = {int(decoding.sample_logits(logits, jax.random.key(s), greedy=False, temperature=jnp.float32(1.0),
                                        top_k=3, top_p=None)[0]) for s in range(60)}
    assert draws == {0, 1, 2}


def test_callback_streams_each_step(dec):
    seen = []
    res = decoding.generate(dec, PROMPTS[:2], max_new_tokens=6, callback=lambda t: seen.append(t.copy()))
    assert len(seen) == 6
    np.testing.assert_array_equal(np.stack(seen, axis=1), res.tokens)


def test_compiles_once_per_bucket(dec):
    decoding.generate(dec, [[1, 2, 3]], max_new_tokens=4)
    before = decoding._generate_jit._cache_size()
    decoding.generate(dec, [[4, 5, 6, 7, 8]], max_new_tokens=4)  # same length bucket (8), same batch
    assert decoding._generate_jit._cache_size() == before


@pytest.mark.parametrize("kind", ["decoder", "t5"])
def test_score_equals_manual_log_softmax(kind, dec, t5):
    model = dec if kind == "decoder" else t5
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13]]
    targets = [[20, 21], [30, 31, 32, 33]]
    got = decoding.score(model, prompts, targets)
    for i, (p, t) in enumerate(zip(prompts, targets)):
        if kind == "decoder":
            logits = model(jnp.asarray([p + t], jnp.int32))[0, len(p) - 1:-1]
        else:
            logits = model(jnp.asarray([p], jnp.int32), jnp.asarray([[0] + t[:-1]], jnp.int32))[0]
        lp = jax.nn.log_softmax(logits, axis=-1)
        want = float(sum(lp[j, tok] for j, tok in enumerate(t)))
        assert abs(got[i] - want) < 1e-4 * max(1.0, abs(want)), (i, got[i], want)


def _prefill_logit_shapes(model, prompts, steps):
    """Every ``[batch, length>1, vocab]`` array in the compiled generation program (the prefill's full logits)."""
    import re

    from flax import nnx

    tokens, mask = decoding._pack(prompts, len(prompts), 16, left=True)
    graphdef, state = nnx.split(model)
    text = decoding._generate_jit.lower(
        graphdef, state, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0), jnp.float32(1e-6),
        jnp.float32(1.0), jnp.int32(-1), jnp.int32(0), max_new_tokens=steps, greedy=True, top_k=None,
        use_top_p=False, has_eos=False, has_callback=False, prefix_bidirectional=False).as_text()
    return [m for m in re.findall(r"tensor<(\d+)x(\d+)x(\d+)x", text) if m[1] != "1" and m[2] == str(V)]


def test_prefill_applies_the_lm_head_at_the_last_position_only(dec):
    assert _prefill_logit_shapes(dec, PROMPTS, 4) == []


def test_lora_decoder_greedy_generation_matches_full_recompute():
    """LoRA on every projection and the LM head (adapters made non-zero): the prefill's head-on-last-position path
    goes through the PEFT wrapper and still reproduces full recomputation token for token."""
    from flax import nnx

    from fiat_jax.peft import lora

    model = lora.apply_lora(tiny_decoder(), targets=".*", rank=2, seed=3)
    adapters = [var for _, var in nnx.iter_graph(model) if isinstance(var, nnx.LoRAParam)]
    assert len(adapters) > 4
    for i, var in enumerate(adapters):
        var.set_value(jax.random.normal(jax.random.key(i), var.get_value().shape) * 0.3)
    steps = 12
    got = decoding.generate(model, PROMPTS, max_new_tokens=steps)
    for i, p in enumerate(PROMPTS):
        assert got.tokens[i].tolist() == _full_recompute_decoder(model, p, steps), i


def test_score_applies_the_lm_head_at_target_positions_only(dec):
    """Scoring a short target after a long prompt forms logits for the target's slots, not for every slot."""
    import re

    prompts, targets = [[5] * 40, [6] * 3], [[7, 8], [9]]
    got = decoding.score(dec, prompts, targets)
    logits = dec(jnp.asarray([prompts[0] + targets[0]], jnp.int32))[0]
    want = sum(float(jax.nn.log_softmax(logits[39 + j])[t]) for j, t in enumerate(targets[0]))
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5)
    args, kwargs = _score_args(dec, prompts, targets)
    text = decoding._score_jit.lower(*args, **kwargs).as_text()
    assert not [m for m in re.findall(r"tensor<(\d+)x(\d+)x(\d+)x", text) if m[1] == "64" and m[2] == str(V)]


def _score_args(model, prompts, targets):
    """What ``decoding.score`` passes to its jitted program (captured by wrapping the jit once)."""
    captured = {}
    real = decoding._score_jit

    class _Capture:
        def __call__(self, *args, **kwargs):
            captured["args"], captured["kwargs"] = args, kwargs
            return real(*args, **kwargs)

    decoding._score_jit = _Capture()
    try:
        decoding.score(model, prompts, targets)
    finally:
        decoding._score_jit = real
    return captured["args"], captured["kwargs"]
