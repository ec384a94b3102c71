"""Every gin_configs/models/*.gin builds its model abstractly (no weights allocated) with the published size."""

from __future__ import annotations

import pathlib
import time

import gin
import jax
import pytest
from flax import nnx

from fiat_jax import gin_utils

MODELS_DIR = gin_utils.DEFAULT_GIN_DIR / "models"
# Published parameter counts (HF ``num_parameters()``; T5 v1.1 / mT5 / Flan-T5 untied, counting the shared input
# embedding once and the LM head once). Tiny test models: exact counts of the shapes in their gin files.
PUBLISHED = {
    "smollm2_135m": 134_515_008,
    "smollm2_360m": 361_821_120,
    "llama3_1b": 1_235_814_400,
    "t5_small": 76_961_152,
    "t5_base": 247_577_856,
    "t5_large": 783_150_080,
    "t5_xl": 2_849_757_184,
    "mt5_small": 300_176_768,
    "mt5_base": 582_401_280,
    "flan_t5_small": 76_961_152,
    "flan_t5_base": 247_577_856,
    "tiny_decoder": 264 * 64 + 2 * (2 * 64 + 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128) + 64,
    "tiny_t5": (2 * 264 * 64 + 2 * 8 * 32 + 2 * (2 * 64 + 4 * 64 * 64 + 3 * 64 * 128)
                + 2 * (3 * 64 + 8 * 64 * 64 + 3 * 64 * 128) + 2 * 64),
}



def _model_files() -> list[pathlib.Path]:
    return sorted(MODELS_DIR.glob("*.gin"))


def test_every_model_gin_has_a_published_count():
    assert {p.stem for p in _model_files()} == set(PUBLISHED)


def abstract_model(path: pathlib.Path):
    """Parse ``path`` alone (REQUIRED macros allowed) and build ``train.model_factory`` under ``nnx.eval_shape``."""
    gin.add_config_file_search_path(str(gin_utils.DEFAULT_GIN_DIR))
    gin.parse_config_file(str(path))
    from fiat_jax.train import trainer  # noqa: F401  (registered by the gin file's imports)

    factory = gin.query_parameter("train.model_factory")
    fn = gin.get_configurable(factory.selector)
    return nnx.eval_shape(lambda: fn(rngs=nnx.Rngs(params=0, dropout=1)))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_model_gin_builds_abstract_model_with_published_size(name):
    start = time.perf_counter()
    model = abstract_model(MODELS_DIR / f"{name}.gin")
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)  # nothing allocated
    total = sum(int(x.size) for x in leaves)
    assert total == PUBLISHED[name], (name, total, PUBLISHED[name])
    assert time.perf_counter() - start < 60
