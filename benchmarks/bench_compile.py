"""Cold compile time of the programs a sweep run compiles, with the layers under one ``jax.lax.scan`` against the
unrolled loop (``FIAT_JAX_SCAN_LAYERS=0``), and the run time of each compiled program beside it.

Why: a FIAT sweep is many short runs, and on a 30-layer model (SmolLM2-135M) the cold XLA compile of the train
step and of the generation loop was most of each run (README, Performance). Each (program, layout) is measured in
its own fresh process with the persistent compile cache off, so every compile is cold; programs: the LoRA train
step (FIAT-row shape: batch 8 x 512 tokens, loss on the targets only) of the decoder and of T5-small, the
decoder's greedy generation (8 prompts x 256 tokens, 16 new tokens) and T5's. Compile time of a train step = JAX
tracing + lowering plus XLA's compile, timed apart (``lower`` then ``compile``); of a generation = its first call
(compile + run) minus a second, warm call of the same shape.

python benchmarks/bench_compile.py [--quick]
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, TUNED_ENV, BenchResult  # noqa: E402

PROGRAMS = ("decoder_train", "t5_train", "decoder_generate", "t5_generate")


def _model(kind: str, quick: bool):
    import dataclasses

    from flax import nnx

    from benchmarks.bench_train_step import SMOLLM2_135M, T5_SMALL, make_model

    shape = SMOLLM2_135M if kind == "decoder" else T5_SMALL
    if quick:
        shape = dataclasses.replace(shape, layers=4)
    return make_model(shape, nnx.Rngs(0)), shape


def _timed_twice(fn) -> tuple[float, float]:
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    start = time.perf_counter()
    fn()
    return first, time.perf_counter() - start


def child(program: str, quick: bool) -> dict:
    """``{first_s, warm_s}`` of one program in this (fresh, cache-off) process."""
    import jax
    import numpy as np

    from fiat_jax import compile_cache

    compile_cache.configure(cache_dir="off")
    kind = program.split("_")[0]
    model, shape = _model(kind, quick)
    rng = np.random.default_rng(0)
    b, length, target = 8, (128 if quick else 512), 8
    if program.endswith("_train"):
        from benchmarks.peers.fiat_step import apply_lora, compiled_step
        from fiat_jax.train import train_step

        model, trainable = apply_lora(model)
        if kind == "decoder":  # a prefix LM row: input then a short target; loss on the target only
            tokens = rng.integers(2, shape.vocab, (b, length + 1), dtype=np.int32)
            weights = np.zeros((b, length), np.int32)
            weights[:, -target:] = 1
            batch = {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
                     "decoder_loss_weights": weights}
            config = train_step.StepConfig(loss_positions_per_row=target)
        else:
            batch = {"encoder_input_tokens": rng.integers(2, shape.vocab, (b, length), dtype=np.int32),
                     "decoder_input_tokens": rng.integers(2, shape.vocab, (b, target), dtype=np.int32),
                     "decoder_target_tokens": rng.integers(2, shape.vocab, (b, target), dtype=np.int32),
                     "decoder_loss_weights": np.ones((b, target), np.int32)}
            config = None
        compiled, mesh, args = compiled_step(model, batch, trainable=trainable, step_config=config)
        with jax.set_mesh(mesh):  # the cold compile's two parts: JAX tracing + lowering, then XLA's compile
            start = time.perf_counter()
            lowered = compiled.fn.lower(*args)
            lower_s = time.perf_counter() - start
            lowered.compile()
            xla_s = time.perf_counter() - start - lower_s

        def one():
            with jax.set_mesh(mesh):
                args[0], args[1], args[2], metrics = compiled.fn(*args)
                jax.block_until_ready(metrics["loss"])
    else:
        from fiat_jax.models import decoding

        prompts = rng.integers(2, shape.vocab, (b, length // 2), dtype=np.int32)

        def one():
            decoding.generate(model, prompts, max_new_tokens=16)
    first, warm = _timed_twice(one)
    out = {"first_s": first, "warm_s": warm, "compile_s": max(first - warm, 0.0)}
    if program.endswith("_train"):  # JAX keeps the executable compiled above: the first call only re-traces
        out.update(trace_lower_s=lower_s, xla_compile_s=xla_s, compile_s=lower_s + xla_s)
    return out


def measure(program: str, scan: bool, quick: bool) -> dict | None:
    env = dict(os.environ, **TUNED_ENV, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT),
               FIAT_JAX_SCAN_LAYERS="1" if scan else "0")
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, __file__, "--child", program] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    print(f"  {program} scan={scan} failed:\n{out.stderr[-2000:]}", flush=True)
    return None


def run(*, quick: bool = False) -> list[BenchResult]:
    results = []
    for program in PROGRAMS:
        unrolled, scanned = measure(program, False, quick), measure(program, True, quick)
        if not (unrolled and scanned):
            continue
        split = "" if "trace_lower_s" not in unrolled else (
            f" (trace+lower {unrolled['trace_lower_s']:.1f} vs {scanned['trace_lower_s']:.1f} s, XLA compile "
            f"{unrolled['xla_compile_s']:.1f} vs {scanned['xla_compile_s']:.1f} s)")
        print(f"  {program:17}: compile {unrolled['compile_s']:.1f} s unrolled vs {scanned['compile_s']:.1f} s "
              f"scanned{split}; warm call {unrolled['warm_s']:.2f} s vs {scanned['warm_s']:.2f} s", flush=True)
        detail = {"unrolled": unrolled, "scanned": scanned}
        results.append(BenchResult(f"{program}: cold compile, layer scan / unrolled",
                                   scanned["compile_s"] / max(unrolled["compile_s"], 1e-9), "x",
                                   lower_is_better=True, detail=detail))
        results.append(BenchResult(f"{program}: warm call, layer scan / unrolled",
                                   scanned["warm_s"] / max(unrolled["warm_s"], 1e-9), "x",
                                   lower_is_better=True, detail=detail))
    return results


if __name__ == "__main__":
    if "--child" in sys.argv:
        print("RESULT " + json.dumps(child(sys.argv[sys.argv.index("--child") + 1], "--quick" in sys.argv)))
    else:
        for res in run(quick="--quick" in sys.argv):
            print(f"{res.name}: {res.value:.3g} {res.unit}")
