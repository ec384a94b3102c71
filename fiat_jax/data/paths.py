"""Default locations of the data sets, for every layer (task registrations, recipe variables)."""

from __future__ import annotations

import os
import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def default_data_dir() -> str | None:
    """``<repo>/../shared/data`` when it exists (the small real data sets), else None."""
    path = REPO_ROOT.parent / "shared" / "data"
    return str(path) if path.is_dir() else None


def default_tfds_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "fiat_jax", "tfds")
