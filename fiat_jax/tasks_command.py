"""``fiat tasks``: registers every task (top-level ``tasks``), then lists or shows them (``data.tasks_cli``).

This sits at the CLI layer because it is the one place in ``fiat_jax`` that may import the registrations.
"""

from __future__ import annotations

import tasks  # registers tasks.register_all with gin before the CLI parses gin files (registers no task)
from fiat_jax.data import tasks_cli


def tasks_main(*, action: str, name: str | None = None, split: str = "train", n: int = 3) -> None:
    tasks.register_all()
    tasks_cli.print_tasks(action=action, name=name, split=split, n=n)
