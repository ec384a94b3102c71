"""Exact resume across process deaths: SIGKILL at a random step and SIGTERM (preemption) mid-run.

The same command rerun on the same MODEL_DIR must end with parameters bit-identical to an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import test_train_helpers as H
from test_train_helpers import compilation_cache  # noqa: F401 (fixture)

pytestmark = [pytest.mark.usefixtures("compilation_cache"), pytest.mark.slow]
HELPERS = pathlib.Path(H.__file__).resolve()
STEPS = 14


def _start(model_dir: pathlib.Path) -> subprocess.Popen:
    env = dict(os.environ, **H.JAX_CACHE_ENV)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HELPERS.parent), env.get("PYTHONPATH", "")]))
    log = open(model_dir.parent / f"{model_dir.name}.log", "a")
    return subprocess.Popen([sys.executable, str(HELPERS), str(model_dir), str(STEPS)], env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def _logged_steps(model_dir: pathlib.Path) -> list[int]:
    path = model_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):  # a line being written
            pass
    return steps


def _wait_for_step(proc: subprocess.Popen, model_dir: pathlib.Path, step: int, timeout: float = 360) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if max(_logged_steps(model_dir), default=0) >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited with {proc.returncode} before step {step}: "
                                 f"{(model_dir.parent / (model_dir.name + '.log')).read_text()[-2000:]}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"step {step} not reached in {timeout} s")


def _log_tail(model_dir: pathlib.Path) -> str:
    return (model_dir.parent / f"{model_dir.name}.log").read_text()[-3000:]


def test_sigkill_then_sigterm_then_rerun_is_bit_identical(tmp_path):
    reference_dir = tmp_path / "uninterrupted"
    H.toy_train(str(reference_dir), STEPS)
    reference = H.final_params(str(reference_dir))

    seed = random.randrange(1 << 30)
    kill_at = random.Random(seed).randint(2, 7)
    model_dir = tmp_path / "interrupted"
    proc = _start(model_dir)
    _wait_for_step(proc, model_dir, kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    proc = _start(model_dir)  # the same command: resumes from the newest complete checkpoint
    _wait_for_step(proc, model_dir, kill_at + 3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=360) == 0, _log_tail(model_dir)
    saved = sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and max(saved) >= kill_at + 3, (saved, _log_tail(model_dir))
    assert max(saved) < STEPS, "SIGTERM arrived too late to test preemption"

    proc = _start(model_dir)
    assert proc.wait(timeout=540) == 0, _log_tail(model_dir)
    final = H.final_params(str(model_dir))
    assert final.keys() == reference.keys()
    for name in reference:
        assert np.array_equal(final[name], reference[name]), f"{name} differs (kill seed {seed}, step {kill_at})"
    # Rows the killed run logged past its last checkpoint were dropped on resume: every step exactly once.
    steps = [json.loads(line)["step"] for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1)), (steps, f"kill seed {seed}, step {kill_at}")
