"""In-context learning: the teacher, given an instruction and k exemplars from the training split, answers each
evaluation example directly (greedy generation for prediction metrics, log-likelihood of the target for score
metrics). No parameters are trained. The prompt is the ``icl`` recipe's; the replies are materialised like every
teacher output (``teachers.materialise``)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import numpy as np

from fiat_jax.errors import UserError
from fiat_jax.methods import results as results_lib
from fiat_jax.methods import common
from fiat_jax.teachers import materialise as materialise_lib
from fiat_jax.teachers import recipes

ICL_RECIPE = "icl"  # teachers/recipes/icl.txt: the instruction, the exemplar blocks, the input's answer header


def pick_exemplars(examples: Sequence[Mapping[str, Any]], k: int, *, seed: int = 0) -> list[Mapping[str, Any]]:
    """``k`` training examples drawn with ``seed`` (kept in their original order)."""
    if k < 0:
        raise UserError(f"ICL: k={k} exemplars")
    if k > len(examples):
        raise UserError(f"ICL: asked for {k} exemplars, the training split has {len(examples)}")
    idx = sorted(np.random.default_rng(seed).choice(len(examples), size=k, replace=False).tolist())
    return [examples[i] for i in idx]


def icl_variables(recipe: recipes.Recipe, exemplars: Sequence[Mapping[str, Any]], *,
                  instruction: str | None) -> dict[str, str]:
    """The prompt's fixed variables: the exemplar blocks, and the instruction (None: the recipe's default)."""
    fixed = {"examples": recipe.examples_block(exemplars)}
    if instruction is not None:
        fixed["instruction"] = str(instruction)
    return fixed


def icl_prompt(example: Mapping[str, Any], exemplars: Sequence[Mapping[str, Any]], *, instruction: str | None = None,
               recipe: str = ICL_RECIPE, task: str = "") -> str:
    """The teacher's prompt for ``example`` (as :func:`icl_method` asks it)."""
    rec = recipes.load(recipe)
    return materialise_lib.prompt_for(rec, example, task=task, fixed=icl_variables(rec, exemplars,
                                                                                 instruction=instruction))


def with_ids(examples: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The examples keyed for materialising: their own ids, or their positions where ids are missing or repeat."""
    ids = [str(ex.get("id", i)) for i, ex in enumerate(examples)]
    if len(set(ids)) < len(ids):
        ids = [str(i) for i in range(len(examples))]
    return [{**ex, "id": i} for i, ex in zip(ids, examples)]


@gin.configurable
def icl_method(*, model_dir: str, mixture_or_task_name: str, teacher: Any = None, k: int = 4,
               instruction: str | None = None, num_eval_examples: int | None = None,
               eval_split: str = "validation", seed: int = 0, max_new_tokens: int | None = None,
               batch_size: int = 8, write_results: bool = True, recipe: str = ICL_RECIPE
               ) -> dict[str, dict[str, float]]:
    """ICL with ``teacher`` on every task of the mixture; writes predictions and ``results.json``.

    The prompts are the ``recipe``'s (``instruction``/``max_new_tokens`` None: the recipe's). The replies are
    materialised under ``MODEL_DIR/icl_replies`` (a rerun asks nothing again); the teacher gets the prompts alone,
    never the examples (a simulated teacher cannot answer from the gold)."""
    if teacher is None:
        raise UserError("ICL: missing teacher (bind icl_method.teacher)")
    rec = recipes.load(recipe)
    # Exemplars, not a training set: nothing is trained, so no training-set size is recorded.
    train_ex = common.split_examples(mixture_or_task_name, "train", exact=False) if k else {}
    eval_ex = common.split_examples(mixture_or_task_name, eval_split, limit=num_eval_examples)
    metrics: dict[str, dict[str, float]] = {}
    for task, examples in eval_ex.items():
        fixed = icl_variables(rec, pick_exemplars(train_ex[task], k, seed=seed) if k else [],
                              instruction=instruction)
        keyed = with_ids(examples)
        answers = materialise_lib.materialise(
            teacher, rec, keyed, out_dir=os.path.join(model_dir, "icl_replies"), task=task, split=eval_split,
            variables=fixed, max_new_tokens=max_new_tokens, replace_other=True, chunk_size=batch_size,
            teacher_sees_examples=False, what="ICL").require_all(f"ICL {task}")
        predictions = [answers[ex["id"]] for ex in keyed]
        prompts = [materialise_lib.prompt_for(rec, ex, task=task, fixed=fixed) for ex in keyed]
        fns, _ = common.metric_spec(task)
        wants_scores = any("scores" in inspect.signature(f).parameters for f in fns)
        scores = [teacher.score(p, [" " + str(ex["targets"])])[0] for p, ex in zip(prompts, examples)] \
            if wants_scores else None
        metrics[task] = common.compute_metrics(task, examples, predictions=predictions, scores=scores)
        results_lib.write_jsonl(os.path.join(model_dir, "predictions", f"{task}-icl.jsonl"), [
            {"id": ex.get("id"), "input": p, "target": ex["targets"], "prediction": pred,
             "score": None if scores is None else scores[i]}
            for i, (ex, p, pred) in enumerate(zip(examples, prompts, predictions))])
    if write_results:
        results_lib.write_results(model_dir, metrics=metrics, method="icl", k=k,
                                  teacher=materialise_lib.identity_of(teacher), tokens_seen=0, params_trained=0)
    return metrics
