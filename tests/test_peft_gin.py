"""The peft gin overlays and the methods' lazy_call names resolve to working transforms and filters."""
from __future__ import annotations

import gin
import jax
import pytest
from flax import nnx

from fiat_jax import gin_utils
from fiat_jax.models import build_model
from fiat_jax.models.decoder import DecoderConfig
from fiat_jax.peft import lora, prompt_tuning, trainable, wrapper

DEC = DecoderConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)


def _parse(name: str, *bindings: str) -> None:
    gin.add_config_file_search_path(str(gin_utils.DEFAULT_GIN_DIR))
    gin.parse_config_files_and_bindings([str(gin_utils.DEFAULT_GIN_DIR / "peft" / name)], list(bindings))


def _counts(model) -> tuple[int, int]:
    return (len(jax.tree.leaves(nnx.state(model, nnx.LoRAParam))),
            len(jax.tree.leaves(nnx.state(model, prompt_tuning.PromptParam))))


@pytest.mark.parametrize("name,lora_leaves,prompt_leaves,mode", [
    ("lora.gin", 16, 0, "lora"), ("prompt.gin", 0, 1, "prompt"), ("lora_prompt.gin", 16, 1, "lora+prompt")])
def test_overlays_bind_transform_and_filter(name, lora_leaves, prompt_leaves, mode):
    _parse(name, "PROMPT_LENGTH = 4" if "prompt" in name else "lora_transform.rank = 2")
    from fiat_jax.train import trainer  # noqa: F401

    transform = gin.query_parameter("train.model_transform").scoped_configurable_fn()
    filt = gin.query_parameter("train.trainable").scoped_configurable_fn()
    model = transform(build_model(config=DEC, seed=0))
    assert isinstance(model, wrapper.PeftModel) and _counts(model) == (lora_leaves, prompt_leaves)
    assert isinstance(filt, trainable.PeftFilter) and filt.mode == mode
    if prompt_leaves:
        assert model.prompt_length == 4
    if lora_leaves:
        assert next(iter(lora.lora_modules(model).values())).rank == (8 if "prompt" in name else 2)


def test_methods_lazy_call_names_resolve():
    from fiat_jax.methods.run import lazy_call

    transform = lazy_call(target="fiat_jax.peft.lora:lora_transform")
    filt = lazy_call(target="fiat_jax.peft.trainable:peft_filter")
    model = transform(build_model(config=DEC, seed=0))
    assert _counts(model) == (16, 0) and len(jax.tree.leaves(nnx.state(model, filt))) == 16
    model = lazy_call(target="fiat_jax.peft.prompt_tuning:prompt_transform", kwargs={"length": 2})(
        build_model(config=DEC, seed=0))
    assert len(jax.tree.leaves(nnx.state(model, filt))) == 1  # the default filter trains whatever PEFT params exist
