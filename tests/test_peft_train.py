"""Training with PEFT: only PEFT params change, optimizer state size, PEFT-only checkpoints, mesh == one device."""
from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import test_train_helpers as H
from benchmarks.peers.fiat_step import compiled_step
from fiat_jax.models import build_model
from fiat_jax.models.decoder import DecoderConfig
from fiat_jax.models.t5 import T5Config
from fiat_jax.peft import lora, prompt_tuning, trainable
from fiat_jax.peft.wrapper import chain_transforms
from test_train_helpers import compilation_cache  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("compilation_cache")

DEC = DecoderConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
                    max_length=64)
T5 = T5Config(vocab_size=64, d_model=32, num_encoder_layers=2, num_decoder_layers=2, num_heads=4, head_dim=8,
              mlp_dim=64)


def _flat(state) -> dict[str, np.ndarray]:
    return {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


def _batch(cfg, rng: np.random.Generator) -> dict[str, np.ndarray]:
    b, t = 4, 8
    tok = rng.integers(2, 64, (b, t + 1)).astype(np.int32)
    batch = {"decoder_input_tokens": tok[:, :-1], "decoder_target_tokens": tok[:, 1:],
             "decoder_loss_weights": np.ones((b, t), np.int32)}
    if cfg is T5:
        batch["encoder_input_tokens"] = rng.integers(2, 64, (b, 6)).astype(np.int32)
    return batch


def _train(model, filt, cfg, steps: int = 3):
    """Run the trainer's jitted step ``steps`` times on one device; returns the merged model."""
    graphdef = nnx.graphdef(model)
    compiled, mesh, (params, opt_state, step, frozen, _) = compiled_step(model, trainable=filt, tx=optax.adam(1e-2))
    rng = np.random.default_rng(0)
    with jax.set_mesh(mesh):
        for _ in range(steps):
            batch = jax.device_put(_batch(cfg, rng), compiled.batch_sharding)
            params, opt_state, step, metrics = compiled.fn(params, opt_state, step, frozen, batch)
        assert np.isfinite(float(metrics["loss"]))
    return nnx.merge(graphdef, params, frozen)


@pytest.mark.parametrize("mode,cfg", [("lora", DEC), ("prompt", DEC), ("lora+prompt", T5), ("prompt", T5)],
                         ids=["lora-llama", "prompt-llama", "lora+prompt-t5", "prompt-t5"])
def test_only_peft_params_change(mode, cfg):
    model = build_model(config=cfg, seed=0)
    transform = {"lora": lora.lora_transform(rank=4, alpha=8.0, dropout=0.1),
                 "prompt": prompt_tuning.prompt_transform(length=3),
                 "lora+prompt": chain_transforms(transforms=[lora.lora_transform(rank=4, alpha=8.0),
                                                             prompt_tuning.prompt_transform(length=3)])}[mode]
    model = transform(model)
    filt = trainable.peft_filter(mode=mode)
    before_peft = _flat(nnx.state(model, filt))
    before_base = _flat(nnx.state(model, nnx.All(nnx.Param, nnx.Not(filt))))
    assert before_peft and before_base
    trained = _train(model, filt, cfg)
    after_peft = _flat(nnx.state(trained, filt))
    after_base = _flat(nnx.state(trained, nnx.All(nnx.Param, nnx.Not(filt))))
    assert set(after_base) == set(before_base)
    for name, value in before_base.items():
        np.testing.assert_array_equal(after_base[name], value, err_msg=f"base param {name} changed")
    for name, value in before_peft.items():
        assert np.abs(after_peft[name] - value).max() > 0, f"PEFT param {name} did not change"
    kinds = {"lora": ("lora_a", "lora_b"), "prompt": ("soft_prompt",),
             "lora+prompt": ("lora_a", "lora_b", "soft_prompt")}[mode]
    assert {n.rsplit("/", 1)[-1] for n in before_peft} == set(kinds)


def test_filter_modes_and_repr():
    model = chain_transforms(transforms=[lora.lora_transform(rank=2), prompt_tuning.prompt_transform(length=2)])(
        build_model(config=DEC, seed=0))
    count = lambda mode, **kw: len(jax.tree.leaves(nnx.state(model, trainable.peft_filter(mode=mode, **kw))))  # noqa
    n_lora = 2 * 4 * DEC.num_layers
    assert count("lora") == n_lora and count("prompt") == 1 and count("lora+prompt") == count("peft") == n_lora + 1
    assert count("full") == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count("lora", extra_regex=r".*norm/scale") == n_lora + 2 * DEC.num_layers + 1
    assert repr(trainable.peft_filter(mode="lora")) == "peft_filter(mode='lora', extra_regex=None)"
    with pytest.raises(Exception, match="choose one of"):
        trainable.peft_filter(mode="lora+full")


def test_lora_optimizer_state_is_under_2_percent_of_full_for_smollm2_shapes():
    """Abstract shapes only (jax.eval_shape): adamw state in lora mode vs full fine-tuning, SmolLM2-135M."""
    cfg = DecoderConfig()  # defaults are SmolLM2-135M
    tx = optax.adamw(1e-4)

    def opt_bytes(mode: str) -> int:
        def build():
            model = build_model(config=cfg, seed=0)
            return lora.apply_lora(model, rank=8, alpha=16.0) if mode == "lora" else model

        model = nnx.eval_shape(build)
        filt = trainable.peft_filter(mode="lora") if mode == "lora" else nnx.Param
        _, params, _ = nnx.split(model, filt, ...)
        state = jax.eval_shape(tx.init, params)
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state) if hasattr(x, "size"))

    full, low = opt_bytes("full"), opt_bytes("lora")
    ratio = low / full
    print(f"adamw state: full {full / 2**20:.1f} MiB, lora {low / 2**20:.2f} MiB, ratio {100 * ratio:.3f}%")
    assert full > 900 * 2**20  # ~135M params x 2 moments x 4 bytes
    assert ratio <= 0.02


