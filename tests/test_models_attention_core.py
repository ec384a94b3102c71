"""The hand-written attention backward against autodiff of the textbook formula (repeated K/V heads, softmax)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fiat_jax.models import attention_core, layers


def reference_attention(q, k, v, mask=None, bias=None):
    g = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = jnp.where(mask, logits, attention_core.NEG_INF)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)


def _inputs(b=2, tq=5, tk=5, h=6, kvh=2, d=8, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    return (jax.random.normal(ks[0], (b, tq, h, d)), jax.random.normal(ks[1], (b, tk, kvh, d)),
            jax.random.normal(ks[2], (b, tk, kvh, d)), jax.random.normal(ks[3], (b, tq, h, d)))


def _grads(fn, q, k, v, probe, bias=None):
    def loss(q, k, v, bias):
        return jnp.sum(fn(q, k, v, bias) * probe)
    return jax.grad(loss, argnums=(0, 1, 2, 3) if bias is not None else (0, 1, 2))(q, k, v, bias)


@pytest.mark.parametrize("heads, kv_heads", [(6, 2), (4, 4), (3, 1)])
def test_causal_gqa_forward_and_gradients_match_autodiff(heads, kv_heads):
    q, k, v, probe = _inputs(h=heads, kvh=kv_heads)
    idx = jnp.arange(q.shape[1])
    mask = layers.causal_mask(idx, idx)
    ours = lambda q, k, v, _: attention_core.grouped_query_attention(q, k, v, mask=mask)  # noqa: E731
    ref = lambda q, k, v, _: reference_attention(q, k, v, mask=mask)  # noqa: E731
    np.testing.assert_allclose(ours(q, k, v, None), ref(q, k, v, None), atol=1e-5)
    for got, want in zip(_grads(ours, q, k, v, probe), _grads(ref, q, k, v, probe)):
        np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("bias_batch", [1, 2])
def test_trained_bias_and_padding_mask_gradients_match_autodiff(bias_batch):
    """T5: a per-head relative-position bias (broadcast over the batch or not) plus a key padding mask, with a
    cross-attention length Tk != Tq."""
    q, k, v, probe = _inputs(tq=4, tk=7, h=4, kvh=4)
    bias = jax.random.normal(jax.random.key(9), (bias_batch, 4, 4, 7))
    valid = jnp.array([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]], bool)
    mask = valid[:, None, None, :]
    ours = lambda q, k, v, bias: attention_core.grouped_query_attention(q, k, v, mask=mask, bias=bias)  # noqa
    ref = lambda q, k, v, bias: reference_attention(q, k, v, mask=mask, bias=bias)  # noqa: E731
    np.testing.assert_allclose(ours(q, k, v, bias), ref(q, k, v, bias), atol=1e-5)
    got, want = _grads(ours, q, k, v, probe, bias), _grads(ref, q, k, v, probe, bias)
    assert got[3].shape == bias.shape
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-4)


def test_fully_masked_rows_stay_finite_in_both_passes():
    q, k, v, probe = _inputs()
    mask = jnp.zeros((2, 1, 5, 5), bool).at[1].set(True)  # first example: nothing may be attended (left padding)
    out = attention_core.grouped_query_attention(q, k, v, mask=mask)
    grads = _grads(lambda q, k, v, _: attention_core.grouped_query_attention(q, k, v, mask=mask), q, k, v, probe)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in (out, *grads))


def test_bfloat16_compute_stays_close_to_float32():
    q, k, v, _ = _inputs()
    idx = jnp.arange(5)
    mask = layers.causal_mask(idx, idx)
    out = attention_core.grouped_query_attention(q, k, v, mask=mask, dtype=jnp.bfloat16)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), reference_attention(q, k, v, mask=mask), atol=5e-2)

