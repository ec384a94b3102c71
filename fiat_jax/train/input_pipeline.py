"""Deterministic seqio input for training, and a host thread that keeps the next batches on device.

Exact resume: the training stream is ``task.get_dataset(shuffle, seed, num_epochs=None)`` -> feature converter ->
``batch`` -> ``skip(start_batch)``. Everything before ``skip`` is a deterministic function of the seed, so a run
resumed at step ``n`` sees batch ``n`` of the same stream an uninterrupted run would have seen. The position
(batches consumed) is saved with every checkpoint.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from fiat_jax.errors import UserError

try:  # imported here, not lazily: gin configurables must be registered before gin locks the config
    from fiat_jax.data import feature_converters as _feature_converters
except ImportError:  # the data package is optional for the trainer
    _feature_converters = None

_log = logging.getLogger(__name__)


def feature_converter_for(model_kind: str, *, pack: bool = False) -> Any:
    """seqio's converter for a model kind: enc-dec, or prefix LM with loss on targets only.

    Delegates to ``fiat_jax.data.feature_converters.get_feature_converter`` (the project's one place for this).
    """
    if _feature_converters is not None:
        return _feature_converters.get_feature_converter(model_kind=model_kind, pack=pack)
    # lazy: seqio pulls in TensorFlow (seconds): only when a task is read
    import seqio

    if model_kind == "encoder_decoder":
        return seqio.EncDecFeatureConverter(pack=pack)
    if model_kind == "decoder":
        return seqio.PrefixLMFeatureConverter(pack=pack, loss_on_targets_only=True)
    raise UserError(f"unknown model_kind {model_kind!r} (expected 'encoder_decoder' or 'decoder')")


def get_task(name: str) -> Any:
    # lazy: seqio pulls in TensorFlow (seconds): only when a task is read
    import seqio

    try:
        return seqio.get_mixture_or_task(name)
    except ValueError as err:
        raise UserError(f"seqio task or mixture {name!r} is not registered "
                        f"(is tasks.register_all() bound / the task name spelled right?)") from err


def train_dataset(*, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], split: str,
                  global_batch_size: int, feature_converter: Any, seed: int, start_batch: int = 0,
                  shuffle: bool = True, use_cached: bool = False, task: Any = None) -> Any:
    """The host's batches (``global_batch_size / process_count`` rows) from ``start_batch`` on, repeated forever.

    ``task``: a seqio Task or Mixture object used as it is; None looks ``mixture_or_task_name`` up in the registry."""
    # lazy: seqio pulls in TensorFlow (seconds): only when a task is read
    import seqio
    # lazy: TensorFlow takes seconds to import: only when a dataset is built
    import tensorflow as tf

    task = get_task(mixture_or_task_name) if task is None else task
    hosts = jax.process_count()
    if global_batch_size % hosts:
        raise UserError(f"batch size {global_batch_size} is not divisible by {hosts} hosts")
    shard = seqio.ShardInfo(index=jax.process_index(), num_shards=hosts) if hosts > 1 else None
    ds = task.get_dataset(sequence_length=dict(task_feature_lengths), split=split, use_cached=use_cached,
                          shuffle=shuffle, seed=seed, shard_info=shard, num_epochs=None)
    ds = feature_converter(ds, dict(task_feature_lengths))
    ds = ds.batch(global_batch_size // hosts, drop_remainder=True)
    if start_batch:
        ds = ds.skip(start_batch)
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options)
    return ds.prefetch(tf.data.AUTOTUNE)


def numpy_batches(ds: Any) -> Iterator[dict[str, np.ndarray]]:
    for batch in ds.as_numpy_iterator():
        yield {k: np.asarray(v) for k, v in batch.items()}


class Prefetcher:
    """A daemon thread that pulls host batches and places them on the mesh ``depth`` steps ahead.

    ``wait_s`` accumulates the time the consumer spent blocked on input, so the trainer can report the input share
    of step time.
    """

    _DONE = object()

    def __init__(self, batches: Iterator[Mapping[str, np.ndarray]], place: Callable[[Mapping[str, np.ndarray]], Any],
                 *, depth: int = 2):
        self._batches = batches
        self._place = place
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self.wait_s = 0.0
        self._thread = threading.Thread(target=self._run, name="fiat-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for batch in self._batches:
                item = self._place(batch)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(self._DONE)
        except BaseException as err:  # surfaced in the consumer thread
            self._queue.put(err)

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> Any:
        start = time.perf_counter()
        item = self._queue.get()
        self.wait_s += time.perf_counter() - start
        if item is self._DONE:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._thread.join(timeout=5)


def device_placer(sharding: jax.sharding.Sharding) -> Callable[[Mapping[str, np.ndarray]], dict[str, jax.Array]]:
    """Host-local numpy batch -> global jax arrays sharded over the mesh's batch axes (multi-host safe)."""

    def place(batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}

    return place
