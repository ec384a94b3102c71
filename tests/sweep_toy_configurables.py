"""Gin names for the trainer's toy model and task (tests/test_train_helpers.py), imported by
tests/sweep_fake/toy_train.gin inside `fiat train` / `fiat eval` subprocesses of a sweep (PYTHONPATH=tests)."""
import functools

import gin

import test_train_helpers as H

gin.external_configurable(H.tiny_encdec, name="tiny_encdec", module="sweep_toy")
gin.external_configurable(functools.partial(H.register_toy_task, "copy", n=512), name="register_toy_copy",
                          module="sweep_toy")
