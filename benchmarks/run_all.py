"""`make bench`: run every benchmarks/bench_*.py, print each ratio against its target, save JSON + markdown.

Usage: python benchmarks/run_all.py [--quick] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import pathlib
import platform
import sys
import time
import traceback

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import BenchResult  # noqa: E402


def discover() -> list[str]:
    return sorted(p.stem for p in HERE.glob("bench_*.py"))


def to_markdown(rows: list[BenchResult], errors: dict[str, str]) -> str:
    lines = ["| benchmark | value | target | met |", "|---|---|---|---|"]
    for r in rows:
        target = "" if r.target is None else f"{'<=' if r.lower_is_better else '>='} {r.target:g} {r.unit}"
        met = {True: "yes", False: "**MISS**", None: ""}[r.met]
        lines.append(f"| {r.name} | {r.value:.3g} {r.unit} | {target} | {met} |")
    for name, err in errors.items():
        lines.append(f"| {name} | error: {err} | | **MISS** |")
    return "\n".join(lines) + "\n"


def write_profile(path: pathlib.Path) -> None:
    """The SmolLM2-135M full step traced op by op (benchmarks/profile_step.py): why the MFU is what it is."""
    import subprocess

    from benchmarks.common import TUNED_ENV

    print("== profile_step (SmolLM2-135M full step)", flush=True)
    env = dict(os.environ, **TUNED_ENV)
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, str(HERE / "profile_step.py"), "--model", "smollm2_135m", "--mode", "full", "--out", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    print(proc.stdout if proc.returncode == 0 else f"  profile failed:\n{proc.stderr[-1500:]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller shapes")
    parser.add_argument("--only", nargs="*", default=None, help="benchmark module names (bench_x)")
    parser.add_argument("--no_profile", action="store_true", help="skip the traced SmolLM2 step (profile_step.py)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    names = args.only or discover()
    rows: list[BenchResult] = []
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}  # wall time of each benchmark, to keep `make bench` inside its budget
    started = time.time()
    for name in names:
        print(f"== {name}", flush=True)
        bench_started = time.time()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            results = module.run(quick=args.quick)
        except Exception as err:  # one broken benchmark must not hide the others
            traceback.print_exc()
            errors[name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            continue
        seconds[name] = round(time.time() - bench_started, 1)
        for r in results:
            status = {True: "ok", False: "MISS", None: "--"}[r.met]
            target = "" if r.target is None else f" (target {'<=' if r.lower_is_better else '>='} {r.target:g})"
            print(f"  [{status:4}] {r.name}: {r.value:.3g} {r.unit}{target}", flush=True)
        rows.extend(results)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d")
    if args.quick or args.only:  # a partial run must not overwrite the day's full results
        stamp += "-quick" if args.quick else "-partial"
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    payload = {
        "date": stamp, "seconds": round(time.time() - started, 1), "machine": platform.machine(),
        "cpus": os.cpu_count(), "quick": args.quick,
        "seconds_per_benchmark": seconds,
        "results": [dataclasses.asdict(r) | {"met": r.met} for r in rows], "errors": errors,
    }
    (out_dir / f"{stamp}.json").write_text(json.dumps(payload, indent=2))
    table = to_markdown(rows, errors)
    (out_dir / f"{stamp}.md").write_text(table)
    if not (args.quick or args.only or args.no_profile):
        write_profile(out_dir / f"{stamp}-profile-smollm2_135m-full.md")
    elif not args.no_profile:
        print("(profile skipped in a partial run; run benchmarks/profile_step.py)")
    print("\n" + table)
    print(f"wrote {out_dir / (stamp + '.json')} in {payload['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
