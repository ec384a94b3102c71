"""Shared fixtures for the train tests: tiny NNX models honouring the model contract, and toy seqio tasks.

The tiny models follow docs/CONTRACTS.md (logical axis names on every Param, ``logits_from_batch``,
``model_kind``) so the trainer is tested independently of fiat_jax.models. Importable from subprocess scripts
(``sys.path.insert(0, tests_dir)``).
"""
from __future__ import annotations

import dataclasses
import functools

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fiat_jax import partitioning

# Identical tiny programs are compiled by many tests and subprocesses: share them through JAX's persistent cache.
JAX_CACHE_ENV = {"JAX_COMPILATION_CACHE_DIR": os.environ.get("FIAT_TEST_JAX_CACHE", "/tmp/fiat_jax_test_jax_cache"),
                 "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                 "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


@pytest.fixture(scope="session")
def compilation_cache():
    previous = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", JAX_CACHE_ENV["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield
    jax.config.update("jax_compilation_cache_dir", previous)


VOCAB = 32  # 0 pad, 1 eos, 2.. symbols


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    vocab: int = VOCAB
    d_model: int = 32
    heads: int = 2
    mlp: int = 64
    layers: int = 2
    max_len: int = 64
    dropout: float = 0.0


def _param(rngs, shape, names, scale=None):
    scale = (1.0 / np.sqrt(shape[0])) if scale is None else scale
    return nnx.Param(jax.random.normal(rngs.params(), shape, jnp.float32) * scale, sharding_names=names)


class Attention(nnx.Module):
    def __init__(self, cfg: TinyConfig, rngs: nnx.Rngs):
        d, h = cfg.d_model, cfg.heads
        self.heads = h
        self.query = _param(rngs, (d, h, d // h), ("embed", "heads", "kv"))
        self.key = _param(rngs, (d, h, d // h), ("embed", "heads", "kv"))
        self.value = _param(rngs, (d, h, d // h), ("embed", "heads", "kv"))
        self.out = _param(rngs, (h, d // h, d), ("heads", "kv", "embed"), scale=1.0 / np.sqrt(d))

    def __call__(self, x, kv, mask):
        q = jnp.einsum("btd,dhk->bthk", x, self.query[...])
        k = jnp.einsum("bsd,dhk->bshk", kv, self.key[...])
        v = jnp.einsum("bsd,dhk->bshk", kv, self.value[...])
        s = jnp.einsum("bthk,bshk->bhts", q, k) / np.sqrt(q.shape[-1])
        s = jnp.where(mask[:, None], s, -1e9)
        o = jnp.einsum("bhts,bshk->bthk", jax.nn.softmax(s, axis=-1), v)
        return jnp.einsum("bthk,hkd->btd", o, self.out[...])


class Block(nnx.Module):
    def __init__(self, cfg: TinyConfig, rngs: nnx.Rngs, cross: bool = False):
        d = cfg.d_model
        self.pre_attention_layer_norm = nnx.Param(jnp.ones((d,)), sharding_names=("norm",))
        self.attention = Attention(cfg, rngs)
        self.cross = cross
        if cross:
            self.pre_cross_attention_layer_norm = nnx.Param(jnp.ones((d,)), sharding_names=("norm",))
            self.encoder_decoder_attention = Attention(cfg, rngs)
        self.pre_mlp_layer_norm = nnx.Param(jnp.ones((d,)), sharding_names=("norm",))
        self.wi = _param(rngs, (d, cfg.mlp), ("embed", "mlp"))
        self.wo = _param(rngs, (cfg.mlp, d), ("mlp", "embed"))
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    @staticmethod
    def _norm(x, scale):
        return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * scale

    def __call__(self, x, mask, enc=None, enc_mask=None, *, deterministic=True):
        h = self._norm(x, self.pre_attention_layer_norm[...])
        x = x + self.dropout(self.attention(h, h, mask), deterministic=deterministic)
        if self.cross:
            h = self._norm(x, self.pre_cross_attention_layer_norm[...])
            x = x + self.encoder_decoder_attention(h, enc, enc_mask)
        h = self._norm(x, self.pre_mlp_layer_norm[...])
        x = x + jnp.einsum("btm,md->btd", jax.nn.gelu(jnp.einsum("btd,dm->btm", h, self.wi[...])), self.wo[...])
        return partitioning.constrain(x, ("batch", "length", "embed"))


class TinyDecoder(nnx.Module):
    """Prefix-LM decoder (seqio PrefixLMFeatureConverter batches)."""

    model_kind = "decoder"

    def __init__(self, cfg: TinyConfig = TinyConfig(), *, rngs: nnx.Rngs):
        self.config = cfg
        self.token_embedder = _param(rngs, (cfg.vocab, cfg.d_model), ("vocab", "embed"), scale=1.0)
        self.pos_embedding = _param(rngs, (cfg.max_len, cfg.d_model), ("length", "embed"), scale=0.1)
        self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.layers)])
        self.decoder_norm = nnx.Param(jnp.ones((cfg.d_model,)), sharding_names=("norm",))
        self.logits_dense = _param(rngs, (cfg.d_model, cfg.vocab), ("embed", "vocab"))

    def logits_from_batch(self, batch, *, deterministic=True, prompt_embeddings=None):
        tokens = batch["decoder_input_tokens"]
        t = tokens.shape[1]
        x = self.token_embedder[...][tokens] + self.pos_embedding[...][:t][None]
        causal = jnp.tril(jnp.ones((t, t), bool))[None]
        if "decoder_causal_attention" in batch:
            prefix = batch["decoder_causal_attention"].astype(bool)
            causal = causal | (prefix[:, :, None] & prefix[:, None, :])
        for layer in self.layers:
            x = layer(x, causal, deterministic=deterministic)
        x = Block._norm(x, self.decoder_norm[...])
        return jnp.einsum("btd,dv->btv", x, self.logits_dense[...])


class TinyEncDec(nnx.Module):
    """Encoder-decoder (seqio EncDecFeatureConverter batches)."""

    model_kind = "encoder_decoder"

    def __init__(self, cfg: TinyConfig = TinyConfig(), *, rngs: nnx.Rngs):
        self.config = cfg
        self.token_embedder = _param(rngs, (cfg.vocab, cfg.d_model), ("vocab", "embed"), scale=1.0)
        self.pos_embedding = _param(rngs, (cfg.max_len, cfg.d_model), ("length", "embed"), scale=0.1)
        self.encoder = nnx.List([Block(cfg, rngs) for _ in range(cfg.layers)])
        self.decoder = nnx.List([Block(cfg, rngs, cross=True) for _ in range(cfg.layers)])
        self.decoder_norm = nnx.Param(jnp.ones((cfg.d_model,)), sharding_names=("norm",))
        self.logits_dense = _param(rngs, (cfg.d_model, cfg.vocab), ("embed", "vocab"))

    def logits_from_batch(self, batch, *, deterministic=True, prompt_embeddings=None):
        enc_tokens, dec_tokens = batch["encoder_input_tokens"], batch["decoder_input_tokens"]
        ti, to = enc_tokens.shape[1], dec_tokens.shape[1]
        emb, pos = self.token_embedder[...], self.pos_embedding[...]
        enc_valid = enc_tokens != 0
        x = emb[enc_tokens] + pos[:ti][None]
        enc_mask = enc_valid[:, None, :] & jnp.ones((1, ti, 1), bool)
        for layer in self.encoder:
            x = layer(x, enc_mask, deterministic=deterministic)
        y = emb[dec_tokens] + pos[:to][None]
        causal = jnp.tril(jnp.ones((to, to), bool))[None]
        cross_mask = enc_valid[:, None, :] & jnp.ones((1, to, 1), bool)
        for layer in self.decoder:
            y = layer(y, causal, x, cross_mask, deterministic=deterministic)
        y = Block._norm(y, self.decoder_norm[...])
        return jnp.einsum("btd,dv->btv", y, self.logits_dense[...])


def tiny_decoder(*, rngs: nnx.Rngs, **overrides) -> TinyDecoder:
    return TinyDecoder(TinyConfig(**overrides), rngs=rngs)


def tiny_encdec(*, rngs: nnx.Rngs, **overrides) -> TinyEncDec:
    return TinyEncDec(TinyConfig(**overrides), rngs=rngs)


# ---------------------------------------------------------------------------------------------------------------
# Toy seqio tasks: copy / reverse of random symbol strings, pre-tokenised (PassThroughVocabulary).
def _toy_examples(split: str, kind: str, n: int, length: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng({"train": 0, "validation": 1}[split])
    lens = rng.integers(3, length + 1, size=n)
    inputs = np.zeros((n, length), np.int32)
    targets = np.zeros((n, length), np.int32)
    for i, k in enumerate(lens):
        seq = rng.integers(2, VOCAB, size=k)
        inputs[i, :k] = seq
        targets[i, :k] = seq[::-1] if kind == "reverse" else seq
    return {"inputs": inputs, "targets": targets}


def _toy_dataset_fn(split, shuffle_files, seed=None, *, kind, n, length):
    import tensorflow as tf

    data = _toy_examples(split, kind, n if split == "train" else 64, length)
    ds = tf.data.Dataset.from_tensor_slices(data)
    # strip the zero padding of the fixed-size numpy arrays
    return ds.map(lambda ex: {k: tf.boolean_mask(v, v != 0) for k, v in ex.items()})


def exact_match(targets, predictions):
    """Percentage of predictions equal to their target (token lists or strings)."""
    hits = [list(np.ravel(t)) == list(np.ravel(p)) for t, p in zip(targets, predictions)]
    return {"exact_match": 100.0 * float(np.mean(hits))}


def register_toy_task(kind: str = "copy", *, n: int = 2048, length: int = 8) -> str:
    """Register ``toy_<kind>_<length>`` (idempotent) and return its name."""
    import seqio

    name = f"toy_{kind}_{length}_{n}"
    if name in seqio.TaskRegistry.names():
        return name
    vocab = seqio.PassThroughVocabulary(size=VOCAB, eos_id=1)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            functools.partial(_toy_dataset_fn, kind=kind, n=n, length=length), splits=["train", "validation"]),
        preprocessors=[seqio.preprocessors.append_eos_after_trim],
        output_features={"inputs": seqio.Feature(vocab, add_eos=True, dtype="int32"),
                         "targets": seqio.Feature(vocab, add_eos=True, dtype="int32")},
        metric_fns=[exact_match],
        shuffle_buffer_size=10_000,
    )
    return name


# ---------------------------------------------------------------------------------------------------------------
# A training run as a subprocess (for kill / preemption tests): python tests/test_train_helpers.py DIR STEPS
def toy_train(model_dir: str, steps: int, *, factory=tiny_encdec, kind: str = "copy", batch_size: int = 16,
              checkpoint_every_steps: int = 4, num_devices: int | None = 1, mesh: str = "data=-1",
              async_checkpointing: bool = True, examples: int = 512, log_every_steps: int = 1, **kwargs):
    from fiat_jax.train import trainer

    name = register_toy_task(kind, n=examples)
    return trainer.train(model_dir=model_dir, train_steps=steps, mixture_or_task_name=name,
                         task_feature_lengths={"inputs": 9, "targets": 9}, model_factory=factory,
                         batch_size=batch_size, checkpoint_every_steps=checkpoint_every_steps, log_every_steps=log_every_steps,
                         num_devices=num_devices, mesh=mesh, progress_bar=False, tensorboard=False,
                         async_checkpointing=async_checkpointing, **kwargs)


def assert_close_to_scale(actual, desired, *, rel: float, err_msg: str = "") -> None:
    """``|actual - desired| <= rel * max|desired|`` everywhere: fp32 reordering errors scale with the tensor's
    magnitude, so an element near zero may differ by more than its own size (a per-element rtol fails there)."""
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    scale = float(np.max(np.abs(desired))) if desired.size else 0.0
    np.testing.assert_allclose(actual, desired, rtol=0, atol=rel * max(scale, float(np.finfo(np.float32).tiny)),
                               err_msg=err_msg)


def final_params(model_dir: str) -> dict[str, np.ndarray]:
    """The newest checkpoint's trainable parameters as ``{"a/b/kernel": array}``."""
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(f"{model_dir}/checkpoints", item_names=("state", "meta"),
                                    options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(restored.state["params"])[0]:
        flat["/".join(str(getattr(k, "key", k)) for k in path)] = np.asarray(leaf)
    return flat


if __name__ == "__main__":
    import sys

    toy_train(sys.argv[1], int(sys.argv[2]))
