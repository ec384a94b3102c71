"""FIAT (Joshi et al. 2023, arXiv 2309.04663): a teacher LLM writes reasoning for every example (cached); the
student's input is its own instruction + the input + that reasoning, its target the answer; the student is tuned
with PEFT. Inference is a teacher call (reasoning) then a student call (answer).

Ablations, one flag each (:class:`FiatAblations`), each changing only what it names:
  ``no_reasoning``: the student input has no teacher reasoning (and inference needs no teacher call);
  ``no_instruction``: the student input has no student instruction;
  ``full_finetune``: every parameter trains instead of the PEFT parameters (no PEFT transform);
  ``reasoning_as_target``: the reasoning becomes an auxiliary multitask target (distilling step-by-step style)
    instead of part of the input: extra rows ``input -> reasoning`` beside ``input -> answer``;
  ``non_instruction_tuned_base``: the student starts from a base (not instruction-tuned) checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin

from fiat_jax.data.preprocessors import DEFAULT_FIAT_TEMPLATE, FiatTemplate, fiat_input
from fiat_jax.data.teacher_outputs import read_teacher_outputs
from fiat_jax.errors import UserError
from fiat_jax.methods import pipeline
from fiat_jax.methods.common import require, teacher_identity
from fiat_jax.methods.student import StudentSpec, no_transform
from fiat_jax.teachers import materialise as materialise_lib, recipes

_log = logging.getLogger(__name__)

AUX_TEMPLATE = dataclasses.replace(DEFAULT_FIAT_TEMPLATE, answer_header="Reasoning:")
# The teacher's prompts are recipe files (fiat_jax/teachers/recipes/): the reasoning request and the student
# instruction writer.
REASONING_RECIPE = "fiat_reasoning"
STUDENT_INSTRUCTION_RECIPE = "student_instruction"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class FiatAblations:
    """Switch one FIAT ingredient off (see the module docstring)."""

    no_reasoning: bool = False
    no_instruction: bool = False
    full_finetune: bool = False
    reasoning_as_target: bool = False
    non_instruction_tuned_base: bool = False

    @property
    def reasoning_in_input(self) -> bool:
        return not (self.no_reasoning or self.reasoning_as_target)

    @property
    def needs_teacher(self) -> bool:
        """Does training need the teacher's reasoning (as input or as auxiliary target)?"""
        return not self.no_reasoning

    @property
    def teacher_at_inference(self) -> bool:
        return self.reasoning_in_input


def student_rows(examples: Sequence[Mapping[str, Any]], reasonings: Mapping[str, str] | None, *,
                 instruction: str | None, ablations: FiatAblations = FiatAblations(),
                 template: FiatTemplate = DEFAULT_FIAT_TEMPLATE) -> list[dict[str, Any]]:
    """Student training/eval rows. ``reasonings``: example id -> teacher reasoning (may be None when the
    ablation needs none). Answer rows keep the example's other fields (for metrics)."""
    use_instruction = None if ablations.no_instruction else instruction
    rows: list[dict[str, Any]] = []
    aux: list[dict[str, Any]] = []
    for ex in examples:
        reasoning = None
        if ablations.needs_teacher:
            if reasonings is None or str(ex["id"]) not in reasonings:
                raise UserError(f"FIAT: no teacher reasoning for example {ex['id']}")
            reasoning = reasonings[str(ex["id"])]
        row = {k: v for k, v in ex.items() if k not in ("inputs", "targets")}
        row["inputs"] = fiat_input(use_instruction, ex["inputs"],
                                   reasoning if ablations.reasoning_in_input else None, template=template)
        row["targets"] = ex["targets"]
        rows.append(row)
        if ablations.reasoning_as_target:
            aux.append({"id": f"{ex['id']}/reasoning", "inputs": fiat_input(use_instruction, ex["inputs"], None,
                                                                            template=AUX_TEMPLATE),
                        "targets": reasoning})
    return rows + aux


@dataclasses.dataclass(frozen=True)
class StudentSetup:
    """The trainer hooks of the student: how it is initialised, transformed (PEFT) and what trains."""

    initial_params: Callable[[Any], Any] | None
    model_transform: Callable[[Any], Any] | None
    trainable: Any


def student_setup(ablations: FiatAblations, *, initial_params: Callable | None, model_transform: Callable | None,
                  trainable: Any, base_initial_params: Callable | None = None) -> StudentSetup:
    """PEFT (``model_transform`` + ``trainable``) unless ``full_finetune`` (an explicit no-op transform, all
    parameters trainable); the instruction-tuned checkpoint (``initial_params``) unless
    ``non_instruction_tuned_base`` (``base_initial_params``)."""
    # lazy: flax/JAX load only when a run computes, not when gin configs or the CLI import this module
    from flax import nnx

    if ablations.non_instruction_tuned_base:
        if base_initial_params is None:
            raise UserError("FIAT non_instruction_tuned_base: bind fiat.base_initial_params (the base checkpoint)")
        initial_params = base_initial_params
    if ablations.full_finetune:
        return StudentSetup(initial_params=initial_params, model_transform=no_transform, trainable=nnx.Param)
    return StudentSetup(initial_params=initial_params, model_transform=model_transform, trainable=trainable)


