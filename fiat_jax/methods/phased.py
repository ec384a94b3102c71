"""Phased instruction tuning (Pang et al. 2024, arXiv 2406.04371): difficulty-scored instructions are cut into
stages by score thresholds and trained stage after stage, easy to hard, each stage starting from the previous
stage's final parameters with its own learning-rate schedule.

Stage ``i`` holds the examples with ``thresholds[i-1] <= score < thresholds[i]`` (default thresholds 1.5 and 3.5:
three stages ``< 1.5``, ``[1.5, 3.5)``, ``>= 3.5``; any number of thresholds). Controls: ``"single"`` (one stage on
all data: one-off tuning), ``"random"`` (random assignment with the same stage sizes), ``"reversed"`` (hard to
easy).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
import numpy as np

from fiat_jax.errors import UserError
from fiat_jax.methods import common, heldout, results as results_lib
from fiat_jax.methods import student as student_lib
from fiat_jax.data.examples import examples_task
from fiat_jax.methods.student import StudentSpec
from fiat_jax.methods.winrate import pairwise_win_rate
from fiat_jax.teachers import materialise as materialise_lib
from fiat_jax.train import optimizers

_log = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = (1.5, 3.5)
DIFFICULTY_RECIPE = "difficulty"  # fiat_jax/teachers/recipes/difficulty.txt
CONTROLS = ("none", "single", "random", "reversed")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage: its examples and the score range it was cut from (``[low, high)``)."""

    index: int
    low: float
    high: float
    examples: tuple[dict[str, Any], ...]

    @property
    def label(self) -> str:
        lo = "" if math.isinf(self.low) else f"{self.low:g} <= "
        hi = "" if math.isinf(self.high) else f" < {self.high:g}"
        return f"stage {self.index + 1} ({lo}score{hi})" if (lo or hi) else f"stage {self.index + 1} (all scores)"


def _score(example: Mapping[str, Any], score_key: str) -> float:
    value = example.get(score_key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"phased: example {example.get('id', '?')} has no difficulty score ({score_key!r}); "
                        f"score the data with a teacher first")
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise UserError(f"phased: example {example.get('id', '?')} has a bad score {value!r}") from None
    if not math.isfinite(score):
        raise UserError(f"phased: example {example.get('id', '?')} has a non-finite score {value!r}")
    return score


def score_difficulty(teacher: Any, examples: Sequence[Mapping[str, Any]], *, task: str, out_dir: str | None,
                     score_key: str = "score") -> list[dict[str, Any]]:
    """The examples with the teacher's difficulty score (1-5, recipe ``difficulty``) under ``score_key``,
    materialised in ``out_dir/<task>/train.jsonl`` (a rerun asks nothing again): for data without scores."""
    if any("id" not in ex for ex in examples):
        raise UserError(f"phased: task {task} examples have no 'id' (needed to keep their difficulty scores)")
    scores = materialise_lib.materialise(teacher, DIFFICULTY_RECIPE, examples, out_dir=out_dir, task=task,
                                         what="difficulty").require_all(f"phased difficulty scoring of {task}")
    return [dict(ex, **{score_key: float(scores[str(ex["id"])])}) for ex in examples]


def _check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    ts = tuple(float(t) for t in thresholds)
    if any(b <= a for a, b in zip(ts, ts[1:])):
        raise UserError(f"phased: thresholds must increase strictly, got {list(ts)}")
    return ts


def stage_index(score: float, thresholds: Sequence[float]) -> int:
    """The stage of one score: the number of thresholds at or below it."""
    return bisect.bisect_right(list(thresholds), score)


