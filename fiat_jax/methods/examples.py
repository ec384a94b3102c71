"""The old import path of the in-memory example helpers, which live in :mod:`fiat_jax.data.examples` (gin files
that ``import fiat_jax.methods.examples`` and the methods not yet moved over keep working)."""

from fiat_jax.data.examples import (Example, examples_task, register_examples_task, student_chat_template,
                                    task_examples, training_set_size_policy, training_set_sizes)

__all__ = ["Example", "examples_task", "register_examples_task", "student_chat_template", "task_examples",
           "training_set_size_policy", "training_set_sizes"]