def fiat_student(spec: StudentSpec, ablations: FiatAblations, *, base_initial_params: Callable | None,
                 has_teacher: bool) -> StudentSpec:
    """The spec with the ablations' hooks (:func:`student_setup`), every missing piece refused before anything is
    computed: no steps, no teacher (and no materialised reasoning) when one is needed, no PEFT transform (unless
    ``full_finetune``), no student model."""
    require(spec.train_steps, "train_steps", "FIAT")
    setup = student_setup(ablations, initial_params=spec.initial_params, model_transform=spec.model_transform,
                          trainable=spec.trainable, base_initial_params=base_initial_params)
    spec = dataclasses.replace(spec, **dataclasses.asdict(setup))
    if ablations.needs_teacher and not has_teacher:
        raise UserError("FIAT: missing teacher (bind fiat_method.teacher, or fiat_method.teacher_dir to the "
                        "output of `fiat teach`)")
    if spec.model_transform is None:
        raise UserError("FIAT: missing the student's PEFT transform (bind MODEL_TRANSFORM / StudentSpec."
                        "model_transform, or FiatAblations.full_finetune = True)")
    spec.check("FIAT")
    return spec


# ---------------------------------------------------------------------------------------------------------------
# Teacher reasoning, materialised (teachers/materialise.py; docs/CONTRACTS.md "Materialised teacher outputs") so
# reruns never re-ask.
def teacher_outputs(teacher: Any, examples: Sequence[Mapping[str, Any]], *, task: str, split: str, out_dir: str,
                    instruction: str | None, exemplars: str = "", max_new_tokens: int = 128,
                    batch_size: int = 8) -> dict[str, str]:
    """``{id: reasoning}`` for the examples: read from ``out_dir/<task>/<split>.jsonl`` where present (same
    teacher and recipe hash; rows of an older recipe are replaced), the rest asked of the teacher (with their
    examples: a replay teacher looks recordings up by id, the controlled (simulated) teacher reads the gold
    answer) and appended. Any reply is reasoning (an empty one too), as before the recipe files. ``instruction``
    None: the recipe's own."""
    variables = {"exemplars": exemplars, **({} if instruction is None else {"instruction": instruction})}
    result = materialise_lib.materialise(
        teacher, REASONING_RECIPE, examples, out_dir=out_dir, task=task, split=split,
        variables=variables, max_new_tokens=max_new_tokens,
        keep_unparsed=True, replace_other=True, chunk_size=batch_size, what="FIAT reasoning")
    return result.require_all(f"FIAT reasoning {task}/{split}")


def write_student_instruction(teacher: Any, *, task: str, out_dir: str | None,
                              examples: Sequence[Mapping[str, Any]] = ()) -> str:
    """The student instruction the teacher writes for ``task`` (its family and language from the name; recipe
    ``student_instruction``), materialised as ``out_dir/<task>/train.student_instruction.json``."""
    return materialise_lib.materialise(teacher, STUDENT_INSTRUCTION_RECIPE, examples, out_dir=out_dir, task=task,
                                       split="train", what="FIAT student instruction").outputs[task]


def language_of(task: str) -> str:
    return task.rsplit("_", 1)[-1]


@gin.configurable
def mgsm_cot_exemplars(*, k: int = 4, data_dir: str | None = None) -> Callable[[str], str]:
    """The teacher's chain-of-thought exemplars for an MGSM task: FIAT's gin name for
    :func:`fiat_jax.teachers.recipes.cot_exemplars` (the published per-language exemplars)."""
    return recipes.cot_exemplars(k=k, data_dir=data_dir)


