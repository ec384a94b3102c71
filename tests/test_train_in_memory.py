"""The trainer takes in-memory rows as a seqio Task object (nothing registered) and returns a typed result."""
from __future__ import annotations

import dataclasses
import functools
import typing

import numpy as np
import pytest
import seqio

import test_methods_helpers as MH
import test_train_helpers as H
from test_train_helpers import compilation_cache  # noqa: F401 (fixture)
from fiat_jax.methods import student
from fiat_jax.methods.examples import examples_task
from fiat_jax.train import result as result_lib
from fiat_jax.train import trainer


def test_train_result_is_typed():
    hints = typing.get_type_hints(result_lib.TrainResult)
    assert hints["tokens_seen"] is int and hints["params_trained"] is int and hints["wall_s"] is float
    assert hints["step"] is int and hints["compile"] == dict[str, float]
    assert trainer.TrainResult is result_lib.TrainResult and dataclasses.is_dataclass(trainer.TrainResult)


@pytest.mark.usefixtures("compilation_cache")
def test_train_accepts_in_memory_rows_without_registration(tmp_path):
    name = "in_memory_rows_probe"
    task = examples_task(name, {"train": MH.toy_rows(16)})
    before = set(seqio.TaskRegistry.names())
    result = trainer.train(
        model_dir=str(tmp_path / "run"), train_steps=2, mixture_or_task_name=name, task=task,
        task_feature_lengths=MH.TFL, model_factory=functools.partial(H.tiny_decoder, vocab=259, d_model=32, mlp=64,
                                                                      max_len=112),
        batch_size=4, mesh="data=1", num_devices=1, log_every_steps=1, progress_bar=False, tensorboard=False,
        async_checkpointing=False, pack=True)
    assert name not in seqio.TaskRegistry.names() and set(seqio.TaskRegistry.names()) == before
    assert isinstance(result, result_lib.TrainResult) and result.step == 2
    # Typed fields, consistent with the logged metrics (no caller parses metric names any more).
    assert result.tokens_seen > 0 and result.tokens_seen == int(result.metrics["train/tokens_seen"])
    assert result.params_trained == int(result.metrics["train/params_trained"]) > 0
    assert result.wall_s > 0 and result.compile["compile/requests"] >= 1
    assert result.initial_trainable is None and np.isfinite(result.metrics["train/loss"])


def test_student_spec_trains_an_unregistered_task_with_explicit_hooks():
    seen = {}
    spec = student.StudentSpec(train_steps=3, task_feature_lengths=MH.TFL, train_fn=lambda **k: seen.update(k),
                               model_transform=MH.identity_peft)
    before = set(seqio.TaskRegistry.names())
    spec.train(model_dir="/unused", name="spec_probe", train_rows=MH.toy_rows(2))
    assert set(seqio.TaskRegistry.names()) == before
    assert isinstance(seen["task"], seqio.Task) and seen["task"].name == "spec_probe"
    assert seen["model_transform"] is MH.identity_peft and seen["train_steps"] == 3
    # Every hook is passed explicitly (nothing is left to a train.* gin binding): None initial params and
    # transform as None, no trainable filter as every parameter; the spec's model factory when it names one.
    from flax import nnx
    assert seen["initial_params"] is None and seen["trainable"] is nnx.Param and "model_factory" not in seen
    seen.clear()
    factory = object()
    dataclasses.replace(spec, model_transform=None, model_factory=factory).train(
        model_dir="/unused", name="spec_probe", train_rows=MH.toy_rows(2))
    assert seen["model_transform"] is None and seen["model_factory"] is factory
