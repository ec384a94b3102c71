"""Chunked LM head + cross-entropy with the loss on every position (the full path): the same sums and gradients as
one ``[B*T, V]`` head call, while the compiled program never holds more than ``[chunk, V]`` logits."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fiat_jax.train import losses

B, T, D, V = 3, 10, 4, 211


def _inputs():
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(D, V)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
    weights = jnp.ones((B, T), jnp.int32).at[0, :3].set(0)
    return hidden, kernel, targets, weights


def _loss(chunk, max_positions=None):
    def f(hidden, kernel, targets, weights):
        sums = losses.head_cross_entropy_sums(hidden, lambda h: h @ kernel, targets, weights,
                                              max_positions=max_positions, z_loss=1e-3, chunk_size=chunk)
        return sums["loss"], sums
    return f


@pytest.mark.parametrize("max_positions", [None, B * T])
def test_chunked_full_path_matches_one_head_call(max_positions):
    args = _inputs()
    (ref, ref_sums), ref_g = jax.value_and_grad(_loss(None), argnums=(0, 1), has_aux=True)(*args)
    (got, sums), g = jax.value_and_grad(_loss(7, max_positions), argnums=(0, 1), has_aux=True)(*args)
    for k in ("loss", "cross_entropy", "z_loss", "correct", "weight"):
        np.testing.assert_allclose(float(sums[k]), float(ref_sums[k]), rtol=2e-5, atol=1e-6, err_msg=k)
    for a, b in zip(g, ref_g):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_chunked_full_path_never_forms_all_logits():
    text = jax.jit(jax.grad(lambda *a: _loss(7)(*a)[0], argnums=1)).lower(*_inputs()).as_text()
    shapes = {m for m in re.findall(r"tensor<([\dx]+)xf32>", text) if m.endswith(f"x{V}")}
    assert shapes and all(int(s.split("x")[0]) <= 7 for s in shapes if s.count("x") == 1), shapes
    assert f"{B}x{T}x{V}" not in shapes and f"{B * T}x{V}" not in shapes, shapes
