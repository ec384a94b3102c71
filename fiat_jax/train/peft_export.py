"""``train.export_peft_dir``: a run that trains LoRA adapters also leaves them as an HF peft directory.

Two steps around the loop: before training, a model without adapters is refused (nothing to export would only
show after the whole run); after a finished run, the adapter is written."""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax
from flax import nnx

from fiat_jax.errors import UserError

_log = logging.getLogger(__name__)


def require_lora(model: nnx.Module) -> None:
    """Refuse, before any step, a model with no LoRA adapters to export."""
    # lazy: only runs that export an adapter need the PEFT modules
    from fiat_jax.peft import lora

    if not lora.lora_modules(model):
        raise UserError("train.export_peft_dir is set but the model has no LoRA adapters "
                        "(bind train.model_transform = @lora_transform())")


def export_finished(result: Any, *, model_dir: str, export_peft_dir: str, train_steps: int) -> None:
    """Write the trained adapter to ``export_peft_dir`` (absolute, or relative to ``model_dir``) once the run
    has reached ``train_steps`` (not on a preempted run; on the first process only)."""
    if result.preempted or result.step < train_steps or jax.process_index() != 0:
        return
    # lazy: only runs that export an adapter need the HF adapter writer (safetensors)
    from fiat_jax.peft import hf_adapter

    out = hf_adapter.export_peft(result.model, pathlib.Path(model_dir) / export_peft_dir)
    _log.info("LoRA adapter written as an HF peft directory to %s", out)
