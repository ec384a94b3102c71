"""Run metrics to TensorBoard (clu metric writers), to ``MODEL_DIR/metrics.jsonl`` and to a tqdm progress bar.

Only process 0 writes. ``metrics.jsonl`` holds one JSON object per line: ``{"step": n, "split": "train",
"time": unix_s, ...scalars}`` so sweeps and reports can read a run without TensorFlow.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import jax

from fiat_jax.atomic_files import atomic_write_lines


class MetricsWriter:
    """Scalars to TensorBoard ``MODEL_DIR/tb/<split>`` and ``metrics.jsonl``; call :meth:`close` at the end."""

    def __init__(self, model_dir: str | os.PathLike, *, tensorboard: bool = True, resume_step: int | None = None):
        """``resume_step``: the step training restarts from; rows past it (written by a run that died before
        its next checkpoint) are dropped first, so that every step appears exactly once across resumes."""
        self.model_dir = pathlib.Path(model_dir)
        self.path = self.model_dir / "metrics.jsonl"
        self.enabled = jax.process_index() == 0
        self._tb: dict[str, Any] = {}
        self._tensorboard = tensorboard
        self._jsonl = None
        if self.enabled:
            self.model_dir.mkdir(parents=True, exist_ok=True)
            if resume_step is not None:
                drop_rows_after(self.path, resume_step)
            self._jsonl = open(self.path, "a", buffering=1)

    def truncate_after(self, step: int) -> None:
        """Drop the rows past ``step`` (a failed checkpoint save: no checkpoint holds those steps)."""
        if not self.enabled:
            return
        if self._jsonl is not None:
            self._jsonl.close()
        drop_rows_after(self.path, step)
        self._jsonl = open(self.path, "a", buffering=1)

    def _writer(self, split: str) -> Any:
        if split not in self._tb:
            logdir = str(self.model_dir / "tb" / split)
            try:
                # lazy: clu pulls in TensorFlow: only when metrics are written
                from clu import metric_writers
            except ImportError:  # clu's summary writer needs the `tensorboard` package
                self._tb[split] = _TfSummaryWriter(logdir)
            else:
                self._tb[split] = metric_writers.create_default_writer(logdir, asynchronous=False)
        return self._tb[split]

    def write(self, step: int, scalars: Mapping[str, float], *, split: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        record = {"step": int(step), "split": split, "time": round(time.time(), 3)}
        record.update({k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        if self._tensorboard:
            self._writer(split).write_scalars(int(step), clean)

    def write_process_record(self, name: str, record: Mapping[str, Any]) -> None:
        """One row per training process in ``model_dir/name`` (e.g. its compile work): kept out of metrics.jsonl,
        whose rows are each step's exactly once across resumes."""
        if not self.enabled:
            return
        with open(self.model_dir / name, "a", buffering=1) as f:
            f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")

    def flush(self) -> None:
        for writer in self._tb.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._tb.values():
            writer.close()
        self._tb.clear()
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


def drop_rows_after(path: pathlib.Path, step: int) -> int:
    """Rewrite ``path`` (atomically) without rows whose step is past ``step``, or torn lines; returns the number
    dropped. A file with nothing to drop is left untouched."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    raw = path.read_text(encoding="utf-8", errors="replace")
    for line in raw.splitlines():
        try:
            row_step = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):  # a torn last line of a killed run
            dropped += 1
            continue
        if row_step > step:
            dropped += 1
        else:
            kept.append(line)
    if dropped or (raw and not raw.endswith("\n")):
        atomic_write_lines(path, kept)
    return dropped


class _TfSummaryWriter:
    """TensorBoard scalars through ``tf.summary`` directly, when clu's writers cannot load."""

    def __init__(self, logdir: str):
        # lazy: TensorFlow takes seconds to import: only when a dataset is built
        import tensorflow as tf
        # lazy: TensorFlow takes seconds to import: only when a dataset is built
        from tensorflow.core.framework import summary_pb2

        self._tf = tf
        self._writer = tf.summary.create_file_writer(logdir)
        self._metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")).SerializeToString()

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        tf = self._tf
        with self._writer.as_default():
            for name, value in scalars.items():
                tf.summary.write(name, tf.constant(float(value), tf.float32), step=step, metadata=self._metadata)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class Progress:
    """A tqdm bar over steps showing loss, tokens/s and ETA (tqdm's own); silent off process 0."""

    def __init__(self, *, total: int, initial: int, enabled: bool = True):
        self._bar = None
        if enabled and jax.process_index() == 0:
            # lazy: progress bars only when one is shown
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc="train",
                             mininterval=1.0)

    def update(self, steps: int, **postfix: Any) -> None:
        if self._bar is None:
            return
        if postfix:
            self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                                  refresh=False)
        self._bar.update(steps)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
