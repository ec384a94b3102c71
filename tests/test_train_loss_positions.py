"""The LM head only at loss-bearing positions equals the full computation: loss, metrics and gradients, for both
architectures, with LoRA, with chunks, and when a batch has more loss positions than the static maximum."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from fiat_jax.models import build_model
from fiat_jax.models.decoder import DecoderConfig
from fiat_jax.models.t5 import T5Config
from fiat_jax.peft import lora
from fiat_jax.train import losses, train_step

DEC = DecoderConfig(vocab_size=97, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
                    max_length=64)
T5 = T5Config(vocab_size=97, d_model=32, num_encoder_layers=2, num_decoder_layers=2, num_heads=4, head_dim=8,
              mlp_dim=64)
# fp32 sums over a few dozen tokens, accumulated in another order: a few ulps of the loss scale.
RTOL, ATOL = 2e-5, 1e-6


def _batch(cfg, rng: np.random.Generator, *, b: int = 4, t: int = 12, targets: int = 3) -> dict[str, np.ndarray]:
    """Prefix-LM-like rows: loss on the last ``1..targets`` real positions only, padding after them."""
    tok = rng.integers(2, cfg.vocab_size, (b, t + 1)).astype(np.int32)
    weights = np.zeros((b, t), np.int32)
    for i in range(b):
        end = t - int(rng.integers(0, 4))
        weights[i, end - int(rng.integers(1, targets + 1)):end] = 1
    batch = {"decoder_input_tokens": tok[:, :-1], "decoder_target_tokens": tok[:, 1:],
             "decoder_loss_weights": weights}
    if isinstance(cfg, T5Config):
        batch["encoder_input_tokens"] = rng.integers(1, cfg.vocab_size, (b, 10)).astype(np.int32)
    else:
        batch["decoder_causal_attention"] = (np.arange(t)[None] < t // 2).astype(np.int32).repeat(b, 0)
    return batch


def _loss_and_grads(model, filt, batch, config: train_step.StepConfig):
    """The step's loss sums and gradients (one step of plain SGD reveals the gradient as the update)."""
    graphdef, params, frozen = train_step.split_model(model, filt)
    step_fn = jax.jit(train_step.make_step_fn(graphdef, optax.sgd(1.0), config, trainable=filt))
    opt_state = optax.sgd(1.0).init(params)
    new_params, _, _, metrics = step_fn(params, opt_state, jnp.zeros((), jnp.int32), frozen, batch)
    grads = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), jax.tree.leaves(params),
                         jax.tree.leaves(new_params))
    return {k: float(v) for k, v in metrics.items()}, grads


@pytest.mark.slow
@pytest.mark.parametrize("cfg,use_lora,chunk", [(DEC, False, None), (T5, True, 5)], ids=["decoder-full", "t5-lora"])
def test_gathered_head_matches_full_loss_and_gradients(cfg, use_lora, chunk):
    model = build_model(config=cfg, seed=0)
    filt = nnx.Param
    if use_lora:
        model = lora.lora_transform(targets=r".*(query|value|wi_0)/kernel", rank=4, alpha=8)(model)
        filt = lora.trainable_filter()
    batch = _batch(cfg, np.random.default_rng(1))
    full_m, full_g = _loss_and_grads(model, filt, batch, train_step.StepConfig(z_loss=1e-3))
    for per_row in (3, 1):  # 1: more loss positions than slots -> the full path
        cfg_step = train_step.StepConfig(z_loss=1e-3, loss_positions_per_row=per_row, head_chunk_size=chunk)
        m, g = _loss_and_grads(model, filt, batch, cfg_step)
        for k in ("loss", "cross_entropy", "z_loss", "correct", "weight"):
            np.testing.assert_allclose(m[k], full_m[k], rtol=RTOL, atol=ATOL, err_msg=f"{k} {per_row}")
        for a, b in zip(g, full_g):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert full_m["weight"] == float(batch["decoder_loss_weights"].sum())


def test_loss_positions_are_static_and_flag_overflow():
    w = jnp.asarray([[0, 1, 1, 0], [0, 0, 0, 1]])
    idx, valid, count = losses.loss_positions(w, 5)
    assert idx.shape == (5,) and int(count) == 3
    assert np.asarray(idx)[:3].tolist() == [1, 2, 7] and np.asarray(valid).tolist() == [1, 1, 1, 0, 0]
    _, valid, count = losses.loss_positions(w, 2)
    assert int(count) == 3 and bool(np.all(valid))  # count > N: the callers' cond takes the full path


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [DEC, T5], ids=["decoder", "t5"])
def test_scoring_head_at_loss_positions_matches_full_log_likelihood(cfg):
    model = build_model(config=cfg, seed=0)
    batch = {k: jnp.asarray(v) for k, v in _batch(cfg, np.random.default_rng(2)).items()}
    logits = model.logits_from_batch(batch).astype(jnp.float32)
    lp = jax.nn.log_softmax(logits, axis=-1)
    tok = jnp.take_along_axis(lp, batch["decoder_target_tokens"][..., None], axis=-1)[..., 0]
    want = np.asarray(jnp.sum(tok * batch["decoder_loss_weights"], axis=-1))
    hidden = model.hidden_from_batch(batch)
    for n in (12, 4):  # 4 < the batch's loss positions: full fallback
        got = losses.head_token_log_likelihoods(hidden, model.logits_from_hidden, batch["decoder_target_tokens"],
                                                batch["decoder_loss_weights"], max_positions=n)
        np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=1e-5)


def test_resolve_loss_positions():
    from fiat_jax.errors import UserError

    assert train_step.resolve_loss_positions("auto", {"inputs": 512, "targets": 16}) == 16
    assert train_step.resolve_loss_positions("auto", {"inputs": 512}) is None
    assert train_step.resolve_loss_positions(None, {"targets": 4}) is None
    assert train_step.resolve_loss_positions(3, {"targets": 4}) == 3
    with pytest.raises(UserError, match="loss_positions_per_row"):
        train_step.resolve_loss_positions("many", {"targets": 4})
    assert losses.position_bucket(np.ones((2, 3))) == 8 and losses.position_bucket(np.ones((3, 4))) == 16
