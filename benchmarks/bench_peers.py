"""fiat_jax's train step against PyTorch + peft and Tunix + qwix on identical shapes, in one run.

SmolLM2-135M shape, random init, fp32, batch 8 x 256 tokens, LoRA r=8 alpha=16 on q/k/v/o; each step runs in its own
process so peak memory is per configuration. PyTorch comes from the `reference` extra in .venv; Tunix from its own
venv (.venv-tunix), created on first use from the pinned stack plus google-tunix==0.1.7.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

from benchmarks.common import BenchResult, run_result_script

ROOT = pathlib.Path(__file__).resolve().parents[1]
TUNIX_VENV = ROOT / ".venv-tunix"
TUNIX_PINS = ["jax==0.10.2", "jaxlib==0.10.2", "flax==0.12.8", "optax==0.2.8", "qwix==0.1.8", "numpy==2.4.6",
              "google-tunix==0.1.7"]


def ensure_tunix_venv() -> pathlib.Path | None:
    python = TUNIX_VENV / "bin" / "python"
    if python.exists():
        return python
    print("  creating .venv-tunix (one time)...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(TUNIX_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *TUNIX_PINS], check=True)
    except subprocess.CalledProcessError as err:
        print(f"  could not build .venv-tunix: {err}", flush=True)
        return None
    return python


def run_step(python: str | pathlib.Path, script: str, mode: str, steps: int, seq_len: int) -> dict | None:
    return run_result_script(script, ["--mode", mode, "--steps", str(steps), "--seq_len", str(seq_len)],
                             python=python, timeout=1800)


def run(*, quick: bool = False) -> list[BenchResult]:
    from benchmarks.common import matmul_peak_flops
    from benchmarks.peers.common import BATCH, SMOLLM2_135M, train_flops_per_step

    steps, seq_len = (1, 64) if quick else (3, 256)
    peak, _ = matmul_peak_flops()
    measured: dict[tuple[str, str], dict] = {}
    peers = [(sys.executable, "fiat_step.py", "fiat_jax")]
    try:
        import torch  # noqa: F401
        import peft  # noqa: F401
        peers.append((sys.executable, "torch_peft_step.py", "torch+peft"))
    except ImportError:
        print("  torch/peft not installed (pip install -e '.[reference]'); skipping that peer", flush=True)
    tunix = ensure_tunix_venv()
    if tunix:
        peers.append((tunix, "tunix_qwix_step.py", "tunix+qwix"))
    for mode in ("lora", "full"):
        for python, script, name in peers:
            result = run_step(python, script, mode, steps, seq_len)
            if result:
                measured[(name, mode)] = result
                flops = train_flops_per_step(**SMOLLM2_135M, batch=BATCH, seq_len=seq_len, lora=mode == "lora")
                result["mfu"] = flops / result["step_s"] / peak
                print(f"  {name:11} {mode}: {result['step_s']:.2f} s/step, {result['mfu']:.0%} of matmul peak, "
                      f"peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
    results: list[BenchResult] = []
    ours = measured.get(("fiat_jax", "lora"))
    for mode in ("lora", "full"):
        mine = measured.get(("fiat_jax", mode))
        if mine:
            results.append(BenchResult(f"fiat_jax {mode} step MFU (SmolLM2-135M shape)", mine["mfu"] * 100, "%",
                                       target=75.0 if mode == "full" else None, detail=mine))
    others = {name: r for (name, mode), r in measured.items() if mode == "lora" and name != "fiat_jax"}
    if ours and others:
        fastest_name, fastest = min(others.items(), key=lambda kv: kv[1]["step_s"])
        results.append(BenchResult(f"LoRA step speed-up vs fastest peer ({fastest_name})",
                                   fastest["step_s"] / ours["step_s"], "x", target=1.3,
                                   detail={name: r["step_s"] for name, r in others.items()}))
        lowest_peer_mem = min(r["peak_rss_mb"] for r in others.values())
        results.append(BenchResult("LoRA peak memory vs lowest peer", ours["peak_rss_mb"] / lowest_peer_mem, "x",
                                   target=1.0, lower_is_better=True,
                                   detail={name: r["peak_rss_mb"] for name, r in others.items()}
                                   | {"fiat_jax": ours["peak_rss_mb"]}))
    full = measured.get(("fiat_jax", "full"))
    if ours and full:
        results.append(BenchResult("fiat_jax LoRA vs full step speed-up", full["step_s"] / ours["step_s"], "x",
                                   target=1.3))
        results.append(BenchResult("fiat_jax LoRA memory saving vs full",
                                   100 * (1 - ours["peak_rss_mb"] / full["peak_rss_mb"]), "%", target=40.0))
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    for r in run(quick="--quick" in sys.argv):
        print(r)
