"""`make run` end to end against an older commit, as a ratio of wall times taken in the same session.

Why: issue 17's target is the quickstart's wall time as a share of the code's wall time when the target was set
(f21513f), same sizes (24 training and 12 test items per language: ``--gin.NUM_EVAL_EXAMPLES=12``). The old
commit is checked out into a temporary git worktree and run with this checkout's venv (its package pins are the
same, less the qwix extra it never imports) by putting the worktree first on ``PYTHONPATH``. Three runs, one after
another so that none shares the 2 cores with another: the baseline (which has no persistent compilation cache);
this code with an empty compilation cache (a new user's first ``make run``); this code again in a fresh model
directory with the cache the second run filled (a user's next quickstart or sweep run). Each is timed with
the wall clock around the whole ``fiat run`` process; the methods' accuracies are printed so a
reader can see that the runs did the same work. TFDS preparation of XCOPA is shared (the first run pays it).

python benchmarks/bench_quickstart.py [--baseline f21513f] [--num_eval_examples 12]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
BASELINE = "f21513f"


def timed_run(*, cwd: pathlib.Path, model_dir: pathlib.Path, num_eval: int, env: dict[str, str],
              extra: list[str], log: pathlib.Path) -> float:
    """Wall seconds of one ``fiat run --gin_file=runs/quickstart.gin`` process (its output goes to ``log``)."""
    cmd = [str(ROOT / ".venv" / "bin" / "fiat"), "run", "--gin_file=runs/quickstart.gin",
           f"--gin.MODEL_DIR={model_dir}", f"--gin.NUM_EVAL_EXAMPLES={num_eval}", *extra]
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}); its output is in {log}")
    return wall


def accuracies(model_dir: pathlib.Path) -> dict[str, float]:
    """Each method's accuracy averaged over languages from its results.json (the quickstart table's mean)."""
    from fiat_jax.methods.results import language_average

    found = {}
    for path in sorted(model_dir.glob("*/results.json")):
        mean = language_average(json.loads(path.read_text()).get("metrics", {})).get("accuracy")
        if mean is not None:
            found[path.parent.name] = round(mean, 1)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default=BASELINE, help="the commit whose make run is the reference")
    parser.add_argument("--num_eval_examples", type=int, default=12, help="test items per language")
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench_quickstart_"))
    base_tree = work / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base_tree), args.baseline],
                   check=True, stdout=subprocess.DEVNULL)
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FIAT_JAX_COMPILE_CACHE")}
        cache = work / "jax_cache"
        runs = {}
        print(f"logs and model directories in {work}", flush=True)
        runs["baseline"] = timed_run(cwd=base_tree, model_dir=work / "base", num_eval=args.num_eval_examples,
                                     env={**env, "PYTHONPATH": str(base_tree)}, extra=[], log=work / "base.log")
        print(f"baseline {args.baseline}: {runs['baseline']:.1f} s", flush=True)
        for name, model_dir in (("cold", work / "cold"), ("warm", work / "warm")):
            runs[name] = timed_run(cwd=ROOT, model_dir=model_dir, num_eval=args.num_eval_examples, env=env,
                                   extra=[f"--compile_cache={cache}"], log=work / f"{name}.log")
            print(f"this code, {name} compilation cache: {runs[name]:.1f} s "
                  f"({runs[name] / runs['baseline']:.2f}x the baseline)", flush=True)
        print(json.dumps({"wall_s": {k: round(v, 1) for k, v in runs.items()},
                          "ratio_to_baseline": {k: round(runs[k] / runs["baseline"], 3) for k in ("cold", "warm")},
                          "accuracy": {n: accuracies(work / n) for n in ("base", "cold", "warm")},
                          "target": 0.40}, indent=1))
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], check=False)


if __name__ == "__main__":
    sys.exit(main())
