"""The published MGSM chain-of-thought exemplars as a prompt prefix: the teacher's few-shot context for MGSM tasks
(``fiat teach`` and FIAT's own reasoning step both use this one definition)."""

from __future__ import annotations

from fiat_jax.data import paths, preprocessors, sources
from fiat_jax.errors import UserError


def mgsm_cot_prefix(task: str, *, k: int = 4, data_dir: str | None = None, what: str = "cot_exemplars") -> str:
    """The first ``k`` exemplars of ``mgsm_<lang>``'s language, formatted as a few-shot prefix; ``""`` for any
    task that is not an MGSM task. ``data_dir`` defaults to :func:`paths.default_data_dir`."""
    if not task.startswith("mgsm_"):
        return ""
    root = data_dir if data_dir is not None else paths.default_data_dir()
    if root is None:
        raise UserError(f"{what}: no data directory (bind {what}.data_dir)")
    shots = sources.mgsm_exemplars(str(root), task.rsplit("_", 1)[-1])
    return preprocessors.few_shot_prefix(shots, k=k)
