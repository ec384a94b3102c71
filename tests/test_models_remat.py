"""Per-layer activation remat (none / full / save_dots) changes memory, never the maths: same loss and gradients."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fiat_jax.errors import UserError
from fiat_jax.models import build_model
from fiat_jax.models.decoder import DecoderConfig
from fiat_jax.models.t5 import T5Config

DEC = DecoderConfig(vocab_size=50, d_model=16, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32,
                    max_length=32)
T5 = T5Config(vocab_size=50, d_model=16, num_encoder_layers=2, num_decoder_layers=2, num_heads=2, head_dim=8,
              mlp_dim=32)


def _value_and_grads(cfg, batch):
    model = build_model(config=cfg, seed=0)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, rest):  # fresh Variables at this trace level, as the train step does
        m = nnx.merge(graphdef, params, jax.tree.map(lambda v: v, rest))
        return jnp.sum(jnp.square(m.logits_from_batch(batch, deterministic=False)))

    value, grads = jax.jit(jax.value_and_grad(loss))(params, rest)
    return float(value), jax.tree.leaves(grads)


@pytest.mark.parametrize("cfg", [DEC, T5], ids=["decoder", "t5"])
def test_remat_policies_give_the_same_loss_and_gradients(cfg):
    rng = np.random.default_rng(0)
    batch = {"decoder_input_tokens": jnp.asarray(rng.integers(1, 50, (2, 6)), jnp.int32),
             "encoder_input_tokens": jnp.asarray(rng.integers(1, 50, (2, 5)), jnp.int32)}
    want_v, want_g = _value_and_grads(cfg, batch)
    for remat in ("full", "save_dots"):
        v, g = _value_and_grads(dataclasses.replace(cfg, remat=remat), batch)
        np.testing.assert_allclose(v, want_v, rtol=1e-5)
        for a, b in zip(g, want_g):  # recomputation reorders nothing but may fuse differently: fp32 rounding
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_unknown_remat_policy_is_a_user_error():
    with pytest.raises(UserError, match="remat must be one of none, full, save_dots"):
        DecoderConfig(remat="everything")
    with pytest.raises(UserError, match="remat"):
        T5Config(remat="dots")


@pytest.mark.parametrize("cfg", [DEC, T5], ids=["decoder", "t5"])
@pytest.mark.parametrize("remat", ["none", "full"])
def test_layer_scan_gives_the_unrolled_loss_and_gradients(cfg, remat, monkeypatch):
    """FIAT_JAX_SCAN_LAYERS=1 runs the layers as one jax.lax.scan (a while loop in the program) with the same
    maths as the unrolled loop."""
    cfg = dataclasses.replace(cfg, remat=remat)
    rng = np.random.default_rng(1)
    batch = {"decoder_input_tokens": jnp.asarray(rng.integers(1, 50, (2, 6)), jnp.int32),
             "encoder_input_tokens": jnp.asarray(rng.integers(1, 50, (2, 5)), jnp.int32)}
    monkeypatch.setenv("FIAT_JAX_SCAN_LAYERS", "0")
    want_v, want_g = _value_and_grads(cfg, batch)
    monkeypatch.setenv("FIAT_JAX_SCAN_LAYERS", "1")
    v, g = _value_and_grads(cfg, batch)
    np.testing.assert_allclose(v, want_v, rtol=1e-5)
    for a, b in zip(g, want_g):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    model = build_model(config=cfg, seed=0)
    hlo = jax.jit(lambda b: model.logits_from_batch(b)).lower(batch).as_text()
    assert "while" in hlo