def stage_counts(scores: Sequence[float], thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> list[int]:
    """How many scores fall in each of the ``len(thresholds) + 1`` stages."""
    ts = _check_thresholds(thresholds)
    counts = [0] * (len(ts) + 1)
    for s in scores:
        counts[stage_index(float(s), ts)] += 1
    return counts


def assign_stages(examples: Sequence[Mapping[str, Any]], *, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                  score_key: str = "score", control: str = "none", seed: int = 0,
                  allow_empty: bool = False) -> list[Stage]:
    """Cut ``examples`` into training stages in the order they are trained (see the module docstring).

    Raises a UserError when there are no examples, an example has no score, or (unless ``allow_empty``) a stage
    gets no examples — naming the stage and its score range.
    """
    if control not in CONTROLS:
        raise UserError(f"phased: control={control!r}; choose one of {', '.join(CONTROLS)}")
    if not examples:
        raise UserError("phased: no training examples")
    ts = _check_thresholds(thresholds)
    scores = [_score(ex, score_key) for ex in examples]
    if control == "single":
        stages = [Stage(0, -math.inf, math.inf, tuple(dict(e) for e in examples))]
    else:
        bounds = (-math.inf,) + ts + (math.inf,)
        members: list[list[dict[str, Any]]] = [[] for _ in range(len(ts) + 1)]
        for ex, s in zip(examples, scores):
            members[stage_index(s, ts)].append(dict(ex))
        if control == "random":
            # Same stage sizes, examples dealt at random: isolates ordering by difficulty from staging itself.
            pool = [ex for group in members for ex in group]
            order = np.random.default_rng(seed).permutation(len(pool))
            shuffled = [pool[i] for i in order]
            sizes = [len(g) for g in members]
            members, start = [], 0
            for size in sizes:
                members.append(shuffled[start:start + size])
                start += size
        stages = [Stage(i, bounds[i], bounds[i + 1], tuple(g)) for i, g in enumerate(members)]
        if control == "reversed":
            stages = stages[::-1]
    if not allow_empty:
        for stage in stages:
            if not stage.examples:
                counts = stage_counts(scores, ts)
                raise UserError(f"phased: {stage.label} has no examples (stage counts {counts} for thresholds "
                                f"{list(ts)}); change phased thresholds or the data")
    return stages


def params_digest(state: Any) -> str:
    """A content hash of a parameter tree (to assert that stage k+1 starts where stage k ended)."""
    # lazy: JAX loads only when a run computes, not when gin configs or the CLI import this module
    import jax

    h = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(state), key=lambda kv: jax.tree_util.keystr(kv[0])):
        arr = np.asarray(jax.device_get(leaf))
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str(arr.dtype).encode() + str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


@dataclasses.dataclass
class StageRecord:
    """What one stage saw and produced (kept for the assertion and for results.json)."""

    index: int
    label: str
    num_examples: int
    steps: int
    start_digest: str
    end_digest: str
    model_dir: str


def chain_transform(base_transform: Callable[[Any], Any] | None, previous_state: Any | None,
                    trainable: Any) -> Callable[[Any], Any]:
    """The trainer's ``model_transform`` for a stage: apply PEFT, then load the previous stage's final params."""
    # lazy: flax/JAX load only when a run computes, not when gin configs or the CLI import this module
    from flax import nnx

    def transform(model):
        if base_transform is not None:
            model = base_transform(model)
        if previous_state is not None:
            nnx.update(model, previous_state)
        return model

    return transform


