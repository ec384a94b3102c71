"""The student side shared by the methods: a typed :class:`StudentSpec` (trainer, hooks, steps, lengths) that
trains on in-memory rows (an unregistered seqio Task handed to the trainer), scoring rows by log-likelihood, and
evaluating rows with a task's metrics (predictions written like ``fiat eval``)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import gin
import numpy as np
import seqio

from fiat_jax.data.examples import examples_task
from fiat_jax.errors import UserError
from fiat_jax.methods.common import metric_spec
from fiat_jax.train import evaluator, input_pipeline, losses
from fiat_jax.train import trainer as trainer_lib

# "Not given here: the trainer's own ``train.<hook>`` gin binding applies" (e.g. a models/*.gin file's
# ``train.initial_params = @pretrained_params``), as opposed to an explicit None (no hook at all).
TRAINER_BINDING = "train.* binding"


def no_transform(model: Any) -> Any:
    """An explicit "no PEFT" transform (full fine-tuning), overriding any ``train.model_transform`` in gin."""
    return model


@gin.configurable
@dataclasses.dataclass(frozen=True)
class StudentSpec:
    """The student a method trains and evaluates, in one value instead of a dozen keyword arguments.

    ``train_fn``: the trainer (default ``trainer.train``, whose gin bindings give the model factory, batch size,
    optimizer); ``initial_params`` / ``model_transform`` / ``trainable``: its hooks (weights to start from, PEFT
    transform, what trains), each a value or :data:`TRAINER_BINDING`; ``pack``: several rows per sequence (None:
    packed, unless the trainer's config binds ``train.pack``); ``eval_batch_size``: for evaluation and scoring.
    """

    train_steps: int
    task_feature_lengths: Mapping[str, int] | None  # None: the trainer's own binding
    train_fn: Callable[..., Any] | None = None
    initial_params: Any = TRAINER_BINDING
    model_transform: Any = TRAINER_BINDING
    trainable: Any = TRAINER_BINDING
    pack: bool | None = None
    eval_batch_size: int = 16

    @classmethod
    def of(cls, *, initial_params: Any = None, model_transform: Any = None, trainable: Any = None,
           **fields: Any) -> "StudentSpec":
        """From a method's keyword arguments, where None hooks leave the trainer's binding in place."""
        return cls(**fields).with_hooks(initial_params=initial_params, model_transform=model_transform,
                                        trainable=trainable)

    def with_hooks(self, **hooks: Any) -> "StudentSpec":
        """These hooks replaced (None: the trainer's binding)."""
        return dataclasses.replace(self, **{k: TRAINER_BINDING if v is None else v for k, v in hooks.items()})

    def trainer(self) -> Callable[..., Any]:
        return self.train_fn if self.train_fn is not None else trainer_lib.train

    def hooks(self) -> dict[str, Any]:
        """The hooks this spec sets (those left to the trainer's binding are not passed)."""
        return {k: v for k, v in (("initial_params", self.initial_params), ("model_transform", self.model_transform),
                                  ("trainable", self.trainable)) if v is not TRAINER_BINDING}

    def has(self, hook: str) -> bool:
        """Is ``hook`` set, here or by the trainer's own binding?"""
        value = getattr(self, hook)
        return value is not None if value is not TRAINER_BINDING else trainer_lib.binds(hook)

    def check(self, method: str) -> None:
        """The student model must be configured (``train.model_factory``) before anything is computed."""
        fn = self.train_fn
        if isinstance(fn, functools.partial) and "model_factory" in fn.keywords:
            return
        if not trainer_lib.binds("model_factory"):
            raise UserError(f"{method}: missing the student model (bind train.model_factory, e.g. include a "
                            f"models/*.gin file)")

    def train(self, *, model_dir: str, name: str, train_rows: Sequence[Mapping[str, Any]],
              train_steps: int | None = None, **overrides: Any) -> Any:
        """Train on in-memory rows (a seqio Task object, not registered) in ``model_dir``: a ``TrainResult``."""
        kwargs: dict[str, Any] = {**self.hooks(), "eval_fn": None, "register_tasks": None, **overrides}
        if self.task_feature_lengths is not None:
            kwargs.setdefault("task_feature_lengths", dict(self.task_feature_lengths))
        if self.pack is not None or not trainer_lib.binds("pack"):
            kwargs["pack"] = True if self.pack is None else bool(self.pack)
        task = examples_task(name, {"train": [dict(r) for r in train_rows]})
        return self.trainer()(model_dir=model_dir, train_steps=int(self.train_steps if train_steps is None
                                                                   else train_steps),
                              mixture_or_task_name=name, task=task, **kwargs)


def score_rows(model: Any, rows: Sequence[Mapping[str, Any]], *, task_feature_lengths: Mapping[str, int],
               batch_size: int = 32, name: str = "methods_scoring") -> list[float]:
    """Sum log-likelihood of each row's ``targets`` given its ``inputs`` under ``model`` (in row order)."""
    return score_rows_and_tokens(model, rows, task_feature_lengths=task_feature_lengths, batch_size=batch_size,
                                 name=name)[0]


def score_rows_and_tokens(model: Any, rows: Sequence[Mapping[str, Any]], *, task_feature_lengths: Mapping[str, int],
                          batch_size: int = 32, name: str = "methods_scoring") -> tuple[list[float], list[int]]:
    """Each row's summed ``targets`` log-likelihood given its ``inputs`` and its number of target tokens."""
    # lazy: JAX loads only when a run computes, not when gin configs or the CLI import this module
    import jax
    # lazy: JAX loads only when a run computes, not when gin configs or the CLI import this module
    import jax.numpy as jnp
    # lazy: flax/JAX load only when a run computes, not when gin configs or the CLI import this module
    from flax import nnx

    if not rows:
        return [], []
    task = examples_task(name, {"validation": [dict(r) for r in rows]})
    kind = getattr(model, "model_kind", "decoder")
    converter = input_pipeline.feature_converter_for(kind, pack=False)
    ds = task.get_dataset(sequence_length=dict(task_feature_lengths), split="validation", shuffle=False,
                          use_cached=False)
    ds = converter(ds, dict(task_feature_lengths))
    feats = list(ds.as_numpy_iterator())
    graphdef, state = nnx.split(model)

    @functools.partial(jax.jit, static_argnames="max_positions")
    def score(state, batch, max_positions):
        m = nnx.merge(graphdef, state)
        tgt, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
        if not hasattr(m, "hidden_from_batch"):
            logits = m.logits_from_batch(batch, deterministic=True).astype(jnp.float32)
            lp = jax.nn.log_softmax(logits, axis=-1)
            return jnp.sum(jnp.take_along_axis(lp, tgt[..., None], axis=-1)[..., 0] * weights, axis=-1)
        # The LM head only at the target positions (long inputs, short targets).
        return losses.head_token_log_likelihoods(m.hidden_from_batch(batch, deterministic=True),
                                                 m.logits_from_hidden, tgt, weights, max_positions=max_positions)

    sums: list[float] = []
    tokens: list[int] = []
    for start in range(0, len(feats), batch_size):
        chunk = feats[start:start + batch_size]
        batch = {k: np.stack([f[k] for f in chunk]) for k in chunk[0]}
        pad = batch_size - len(chunk)
        if pad:
            batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
        scores = score(state, batch, losses.position_bucket(batch["decoder_loss_weights"]))
        sums.extend(float(x) for x in np.asarray(scores)[:len(chunk)])
        tokens.extend(int(x) for x in np.count_nonzero(batch["decoder_loss_weights"][:len(chunk)], axis=-1))
    return sums, tokens


def train_on_rows(*, model_dir: str, name: str, train_rows: Sequence[Mapping[str, Any]], train_steps: int,
                  train_fn: Callable[..., Any] | None = None, pack: bool | None = None,
                  task_feature_lengths: Mapping[str, int] | None = None, initial_params: Any = None,
                  model_transform: Any = None, trainable: Any = None, **train_kwargs: Any) -> Any:
    """Train on the rows with the trainer (``train_fn``, default ``train``): :meth:`StudentSpec.train` for
    callers without a spec. ``pack``: several rows per sequence (segment-aware attention and positions); FIAT rows
    are long inputs of very different lengths, so unpacked batches are mostly padding; None packs unless the
    trainer's config binds ``train.pack``."""
    spec = StudentSpec.of(train_steps=int(train_steps), task_feature_lengths=task_feature_lengths,
                          train_fn=train_fn, pack=pack, initial_params=initial_params,
                          model_transform=model_transform, trainable=trainable)
    return spec.train(model_dir=model_dir, name=name, train_rows=train_rows, **train_kwargs)


@contextlib.contextmanager
def registered(task: seqio.Task) -> Iterator[str]:
    """``task`` in the seqio registry while the block runs (seqio's Evaluator only takes registered names)."""
    if task.name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(task.name)
    seqio.TaskRegistry.add_provider(task.name, task)
    try:
        yield task.name
    finally:
        seqio.TaskRegistry.remove(task.name)


def evaluate_rows(model: Any, *, name: str, rows: Sequence[Mapping[str, Any]], metric_fns: Sequence[Callable],
                  postprocess_fn: Callable[..., Any] | None, task_feature_lengths: Mapping[str, int],
                  batch_size: int = 16, predictions_dir: str | pathlib.Path | None = None,
                  step: int | None = None) -> dict[str, float]:
    """Metrics of ``model`` on the rows (greedy predictions and target scores), as ``{metric: value}``."""

    task = examples_task(name, {"validation": [dict(r) for r in rows]}, metric_fns=metric_fns,
                         postprocess_fn=postprocess_fn)
    with registered(task):
        flat = evaluator.evaluate_model(model, mixture_or_task_name=name, task_feature_lengths=task_feature_lengths,
                                        split="validation", batch_size=batch_size, step=step,
                                        predictions_dir=predictions_dir, predictions_with_scores=False)
    return {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(name + "/")}


def count_params(model: Any) -> int | None:
    """Parameters of the student (frozen and trained): what a forward pass multiplies, for the FLOPs estimate."""
    try:
        # lazy: JAX loads only when a run computes, not when gin configs or the CLI import this module
        import jax
        # lazy: flax/JAX load only when a run computes, not when gin configs or the CLI import this module
        from flax import nnx

        return int(sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))))
    except Exception:  # noqa: BLE001 (a stand-in model in a test: no count)
        return None