def _tiny_llama(*, rngs: nnx.Rngs):
    cfg = DecoderConfig(vocab_size=H.VOCAB, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                        mlp_dim=64, max_length=64)
    from fiat_jax.models.decoder import Decoder

    return Decoder(cfg, rngs=rngs)


@pytest.mark.slow
def test_trainer_checkpoint_holds_only_lora_params(tmp_path):
    run = H.toy_train(str(tmp_path / "run"), 2, factory=_tiny_llama, batch_size=8, checkpoint_every_steps=2,
                      model_transform=lora.lora_transform(rank=4, alpha=8.0),
                      trainable=trainable.peft_filter(mode="lora"), async_checkpointing=False)
    saved = H.final_params(str(tmp_path / "run"))
    assert saved and all(name.rsplit("/", 1)[-1] in ("lora_a", "lora_b") for name in saved), sorted(saved)[:5]
    assert len(saved) == 2 * 4 * 2
    live = _flat(nnx.state(run.model, nnx.LoRAParam))
    for name, value in saved.items():
        np.testing.assert_array_equal(value, live[name])


@pytest.mark.slow
def test_lora_on_8_device_mesh_matches_one_device(tmp_path):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices")
    kw = dict(factory=_tiny_llama, batch_size=8, checkpoint_every_steps=100,
              model_transform=lora.lora_transform(rank=4, alpha=8.0, include_mlp=True),
              trainable=trainable.peft_filter(mode="lora"))
    one = H.toy_train(str(tmp_path / "one"), 6, num_devices=1, **kw)
    many = H.toy_train(str(tmp_path / "many"), 6, num_devices=8, mesh="data=2,fsdp=2,model=2", **kw)
    a, b = _flat(nnx.state(one.model, nnx.Param)), _flat(nnx.state(many.model, nnx.Param))
    lora_b = nnx.state(many.model, nnx.LoRAParam)
    specs = {"/".join(map(str, p)): v.get_value().sharding.spec for p, v in nnx.to_flat_state(lora_b)}
    assert any("model" in tuple(s) for s in specs.values()) and any("fsdp" in tuple(s) for s in specs.values())
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=2e-5, err_msg=name)
    assert any(np.abs(v).max() > 0 for n, v in a.items() if n.endswith("lora_b"))
