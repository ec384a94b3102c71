"""Activation rematerialisation: peak memory and step time of the LoRA step with remat per layer, against the
same step keeping every activation (``remat="none"``), SmolLM2-135M shape, 8 x 256, fp32.

Each policy runs one timed step in its own process (``peers/fiat_step.py --remat``, bench_peers' discipline), so
process peak RSS is per configuration; XLA's own buffer account of the compiled step (temporaries = activations,
plus arguments and outputs) is reported beside it, as it does not include the compiler's or runtime's memory.
"""

from __future__ import annotations

import sys

from benchmarks.bench_peers import ROOT


def run(*, quick: bool = False) -> list:
    import json
    import os
    import subprocess

    from benchmarks.common import TUNED_ENV, BenchResult

    seq_len = 64 if quick else 256
    measured = {}
    for remat in ("none", "full", "save_dots"):
        env = dict(os.environ, **TUNED_ENV, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
        cmd = [sys.executable, str(ROOT / "benchmarks" / "peers" / "fiat_step.py"), "--mode", "lora", "--steps", "1",
               "--seq_len", str(seq_len), "--remat", remat]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"  remat={remat} failed:\n{out.stderr[-2000:]}", flush=True)
            continue
        r = measured[remat] = json.loads(line[len("RESULT "):])
        print(f"  remat={remat:9}: step {r['step_s']:.2f} s, XLA peak {r.get('peak_mb', float('nan')):.0f} MB "
              f"(activations {r.get('temp_mb', float('nan')):.0f} MB), process peak RSS {r['peak_rss_mb']:.0f} MB",
              flush=True)
    results = []
    base = measured.get("none")
    for remat in ("full", "save_dots"):
        r = measured.get(remat)
        if base and r and "peak_mb" in r:
            results.append(BenchResult(f"LoRA remat={remat} peak memory saving vs no remat (XLA buffers)",
                                       100 * (1 - r["peak_mb"] / base["peak_mb"]), "%",
                                       target=40.0 if remat == "full" else None,
                                       detail={"step_s": r["step_s"], "step_s_no_remat": base["step_s"],
                                               "peak_mb": r["peak_mb"], "peak_mb_no_remat": base["peak_mb"],
                                               "peak_rss_mb": r["peak_rss_mb"],
                                               "peak_rss_mb_no_remat": base["peak_rss_mb"]}))
            results.append(BenchResult(f"LoRA remat={remat} step time vs no remat", r["step_s"] / base["step_s"],
                                       "x", detail={"step_s": r["step_s"], "step_s_no_remat": base["step_s"]}))
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    for r in run(quick="--quick" in sys.argv):
        print(f"{r.name}: {r.value:.3g} {r.unit} {r.detail}")
