"""Activation rematerialisation: peak memory and step time of the LoRA step with remat per layer, against the full
fine-tuning step and the LoRA step that keep every activation; SmolLM2-135M shape, 8 x 256, fp32.

Each configuration runs one timed step in its own process (``peers/fiat_step.py --mode --remat``, bench_peers'
discipline), so process peak RSS is per configuration; XLA's own buffer account of the compiled step (temporaries
= activations, plus arguments and outputs) is reported beside it, as it leaves out the compiler's and runtime's
memory. Without remat, LoRA saves only the gradients and Adam state of the frozen weights (~30 %): at 8 x 256 the
30 layers' fp32 activations dominate; remat keeps one layer's input per layer and recomputes the rest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks.bench_peers import ROOT
from benchmarks.common import TUNED_ENV, BenchResult

CONFIGS = (("full", "none"), ("lora", "none"), ("lora", "full"), ("lora", "save_dots"))


def measure(mode: str, remat: str, seq_len: int, steps: int = 1) -> dict | None:
    env = dict(os.environ, **TUNED_ENV, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "peers" / "fiat_step.py"), "--mode", mode, "--steps", str(steps),
           "--seq_len", str(seq_len), "--remat", remat]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        print(f"  {mode} remat={remat} failed:\n{out.stderr[-2000:]}", flush=True)
        return None
    return json.loads(line[len("RESULT "):])


def run(*, quick: bool = False, memory_only: bool = False,
        configs: tuple[tuple[str, str], ...] = CONFIGS) -> list[BenchResult]:
    seq_len = 64 if quick else 256
    measured = {}
    for mode, remat in configs:
        r = measure(mode, remat, seq_len, steps=0 if memory_only else 1)
        if r is None:
            continue
        measured[(mode, remat)] = r
        print(f"  {mode:4} remat={remat:9}: step {r['step_s']:.2f} s, XLA buffers {r.get('peak_mb', 0):.0f} MB "
              f"(activations {r.get('temp_mb', 0):.0f} MB), process peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    results = []
    full, lora = measured.get(("full", "none")), measured.get(("lora", "none"))
    for remat in ("full", "save_dots"):
        r = measured.get(("lora", remat))
        if not r:
            continue
        detail = {"step_s": r["step_s"], "xla_mb": r.get("peak_mb"), "peak_rss_mb": r["peak_rss_mb"]}
        if full:
            detail |= {"full_step_s": full["step_s"], "full_xla_mb": full.get("peak_mb"),
                       "full_peak_rss_mb": full["peak_rss_mb"]}
            results.append(BenchResult(f"LoRA remat={remat} memory saving vs full step (XLA buffers)",
                                       100 * (1 - r["peak_mb"] / full["peak_mb"]), "%",
                                       target=40.0 if remat == "full" else None, detail=detail))
            results.append(BenchResult(f"LoRA remat={remat} memory saving vs full step (peak RSS)",
                                       100 * (1 - r["peak_rss_mb"] / full["peak_rss_mb"]), "%", detail=detail))
        if lora:
            results.append(BenchResult(f"LoRA remat={remat} step time vs LoRA without remat",
                                       r["step_s"] / lora["step_s"], "x", lower_is_better=True,
                                       detail=detail | {"lora_step_s": lora["step_s"]}))
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    only_lora_full = "--lora_full_only" in sys.argv  # the shortest check: full step vs LoRA remat=full
    for res in run(quick="--quick" in sys.argv, memory_only="--memory_only" in sys.argv,
                   configs=(("full", "none"), ("lora", "full")) if only_lora_full else CONFIGS):
        print(f"{res.name}: {res.value:.3g} {res.unit} {res.detail}")
