"""Packing (seqio's converters, the student path's default) gives each example the loss it has unpacked: the
models' segment-aware attention and positions keep packed examples apart, for the prefix LM and for T5."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx

from fiat_jax.data import feature_converters
from fiat_jax.models import build_model
from fiat_jax.models.decoder import DecoderConfig
from fiat_jax.models.t5 import T5Config

DEC = DecoderConfig(vocab_size=50, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
                    max_length=64)
T5 = T5Config(vocab_size=50, d_model=32, num_encoder_layers=2, num_decoder_layers=2, num_heads=4, head_dim=8,
              mlp_dim=64)
LENGTHS = {"inputs": 12, "targets": 5}


def _examples(n: int = 7) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    return [{"inputs": rng.integers(2, 50, int(rng.integers(2, 11))).astype(np.int32),
             "targets": np.append(rng.integers(2, 50, int(rng.integers(0, 4))), 1).astype(np.int32)}
            for _ in range(n)]


def _converted(kind: str, pack: bool) -> dict[str, np.ndarray]:
    rows = _examples()
    ds = tf.data.Dataset.from_generator(lambda: iter(rows), output_signature={
        "inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32)})
    conv = feature_converters.get_feature_converter(model_kind=kind, pack=pack)
    feats = list(conv(ds, LENGTHS).as_numpy_iterator())
    return {k: np.stack([f[k] for f in feats]) for k in feats[0]}


def _token_log_likelihoods(model, batch) -> np.ndarray:
    graphdef, state = nnx.split(model)

    @jax.jit
    def f(state, batch):
        logits = nnx.merge(graphdef, state).logits_from_batch(batch).astype(jnp.float32)
        lp = jax.nn.log_softmax(logits, axis=-1)
        return jnp.take_along_axis(lp, batch["decoder_target_tokens"][..., None], axis=-1)[..., 0]

    return np.asarray(f(state, {k: jnp.asarray(v) for k, v in batch.items()}))


@pytest.mark.slow
@pytest.mark.parametrize("cfg,kind", [(DEC, "decoder"), (T5, "encoder_decoder")], ids=["prefix_lm", "t5"])
def test_packed_batch_gives_each_example_its_unpacked_loss(cfg, kind):
    model = build_model(config=cfg, seed=0)
    plain, packed = _converted(kind, pack=False), _converted(kind, pack=True)
    assert len(packed["decoder_target_tokens"]) < len(plain["decoder_target_tokens"])  # packing packed
    tok = _token_log_likelihoods(model, plain)
    want = (tok * plain["decoder_loss_weights"]).sum(-1)
    tok_p = _token_log_likelihoods(model, packed)
    w_p = packed["decoder_loss_weights"] * (packed["decoder_segment_ids"] > 0)
    got = [float((tok_p[r] * w_p[r])[packed["decoder_segment_ids"][r] == s].sum())
           for r in range(len(tok_p)) for s in range(1, int(packed["decoder_segment_ids"][r].max()) + 1)]
    # Same targets in the same order (seqio packs greedily in order), then the same loss per example.
    got_targets = [packed["decoder_target_tokens"][r][(packed["decoder_segment_ids"][r] == s)
                                                      & (packed["decoder_loss_weights"][r] > 0)].tolist()
                   for r in range(len(tok_p)) for s in range(1, int(packed["decoder_segment_ids"][r].max()) + 1)]
    want_targets = [t[w > 0].tolist() for t, w in zip(plain["decoder_target_tokens"], plain["decoder_loss_weights"])]
    assert got_targets == want_targets
    # fp32 attention over different key counts (masked keys add exact zeros): rounding only.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
