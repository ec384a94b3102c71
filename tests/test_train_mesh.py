"""Partitioned training: a (2,2,2) mesh matches one device; checkpoints restore into a different mesh.

Meshes use every device at hand (conftest's 8 fake CPU devices, or a GPU host's own; see device_meshes)."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

import device_meshes as D
import test_train_helpers as H
from fiat_jax.train import checkpoints
from test_train_helpers import compilation_cache  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("compilation_cache")


def _params(model: nnx.Module) -> dict[str, jax.Array]:
    return {"/".join(names): leaf for names, leaf in checkpoints.leaf_paths(nnx.state(model, nnx.Param))}


def test_mesh_2x2x2_matches_one_device_for_20_steps(tmp_path):
    n = D.count()
    one = H.toy_train(str(tmp_path / "one"), 20, num_devices=1, checkpoint_every_steps=100)
    many = H.toy_train(str(tmp_path / "many"), 20, num_devices=n, mesh=D.spec(D.balanced(n)),
                       checkpoint_every_steps=100)
    a, b = _params(one.model), _params(many.model)
    if n > 1:
        sharded = [name for name, x in b.items()
                   if len(x.sharding.device_set) == n and not x.sharding.is_fully_replicated]
        assert len(sharded) > len(b) // 2, "parameters were not partitioned"
    for name in a:
        np.testing.assert_allclose(np.asarray(a[name]), np.asarray(b[name]), rtol=0, atol=1e-5, err_msg=name)


def test_checkpoint_from_mesh_8x1x1_restores_into_2x1x4(tmp_path):
    n, m = D.count(), D.model_split()
    model_dir = str(tmp_path / "run")
    H.toy_train(model_dir, 3, num_devices=n, mesh=D.spec((n, 1, 1)), batch_size=16)
    saved = H.final_params(model_dir)
    restored = H.toy_train(model_dir, 3, num_devices=n, mesh=D.spec((n // m, 1, m)), batch_size=16)
    assert restored.step == 3
    params = _params(restored.model)
    kernel = next(x for name, x in params.items() if name.endswith("wi"))
    assert kernel.sharding.mesh.shape == {"data": n // m, "fsdp": 1, "model": m}
    assert len(kernel.addressable_shards) == n
    if m > 1:
        assert kernel.sharding.spec[-1] == "model"
    assert kernel.addressable_shards[0].data.shape == (kernel.shape[0], kernel.shape[1] // m)
    for name, value in saved.items():
        np.testing.assert_array_equal(np.asarray(params[name]), value, err_msg=name)
