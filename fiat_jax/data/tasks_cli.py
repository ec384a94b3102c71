"""``fiat tasks list`` / ``fiat tasks show NAME --split train -n 3``: what a task feeds the model."""

from __future__ import annotations

import seqio

import tasks  # registers tasks.register_all with gin before the CLI parses gin files (registers no task)
from fiat_jax.errors import UserError


def tasks_main(*, action: str, name: str | None = None, split: str = "train", n: int = 3) -> None:
    tasks.register_all()
    if action == "list":
        for task_name in sorted(seqio.TaskRegistry.names()):
            task = seqio.TaskRegistry.get(task_name)
            print(f"{task_name}\tsplits={','.join(task.splits)}")
        for mix_name in sorted(seqio.MixtureRegistry.names()):
            print(f"{mix_name}\tmixture of {len(seqio.MixtureRegistry.get(mix_name).tasks)} tasks")
        return
    if action != "show":
        raise UserError(f"fiat tasks: unknown action {action!r} (list or show)")
    if not name:
        raise UserError("fiat tasks show: name a task or mixture (see `fiat tasks list`)")
    try:
        task = seqio.get_mixture_or_task(name)
    except ValueError:
        raise UserError(f"fiat tasks show: no task or mixture named {name!r} (see `fiat tasks list`)") from None
    if split not in task.splits:
        raise UserError(f"fiat tasks show: {name} has no split {split!r} (it has {', '.join(task.splits)})")
    for example in show_examples(name, split=split, n=n):
        print(example)


def show_examples(name: str, *, split: str, n: int) -> list[str]:
    """Printable blocks for the first ``n`` examples: pass-through fields, inputs, targets and token lengths."""
    task = seqio.get_mixture_or_task(name)
    ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, use_cached=False, seed=0)
    blocks = []
    for i, ex in enumerate(ds.take(n).as_numpy_iterator()):
        lines = [f"--- {name} [{split}] #{i}"]
        for key in ("id", "language", "kind", "answer", "label", "score", "teacher", "recipe_hash"):
            if key in ex:
                value = ex[key]
                lines.append(f"{key}: {value.decode() if isinstance(value, bytes) else value}")
        for feature in ("inputs", "targets"):
            if feature in ex:
                text = ex.get(f"{feature}_pretokenized", b"")
                text = text.decode() if isinstance(text, bytes) else str(text)
                lines.append(f"{feature} ({len(ex[feature])} tokens):\n{text}")
        blocks.append("\n".join(lines))
    return blocks
