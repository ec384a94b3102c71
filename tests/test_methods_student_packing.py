"""The student path trains packed by default; an explicit argument or a gin ``train.pack`` binding wins."""
from __future__ import annotations

import gin

import test_methods_helpers as MH
from fiat_jax.methods import student


def _pack_passed(**kwargs) -> object:
    seen = {}
    student.train_on_rows(model_dir="/unused", name="methods_pack_probe", train_rows=MH.toy_rows(3),
                          train_steps=1, train_fn=lambda **k: seen.update(k), **kwargs)
    MH.cleanup_registry()
    return seen.get("pack", "not passed")


def test_student_training_packs_by_default():
    assert _pack_passed() is True
    assert _pack_passed(pack=False) is False


def test_gin_train_pack_binding_is_respected():
    from fiat_jax.train import trainer  # noqa: F401 (registers train with gin)

    gin.parse_config("train.pack = False")
    assert _pack_passed() == "not passed"  # the trainer reads its own binding
