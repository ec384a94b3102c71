"""TensorBoard opens a run: the event files a run writes under MODEL_DIR/tb are read by the installed
``tensorboard`` package (its event accumulator, and the ``tensorboard --inspect`` command line)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from fiat_jax.train.metrics_writer import MetricsWriter


def _write_run(model_dir):
    writer = MetricsWriter(model_dir)
    for step, loss in ((10, 2.5), (20, 1.75)):
        writer.write(step, {"loss": loss, "accuracy": step / 100}, split="train")
    writer.write(20, {"mgsm/accuracy": 0.5}, split="eval")
    writer.close()


def test_tensorboard_reads_the_run_event_files(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is part of the install (setup.py)")
    from tensorboard.backend.event_processing import event_accumulator

    _write_run(tmp_path)
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb" / "train"),
                                             size_guidance={event_accumulator.TENSORS: 0,
                                                            event_accumulator.SCALARS: 0})
    acc.Reload()
    tags = acc.Tags()
    # clu writes scalars as tensor summaries (the scalars plugin reads both kinds).
    if "loss" in tags["scalars"]:
        got = [(e.step, e.value) for e in acc.Scalars("loss")]
    else:
        import numpy as np
        from tensorboard.util import tensor_util

        assert "loss" in tags["tensors"], tags
        got = [(e.step, float(np.asarray(tensor_util.make_ndarray(e.tensor_proto)))) for e in acc.Tensors("loss")]
    assert got == [(10, 2.5), (20, 1.75)]


@pytest.mark.slow
def test_tensorboard_command_line_inspects_the_logdir(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is part of the install (setup.py)")
    _write_run(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "tensorboard.main", "--inspect", "--logdir", str(tmp_path / "tb")],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "train" in out and "eval" in out, out
    assert "loss" in out and "mgsm/accuracy" in out, out
