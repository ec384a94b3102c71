"""``MODEL_DIR/results.json``, written when a run finishes (docs/CONTRACTS.md "Run results"), and the run's
provenance. Lives in train/ because the trainer and the methods write it; :mod:`fiat_jax.sweeps.run_results` reads
it. Never imports jax: a sweep process that imports this must not claim accelerators."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

RESULTS_JSON = "results.json"


def write_run_results(model_dir: str | os.PathLike, *, metrics: Mapping[str, Any], tokens_seen: int | None = None,
                      params_trained: int | None = None, **extra: Any) -> pathlib.Path | None:
    """Write ``MODEL_DIR/results.json`` atomically (process 0 only): the last act of a finished run.

    ``metrics``: ``{language: {metric: value}}`` (or flat ``{metric: value}``). Extra keyword arguments (``task``,
    ``steps``, ...) are stored too and reach the sweep's row under ``extra``. Returns the path (None off process 0).
    """

    jax = sys.modules.get("jax")  # never import jax here: the sweep process must not claim accelerators
    if jax is not None and jax.process_index() != 0:
        return None
    root = pathlib.Path(model_dir)
    root.mkdir(parents=True, exist_ok=True)
    payload = {"metrics": {str(k): (dict(v) if isinstance(v, Mapping) else v) for k, v in metrics.items()},
               "tokens_seen": tokens_seen, "params_trained": params_trained, **extra}
    path = root / RESULTS_JSON
    tmp = root / f".{RESULTS_JSON}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True, default=float))
    os.replace(tmp, path)
    return path


PROVENANCE_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "seqio", "numpy", "tensorflow",
                       "gin-config")


def _git(*args: str) -> str | None:

    root = pathlib.Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _hardware() -> str:

    jax = sys.modules.get("jax")  # only when the run imported it: never claim accelerators from here
    host = f"{platform.machine()} {os.cpu_count()} CPUs"
    if jax is None:
        return host
    try:
        devices = jax.devices()
        return f"{len(devices)} x {devices[0].platform}:{devices[0].device_kind} ({host})"
    except Exception:  # noqa: BLE001 (a backend that fails to start: the host still says something)
        return host


def _config_hash() -> str | None:

    gin = sys.modules.get("gin")
    if gin is None:
        return None
    try:
        text = gin.operative_config_str() or gin.config_str()
    except Exception:  # noqa: BLE001
        return None
    return hashlib.sha256(text.encode()).hexdigest()[:16] if text else None


def provenance(*, teacher: Any = None) -> dict[str, Any]:
    """What produced a run, recorded when it finishes: git commit and dirty flag of this checkout, package
    versions, the hash of the operative gin config, the teacher's identity, the hardware."""

    versions = {}
    for name in PROVENANCE_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": _git("rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status),
            "python": platform.python_version(), "packages": versions, "config_hash": _config_hash(),
            "teacher": None if teacher is None else str(teacher), "hardware": _hardware()}
