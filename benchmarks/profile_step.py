"""Where a train step's time goes: one step traced with ``jax.profiler``, every XLA:CPU op attributed to its HLO.

Runs the trainer's jitted step (the same as ``benchmarks/peers/fiat_step.py``) on the SmolLM2-135M or T5-small
shape, traces one warm step, reads the trace with ``jax.profiler.ProfileData`` and joins each executed op (thunk)
with the optimised HLO: its kind (matmul, elementwise/loop fusion, copy/transpose, reduction), its shape and the
JAX operation it came from. Prints the share of op time per kind and the heaviest op groups, and writes the same
as markdown (``--out``). Op times are per-thread busy time (XLA:CPU runs independent ops on two threads at once),
so shares are meaningful and their sum may exceed the wall time.

python benchmarks/profile_step.py --model smollm2_135m --mode full [--seq_len 256] [--out profile.md]
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import re
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

MATMUL, LOOP, COPY, REDUCE, OTHER = "matmul", "elementwise (loop fusion)", "copy / transpose", "reduction", "other"


def build_step(model_name: str, mode: str, seq_len: int, batch_size: int):
    """``(compiled step, mesh, args)`` of the trainer's step for the named shape, placed on one device."""
    import numpy as np
    from flax import nnx

    from benchmarks import bench_train_step
    from benchmarks.peers import fiat_step
    from fiat_jax.models import build_model

    shapes = {"smollm2_135m": bench_train_step.SMOLLM2_135M, "t5_small": bench_train_step.T5_SMALL}
    shape = shapes[model_name]
    model = build_model(config=bench_train_step.model_config(shape), seed=0)
    trainable = nnx.Param
    if mode == "lora":
        model, trainable = fiat_step.apply_lora(model)
    rng = np.random.default_rng(0)
    batch = {"decoder_input_tokens": rng.integers(2, shape.vocab, (batch_size, seq_len), dtype=np.int32),
             "decoder_target_tokens": rng.integers(2, shape.vocab, (batch_size, seq_len), dtype=np.int32),
             "decoder_loss_weights": np.ones((batch_size, seq_len), np.int32)}
    if shape.kind == "encoder_decoder":
        batch["encoder_input_tokens"] = rng.integers(2, shape.vocab, (batch_size, seq_len), dtype=np.int32)
    return fiat_step.compiled_step(model, batch, trainable=trainable)


def hlo_index(hlo_text: str) -> dict[str, tuple[str, str, str]]:
    """Instruction name -> ``(kind, result shape, JAX op name)`` for every instruction of the optimised HLO."""
    bodies: dict[str, str] = {}
    current = None
    for line in hlo_text.splitlines():
        head = re.match(r"^%?([\w.\-]+) \(", line)
        if head:
            current = head.group(1)
            bodies[current] = ""
        elif current is not None:
            bodies[current] += line + "\n"
    index = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\(", line)
        if not m:
            continue
        name, shape, opcode = m.groups()
        called = re.search(r"calls=%([\w.\-]+)", line)
        body = bodies.get(called.group(1), "") if called else ""
        if opcode in ("dot", "convolution") or " dot(" in body or " convolution(" in body:
            kind = MATMUL
        elif opcode in ("copy", "transpose") or (" transpose(" in body and " copy(" in body):
            kind = COPY
        elif opcode == "reduce" or " reduce(" in body:
            kind = REDUCE
        elif opcode == "fusion":
            kind = LOOP
        else:
            kind = OTHER
        op = re.search(r'op_name="([^"]+)"', line)
        index[name] = (kind, shape.split("{")[0], re.sub(r"\d+", "#", op.group(1)) if op else "?")
    return index


def profile(model_name: str, mode: str, seq_len: int, batch_size: int) -> dict:
    import jax
    from jax.profiler import ProfileData

    compiled, mesh, args = build_step(model_name, mode, seq_len, batch_size)
    with jax.set_mesh(mesh):
        index = hlo_index(compiled.fn.lower(*args).compile().as_text())

        def one() -> float:
            start = time.perf_counter()
            args[0], args[1], args[2], metrics = compiled.fn(*args)
            jax.block_until_ready(metrics["loss"])
            return time.perf_counter() - start

        one()  # compile + warm-up
        untraced = one()
        trace_dir = tempfile.mkdtemp(prefix="fiat_profile_")
        with jax.profiler.trace(trace_dir):
            traced = one()
    xplane = next(pathlib.Path(trace_dir).rglob("*.xplane.pb"))
    by_kind: collections.Counter = collections.Counter()
    by_group: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for plane in ProfileData.from_file(str(xplane)).planes:
        for line in plane.lines:
            for event in line.events:
                if event.name not in index:  # runtime events (executor, thread pool), not HLO ops
                    continue
                kind, shape, op = index[event.name]
                by_kind[kind] += event.duration_ns / 1e9
                by_group[(kind, shape, op)] += event.duration_ns / 1e9
                count[(kind, shape, op)] += 1
    return {"model": model_name, "mode": mode, "batch": batch_size, "seq_len": seq_len, "step_s": untraced,
            "traced_step_s": traced, "by_kind": dict(by_kind), "groups": by_group, "count": count}


def to_markdown(p: dict, *, top: int = 20) -> str:
    total = sum(p["by_kind"].values())
    lines = [f"# Profile: {p['model']} {p['mode']} step, batch {p['batch']} x {p['seq_len']}", "",
             f"Wall time {p['step_s']:.2f} s untraced, {p['traced_step_s']:.2f} s traced; op busy time "
             f"{total:.2f} s over the XLA:CPU threads.", "", "| kind | busy s | share |", "|---|---|---|"]
    for kind, secs in sorted(p["by_kind"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {kind} | {secs:.2f} | {100 * secs / total:.1f} % |")
    lines += ["", f"Heaviest {top} op groups (same kind, shape and JAX op, summed over layers):", "",
              "| busy ms | ops | kind | shape | JAX op |", "|---|---|---|---|---|"]
    for key, secs in p["groups"].most_common(top):
        kind, shape, op = key
        lines.append(f"| {1000 * secs:.0f} | {p['count'][key]} | {kind} | `{shape}` | `{op[:90]}` |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["smollm2_135m", "t5_small"], default="smollm2_135m")
    parser.add_argument("--mode", choices=["full", "lora"], default="full")
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--out", type=pathlib.Path, default=None, help="also write the markdown here")
    args = parser.parse_args()
    report = to_markdown(profile(args.model, args.mode, args.seq_len, args.batch), top=args.top)
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
