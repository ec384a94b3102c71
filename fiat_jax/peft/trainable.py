"""Which parameters train: an NNX filter for the trainer's ``trainable`` (``train.trainable`` in gin).

The trainer splits the model with this filter; everything it rejects is frozen: no gradient, no optimizer state,
not checkpointed (docs/CONTRACTS.md "Training"). Modes pick Variable *types*, so they work whatever the paths:

* ``full``        every ``nnx.Param`` (base weights and any adapters / prompt);
* ``lora``        ``nnx.LoRAParam`` (:mod:`fiat_jax.peft.lora`);
* ``prompt``      ``PromptParam`` (the soft prompt, :mod:`fiat_jax.peft.prompt_tuning`);
* ``lora+prompt`` both; ``peft`` (default) = whichever PEFT parameters the model has (same as ``lora+prompt``).

``extra_regex`` also trains the params whose path (``/``-joined, as ``nnx.split`` sees it, e.g.
``model/layers_0/pre_attention_layer_norm/scale``) fully matches it. The filter has a stable ``repr`` (it is part
of the run fingerprint).
"""

from __future__ import annotations

import re
from typing import Any

import gin
from flax import nnx

from fiat_jax.errors import UserError
from fiat_jax.peft.prompt_tuning import PromptParam

MODES = ("full", "lora", "prompt", "lora+prompt", "peft")


class PeftFilter:
    """A picklable, hashable NNX predicate ``(path, variable) -> bool``; see the module docstring."""

    def __init__(self, mode: str = "peft", extra_regex: str | None = None):
        if mode not in MODES:
            raise UserError(f"peft_filter mode={mode!r}: choose one of {', '.join(MODES)}")
        self.mode, self.extra_regex = mode, extra_regex
        types: tuple[type, ...] = {
            "full": (nnx.Param,), "lora": (nnx.LoRAParam,), "prompt": (PromptParam,),
            "lora+prompt": (nnx.LoRAParam, PromptParam), "peft": (nnx.LoRAParam, PromptParam)}[mode]
        self._types = types
        try:
            self._regex = re.compile(extra_regex) if extra_regex else None
        except re.error as err:
            raise UserError(f"peft_filter extra_regex {extra_regex!r} is not a valid regex: {err}") from err

    def __call__(self, path: tuple[Any, ...], value: Any) -> bool:
        if isinstance(value, self._types):
            return True
        if self._regex is not None and isinstance(value, nnx.Param):
            return bool(self._regex.fullmatch("/".join(str(p) for p in path)))
        return False

    def __repr__(self) -> str:
        return f"peft_filter(mode={self.mode!r}, extra_regex={self.extra_regex!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PeftFilter) and repr(other) == repr(self)

    def __hash__(self) -> int:
        return hash(repr(self))


@gin.configurable
def peft_filter(*, mode: str = "peft", extra_regex: str | None = None) -> PeftFilter:
    """``train.trainable``: the NNX filter for ``mode`` (full, lora, prompt, lora+prompt, peft)."""
    return PeftFilter(mode, extra_regex)


def frozen_filter(trainable: Any) -> Any:
    """The complement of ``trainable`` (what the trainer freezes)."""
    return nnx.Not(trainable)
