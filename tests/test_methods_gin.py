"""The method gin files drive `fiat run` end to end: real task registration (XCOPA from the shared data), a tiny
student bound in gin, the sweep macros consumed, results.json written; and missing pieces fail before training."""
from __future__ import annotations

import functools
import json

import gin
import pytest

from fiat_jax import gin_utils
from fiat_jax.errors import UserError
import test_methods_helpers as MH
from test_train_helpers import compilation_cache  # noqa: F401 (fixture)


_REGISTERED: list[bool] = []


def _configure(tmp_path, shared_data_dir, *files, bindings=()):
    import test_train_helpers as H

    if not _REGISTERED:  # gin refuses to register a configurable name twice
        gin.external_configurable(functools.partial(H.tiny_decoder, vocab=259, d_model=32, mlp=64, max_len=256),
                                  name="tiny_test_student", module="methods_tests")
        gin.external_configurable(MH.FakeTeacher, name="FakeTeacher", module="methods_tests")
        _REGISTERED.append(True)
    gin.add_config_file_search_path(str(gin_utils.DEFAULT_GIN_DIR))
    for f in files:
        gin.parse_config_file(str(gin_utils.DEFAULT_GIN_DIR / f))
    gin.parse_config([
        "StudentSpec.model_factory = @tiny_test_student", f"MODEL_DIR = '{tmp_path}'", "SEED = 1",
        "NUM_TRAIN_EXAMPLES = 8", "NUM_EVAL_EXAMPLES = 4", "TRAIN_STEPS = 2",
        "TASK_FEATURE_LENGTHS = {'inputs': 192, 'targets': 8}", "train.progress_bar = False",
        "train.tensorboard = False", "train.async_checkpointing = False", "evaluate.batch_size = 4",
        f"register_all.data_dir = '{shared_data_dir}'", "MIXTURE_OR_TASK_NAME = 'xcopa_sw'", *bindings])


@pytest.mark.usefixtures("compilation_cache")
@pytest.mark.parametrize("files", [
    ("methods/finetune_full.gin", "runs/local_tiny.gin"),
    ("methods/fiat.gin", "methods/ablations/fiat_full_finetune.gin", "runs/local_tiny.gin"),
    ("methods/icl.gin",),
], ids=["finetune_full", "fiat_full_ft", "icl"])
def test_method_gin_runs_end_to_end(tmp_path, shared_data_dir, files):
    from fiat_jax.methods import run

    extra = ["TEACHER = @FakeTeacher()", "train.batch_size = 4"]
    if "methods/fiat.gin" in files:
        extra.append("STUDENT_INSTRUCTION = 'Pick 1 or 2.'")
    _configure(tmp_path, shared_data_dir, *files, bindings=extra)
    out = run.run()
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["metrics"]) == {"xcopa_sw"} and "accuracy" in res["metrics"]["xcopa_sw"]
    assert out["run"]["xcopa_sw"]["accuracy"] == res["metrics"]["xcopa_sw"]["accuracy"]
    assert (tmp_path / "config.gin").exists() and list((tmp_path / "predictions").glob("*.jsonl"))
    MH.cleanup_registry()


@pytest.mark.usefixtures("compilation_cache")
def test_a_method_student_restores_for_export(tmp_path, shared_data_dir):
    """`fiat export --model_dir=MODEL_DIR/student` rebuilds the student the method's StudentSpec trained (its
    model factory reached the trainer as an argument, not as a train.* binding)."""
    from fiat_jax import export
    from fiat_jax.methods import run

    _configure(tmp_path, shared_data_dir, "methods/finetune_full.gin", "runs/local_tiny.gin",
               bindings=["train.batch_size = 4"])
    run.run()
    gin.clear_config(clear_constants=True)
    model = export.restore_run(tmp_path / "student")
    assert hasattr(model, "logits_from_batch")
    MH.cleanup_registry()


def test_fiat_gin_without_teacher_fails_before_training(tmp_path, shared_data_dir):
    from fiat_jax.methods import run

    _configure(tmp_path, shared_data_dir, "methods/fiat.gin", bindings=["MODEL_TRANSFORM = None", "TRAINABLE = None"])
    with pytest.raises(UserError, match="FIAT: missing teacher"):
        run.run()
    assert not (tmp_path / "student").exists()


def test_no_method_asks_gin_what_is_bound(repo_root):
    """The student's pieces are explicit StudentSpec fields: no method module queries the gin config."""
    methods = sorted((repo_root / "fiat_jax" / "methods").glob("*.py"))
    assert methods
    for path in methods:
        text = path.read_text()
        assert not any(q in text for q in ("query_parameter", "get_bindings", ".binds(")), path.name
