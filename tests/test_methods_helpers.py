"""Shared test pieces for the methods: a toy arithmetic task, a rule-following fake teacher, a tiny student."""
from __future__ import annotations

import functools
import re

import seqio

from fiat_jax.data import metrics
from fiat_jax.data.examples import register_examples_task

TFL = {"inputs": 96, "targets": 8}


def toy_rows(n: int, offset: int = 0) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = (i * 7 + offset) % 10, (i * 3 + 1 + offset) % 10
        rows.append({"id": f"toy/{offset}/{i}", "language": "en", "inputs": f"{a} + {b}", "targets": str(a + b)})
    return rows


def register_toy(name: str = "toyadd_en", n_train: int = 16, n_eval: int = 6) -> str:
    register_examples_task(name, {"train": toy_rows(n_train), "validation": toy_rows(n_eval, offset=5)},
                           metric_fns=[metrics.accuracy])
    return name


def cleanup_registry(prefixes=("toyadd", "fiat_", "ft_", "phased", "methods_", "augmented", "aug_")) -> None:
    for name in list(seqio.TaskRegistry.names()):
        if name.startswith(prefixes) or "_fiat_eval" in name or "_ft_" in name:
            seqio.TaskRegistry.remove(name)


class FakeTeacher:
    """Teacher API stand-in: does the toy sums, logs every call so tests can check what was asked and when."""

    identity = "fake-teacher/v1"

    def __init__(self):
        self.calls: list[str] = []

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, stop=()):
        out = []
        for p in prompts:
            self.calls.append(p)
            sums = re.findall(r"(\d+) \+ (\d+)", p)
            a, b = map(int, sums[-1]) if sums else (0, 0)
            if "think step by step" in p:
                out.append(f"{a} plus {b} is {a + b}.")
            elif "short instruction" in p:
                out.append("Add the two numbers.")
            else:
                out.append(f"{a + b}\nInput: more")
        return out

    def score(self, prompt, options):
        self.calls.append(prompt)
        return [-float(len(o)) for o in options]


def tiny_train_fn(**overrides):
    """The trainer with a tiny byte-level student, 1 device, no checkpoint chatter."""
    import test_train_helpers as H
    from fiat_jax.train import trainer

    kwargs = dict(model_factory=functools.partial(H.tiny_decoder, vocab=259, d_model=32, mlp=64, max_len=112),
                  batch_size=8, mesh="data=1", num_devices=1, checkpoint_every_steps=1000, log_every_steps=5,
                  progress_bar=False, tensorboard=False, async_checkpointing=False)
    kwargs.update(overrides)
    return functools.partial(trainer.train, **kwargs)


def identity_peft(model):
    """A stand-in PEFT transform for tests (the real ones come from fiat_jax.peft)."""
    return model


def head_only():
    """Stand-in PEFT trainable filter: only the output projection trains."""
    from flax import nnx

    return nnx.All(nnx.Param, nnx.PathContains("logits_dense"))
