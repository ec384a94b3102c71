"""The tiny Llama and tiny T5 of gin_configs/models/ give the same logits sharded on 8 devices (fully sharded and
tensor parallel) as unsharded, and every parameter really is split the way the rules say."""

from __future__ import annotations

import functools

import gin
import jax
import numpy as np
import pytest
from flax import nnx

from fiat_jax import gin_utils, partitioning

MESHES = ["data=2,fsdp=4", "data=2,model=4", "fsdp=8", "model=8"]
# The default run covers tensor parallelism on the Llama and full sharding on T5; the rest is behind `slow`.
FAST = {("tiny_decoder", "data=2,model=4"), ("tiny_t5", "data=2,fsdp=4")}
CASES = [pytest.param(m, spec, marks=() if (m, spec) in FAST else pytest.mark.slow, id=f"{m}-{spec}")
         for m in ("tiny_decoder", "tiny_t5") for spec in MESHES]


def _config(name: str):
    gin.add_config_file_search_path(str(gin_utils.DEFAULT_GIN_DIR))
    gin.parse_config_file(str(gin_utils.DEFAULT_GIN_DIR / "models" / f"{name}.gin"))
    from fiat_jax.models.decoder import DecoderConfig
    from fiat_jax.models.t5 import T5Config

    config = DecoderConfig() if name == "tiny_decoder" else T5Config()
    gin.clear_config()
    return config


def _batch(kind: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    b, t = 8, 16
    if kind == "decoder":
        causal = (np.arange(t)[None] < rng.integers(2, 9, size=(b, 1))).astype(np.int32)
        return {"decoder_input_tokens": rng.integers(2, 259, (b, t), dtype=np.int32),
                "decoder_causal_attention": causal}
    enc = rng.integers(2, 259, (b, 12), dtype=np.int32)
    enc[:, 9:] = 0  # padding
    return {"encoder_input_tokens": enc, "decoder_input_tokens": rng.integers(2, 259, (b, t), dtype=np.int32)}


@functools.lru_cache(maxsize=2)
def reference(name: str):
    """``(factory, batch, unsharded logits)`` of a model gin."""
    from fiat_jax.models import build_model

    gin.clear_config()
    config = _config(name)
    factory = lambda: build_model(config=config, seed=0)  # noqa: E731
    model = partitioning.create_model(factory)
    kind = "decoder" if name == "tiny_decoder" else "encoder_decoder"
    batch = _batch(kind)
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, b: nnx.merge(graphdef, s).logits_from_batch(b))
    return factory, batch, np.asarray(fwd(state, batch))


@pytest.mark.parametrize("name,mesh_spec", CASES)
def test_sharded_forward_equals_unsharded(name, mesh_spec):
    if jax.device_count() != 8:  # these meshes are written for conftest's 8 fake CPU devices
        pytest.skip(f"needs 8 devices for {mesh_spec}, {jax.device_count()} here")
    factory, batch, want = reference(name)
    mesh = partitioning.make_mesh(mesh_spec)
    model = partitioning.create_model(factory, mesh=mesh)
    graphdef, state = nnx.split(model)
    shardings = partitioning.param_shardings(state, mesh)
    # Every parameter is placed as the rules say, and the matrices are actually split over the 8 devices.
    replicated = []
    for path, var in jax.tree_util.tree_leaves_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        value = var.get_value()
        where = partitioning.path_str(path)
        assert value.sharding.is_equivalent_to(partitioning.param_shardings(
            nnx.State({"x": var}), mesh)["x"], value.ndim), where
        if value.ndim >= 2 and len(value.sharding.device_set) == 8 and value.sharding.is_fully_replicated:
            replicated.append(where)
    # Only what cannot divide stays whole: 4 KV heads on model=8, T5's [heads, buckets] biases on fsdp meshes.
    allowed = ("relpos_bias/rel_embedding",) + (("attention/key/kernel", "attention/value/kernel")
                                                 if mesh.shape["model"] == 8 else ())
    assert all(w.endswith(allowed) for w in replicated), replicated
    batch_sharding = partitioning.batch_sharding(mesh)
    fwd = jax.jit(lambda s, b: nnx.merge(graphdef, s).logits_from_batch(b),
                  in_shardings=(shardings, batch_sharding))
    with jax.set_mesh(mesh):
        got = fwd(state, {k: jax.device_put(v, batch_sharding) for k, v in batch.items()})
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=2e-5)
