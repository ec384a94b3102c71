"""A stand-in for ``fiat run`` in the sweep tests: gin-configured like the real CLI, trains nothing.

It "trains" ``steps`` steps, saving a checkpoint after each (so a killed run resumes where it stopped), then
writes final evaluation metrics per language to metrics.jsonl (or results.json), as the trainer does. Every start
is logged to MODEL_DIR/invocations.txt so tests can see which runs were (re)started and from which step.

    python tests/sweep_fake_run.py run --gin_file=tests/sweep_fake/base.gin --gin.MODEL_DIR=... --gin.SEED=0
"""
import argparse
import json
import math
import os
import pathlib
import sys
import time

import gin

from fiat_jax import gin_utils
from fiat_jax.sweeps import run_results


@gin.configurable
def fake_run(*, model_dir: str = gin.REQUIRED, num_train_examples: int = gin.REQUIRED, seed: int = gin.REQUIRED,
             quality: float = 0.3, steps: int = 3, step_s: float = 0.0, languages=("sw", "bn"),
             write_results_json: bool = False, fail: bool = False) -> None:
    root = pathlib.Path(model_dir)
    root.mkdir(parents=True, exist_ok=True)
    ckpt = root / "checkpoint.json"
    start = json.loads(ckpt.read_text())["step"] if ckpt.is_file() else 0
    with open(root / "invocations.txt", "a") as f:
        f.write(f"start={start} pid={os.getpid()}\n")
    if fail:
        raise SystemExit("fake_run: failing as configured")
    for step in range(start, steps):
        time.sleep(step_s)
        tmp = root / "checkpoint.json.tmp"
        tmp.write_text(json.dumps({"step": step + 1}))
        os.replace(tmp, ckpt)
    # A deterministic score: better with more data, a known per-seed and per-language offset.
    metrics = {lang: {"accuracy": min(1.0, quality + 0.1 * math.log10(num_train_examples) + 0.02 * seed + 0.05 * i),
                      "f1": 0.5 + 0.01 * seed}
               for i, lang in enumerate(languages)}
    tokens, params = steps * 64 * num_train_examples, 1234
    if write_results_json:
        run_results.write_run_results(root, metrics=metrics, tokens_seen=tokens, params_trained=params)
    else:
        with open(root / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": steps, "kind": "train", "loss": 1.0, "tokens_seen": tokens,
                                "params_trained": params}) + "\n")
            for lang, values in metrics.items():
                f.write(json.dumps({"step": steps, "kind": "eval", "language": lang, "metrics": values}) + "\n")


def main(argv=None) -> int:
    bindings, rest = gin_utils.split_gin_flags(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser()
    parser.add_argument("subcommand", nargs="?")
    parser.add_argument("--gin_file", action="append", default=[])
    parser.add_argument("--gin_search_paths", action="append", default=[])
    args = parser.parse_args(rest)
    gin_utils.parse_gin(gin_files=args.gin_file, bindings=bindings, gin_search_paths=args.gin_search_paths)
    fake_run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
