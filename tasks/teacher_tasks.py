"""Teacher-augmented tasks: a registered task's examples joined by ``id`` with materialised teacher outputs.

For each ``<teacher_dir>/<task>/`` holding ``<split>.jsonl`` files (layout in docs/CONTRACTS.md), registers
``<family>_teacher_<lang>`` (``<task>_teacher`` for a task without a language suffix): the base task's
formatting, then the FIAT student input (instruction, input, teacher reasoning) via ``preprocessors.fiat_input``.
The teacher identity and recipe hash of each split are in ``TEACHER_METADATA`` (and in every example's
``teacher`` / ``recipe_hash`` features).
"""

from __future__ import annotations

import functools
import os

import seqio
import tensorflow as tf

import tasks.common as common
from fiat_jax.data import preprocessors, sources, synthetic, teacher_outputs, tfds_builders
from fiat_jax.errors import UserError

ALL_LANGUAGES = frozenset(
    sources.MGSM_LANGUAGES + sources.XCOPA_LANGUAGES + tuple(sources.TYDIQA_LANGUAGES) + sources.XOR_ATTRIQA_LANGUAGES
    + sources.XTREME_UP_QA_LANGUAGES + tfds_builders.XTREME_UP_EXTRA_LANGUAGES + tuple(synthetic.TEMPLATES))

# task name -> split -> {"teacher", "recipe_hash", "recipe", "path"}
TEACHER_METADATA: dict[str, dict[str, dict[str, str]]] = {}


def _joined_fn(split: str, shuffle_files: bool = False, seed: int | None = None, *, base: str,
               outputs: dict[str, teacher_outputs.TeacherOutputs], strict: bool):
    del shuffle_files, seed
    base_task = seqio.get_mixture_or_task(base)
    raw = base_task.source.get_dataset(split=split, shuffle=False)
    spec = dict(raw.element_spec)
    rows = teacher_outputs.join(raw.as_numpy_iterator(), outputs[split], strict=strict)
    for key in ("teacher_output", "teacher", "recipe_hash"):
        spec[key] = tf.TensorSpec((), tf.string)
    return tf.data.Dataset.from_generator(lambda: iter(rows), output_signature=spec)


def teacher_task_name(base: str) -> str:
    """``mgsm_sw`` -> ``mgsm_teacher_sw`` (the language stays last, as the sweep expects)."""
    family, _, lang = base.rpartition("_")
    if family and lang in ALL_LANGUAGES:
        return f"{family}_teacher_{lang}"
    return f"{base}_teacher"


def register(*, teacher_dir: str, instruction: str | None, template: preprocessors.FiatTemplate,
             strict: bool) -> list[str]:
    if not os.path.isdir(teacher_dir):
        raise UserError(f"teacher outputs directory {teacher_dir} does not exist; "
                        f"{teacher_outputs.readers.HOW_TO_GET['teacher']}")
    names = []
    for base in sorted(os.listdir(teacher_dir)):
        split_files = sorted(f for f in os.listdir(os.path.join(teacher_dir, base)) if f.endswith(".jsonl"))
        if not split_files:
            continue
        if base not in seqio.TaskRegistry.names():
            raise UserError(f"{os.path.join(teacher_dir, base)}: no registered task named {base!r}")
        base_task = seqio.TaskRegistry.get(base)
        outputs = {f[:-len(".jsonl")]: teacher_outputs.read_teacher_outputs(teacher_dir, base, f[:-len(".jsonl")],
                                                                           strict=strict) for f in split_files}
        name = teacher_task_name(base)
        TEACHER_METADATA[name] = {s: {"teacher": o.teacher, "recipe_hash": o.recipe_hash, "recipe": o.recipe,
                                      "path": o.path} for s, o in outputs.items()}
        # The base preprocessors minus tokenisation (the last two), then the FIAT input, then tokenisation.
        base_pre = list(base_task.preprocessors)[:-2]
        common.add_task(
            name, source=seqio.FunctionDataSource(
                functools.partial(_joined_fn, base=base, outputs=outputs, strict=strict), splits=tuple(outputs)),
            output_features=common.output_features(),
            preprocessors=base_pre + [functools.partial(preprocessors.fiat_format, instruction=instruction,
                                                        template=template)] + common.tokenize_steps(),
            postprocess_fn=base_task.postprocessor, metric_fns=list(base_task.metric_fns))
        names.append(name)
    return names