def train_stages(stages: Sequence[Stage], *, model_dir: str, steps_per_stage: Sequence[int] | int,
                 train_fn: Callable[..., Any], to_row: Callable[[Mapping[str, Any]], dict[str, Any]],
                 eval_rows: Sequence[dict[str, Any]] | None = None, model_transform: Callable | None = None,
                 trainable: Any = None, task_prefix: str = "phased_stage",
                 metric_fns: Sequence[Callable[..., Any]] = (), **train_kwargs: Any) -> tuple[Any, list[StageRecord]]:
    """Train each stage with ``train_fn`` (the trainer's ``train``) in ``model_dir/stage_<k>``.

    Stage k+1's model is built by the same factory and transform, then its trainable parameters are replaced by
    stage k's final ones; this is asserted (content hashes) before it trains. Returns the final model and records.
    """
    # lazy: flax/JAX load only when a run computes, not when gin configs or the CLI import this module
    from flax import nnx

    if trainable is None:
        trainable = nnx.Param
    steps = [int(steps_per_stage)] * len(stages) if isinstance(steps_per_stage, int) else list(steps_per_stage)
    if len(steps) != len(stages):
        raise UserError(f"phased: {len(steps)} step counts for {len(stages)} stages")
    previous_state = None
    previous_digest = None
    records: list[StageRecord] = []
    model = None
    for position, (stage, n_steps) in enumerate(zip(stages, steps)):
        name = f"{task_prefix}{position + 1}"
        splits = {"train": [to_row(ex) for ex in stage.examples]}
        if eval_rows:
            splits["validation"] = list(eval_rows)
        task = examples_task(name, splits, metric_fns=metric_fns)
        stage_dir = os.path.join(model_dir, f"stage_{position + 1}")
        resumed = os.path.isdir(os.path.join(stage_dir, "checkpoints"))

        def optimizer(_n=n_steps):
            # Each stage has its own schedule (warmup and decay over its own steps).
            return optimizers.make_optimizer(schedule=optimizers.learning_rate_schedule(total_steps=_n))

        _log.info("phased: %s, %d examples, %d steps", stage.label, len(stage.examples), n_steps)
        # The trainable state as built (after the chained transform) comes back with the result.
        result = train_fn(model_dir=stage_dir, train_steps=n_steps, mixture_or_task_name=name, task=task,
                          model_transform=chain_transform(model_transform, previous_state, trainable),
                          trainable=trainable, optimizer=optimizer, keep_initial_trainable=True, **train_kwargs)
        start = params_digest(result.initial_trainable) if result.initial_trainable is not None else ""
        if previous_digest is not None and not resumed and start != previous_digest:
            raise AssertionError(f"phased: {name} did not start from the previous stage's final parameters")
        model = result.model
        previous_state = nnx.state(model, trainable)
        previous_digest = params_digest(previous_state)
        records.append(StageRecord(index=stage.index, label=stage.label, num_examples=len(stage.examples),
                                   steps=n_steps, start_digest=start, end_digest=previous_digest,
                                   model_dir=stage_dir))
    return model, records


def proportional_steps(total: int, sizes: Sequence[int]) -> list[int]:
    """``total`` steps split over stages in proportion to their sizes (largest remainders; at least one each)."""
    if not sizes or sum(sizes) <= 0:
        raise UserError("phased: no examples to schedule")
    n = sum(sizes)
    exact = [total * s / n for s in sizes]
    steps = [max(1, int(math.floor(x))) for x in exact]
    order = sorted(range(len(sizes)), key=lambda i: exact[i] - math.floor(exact[i]), reverse=True)
    for i in order:
        if sum(steps) >= total:
            break
        steps[i] += 1
    return steps


