"""Helpers shared by the task registrations: output features, idempotent add, the default DATA_DIR
(defined in fiat_jax.data.paths, which the library layers use)."""

from __future__ import annotations

import seqio

from fiat_jax.data.paths import REPO_ROOT, default_data_dir, default_tfds_dir
from fiat_jax.data.vocab import get_vocabulary

__all__ = ["REPO_ROOT", "add_mixture", "add_task", "default_data_dir", "default_tfds_dir", "output_features",
           "tokenize_steps"]


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
