"""Activation rematerialisation: peak memory and step time of the LoRA step with remat per layer, against the full
fine-tuning step and the LoRA step that keep every activation; SmolLM2-135M shape, 8 x 256, fp32.

Each configuration runs one timed step in its own process (``peers/fiat_step.py --mode --remat``, bench_peers'
discipline), so process peak RSS is per configuration; XLA's own buffer account of the compiled step (temporaries
= activations, plus arguments and outputs) is reported beside it, as it leaves out the compiler's and runtime's
memory. Without remat, LoRA saves only the gradients and Adam state of the frozen weights (~30 %): at 8 x 256 the
30 layers' fp32 activations dominate; remat keeps one layer's input per layer and recomputes the rest. With the
loss on every position the LM head's ``[2048, 49k]`` fp32 logits, their softmax and gradient are the next largest
buffers: the last configuration also runs the head + cross-entropy in rematerialised chunks of ``HEAD_CHUNK``
positions (``StepConfig.head_chunk_size``).
"""

from __future__ import annotations

import sys

from benchmarks.common import ROOT, BenchResult, run_result_script

HEAD_CHUNK = 256  # positions per chunk of the LM head + cross-entropy (StepConfig.head_chunk_size)

# (mode, remat, LM head chunk: 0 = one [B*T, V] head call)
CONFIGS = (("full", "none", 0), ("lora", "none", 0), ("lora", "full", 0), ("lora", "save_dots", 0),
           ("lora", "full", HEAD_CHUNK))


def measure(mode: str, remat: str, seq_len: int, steps: int = 1, head_chunk: int = 0) -> dict | None:
    return run_result_script("fiat_step.py", ["--mode", mode, "--steps", str(steps), "--seq_len", str(seq_len),
                                              "--remat", remat, "--head_chunk", str(head_chunk)], timeout=1800)


def run(*, quick: bool = False, memory_only: bool = False,
        configs: tuple[tuple[str, str, int], ...] = CONFIGS) -> list[BenchResult]:
    seq_len = 64 if quick else 256
    measured = {}
    for mode, remat, chunk in configs:
        r = measure(mode, remat, seq_len, steps=0 if memory_only else 1, head_chunk=chunk)
        if r is None:
            continue
        measured[(mode, remat, chunk)] = r
        print(f"  {mode:4} remat={remat:9} head_chunk={chunk:<4}: step {r['step_s']:.2f} s, XLA buffers "
              f"{r.get('peak_mb', 0):.0f} MB (activations {r.get('temp_mb', 0):.0f} MB), process peak RSS "
              f"{r['peak_rss_mb']:.0f} MB", flush=True)
    results = []
    full, lora = measured.get(("full", "none", 0)), measured.get(("lora", "none", 0))
    for remat, chunk in (("full", 0), ("save_dots", 0), ("full", HEAD_CHUNK)):
        r = measured.get(("lora", remat, chunk))
        if not r:
            continue
        what = f"remat={remat}" + (f" + head chunks of {chunk}" if chunk else "")
        detail = {"step_s": r["step_s"], "xla_mb": r.get("peak_mb"), "peak_rss_mb": r["peak_rss_mb"]}
        if full:
            detail |= {"full_step_s": full["step_s"], "full_xla_mb": full.get("peak_mb"),
                       "full_peak_rss_mb": full["peak_rss_mb"]}
            results.append(BenchResult(f"LoRA {what} memory saving vs full step (XLA buffers)",
                                       100 * (1 - r["peak_mb"] / full["peak_mb"]), "%",
                                       target=40.0 if remat == "full" else None, detail=detail))
            results.append(BenchResult(f"LoRA {what} memory saving vs full step (peak RSS)",
                                       100 * (1 - r["peak_rss_mb"] / full["peak_rss_mb"]), "%", detail=detail))
        if lora:
            results.append(BenchResult(f"LoRA {what} step time vs LoRA without remat",
                                       r["step_s"] / lora["step_s"], "x", lower_is_better=True,
                                       detail=detail | {"lora_step_s": lora["step_s"]}))
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    only_lora_full = "--lora_full_only" in sys.argv  # the shortest check: full step vs LoRA remat=full
    for res in run(quick="--quick" in sys.argv, memory_only="--memory_only" in sys.argv,
                   configs=(("full", "none", 0), ("lora", "full", HEAD_CHUNK)) if only_lora_full else CONFIGS):
        print(f"{res.name}: {res.value:.3g} {res.unit} {res.detail}")
