"""seqio examples/s of the multilingual training mixtures against the trainer's consumption rate, in one run.

The producer is the trainer's own input stream (``fiat_jax.train.input_pipeline.train_dataset``: the registered
mixture -> shuffle -> enc-dec feature converter -> batch -> prefetch) over the real data in ``../shared/data``
(``tasks.register_all()``), pulled on the host for ``BATCHES`` batches after the first (graph building, TFDS open
and the shuffle buffer fill are reported apart as ``first_batch_s``). The consumer is the trainer's jitted full
fp32 train step of the real T5 v1.1-small model (``fiat_jax.models``, ``T5Config()`` defaults) on a batch from
that same stream. The figure is producer examples/s / consumer examples/s for each mixture; >= 1 means the step
never waits for input (with margin to spare, since the producer shares the CPU with the step in a real run).

python benchmarks/bench_input_pipeline.py [--quick]
"""

from __future__ import annotations

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import BenchResult  # noqa: E402

MIXTURES = ("mgsm", "xcopa", "tydiqa_goldp")
LENGTHS = {"inputs": 256, "targets": 128}
BATCH_SIZE = 8
TARGET_RATIO = 1.0


def pipeline_rate(name: str, *, batches: int) -> tuple[float, float, dict]:
    """``(examples/s after the first batch, first-batch seconds, one batch)`` of the trainer's stream."""
    from fiat_jax.train import input_pipeline

    start = time.perf_counter()
    ds = input_pipeline.train_dataset(mixture_or_task_name=name, task_feature_lengths=LENGTHS, split="train",
                                      global_batch_size=BATCH_SIZE,
                                      feature_converter=input_pipeline.feature_converter_for("encoder_decoder"),
                                      seed=0)
    it = input_pipeline.numpy_batches(ds)
    first = next(it)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * BATCH_SIZE / (time.perf_counter() - start), first_s, first


def consumer_rate(batch: dict, *, steps: int) -> tuple[float, float]:
    """``(examples/s, seconds/step)`` of the full T5-small train step on ``batch``."""
    from flax import nnx

    from benchmarks.peers.fiat_step import train_step_seconds
    from fiat_jax.models import build_model
    from fiat_jax.models.t5 import T5Config

    model = build_model(config=T5Config(), seed=0)
    times, _, _ = train_step_seconds(model, batch, trainable=nnx.Param, steps=steps)
    step_s = sorted(times)[len(times) // 2]
    return BATCH_SIZE / step_s, step_s


def run(*, quick: bool = False) -> list[BenchResult]:
    try:
        import tasks

        tasks.register_all()
    except Exception as err:  # no shared data on this machine: say so, no figure
        print(f"  skipped: tasks.register_all() failed ({type(err).__name__}: {err})", flush=True)
        return []
    batches = 10 if quick else 50
    produced = {}
    batch = None
    for name in MIXTURES:
        rate, first_s, first = pipeline_rate(name, batches=batches)
        produced[name] = {"examples_per_s": round(rate, 1), "first_batch_s": round(first_s, 2)}
        batch = batch or first
        print(f"  {name}: {produced[name]}", flush=True)
    consumed, step_s = consumer_rate(batch, steps=1 if quick else 3)
    print(f"  T5-small full fp32 train step, batch {BATCH_SIZE} x {LENGTHS}: {step_s:.2f} s/step = "
          f"{consumed:.2f} examples/s", flush=True)
    results = []
    for name, p in produced.items():
        results.append(BenchResult(f"input pipeline vs T5-small step consumption ({name})",
                                   p["examples_per_s"] / consumed, "x", target=TARGET_RATIO,
                                   detail=p | {"consumer_examples_per_s": round(consumed, 2),
                                               "consumer_step_s": round(step_s, 3), "lengths": LENGTHS,
                                               "batch": BATCH_SIZE}))
    return results


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(r)
