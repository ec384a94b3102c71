"""Shared benchmark helpers: a matmul peak measured in the same run, repeated timings, ratio records.

The machine is shared and noisy, so every figure is a ratio of two measurements taken in one run, repeated, and
reported as median with spread (min..max).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


# XLA:CPU allocates its temporaries afresh each step; with 4 KiB pages the first touch of every page faults, which
# costs ~10 % of a T5-small step. glibc's hugetlb tunable makes malloc ask for transparent huge pages instead. Every
# train-step measurement (ours and the peers') runs in a child process with this environment.
TUNED_ENV = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_result_script(script: str, flags: list[str], *, python: str | os.PathLike = sys.executable,
                      timeout: float = 3600) -> dict | None:
    """Run ``benchmarks/peers/<script> <flags>`` in a fresh process with :data:`TUNED_ENV` (the process discipline
    every step measurement shares) and return its ``RESULT {json}`` line, or None (its stderr tail printed)."""
    env = dict(os.environ, **TUNED_ENV, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    cmd = [str(python), str(ROOT / "benchmarks" / "peers" / script), *flags]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    print(f"  {script} {' '.join(flags)} failed:\n{out.stderr[-2000:]}", flush=True)
    return None


@dataclasses.dataclass
class Timing:
    median_s: float
    min_s: float
    max_s: float
    repeats: int


@dataclasses.dataclass
class BenchResult:
    """One figure: ``value`` in ``unit``; ``target`` is met when value >= target (or <= when lower_is_better)."""

    name: str
    value: float
    unit: str = "x"
    target: float | None = None
    lower_is_better: bool = False
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.value <= self.target if self.lower_is_better else self.value >= self.target


def time_fn(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> Timing:
    """Wall time of ``fn()`` (which must block until its result is ready), median of ``repeats``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return Timing(statistics.median(times), min(times), max(times), repeats)


def matmul_peak_flops(*, n: int = 2048, repeats: int = 7, dtype: str = "float32") -> tuple[float, Timing]:
    """FLOP/s of a jitted n x n fp32 matmul on the default device: the practical roofline for this run."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), dtype=dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype=dtype)
    mm = jax.jit(lambda x, y: x @ y)
    timing = time_fn(lambda: mm(a, b).block_until_ready(), repeats=repeats, warmup=2)
    return 2 * n**3 / timing.min_s, timing
