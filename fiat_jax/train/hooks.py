"""The training loop's actions, each one job: metrics windows with NaN halting, evaluation, checkpointing,
preemption (SIGTERM), and the results file. They read and update one :class:`LoopState`."""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from fiat_jax.errors import UserError
from fiat_jax.train import checkpoints as ckpt_lib
from fiat_jax.train import run_record
from fiat_jax.train.config import CheckpointConfig, EvalConfig, LogConfig

_log = logging.getLogger(__name__)


class TrainingDivergedError(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass
class LoopState:
    """What the step loop carries from step to step (device state and the hooks' bookkeeping)."""

    step: int
    params: Any
    opt_state: Any
    step_arr: Any
    tokens_per_step: int | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # the last train/* window, eval/*
    last_saved: int | None = None
    last_eval: tuple[int, dict[str, float]] | None = None
    preempted: bool = False

    @property
    def tokens_seen(self) -> int:
        return self.step * (self.tokens_per_step or 0)


def tokens_in(batch: Mapping[str, Any]) -> int:
    """Token positions of one batch: the input/target token features, not the shifted decoder targets."""
    return sum(int(np.prod(v.shape)) for k, v in batch.items()
               if k.endswith("_tokens") and not k.startswith("decoder_target"))


class Preemption:
    """SIGTERM sets a flag; the loop saves a checkpoint at the next step boundary and returns (exit 0)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> "Preemption":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def halt_on_nan(pending: list[tuple[int, Mapping[str, float]]], ckpts: ckpt_lib.Checkpoints) -> None:
    """Stop at the first step whose loss, gradient norm or updated parameter norm is not finite."""
    for s, v in pending:
        if not all(math.isfinite(v[k]) for k in ("loss", "grad_norm", "param_norm")):
            good = ckpts.latest_step()
            ckpts.wait()
            raise TrainingDivergedError(
                f"loss is {v['loss']} (grad norm {v['grad_norm']}, updated parameter norm {v['param_norm']}) at "
                f"step {s}; stopped. Last good checkpoint: {'step ' + str(good) if good is not None else 'none'} "
                f"in {ckpts.directory}")


class MetricsLog:
    """Step metrics stay on device until a window closes (every ``log.every_steps`` steps, and before an
    evaluation or a save); then they are fetched, checked for NaN, and one row of window means is written."""

    def __init__(self, config: LogConfig, *, writer: Any, progress: Any, prefetcher: Any, ckpts: Any,
                 schedule_lr: Callable[[int], Any] | None, params_trained: int, z_loss: float) -> None:
        self.config, self.writer, self.progress, self.prefetcher, self.ckpts = (config, writer, progress,
                                                                                prefetcher, ckpts)
        self.schedule_lr, self.params_trained, self.z_loss = schedule_lr, params_trained, z_loss
        self.pending: list[tuple[int, Any]] = []
        self._open_window()

    def _open_window(self) -> None:
        self.window_start = time.perf_counter()
        self.window_wait = self.prefetcher.wait_s

    def add(self, state: LoopState, metrics: Any) -> None:
        self.pending.append((state.step, metrics))
        if state.step % self.config.every_steps == 0:
            self.flush(state)

    def flush(self, state: LoopState) -> None:
        if not self.pending:
            return
        host = jax.device_get([m for _, m in self.pending])
        values = [{k: float(np.asarray(v)) for k, v in m.items()} for m in host]
        halt_on_nan([(s, v) for (s, _), v in zip(self.pending, values)], self.ckpts)
        elapsed = max(time.perf_counter() - self.window_start, 1e-9)
        n, weight, last_step = len(values), sum(v["weight"] for v in values), self.pending[-1][0]
        tokens_per_step = state.tokens_per_step or 0
        scalars = {
            "loss": sum(v["loss"] for v in values) / max(weight, 1.0),
            "cross_entropy": sum(v["cross_entropy"] for v in values) / max(weight, 1.0),
            "accuracy": sum(v["correct"] for v in values) / max(weight, 1.0),
            "grad_norm": values[-1]["grad_norm"],
            "param_norm": values[-1]["param_norm"],
            "learning_rate": float(self.schedule_lr(last_step - 1)) if self.schedule_lr else float("nan"),
            "steps_per_s": n / elapsed,
            "target_tokens_per_s": weight / elapsed,
            "tokens_per_s": n * tokens_per_step / elapsed,
            "input_wait_fraction": (self.prefetcher.wait_s - self.window_wait) / elapsed,
            "tokens_seen": last_step * tokens_per_step,
            "params_trained": self.params_trained,
        }
        if self.z_loss:
            scalars["z_loss"] = sum(v["z_loss"] for v in values) / max(weight, 1.0)
        self.writer.write(last_step, scalars, split="train")
        state.metrics = {f"train/{k}": v for k, v in scalars.items()}
        self.progress.update(n, loss=scalars["loss"], tok_s=f"{scalars['tokens_per_s']:.0f}")
        self.pending.clear()
        self._open_window()


class Evaluation:
    """``eval_fn`` on the current model, logged under ``eval/`` (and kept for ``best_metric`` and results)."""

    def __init__(self, config: EvalConfig, *, log: MetricsLog, writer: Any, merge: Callable[[Any], Any],
                 model_dir: str) -> None:
        self.config, self.log, self.writer, self.merge, self.model_dir = config, log, writer, merge, model_dir

    def run(self, state: LoopState) -> dict[str, float]:
        self.log.flush(state)
        metrics = dict(self.config.eval_fn(model=self.merge(state.params), step=state.step,
                                           model_dir=str(self.model_dir)))
        self.writer.write(state.step, metrics, split="eval")
        state.metrics.update({f"eval/{k}": float(v) for k, v in metrics.items()})
        state.last_eval = (state.step, metrics)
        return metrics

    def after_step(self, state: LoopState) -> None:
        if self.config.due(state.step):
            self.run(state)

    def final(self, state: LoopState) -> dict[str, float]:
        """The evaluation of the last step (run now unless the last periodic one was at this step)."""
        if state.last_eval is None or state.last_eval[0] != state.step:
            self.run(state)
        return state.last_eval[1]


class Checkpointing:
    """A checkpoint every ``every_steps`` steps and at the last step; a failed save truncates metrics.jsonl to
    the last good checkpoint (no row may describe a step that no checkpoint holds)."""

    def __init__(self, config: CheckpointConfig, *, ckpts: ckpt_lib.Checkpoints, log: MetricsLog, writer: Any,
                 fingerprint_hash: str, train_steps: int) -> None:
        self.config, self.ckpts, self.log, self.writer = config, ckpts, log, writer
        self.fingerprint_hash, self.train_steps = fingerprint_hash, train_steps

    def save(self, state: LoopState, at: int) -> None:
        self.log.flush(state)
        try:
            self.ckpts.save(at, {"params": state.params, "opt_state": state.opt_state, "step": state.step_arr},
                            meta={"input_batches": at, "fingerprint": self.fingerprint_hash},
                            metrics=state.metrics or None)
        except ckpt_lib.CheckpointSaveError:
            self.writer.truncate_after(self.ckpts.last_good_step() or 0)
            raise
        state.last_saved = at

    def after_step(self, state: LoopState) -> None:
        if state.step % self.config.every_steps == 0 or state.step == self.train_steps:
            self.save(state, state.step)

    def on_preemption(self, state: LoopState) -> None:
        _log.warning("SIGTERM: saving a checkpoint at step %d and exiting", state.step)
        if state.last_saved != state.step:
            self.save(state, state.step)
        state.preempted = True


def write_results(model_dir: str, eval_metrics: Mapping[str, float], **extra: Any) -> None:
    """``results.json`` for sweeps: ``{"<task>": {"<metric>": v}}`` from the evaluator's ``<task>/<metric>`` keys."""
    nested: dict[str, dict[str, float]] = {}
    for key, value in eval_metrics.items():
        task, _, metric = key.rpartition("/")
        if task and task != "mean":
            nested.setdefault(task, {})[metric] = float(value)
    run_record.write_run_results(model_dir, metrics=nested or dict(eval_metrics), **extra)
