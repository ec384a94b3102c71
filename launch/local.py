#!/usr/bin/env python3
"""Run N JAX processes on one machine: the multi-host code path (``jax.distributed`` over 127.0.0.1) without a pod.

Each process gets ``FIAT_COORDINATOR_ADDRESS`` / ``FIAT_NUM_PROCESSES`` / ``FIAT_PROCESS_ID`` (read by
``fiat_jax.partitioning.initialize_distributed()``) and its own slice of devices: fake CPU devices through
``XLA_FLAGS`` on a CPU, or ``CUDA_VISIBLE_DEVICES`` on a multi-GPU box. Output lines are prefixed ``[pN]`` and
also written to ``LOG_DIR/process_N.log``. If one process fails the others are stopped, as a pod would be.

    python launch/local.py --num_processes=2 -- .venv/bin/fiat train --gin_file=runs/copy_tiny.gin ...
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

_DEVICE_COUNT_FLAG = re.compile(r"--xla_force_host_platform_device_count=\d+")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the coordinator binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_env(*, process_id: int, num_processes: int, coordinator: str, platform: str = "cpu",
                devices_per_process: int = 1, base_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of process ``process_id``: distributed settings plus its own devices."""
    env = dict(os.environ if base_env is None else base_env)
    env.update(FIAT_COORDINATOR_ADDRESS=coordinator, FIAT_NUM_PROCESSES=str(num_processes),
               FIAT_PROCESS_ID=str(process_id))
    if platform == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
        flags = _DEVICE_COUNT_FLAG.sub("", env.get("XLA_FLAGS", "")).strip()
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices_per_process}".strip()
    elif platform in ("gpu", "cuda"):
        first = process_id * devices_per_process
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + i) for i in range(devices_per_process))
    else:
        raise ValueError(f"unknown platform {platform!r} (cpu or gpu)")
    return env


def _pump(stream, prefix: str, log_path: pathlib.Path | None, echo: bool) -> None:
    log = open(log_path, "w", buffering=1) if log_path else None
    try:
        for line in iter(stream.readline, ""):
            if log:
                log.write(line)
            if echo:
                sys.stdout.write(f"{prefix}{line}")
                sys.stdout.flush()
    finally:
        if log:
            log.close()


def launch(command: Sequence[str], *, num_processes: int, platform: str = "cpu", devices_per_process: int = 1,
           port: int | None = None, log_dir: str | os.PathLike | None = None, timeout_s: float | None = None,
           echo: bool = True, cwd: str | os.PathLike | None = None) -> list[int]:
    """Start ``num_processes`` copies of ``command`` and wait; returns their exit codes (process order).

    When one exits non-zero (or the timeout passes) the rest are terminated so nothing hangs at a collective.
    """
    if num_processes < 1:
        raise ValueError("num_processes must be >= 1")
    coordinator = f"127.0.0.1:{port or free_port()}"
    log_path = pathlib.Path(log_dir) if log_dir else None
    if log_path:
        log_path.mkdir(parents=True, exist_ok=True)
    procs, pumps = [], []
    for pid in range(num_processes):
        env = process_env(process_id=pid, num_processes=num_processes, coordinator=coordinator,
                          platform=platform, devices_per_process=devices_per_process)
        proc = subprocess.Popen(list(command), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        pump = threading.Thread(target=_pump, daemon=True, args=(
            proc.stdout, f"[p{pid}] ", log_path / f"process_{pid}.log" if log_path else None, echo))
        pump.start()
        procs.append(proc)
        pumps.append(pump)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while True:
            codes = [p.poll() for p in procs]  # poll every process (any() would stop at the first running one)
            if all(code is not None for code in codes):
                break
            failed = any(code not in (None, 0) for code in codes)
            late = deadline is not None and time.monotonic() > deadline
            if failed or late:
                _stop(procs)
                break
            time.sleep(0.1)
    except KeyboardInterrupt:
        _stop(procs)
        raise
    for pump in pumps:
        pump.join(timeout=5)
    return [p.wait() for p in procs]


def _stop(procs: Sequence[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s [options] -- COMMAND [ARGS...]")
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--platform", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--devices_per_process", type=int, default=1,
                        help="fake CPU devices (cpu) or GPUs (gpu) given to each process")
    parser.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
    parser.add_argument("--log_dir", default=None, help="also write process_N.log files here")
    parser.add_argument("--timeout_s", type=float, default=None)
    parser.add_argument("--dry_run", action="store_true", help="print each process's environment and command")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    if args.dry_run:
        coordinator = f"127.0.0.1:{args.port or free_port()}"
        for pid in range(args.num_processes):
            env = process_env(process_id=pid, num_processes=args.num_processes, coordinator=coordinator,
                              platform=args.platform, devices_per_process=args.devices_per_process, base_env={})
            print(" ".join(f"{k}={v!s}" for k, v in sorted(env.items())), *command)
        return 0
    codes = launch(command, num_processes=args.num_processes, platform=args.platform,
                   devices_per_process=args.devices_per_process, port=args.port, log_dir=args.log_dir,
                   timeout_s=args.timeout_s)
    bad = [(i, c) for i, c in enumerate(codes) if c != 0]
    for i, c in bad:
        print(f"launch/local.py: process {i} exited with {c}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