def _per_task(value: str | Mapping[str, str] | None, task: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.get(task) or value.get(language_of(task))


def student_instructions(train_examples: Mapping[str, Sequence[Mapping[str, Any]]],
                         given: str | Mapping[str, str] | None, *, teacher: Any, ablations: FiatAblations,
                         out_dir: str) -> dict[str, str | None]:
    """Each training task's student instruction: the one given, else the teacher's (materialised in ``out_dir``;
    none needed with ``no_instruction``)."""
    instructions: dict[str, str | None] = {}
    for task, examples in train_examples.items():
        instruction = _per_task(given, task)
        if instruction is None and not ablations.no_instruction:
            if teacher is None:
                raise UserError(f"FIAT: missing student instruction for {task} (bind fiat_method."
                                f"student_instruction, or a teacher to write it)")
            instruction = write_student_instruction(teacher, task=task, examples=examples, out_dir=out_dir)
        instructions[task] = instruction
    return instructions


def reasoning_for(task: str, split: str, examples: Sequence[Mapping[str, Any]], *, teacher: Any,
                  teacher_dir: str | None, out_dir: str, instruction: str | None,
                  exemplars: Callable[[str], str] | str | None, max_new_tokens: int) -> dict[str, str]:
    """``{id: reasoning}``: from ``teacher_dir`` (the output of ``fiat teach``) when it holds every example's,
    else asked of the teacher and materialised in ``out_dir`` (:func:`teacher_outputs`)."""
    if teacher_dir is not None and os.path.exists(os.path.join(teacher_dir, task, f"{split}.jsonl")):
        outs = read_teacher_outputs(teacher_dir, task, split).outputs
        missing = [ex["id"] for ex in examples if str(ex["id"]) not in outs]
        if not missing:
            return {str(ex["id"]): outs[str(ex["id"])] for ex in examples}
        if teacher is None:
            raise UserError(f"FIAT: {teacher_dir}/{task}/{split}.jsonl lacks reasoning for {len(missing)} "
                            f"examples (first {missing[0]}) and no teacher is bound to write it")
    if teacher is None:
        raise UserError(f"FIAT: missing teacher for {task}/{split} (no materialised reasoning in {teacher_dir})")
    ex_text = exemplars(task) if callable(exemplars) else (exemplars or "")
    return teacher_outputs(teacher, examples, task=task, split=split, out_dir=out_dir, instruction=instruction,
                           exemplars=ex_text, max_new_tokens=max_new_tokens)


def inference_ablations(ablations: FiatAblations) -> FiatAblations:
    """The ablations as the student's evaluation rows see them: answer rows only, reasoning iff read at inference."""
    return dataclasses.replace(ablations, reasoning_as_target=False, no_reasoning=not ablations.teacher_at_inference)


@gin.configurable
def fiat_method(*, model_dir: str, mixture_or_task_name: str, student: StudentSpec | None = None,
                num_train_examples: int | None = None, num_eval_examples: int | None = None,
                eval_split: str = "validation", teacher: Any = None, teacher_dir: str | None = None,
                teacher_instruction: str | None = None,
                teacher_exemplars: Callable[[str], str] | str | None = None,
                student_instruction: str | Mapping[str, str] | None = None, ablations: FiatAblations | None = None,
                template: FiatTemplate = DEFAULT_FIAT_TEMPLATE, base_initial_params: Callable | None = None,
                max_reasoning_tokens: int = 128, write_results: bool = True) -> dict[str, dict[str, float]]:
    """FIAT end to end: teacher reasoning for train and eval examples, student rows, PEFT training of ``student``
    (default: the gin-bound ``StudentSpec()``), then inference (teacher reasoning, then the student's answer)
    scored with each task's metrics. ``teacher_instruction`` None: the ``fiat_reasoning`` recipe's own.

    Fails before any training when a required piece is missing: no teacher (unless ``no_reasoning`` or the
    reasoning is materialised in ``teacher_dir``), no training examples, no student instruction and no teacher
    to write one.
    """
    ablations = ablations or FiatAblations()
    spec = fiat_student(student or StudentSpec(), ablations, base_initial_params=base_initial_params,
                        has_teacher=teacher is not None or teacher_dir is not None)
    train_ex, eval_ex = pipeline.train_and_eval_examples(mixture_or_task_name, num_train_examples=num_train_examples,
                                                         eval_split=eval_split, num_eval_examples=num_eval_examples)
    out_dir = os.path.join(model_dir, "teacher_outputs")
    instructions = student_instructions(train_ex, student_instruction, teacher=teacher, ablations=ablations,
                                        out_dir=out_dir)
    reasoning = functools.partial(reasoning_for, teacher=teacher, teacher_dir=teacher_dir, out_dir=out_dir,
                                  instruction=teacher_instruction, exemplars=teacher_exemplars,
                                  max_new_tokens=max_reasoning_tokens)
    train_rows = [row for task, examples in train_ex.items() for row in student_rows(
        examples, reasoning(task, "train", examples) if ablations.needs_teacher else None,
        instruction=instructions[task], ablations=ablations, template=template)]
    # Inference: the teacher's reasoning first (when the student reads it), then the student.
    eval_rows = {task: student_rows(
        examples, reasoning(task, eval_split, examples) if ablations.teacher_at_inference else None,
        instruction=instructions.get(task, _per_task(student_instruction, task)),
        ablations=inference_ablations(ablations), template=template) for task, examples in eval_ex.items()}
    _log.info("FIAT: %d training rows, %s eval rows; student trains for %d steps", len(train_rows),
              {t: len(r) for t, r in eval_rows.items()}, spec.train_steps)
    return pipeline.train_evaluate_and_record(spec, model_dir=model_dir, name="fiat", train_rows=train_rows,
                                              eval_rows=eval_rows, method="fiat", write_results=write_results,
                                              ablations=dataclasses.asdict(ablations),
                                              teacher=teacher_identity(teacher))
