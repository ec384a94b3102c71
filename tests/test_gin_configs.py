"""Every gin file under gin_configs/ parses on its own (new configs are covered automatically)."""
import pathlib

import gin
import pytest

from fiat_jax import gin_utils

GIN_FILES = sorted(gin_utils.DEFAULT_GIN_DIR.rglob("*.gin"))


def test_there_are_gin_files():
    assert GIN_FILES, f"no gin files under {gin_utils.DEFAULT_GIN_DIR}"


@pytest.mark.parametrize("path", GIN_FILES, ids=lambda p: str(p.relative_to(gin_utils.DEFAULT_GIN_DIR)))
def test_gin_file_parses(path: pathlib.Path):
    gin.add_config_file_search_path(str(gin_utils.DEFAULT_GIN_DIR))
    gin.parse_config_file(str(path))
