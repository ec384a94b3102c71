"""Mesh specs, logical rules and a sharded train step that must equal the unsharded one (meshes over every device
at hand: conftest's 8 fake CPU devices, or a GPU host's own)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import device_meshes as D
from fiat_jax import partitioning
from fiat_jax.errors import PartitioningError

N = D.count()


class TinyLM(nnx.Module):
    """Embedding -> gated MLP -> tied logits; every parameter named logically."""

    def __init__(self, *, vocab: int = 64, d: int = 16, mlp: int = 32, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.5)
        self.embedding = nnx.Param(init(rngs.params(), (vocab, d)), sharding_names=("vocab", "embed"))
        self.wi = nnx.Param(init(rngs.params(), (d, mlp)), sharding_names=("embed", "mlp"))
        self.wo = nnx.Param(init(rngs.params(), (mlp, d)), sharding_names=("mlp", "embed"))
        self.scale = nnx.Param(jnp.ones((d,)), sharding_names=("embed",))

    def __call__(self, tokens):
        x = self.embedding[...][tokens]
        x = partitioning.constrain(x, ("batch", "length", "embed"))
        h = jax.nn.gelu(x @ self.wi[...])
        h = partitioning.constrain(h, ("batch", "length", "mlp"))
        x = (x + h @ self.wo[...]) * self.scale[...]
        return x @ self.embedding[...].T


def _train_step(graphdef, state, opt_state, tokens, tx):
    def loss_fn(params):
        logits = nnx.merge(graphdef, params)(tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state)
    updates, opt_state = tx.update(grads, opt_state, state)
    return loss, optax.apply_updates(state, updates), opt_state


def _run(mesh_shape):
    tx = optax.adamw(1e-2)
    tokens = jax.random.randint(jax.random.key(1), (8, 12), 0, 64)
    factory = lambda: TinyLM(rngs=nnx.Rngs(0))  # noqa: E731
    mesh = partitioning.make_mesh(mesh_shape) if mesh_shape else None
    model = partitioning.create_model(factory, mesh=mesh)
    graphdef, state = nnx.split(model)
    opt_state = tx.init(state)
    if mesh is None:
        step = jax.jit(lambda s, o, t: _train_step(graphdef, s, o, t, tx), donate_argnums=(0, 1))
        loss, state, _ = step(state, opt_state, tokens)
        return loss, state
    state_shardings = partitioning.param_shardings(state, mesh)
    with jax.set_mesh(mesh):
        opt_state = jax.jit(tx.init)(state)  # moments inherit the parameters' shardings
    opt_shardings = jax.tree.map(lambda x: x.sharding, opt_state)
    batch = partitioning.batch_sharding(mesh)
    step = jax.jit(lambda s, o, t: _train_step(graphdef, s, o, t, tx), donate_argnums=(0, 1),
                   in_shardings=(state_shardings, opt_shardings, batch),
                   out_shardings=(None, state_shardings, opt_shardings))
    with jax.set_mesh(mesh):
        loss, state, _ = step(state, opt_state, jax.device_put(tokens, batch))
    assert state["wi"].get_value().sharding.spec == state_shardings["wi"].spec
    return loss, state


@pytest.mark.parametrize("mesh_shape", [(N, 1, 1), D.balanced(N), (1, 1, N)])
def test_sharded_step_equals_unsharded(mesh_shape):
    ref_loss, ref_state = _run(None)
    loss, state = _run(mesh_shape)
    np.testing.assert_allclose(loss, ref_loss, atol=1e-5)
    for a, b in zip(jax.tree.leaves(ref_state), jax.tree.leaves(state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_param_shardings_follow_rules():
    if N < 4:
        pytest.skip(f"needs a mesh with fsdp and model axes > 1 ({N} device(s) here)")
    mesh = partitioning.make_mesh(D.spec(D.balanced(N)))
    state = nnx.state(partitioning.create_model(lambda: TinyLM(rngs=nnx.Rngs(0))))
    shardings = partitioning.param_shardings(state, mesh)
    assert shardings["wi"].spec == jax.sharding.PartitionSpec("fsdp", "model")
    assert shardings["embedding"].spec == jax.sharding.PartitionSpec("model", "fsdp")


def test_activation_batch_takes_fsdp_before_embed():
    spec = partitioning.logical_to_mesh_axes(("batch", "length", "embed"))
    assert spec == jax.sharding.PartitionSpec(("data", "fsdp"), None, None)


def test_unknown_logical_axis_names_the_parameter():
    class Bad(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones((4, 4)), sharding_names=("embed", "mystery"))

    mesh = partitioning.make_mesh((N, 1, 1))
    state = nnx.state(partitioning.create_model(Bad))
    with pytest.raises(PartitioningError, match=r"w.*'mystery' has no partitioning rule"):
        partitioning.param_shardings(state, mesh)


def test_param_without_names_is_an_error():
    class Unnamed(nnx.Module):
        def __init__(self):
            self.kernel = nnx.Param(jnp.ones((4, 4)))

    mesh = partitioning.make_mesh((N, 1, 1))
    with pytest.raises(PartitioningError, match="kernel .* carries no logical axis names"):
        partitioning.create_model(Unnamed, mesh=mesh)


def test_extra_rules_from_context():
    with partitioning.axis_rules(partitioning.DEFAULT_RULES + (("mystery", "model"),)):
        assert partitioning.logical_to_mesh_axes(("mystery",)) == jax.sharding.PartitionSpec("model")


@pytest.mark.parametrize("spec,expected", [
    ("data=2,fsdp=2,model=2", {"data": 2, "fsdp": 2, "model": 2}),
    ("data=-1,model=2", {"data": 4, "fsdp": 1, "model": 2}),
    ("fsdp=-1", {"data": 1, "fsdp": 8, "model": 1}),
    ((1, 1, 8), {"data": 1, "fsdp": 1, "model": 8}),
])
def test_parse_mesh_spec(spec, expected):
    assert partitioning.parse_mesh_spec(spec, 8) == expected


@pytest.mark.parametrize("spec,message", [
    ("data=3", "uses 3 devices but 8"),
    ("data=3,model=-1", "does not divide the 8 devices"),
    ("data=2,pipeline=4", "expected comma-separated"),
    ("data=two", "is not an integer"),
    ("data=-1,model=-1", "only one axis may be -1"),
])
def test_bad_mesh_spec(spec, message):
    with pytest.raises(PartitioningError, match=message):
        partitioning.parse_mesh_spec(spec, 8)


def test_initialize_distributed_is_noop_on_one_host(monkeypatch):
    monkeypatch.delenv("FIAT_NUM_PROCESSES", raising=False)
    assert partitioning.initialize_distributed() is False
