"""`fiat train` / `fiat eval` through the CLI with the base run gin and the local_tiny overlay."""
from __future__ import annotations

import functools
import json

import gin
import pytest

import test_train_helpers as H
from fiat_jax import cli
from test_train_helpers import compilation_cache  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("compilation_cache")


def _register_configurables() -> None:
    for name, fn in (("tiny_encdec", H.tiny_encdec),
                     ("register_toy_copy", functools.partial(H.register_toy_task, "copy", n=512))):
        try:
            gin.external_configurable(fn, name=name, module="train_tests")
        except ValueError:  # already registered by an earlier test in this process
            pass


def test_fiat_train_then_eval(tmp_path, capsys):
    _register_configurables()
    run_gin = tmp_path / "toy_run.gin"
    run_gin.write_text("\n".join([
        "include 'runs/train.gin'",
        "train.model_factory = @train_tests.tiny_encdec",
        "train.register_tasks = @train_tests.register_toy_copy",
        "evaluate.model_factory = @train_tests.tiny_encdec",
        "evaluate.register_tasks = @train_tests.register_toy_copy",
        "MIXTURE_OR_TASK_NAME = 'toy_copy_8_512'",
        "train.progress_bar = False",
    ]))
    model_dir = tmp_path / "run"
    argv = [f"--gin_file={run_gin}", "--gin_file=runs/local_tiny.gin", f"--gin.MODEL_DIR={model_dir}",
            "--gin.TRAIN_STEPS=6"]
    assert cli.main(["train", *argv]) == 0
    assert sorted(p.name for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["6"]
    config = (model_dir / "config.gin").read_text()
    assert "BATCH_SIZE = 8" in config and "train.batch_size = %BATCH_SIZE" in config

    gin.clear_config()
    assert cli.main(["eval", *argv]) == 0
    predictions = list((model_dir / "predictions").glob("toy_copy_8_512-6.jsonl"))
    assert predictions, list((model_dir / "predictions").iterdir())
    rows = [json.loads(line) for line in predictions[0].read_text().splitlines()]
    assert len(rows) == 16 and set(rows[0]) == {"input", "target", "prediction", "score"}
    assert all(r["score"] <= 0 for r in rows)
    evals = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()
             if '"eval"' in line]
    assert evals and "toy_copy_8_512/exact_match" in evals[-1] and "mean/exact_match" in evals[-1]


def test_fiat_train_missing_model_dir_is_a_one_line_error(tmp_path, capsys):
    _register_configurables()
    run_gin = tmp_path / "toy_run.gin"
    run_gin.write_text("include 'runs/train.gin'\ntrain.model_factory = @train_tests.tiny_encdec\n")
    assert cli.main(["train", f"--gin_file={run_gin}", "--gin.TRAIN_STEPS=2",
                     "--gin.MIXTURE_OR_TASK_NAME='x'"]) == 2
    assert "MODEL_DIR" in capsys.readouterr().err
