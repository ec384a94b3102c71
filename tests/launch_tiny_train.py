"""A tiny pure-JAX training loop for the multi-host test (run as a script, one copy per process).

It uses the real multi-host path — ``partitioning.initialize_distributed()`` from FIAT_* variables, a global
``fsdp`` mesh over every process's devices, parameters sharded by their logical names, a batch assembled from
per-process shards — so one process with 2 devices and two processes with 1 device each must train identically.
Written against jax directly because fiat_jax.train was not ready when the launch tests were written.

    python tests/launch_tiny_train.py --out=/tmp/result.json [--steps=20]
"""
import argparse
import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    from fiat_jax import partitioning

    distributed = partitioning.initialize_distributed()
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding

    mesh = partitioning.make_mesh("fsdp=-1")
    logical = {"w1": ("embed", "mlp"), "b1": ("mlp",), "w2": ("mlp", "embed")}
    shardings = {k: NamedSharding(mesh, partitioning.logical_to_mesh_axes(v)) for k, v in logical.items()}
    batch_sharding = partitioning.batch_sharding(mesh)
    d, h, batch = 8, 16, 16

    def init():
        k1, k2 = jax.random.split(jax.random.PRNGKey(0))
        return {"w1": jax.random.normal(k1, (d, h)) * 0.3, "b1": jnp.zeros((h,)),
                "w2": jax.random.normal(k2, (h, d)) * 0.3}

    params = jax.jit(init, out_shardings=shardings)()
    target = np.random.default_rng(123).normal(size=(d, d)).astype(np.float32)

    def loss_fn(p, x):
        y = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]
        return jnp.mean((y - x @ target) ** 2)

    @jax.jit
    def step(p, x):
        loss, grads = jax.value_and_grad(loss_fn)(p, x)
        return jax.tree.map(lambda a, g: a - 0.1 * g, p, grads), loss

    losses = []
    with jax.set_mesh(mesh):
        for i in range(args.steps):
            global_x = np.random.default_rng(i).normal(size=(batch, d)).astype(np.float32)
            # Each process supplies only the rows its devices hold.
            x = jax.make_array_from_callback(global_x.shape, batch_sharding, lambda idx: global_x[idx])
            params, loss = step(params, x)
            losses.append(float(loss))
    final = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() == 0:
        with open(args.out, "w") as f:
            json.dump({"distributed": distributed, "process_count": jax.process_count(),
                       "device_count": jax.device_count(), "mesh": partitioning.describe(mesh),
                       "w1_sharding": str(params["w1"].sharding.spec), "losses": losses,
                       "params": {k: np.asarray(v).tolist() for k, v in final.items()}}, f)


if __name__ == "__main__":
    main()
