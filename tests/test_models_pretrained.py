"""Model gins and pretrained checkpoints: a clear UserError for an unset CHECKPOINT, a checkpoint of another
architecture, an unusable VOCABULARY; Llama 3 RoPE scaling as HF computes it; config isolation from gin."""

from __future__ import annotations

import dataclasses
import pathlib

import gin
import numpy as np
import pytest

from fiat_jax import gin_utils
from fiat_jax.errors import UserError
from fiat_jax.models import build_model, embedded
from fiat_jax.models.decoder import DecoderConfig


def _gin_config(name: str):
    gin.parse_config_file(str(gin_utils.DEFAULT_GIN_DIR / "models" / f"{name}.gin"))
    return gin.query_parameter("build_model.config").scoped_configurable_fn()


def test_unset_checkpoint_is_named():
    with pytest.raises(UserError, match="CHECKPOINT"):
        gin_utils.parse_gin(gin_files=["models/t5_small.gin"], finalize=False)


@pytest.fixture(scope="module")
def smollm():
    try:
        return embedded.load_embedded()
    except UserError as err:
        pytest.skip(str(err))


def test_smollm2_gin_matches_the_embedded_checkpoint(smollm):
    config = _gin_config("smollm2_135m")
    embedded.check_config_matches(config, smollm.config, source="embedded")
    with pytest.raises(UserError, match=r"rope_theta: model 10000.0 vs checkpoint 100000.0"):
        embedded.check_config_matches(dataclasses.replace(config, rope_theta=10000.0), smollm.config, source="x")


def test_checkpoint_of_another_size_is_refused_in_one_error(smollm):
    tiny = build_model(config=_gin_config("tiny_decoder"), seed=0)
    with pytest.raises(UserError, match=r"does not match the model's architecture \(vocab_size.*d_model.*num_layers"):
        embedded.pretrained_params(tiny, checkpoint=embedded.EMBEDDED_SOURCE)


def test_checkpoint_configs_ignore_gin_bindings(smollm):
    """A model gin binds DecoderConfig fields globally; a checkpoint's own config must not pick them up."""
    from fiat_jax.models import checkpoint_import as ci

    gin.parse_config("DecoderConfig.dropout_rate = 0.5\nDecoderConfig.max_length = 64")
    config = ci.config_from_gguf(embedded.embedded_gguf_path())
    assert config.dropout_rate == 0.0 and config.max_length == smollm.config.max_length


def test_missing_checkpoint_path_is_named(tmp_path):
    tiny = build_model(config=DecoderConfig(vocab_size=64, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1,
                                            head_dim=8, mlp_dim=32), seed=0)
    with pytest.raises(UserError, match="CHECKPOINT .* not found"):
        embedded.pretrained_params(tiny, checkpoint=str(tmp_path / "nope"))


def test_checkpoint_vocabulary_sources(tmp_path):
    import seqio

    model = pathlib.Path(seqio.__file__).parent / "test_data" / "sentencepiece" / "sentencepiece.model"
    vocab = embedded.checkpoint_vocabulary(source=str(model), extra_ids=10)
    assert vocab.vocab_size == 26 + 10
    assert vocab.decode(vocab.encode("a")) == "a"
    (tmp_path / "spiece.model").write_bytes(model.read_bytes())
    assert embedded.checkpoint_vocabulary(source=str(tmp_path)).vocab_size == 26
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no tokenizer .* set VOCABULARY"):
        embedded.checkpoint_vocabulary(source=str(tmp_path / "empty"))
    with pytest.raises(UserError, match="VOCABULARY .* not found"):
        embedded.checkpoint_vocabulary(source=str(tmp_path / "missing"))


def test_hf_llama3_rope_scaling_round_trips():
    from fiat_jax.models import checkpoint_import as ci

    hf = {"model_type": "llama", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 500000.0,
          "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8192}, "tie_word_embeddings": True}
    config = ci.config_from_hf(hf)
    assert config.rope_scaling == (32.0, 1.0, 4.0, 8192.0)
    assert ci.hf_config_from(config)["rope_scaling"]["factor"] == 32.0
    with pytest.raises(UserError, match="only rope_type 'llama3'"):
        ci.config_from_hf({**hf, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})


@pytest.mark.reference
def test_llama3_rope_frequencies_match_transformers():
    transformers = pytest.importorskip("transformers")
    from transformers import modeling_rope_utils

    from fiat_jax.models import layers

    params = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cfg = transformers.LlamaConfig(hidden_size=2048, num_attention_heads=32, head_dim=64,
                                   max_position_embeddings=131072, rope_parameters=params)
    want, _ = modeling_rope_utils.ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    got = layers.rope_inverse_frequencies(64, theta=500000.0, llama3_scaling=(32.0, 1.0, 4.0, 8192))
    np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-5)