def win_rate_metric(judge: Any, instructions: Sequence[str],
                    outcomes: list[int] | None = None) -> Callable[..., dict[str, float]]:
    """A seqio predict metric: the student's responses against the reference responses, judged both ways.
    ``outcomes`` (if given) receives each item's +1 / 0 / -1, for per-item win-rate scores."""

    def win_rate(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
        totals, records = pairwise_win_rate(judge, list(instructions)[:len(predictions)],
                                            [str(p) for p in predictions], [str(t) for t in targets])
        if outcomes is not None:
            outcomes[:] = [int(r["outcome"]) for r in records]
        return totals.as_dict()

    return win_rate


def judged_win_rate(judge: Any, model: Any, rows: Sequence[Mapping[str, Any]], ids: Sequence[str], *,
                    spec: StudentSpec, predictions_dir: str) -> tuple[dict[str, float], dict[str, Any] | None]:
    """The win rate of the student's greedy responses against the reference ones, judged both ways: its metrics
    and the per-item entry (+0.5 win, 0 tie, -0.5 loss: their mean is the win rate; None when not per item)."""
    outcomes: list[int] = []
    metrics = student_lib.evaluate_rows(
        model, name="phased_eval", rows=rows, postprocess_fn=None,
        metric_fns=[win_rate_metric(judge, [r["inputs"] for r in rows], outcomes)],
        task_feature_lengths=spec.task_feature_lengths, batch_size=spec.eval_batch_size,
        predictions_dir=predictions_dir)
    items = heldout.item_entry(list(ids)[:len(rows)], [o / 2 for o in outcomes]) if len(outcomes) == len(rows) \
        else None
    return metrics, items


def heldout_scores(model: Any, rows: Sequence[Mapping[str, Any]], ids: Sequence[str], *,
                   spec: StudentSpec) -> tuple[Any, dict[str, float], dict[str, Any]]:
    """Held-out responses scored by the trained student, item by item (no decoding: cheap and judge-free):
    the scores, the task's metrics and their per-item entries."""
    scored = heldout.score_responses(model, [dict(r, id=i) for r, i in zip(rows, ids)],
                                     task_feature_lengths=spec.task_feature_lengths, batch_size=spec.eval_batch_size,
                                     name="phased_heldout")
    metrics = {heldout.METRIC: scored.per_token, "log_likelihood": scored.per_response}
    items = {heldout.METRIC: heldout.item_entry(scored.ids, scored.item_values()),
             "log_likelihood": heldout.item_entry(scored.ids, scored.sums)}
    return scored, metrics, items


@gin.configurable
def phased_method(*, model_dir: str, student: StudentSpec | None = None,
                  mixture_or_task_name: str = "alpaca_scored", num_train_examples: int | None = None,
                  num_eval_examples: int | None = 32, eval_split: str = "validation",
                  thresholds: Sequence[float] = DEFAULT_THRESHOLDS, control: str = "none",
                  steps_per_stage: int | Sequence[int] | None = None, score_key: str = "score", seed: int = 0,
                  judge: Any = None, num_judge_examples: int | None = None, scorer: Any = None,
                  write_results: bool = True) -> dict[str, dict[str, float]]:
    """Phased instruction tuning of ``student`` (default: the gin-bound ``StudentSpec()``) end to end: stages from
    difficulty scores (checked before any training; a ``scorer`` teacher scores data without them,
    :func:`score_difficulty`), stage after stage from the previous stage's parameters, then held-out response
    log-likelihood per token and per response, item by item (:mod:`fiat_jax.methods.heldout`), and, with a
    ``judge`` teacher, the win rate of greedy responses on the first ``num_judge_examples`` held-out items."""
    spec = student or StudentSpec()
    spec.check("phased")
    train_ex = common.split_examples(mixture_or_task_name, "train", limit=num_train_examples)
    if scorer is not None:
        train_ex = {task: score_difficulty(scorer, rows, task=task, score_key=score_key,
                                           out_dir=os.path.join(model_dir, "teacher_outputs"))
                    for task, rows in train_ex.items()}
    stages = assign_stages([ex for rows in train_ex.values() for ex in rows], thresholds=thresholds,
                           score_key=score_key, control=control, seed=seed)
    eval_ex = [ex for rows in common.split_examples(mixture_or_task_name, eval_split,
                                                    limit=num_eval_examples).values() for ex in rows]
    eval_rows = [{"inputs": ex["inputs"], "targets": ex["targets"]} for ex in eval_ex]
    eval_ids = [str(ex.get("id") or f"item{i}") for i, ex in enumerate(eval_ex)]
    if steps_per_stage is None:
        steps_per_stage = proportional_steps(int(spec.train_steps), [len(s.examples) for s in stages])
    _log.info("phased: %s", ", ".join(f"{s.label}: {len(s.examples)}" for s in stages))
    model, records = train_stages(stages, model_dir=model_dir, steps_per_stage=steps_per_stage,
                                  train_fn=spec.trainer(), to_row=lambda ex: {"inputs": ex["inputs"],
                                                                              "targets": ex["targets"]},
                                  eval_fn=None, register_tasks=None, **spec.trainer_kwargs())
    scored, task_metrics, items = heldout_scores(model, eval_rows, eval_ids, spec=spec)
    if judge is not None:
        judged = eval_rows[:num_judge_examples] if num_judge_examples is not None else eval_rows
        win_metrics, win_items = judged_win_rate(judge, model, judged, eval_ids, spec=spec,
                                                 predictions_dir=os.path.join(model_dir, "predictions"))
        task_metrics.update(win_metrics)
        items.update({"win_rate": win_items} if win_items is not None else {})
    metrics = {mixture_or_task_name: task_metrics}
    if write_results:
        results_lib.write_results(model_dir, metrics=metrics, method="phased_ift", control=control,
                                  thresholds=list(thresholds), item_scores={mixture_or_task_name: items},
                                  eval_response_tokens=sum(scored.tokens), eval_items=len(eval_rows),
                                  stages=[dataclasses.asdict(r) for r in records])
    return metrics