def train_info(result: Any) -> dict[str, Any]:
    """What results.json records of the student's training, from the typed ``TrainResult``."""
    return {"tokens_seen": int(result.tokens_seen), "params_trained": int(result.params_trained),
            "steps": result.step, "params_total": count_params(result.model)}


def evaluate(spec: StudentSpec, model: Any, *, model_dir: str, name: str, step: int | None,
             eval_rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, dict[str, float]]:
    """Each task's rows scored with that task's metrics (predictions in ``model_dir/predictions``)."""

    metrics: dict[str, dict[str, float]] = {}
    for task, rows in eval_rows.items():
        fns, post = metric_spec(task)
        metrics[task] = evaluate_rows(model, name=task.replace("/", "_") + f"_{name}_eval", rows=rows,
                                      metric_fns=fns, postprocess_fn=post,
                                      task_feature_lengths=spec.task_feature_lengths,
                                      batch_size=spec.eval_batch_size,
                                      predictions_dir=os.path.join(model_dir, "predictions"), step=step)
    return metrics


def train_and_evaluate(spec: StudentSpec, *, model_dir: str, name: str, train_rows: Sequence[Mapping[str, Any]],
                       eval_rows: Mapping[str, Sequence[Mapping[str, Any]]]
                       ) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Train the student on ``train_rows`` in ``model_dir/student``, then evaluate it on each task's rows.
    Returns ``({task: metrics}, train info for results.json)``."""
    result = spec.train(model_dir=os.path.join(model_dir, "student"), name=f"{name}_train", train_rows=train_rows)
    metrics = evaluate(spec, result.model, model_dir=model_dir, name=name, step=result.step, eval_rows=eval_rows)
    return metrics, train_info(result)
