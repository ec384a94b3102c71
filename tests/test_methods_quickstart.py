"""The quickstart config (`make run`): ICL vs LoRA fine-tuning vs FIAT on XCOPA sw/id with the embedded
SmolLM2-135M-Instruct as teacher and LoRA student. The full run needs the models, peft and teachers areas."""
from __future__ import annotations

import importlib.util
import os
import time

import gin
import pytest

from fiat_jax import gin_utils

NEEDS = ("fiat_jax.models.decoder", "fiat_jax.models.decoding", "fiat_jax.teachers.local", "fiat_jax.peft.lora",
         "fiat_jax.peft.trainable")


def _parse():
    gin.add_config_file_search_path(str(gin_utils.DEFAULT_GIN_DIR))
    gin.parse_config_file(str(gin_utils.DEFAULT_GIN_DIR / "runs" / "quickstart.gin"))


def test_quickstart_compares_three_methods_on_held_out_xcopa():
    _parse()
    methods = gin.query_parameter("run.methods")
    assert list(methods) == ["ICL (teacher, 2-shot)", "Fine-tuning (LoRA)", "FIAT (LoRA)"]
    assert gin.query_parameter("%EVAL_SPLIT") == "test"  # XCOPA train is a copy of validation
    assert gin.query_parameter("%QUICKSTART_LANGUAGES") == ["xcopa_sw", "xcopa_id"]
    assert gin.query_parameter("ft/finetune_method.mode") == "lora"


def _missing() -> list[str]:
    out = []
    for name in NEEDS:
        try:
            if importlib.util.find_spec(name) is None:
                out.append(name)
        except ModuleNotFoundError:
            out.append(name)
    return out


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(not os.environ.get("FIAT_RUN_QUICKSTART"),
                    reason="the full quickstart takes ~6.5 min on 2 cores: set FIAT_RUN_QUICKSTART=1 (make run runs it)")
def test_quickstart_runs_under_ten_minutes(tmp_path, shared_data_dir, capsys):
    from fiat_jax.methods import run

    _parse()
    gin.parse_config([f"MODEL_DIR = '{tmp_path}'", f"register_all.data_dir = '{shared_data_dir}'"])
    t0 = time.perf_counter()
    out = run.run()
    wall = time.perf_counter() - t0
    assert set(out) == {"ICL (teacher, 2-shot)", "Fine-tuning (LoRA)", "FIAT (LoRA)"}
    assert "| method | xcopa_id | xcopa_sw | mean |" in capsys.readouterr().out
    assert wall < 600, wall


def test_quickstart_students_are_scoped_per_method():
    """Each method builds its StudentSpec inside its own gin scope: FIAT's longer rows, the shared LoRA student."""
    _parse()
    from fiat_jax.methods.student import StudentSpec

    with gin.config_scope("ft"):
        ft = StudentSpec()
    with gin.config_scope("fiat"):
        fiat = StudentSpec()
    assert ft.task_feature_lengths == {"inputs": 96, "targets": 4}
    assert fiat.task_feature_lengths == {"inputs": 192, "targets": 4}
    assert ft.train_steps == fiat.train_steps == 20 and ft.eval_batch_size == fiat.eval_batch_size == 32
    assert ft.model_factory is not None and ft.initial_params is not None and ft.model_transform is not None
