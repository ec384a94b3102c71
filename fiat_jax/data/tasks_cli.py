"""What ``fiat tasks list`` / ``fiat tasks show NAME --split train -n 3`` print about the registered seqio tasks.

``list`` prints every task with the size of each split (preparing a TFDS-backed task on first use, which also runs
its train/eval disjointness check), the training cap when one is set, and where a carved split comes from. The
registrations themselves (top-level ``tasks``) are the CLI layer's to make: see ``fiat_jax.tasks_command``.
"""

from __future__ import annotations

import seqio
import tensorflow_datasets as tfds

from fiat_jax.data import sources, tfds_builders
from fiat_jax.errors import UserError


def print_tasks(*, action: str, name: str | None = None, split: str = "train", n: int = 3) -> None:
    """``list`` or ``show`` the tasks and mixtures already in seqio's registries."""
    if action == "list":
        tfds.disable_progress_bar()  # preparing a task on first use would print bars between the lines
        for task_name in sorted(seqio.TaskRegistry.names()):
            print(f"{task_name}\t{describe_splits(seqio.TaskRegistry.get(task_name))}", flush=True)
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


def split_sizes(task: seqio.Task) -> dict[str, int]:
    """Examples in each split of ``task`` as its source holds them (before the training cap)."""
    source = task.source
    if isinstance(source, seqio.TfdsDataSource):
        source.tfds_dataset.builder.download_and_prepare()
        return {split: int(source.num_input_examples(split)) for split in task.splits}
    sizes = {}
    for split in task.splits:
        n = source.num_input_examples(split)
        if n is None:
            ds = source.get_dataset(split=split, shuffle=False)
            n = int(ds.reduce(0, lambda count, _: count + 1).numpy())
        sizes[split] = int(n)
    return sizes


def describe_splits(task: seqio.Task) -> str:
    """``splits=train:125,validation:25,...`` plus the training cap and carved splits' origins, one line."""
    try:
        sizes = split_sizes(task)
    except UserError as err:
        return f"splits={','.join(task.splits)} (unavailable: {str(err).splitlines()[0]})"
    line = "splits=" + ",".join(f"{split}:{n}" for split, n in sizes.items())
    cap = next((getattr(p, "num_train_examples", None) for p in task.preprocessors
                if getattr(p, "num_train_examples", None) is not None), None)
    if cap is not None and "train" in sizes:
        line += f" (training on {min(cap, sizes['train'])}: num_train_examples={cap})"
    if isinstance(task.source, seqio.TfdsDataSource):
        builder = task.source.tfds_dataset.name.split("/")[0]
        by_builder = {b.name: b.SOURCE for b in tfds_builders.BUILDERS.values()}
        spec = sources.SOURCES.get(by_builder.get(builder, ""))
        origins = spec.split_origins() if spec else {}
        if origins:
            line += " from " + "; ".join(f"{split}: {origin}" for split, origin in origins.items())
    return line
