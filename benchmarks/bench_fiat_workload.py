"""FIAT student LoRA training on real rows: useful tokens per second, fiat_jax against PyTorch + peft.

The workload FIAT actually trains: XCOPA and MGSM rows (``benchmarks/fiat_rows.py``: instruction + input +
reasoning, a target of a few tokens, their real length spread), LoRA r=8 alpha=16 on the attention projections,
fp32, random init at the SmolLM2-135M shape (decoder-only prefix LM) and the T5 v1.1-small shape (enc-dec).
*Useful* tokens are the rows' real input + target tokens, so padding, and compute spent where no loss falls,
count as lost time. fiat_jax trains as its student path does (packed, the LM head only at the loss positions);
PyTorch + peft the way its users do (pad to the longest row in the batch, labels -100 on inputs and padding,
the model's own loss over its full logits). Both peers get the same token ids; each runs in its own process
with bench_peers' environment, after one warm-up (compile) step.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys
import tempfile

from benchmarks.common import BenchResult, run_result_script

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGETS = {"decoder": 2.5, "t5": 2.0}


def rows_file(n: int) -> pathlib.Path:
    """The first ``n`` tokenised rows as JSON, cached by the raw rows' contents (tokenising takes a while)."""
    from benchmarks import fiat_rows

    key = hashlib.sha256(json.dumps(fiat_rows.raw_rows()).encode()).hexdigest()[:16]
    path = pathlib.Path(tempfile.gettempdir()) / f"fiat_workload_rows_{key}_{n}.json"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(fiat_rows.token_rows(n)))
        tmp.replace(path)
    return path


def run_peer(script: str, arch: str, rows: pathlib.Path, steps: int, batch: int) -> dict | None:
    return run_result_script(script, ["--arch", arch, "--rows", str(rows), "--steps", str(steps),
                                      "--batch", str(batch)])


def run(*, quick: bool = False, archs: tuple[str, ...] = ("decoder", "t5")) -> list[BenchResult]:
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        print("  torch/peft not installed (pip install -e '.[reference]'); no workload comparison", flush=True)
        return []
    steps, batch = (2, 4) if quick else (4, 8)
    # fiat_jax packs about two rows per sequence: enough rows for its batches, and PyTorch's take a prefix.
    rows = rows_file(4 * batch * (steps + 1))
    results = []
    for arch in archs:
        ours = run_peer("workload_fiat.py", arch, rows, steps, batch)
        theirs = run_peer("workload_torch.py", arch, rows, steps, batch)
        for r in (ours, theirs):
            if r:
                print(f"  {r['peer']:10} {arch}: {r['useful_tokens_per_s']:.0f} useful tokens/s "
                      f"({r['step_s']:.2f} s/step, {r['useful_per_step']:.0f} useful tokens/step), "
                      f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
        if ours and theirs:
            name = "SmolLM2-135M" if arch == "decoder" else "T5-small"
            results.append(BenchResult(
                f"FIAT-row LoRA useful tokens/s vs PyTorch+peft ({name} shape)",
                ours["useful_tokens_per_s"] / theirs["useful_tokens_per_s"], "x", target=TARGETS[arch],
                detail={"fiat_jax": ours, "torch+peft": theirs}))
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    quick = "--quick" in sys.argv
    archs = tuple(a for a in ("decoder", "t5") if a in sys.argv) or ("decoder", "t5")
    for r in run(quick=quick, archs=archs):
        print(r.name, f"{r.value:.2f}x", "target", r.target, json.dumps(r.detail))
