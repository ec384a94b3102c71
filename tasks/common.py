"""Helpers shared by the task registrations: output features, idempotent add, the default DATA_DIR."""

from __future__ import annotations

import os
import pathlib

import seqio

from fiat_jax.data.vocab import get_vocabulary

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def default_data_dir() -> str | None:
    """``<repo>/../shared/data`` when it exists (the small real data sets), else None."""
    path = REPO_ROOT.parent / "shared" / "data"
    return str(path) if path.is_dir() else None


def default_tfds_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "fiat_jax", "tfds")


def output_features() -> dict[str, seqio.Feature]:
    vocab = get_vocabulary()
    return {"inputs": seqio.Feature(vocabulary=vocab, add_eos=True),
            "targets": seqio.Feature(vocabulary=vocab, add_eos=True)}


def tokenize_steps() -> list:
    return [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]


def add_task(name: str, **kwargs) -> seqio.Task:
    """Register a task, replacing one of the same name (so registration is idempotent)."""
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(name, **kwargs)


def add_mixture(name: str, tasks: list[str], *, default_rate: float = 1.0) -> seqio.Mixture:
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    return seqio.MixtureRegistry.add(name, tasks, default_rate=default_rate)
