"""What a training run returns: typed, so no caller parses numbers back out of metric names."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class TrainResult:
    """The trained model and what it cost. ``tokens_seen``: input+target token positions of every step's batch
    (padding included) times the steps trained; ``params_trained``: the size of the differentiated state;
    ``compile``: compile requests, cache hits and seconds of this process (``compile_cache.CompileStats``);
    ``metrics``: the last logged ``train/*`` window and ``eval/*`` results."""

    step: int
    metrics: dict[str, float]
    model: Any
    preempted: bool = False
    tokens_seen: int = 0
    params_trained: int = 0
    wall_s: float = 0.0
    compile: dict[str, float] = dataclasses.field(default_factory=dict)
    # The trainable state as built (initial weights, PEFT transform; before any restore or step), host copies:
    # only when ``train(keep_initial_trainable=True)``, e.g. to score the student before training.
    initial_trainable: Any = None
