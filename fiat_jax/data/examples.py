"""In-memory examples as seqio Tasks, and raw examples read back from registered tasks: the methods build their own
training sets (stages, augmented documents, FIAT inputs) from Python lists and hand them to the trainer as ordinary
registered tasks; ``fiat teach`` and the methods read task splits with :func:`task_examples`."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
import seqio

from fiat_jax.data import preprocessors
from fiat_jax.data.vocab import get_vocabulary
from fiat_jax.errors import UserError

Example = dict[str, Any]


def _column(rows: Sequence[Example], key: str) -> Any:
    values = [row[key] for row in rows]
    if any(isinstance(v, (list, tuple)) for v in values):
        # lazy: TensorFlow takes seconds to import: only when a dataset is built
        import tensorflow as tf

        return tf.ragged.constant([[str(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
                                   for v in values], dtype=tf.string)
    if all(isinstance(v, bool) or isinstance(v, int) for v in values):
        return [int(v) for v in values]
    if all(isinstance(v, (int, float)) for v in values):
        return [float(v) for v in values]
    return [str(v) for v in values]


def _dataset_fn(split: str, shuffle_files: bool = False, seed: int | None = None, *,
                rows_by_split: Mapping[str, Sequence[Example]], keys: tuple[str, ...]):
    # lazy: TensorFlow takes seconds to import: only when a dataset is built
    import tensorflow as tf

    del shuffle_files, seed
    rows = rows_by_split[split]
    return tf.data.Dataset.from_tensor_slices({k: _column(rows, k) for k in keys})


@gin.configurable
def student_chat_template(*, template: str | None = None) -> str | None:
    """The chat template (one ``{inputs}``) that wraps every student input, or None for raw text. An
    instruction-tuned decoder student learns faster in the format it was tuned on, e.g. SmolLM2's
    ``'<|im_start|>user\\n{inputs}<|im_end|>\\n<|im_start|>assistant\\n'`` (``preprocessors.SMOLLM2_CHAT``)."""
    return template


def register_examples_task(name: str, rows_by_split: Mapping[str, Sequence[Example]], *,
                           metric_fns: Sequence[Callable[..., Any]] = (),
                           postprocess_fn: Callable[..., Any] | None = None,
                           vocabulary: seqio.Vocabulary | None = None) -> seqio.Task:
    """Register (or replace) :func:`examples_task` under ``name`` (for what only takes registered names)."""
    task = examples_task(name, rows_by_split, metric_fns=metric_fns, postprocess_fn=postprocess_fn,
                         vocabulary=vocabulary)
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add_provider(name, task)
    return task


def examples_task(name: str, rows_by_split: Mapping[str, Sequence[Example]], *,
                  metric_fns: Sequence[Callable[..., Any]] = (), postprocess_fn: Callable[..., Any] | None = None,
                  vocabulary: seqio.Vocabulary | None = None) -> seqio.Task:
    """A seqio Task (not registered) over ``{split: [{"inputs", "targets", ...}]}`` rows.

    Every row of every split must have the same keys; ``inputs`` (wrapped in :func:`student_chat_template` when
    one is bound) and ``targets`` are tokenised with the gin vocabulary (``get_vocabulary``) unless ``vocabulary``
    is given, other keys pass through for metrics.
    """

    keys: tuple[str, ...] | None = None
    for split, rows in rows_by_split.items():
        if not rows:
            raise UserError(f"task {name}: split {split!r} has no examples")
        for row in rows:
            if "inputs" not in row or "targets" not in row:
                raise UserError(f"task {name}: example {row.get('id', '?')} lacks 'inputs' or 'targets'")
        split_keys = tuple(sorted(set.intersection(*(set(r) for r in rows))))
        keys = split_keys if keys is None else tuple(k for k in keys if k in split_keys)
    vocab = vocabulary if vocabulary is not None else get_vocabulary()
    template = student_chat_template()
    # A chat-formatted prompt already ends in the assistant header; an EOS after it is not what the model was tuned on.
    features = {"inputs": seqio.Feature(vocabulary=vocab, add_eos=not template),
                "targets": seqio.Feature(vocabulary=vocab, add_eos=True)}
    frozen = {s: [dict(r) for r in rows] for s, rows in rows_by_split.items()}
    source = seqio.FunctionDataSource(functools.partial(_dataset_fn, rows_by_split=frozen, keys=keys),
                                      splits=tuple(frozen))
    chat: list[Callable[..., Any]] = []
    if template:

        chat = [functools.partial(preprocessors.chat_format, template=template)]
    return seqio.Task(
        name, source=source, output_features=features,
        preprocessors=[*chat, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        postprocess_fn=postprocess_fn, metric_fns=list(metric_fns))


@gin.configurable
def training_set_size_policy(*, take_what_exists: bool = False) -> bool:
    """Whether a training set smaller than asked for is used as it is (True; the run records the actual size as
    ``num_train_examples``) instead of being a UserError naming the task, the size asked and the size there is
    (False, the default). gin: ``training_set_size_policy.take_what_exists = True``."""
    return take_what_exists


# task -> {"requested": N asked (None: all), "actual": n used}, for the training sets this process drew; the
# method's results.json reports them (``training_set_sizes``).
_TRAINING_SETS: dict[str, dict[str, int | None]] = {}


def training_set_sizes(tasks: Sequence[str] | None = None) -> dict[str, Any]:
    """``{"num_train_examples": actual, "num_train_examples_requested": asked}`` of the training sets drawn by
    :func:`task_examples` with ``exact=True`` (per task; the smallest over ``tasks`` when they differ, with
    ``num_train_examples_by_task`` then), or ``{}`` when none was drawn."""
    drawn = {t: v for t, v in _TRAINING_SETS.items() if tasks is None or t in tasks}
    if not drawn:
        return {}
    actual = {t: v["actual"] for t, v in drawn.items()}
    requested = [v["requested"] for v in drawn.values()]
    out: dict[str, Any] = {"num_train_examples": min(actual.values()),
                           "num_train_examples_requested": None if None in requested else max(requested)}
    if len(set(actual.values())) > 1:
        out["num_train_examples_by_task"] = actual
    return out


def task_examples(name: str, split: str, *, limit: int | None = None, exact: bool = False) -> list[Example]:
    """Raw (untokenised) examples of a registered task or mixture split, as Python dicts of str/int/float.

    ``limit``: at most that many per task. ``exact`` (training sets): a task with fewer than ``limit`` examples
    is a UserError naming the task, the size asked and the size there is, unless
    :func:`training_set_size_policy` takes what exists; the size used is recorded (:func:`training_set_sizes`).
    """
    try:
        task = seqio.get_mixture_or_task(name)
    except ValueError as err:
        raise UserError(f"unknown task or mixture {name!r} (did you register the tasks?)") from err
    tasks = task.tasks if isinstance(task, seqio.Mixture) else [task]
    out: list[Example] = []
    for t in tasks:
        if split not in t.splits:
            raise UserError(f"task {t.name} has no split {split!r} (has {', '.join(t.splits)})")
        rows = _read_task(t, split, limit)
        if exact:
            if limit is not None and len(rows) < limit and not training_set_size_policy():
                raise UserError(f"task {t.name}: {limit} {split} examples asked for, it has {len(rows)} (ask for "
                                f"at most {len(rows)}, or bind training_set_size_policy.take_what_exists = True)")
            _TRAINING_SETS[t.name] = {"requested": limit, "actual": len(rows)}
        out += rows
    return out


def _read_task(t: seqio.Task, split: str, limit: int | None) -> list[Example]:
    # lazy: kept out of the light import path of this module
    import numpy as np

    out: list[Example] = []
    ds = t.get_dataset(sequence_length=None, split=split, shuffle=False, use_cached=False)
    for ex in ds.as_numpy_iterator():
        row: Example = {"task": t.name}
        for k, v in ex.items():
            if k.endswith("_pretokenized"):
                row[k[:-len("_pretokenized")]] = v.decode() if isinstance(v, bytes) else v
            elif k in ("inputs", "targets"):
                continue
            elif isinstance(v, bytes):
                row[k] = v.decode()
            elif isinstance(v, np.ndarray):
                row[k] = [x.decode() if isinstance(x, bytes) else x.item() for x in v.tolist()] \
                    if v.dtype == object else v.tolist()
            elif isinstance(v, np.generic):
                row[k] = v.item()
            else:
                row[k] = v
        out.append(row)
        if limit is not None and len(out) >= limit:
            return out
    return out
