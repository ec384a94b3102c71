"""A model config's repr is part of every checkpoint's fingerprint (train/checkpoints.fingerprint): these strings
are what checkpoints written so far hold, so any change to the configs' definitions must leave them as they are
(or every existing MODEL_DIR would refuse to resume)."""
from __future__ import annotations

import dataclasses

from fiat_jax.models.decoder import DecoderConfig
from fiat_jax.models.t5 import T5Config

DECODER_DEFAULT = (
    "DecoderConfig(vocab_size=49152, d_model=576, num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, "
    "mlp_dim=1536, rope_theta=100000.0, rope_scaling=None, norm_eps=1e-05, tie_embeddings=True, max_length=8192, "
    "mlp_activations=('silu', 'linear'), dropout_rate=0.0, embedding_init_std=0.02, dtype='float32', "
    "param_dtype='float32', remat='none')")
DECODER_SET = (
    "DecoderConfig(vocab_size=64, d_model=576, num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, "
    "mlp_dim=1536, rope_theta=100000.0, rope_scaling=(8.0, 1.0, 4.0, 8192), norm_eps=1e-05, tie_embeddings=True, "
    "max_length=8192, mlp_activations=('silu', 'linear'), dropout_rate=0.0, embedding_init_std=0.02, "
    "dtype='bfloat16', param_dtype='float32', remat='full')")
T5_DEFAULT = (
    "T5Config(vocab_size=32128, d_model=512, num_encoder_layers=8, num_decoder_layers=8, num_heads=6, head_dim=64, "
    "mlp_dim=1024, mlp_activations=('gelu', 'linear'), norm_eps=1e-06, relative_attention_num_buckets=32, "
    "relative_attention_max_distance=128, tie_embeddings=False, scale_tied_logits=None, dropout_rate=0.0, "
    "dtype='float32', param_dtype='float32', remat='none')")
T5_SET = (
    "T5Config(vocab_size=32128, d_model=512, num_encoder_layers=2, num_decoder_layers=8, num_heads=6, head_dim=64, "
    "mlp_dim=1024, mlp_activations=('gelu', 'linear'), norm_eps=1e-06, relative_attention_num_buckets=32, "
    "relative_attention_max_distance=128, tie_embeddings=True, scale_tied_logits=True, dropout_rate=0.0, "
    "dtype='float32', param_dtype='float32', remat='none')")


def test_config_reprs_are_the_fingerprinted_ones():
    assert repr(DecoderConfig()) == DECODER_DEFAULT
    assert repr(T5Config()) == T5_DEFAULT
    decoder = DecoderConfig(vocab_size=64, rope_scaling=(8.0, 1.0, 4.0, 8192), remat="full", dtype="bfloat16")
    t5 = T5Config(num_encoder_layers=2, scale_tied_logits=True, tie_embeddings=True)
    assert repr(decoder) == DECODER_SET and repr(t5) == T5_SET
    # What callers do with the configs keeps working: replace, rebuild from __dict__, compare, hash.
    assert dataclasses.replace(DecoderConfig(), vocab_size=64, rope_scaling=(8.0, 1.0, 4.0, 8192), remat="full",
                               dtype="bfloat16") == decoder
    assert T5Config(**t5.__dict__) == t5 and hash(T5Config(**t5.__dict__)) == hash(t5)
    assert DecoderConfig() != decoder and T5Config() != t5
