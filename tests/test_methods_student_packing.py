"""The student path trains packed by default; an explicit argument or a gin ``StudentSpec.pack`` binding wins."""
from __future__ import annotations

import gin

import test_methods_helpers as MH
from fiat_jax.methods import student


def _pack_passed(**kwargs) -> object:
    seen = {}
    student.StudentSpec(train_steps=1, train_fn=lambda **k: seen.update(k), **kwargs).train(
        model_dir="/unused", name="methods_pack_probe", train_rows=MH.toy_rows(3))
    MH.cleanup_registry()
    return seen.get("pack", "not passed")


def test_student_training_packs_by_default():
    assert _pack_passed() is True
    assert _pack_passed(pack=False) is False


def test_gin_student_pack_binding_is_respected():
    gin.parse_config("StudentSpec.pack = False")
    assert _pack_passed() is False  # the spec reads its own binding, passed to the trainer explicitly
