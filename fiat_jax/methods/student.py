"""The student side shared by the methods: train on in-memory rows through the trainer, score rows by
log-likelihood, and evaluate rows with a task's metrics (predictions written like ``fiat eval``)."""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fiat_jax.methods.examples import register_examples_task

HOOKS = ("initial_params", "model_transform", "trainable")


def no_transform(model: Any) -> Any:
    """An explicit "no PEFT" transform (full fine-tuning), overriding any ``train.model_transform`` in gin."""
    return model


def score_rows(model: Any, rows: Sequence[Mapping[str, Any]], *, task_feature_lengths: Mapping[str, int],
               batch_size: int = 32, name: str = "methods_scoring") -> list[float]:
    """Sum log-likelihood of each row's ``targets`` given its ``inputs`` under ``model`` (in row order)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from fiat_jax.train import input_pipeline, losses

    if not rows:
        return []
    task = register_examples_task(name, {"validation": [dict(r) for r in rows]})
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

    out: list[float] = []
    for start in range(0, len(feats), batch_size):
        chunk = feats[start:start + batch_size]
        batch = {k: np.stack([f[k] for f in chunk]) for k in chunk[0]}
        pad = batch_size - len(chunk)
        if pad:
            batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
        scores = score(state, batch, losses.position_bucket(batch["decoder_loss_weights"]))
        out.extend(float(x) for x in np.asarray(scores)[:len(chunk)])
    return out


def train_on_rows(*, model_dir: str, name: str, train_rows: Sequence[Mapping[str, Any]], train_steps: int,
                  train_fn: Callable[..., Any] | None = None, validation_rows: Sequence[Mapping[str, Any]] = (),
                  metric_fns: Sequence[Callable[..., Any]] = (), pack: bool | None = None,
                  **train_kwargs: Any) -> Any:
    """Register ``name`` over the rows and train on it with the trainer (``train_fn``, default ``train``).

    ``pack``: several rows per sequence (segment-aware attention and positions). FIAT rows are long inputs of
    very different lengths, so unpacked batches are mostly padding; None packs unless gin binds ``train.pack``.
    """
    from fiat_jax.methods.common import gin_bound

    if train_fn is None:
        from fiat_jax.train.trainer import train as train_fn
    # A hook left None is not passed: the trainer's own gin binding (train.model_transform, ...) applies.
    train_kwargs = {k: v for k, v in train_kwargs.items() if not (k in HOOKS and v is None)}
    if pack is not None or not gin_bound("train.pack"):
        train_kwargs["pack"] = True if pack is None else bool(pack)
    splits: dict[str, list[dict[str, Any]]] = {"train": [dict(r) for r in train_rows]}
    if validation_rows:
        splits["validation"] = [dict(r) for r in validation_rows]
    register_examples_task(name, splits, metric_fns=metric_fns)
    return train_fn(model_dir=model_dir, train_steps=int(train_steps), mixture_or_task_name=name, **train_kwargs)


def evaluate_rows(model: Any, *, name: str, rows: Sequence[Mapping[str, Any]], metric_fns: Sequence[Callable],
                  postprocess_fn: Callable[..., Any] | None, task_feature_lengths: Mapping[str, int],
                  batch_size: int = 16, predictions_dir: str | pathlib.Path | None = None,
                  step: int | None = None) -> dict[str, float]:
    """Metrics of ``model`` on the rows (greedy predictions and target scores), as ``{metric: value}``."""
    from fiat_jax.train import evaluator

    register_examples_task(name, {"validation": [dict(r) for r in rows]}, metric_fns=metric_fns,
                           postprocess_fn=postprocess_fn)
    flat = evaluator.evaluate_model(model, mixture_or_task_name=name, task_feature_lengths=task_feature_lengths,
                                    split="validation", batch_size=batch_size, step=step,
                                    predictions_dir=predictions_dir, predictions_with_scores=False)
    return {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(name + "/")}


def count_params(model: Any) -> int | None:
    """Parameters of the student (frozen and trained): what a forward pass multiplies, for the FLOPs estimate."""
    try:
        import jax
        from flax import nnx

        return int(sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))))
    except Exception:  # noqa: BLE001 (a stand-in model in a test: no count)
        return None


def train_and_evaluate(*, model_dir: str, name: str, train_rows: Sequence[Mapping[str, Any]],
                       eval_rows: Mapping[str, Sequence[Mapping[str, Any]]], train_steps: int,
                       task_feature_lengths: Mapping[str, int], initial_params: Callable | None = None,
                       model_transform: Callable | None = None, trainable: Any = None,
                       eval_batch_size: int = 16, train_fn: Callable[..., Any] | None = None,
                       **train_kwargs: Any) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Train the student on ``train_rows`` in ``model_dir/student``, then evaluate it on each task's rows with
    that task's metrics (predictions in ``model_dir/predictions``). Returns ``({task: metrics}, train info)``."""
    from fiat_jax.methods.common import metric_spec

    kwargs = dict(train_kwargs)
    kwargs.setdefault("eval_fn", None)
    kwargs.setdefault("register_tasks", None)
    result = train_on_rows(model_dir=os.path.join(model_dir, "student"), name=f"{name}_train",
                           train_rows=train_rows, train_steps=train_steps, train_fn=train_fn,
                           task_feature_lengths=task_feature_lengths, initial_params=initial_params,
                           model_transform=model_transform, trainable=trainable, **kwargs)
    metrics: dict[str, dict[str, float]] = {}
    for task, rows in eval_rows.items():
        fns, post = metric_spec(task)
        metrics[task] = evaluate_rows(result.model, name=task.replace("/", "_") + f"_{name}_eval", rows=rows,
                                      metric_fns=fns, postprocess_fn=post,
                                      task_feature_lengths=task_feature_lengths, batch_size=eval_batch_size,
                                      predictions_dir=os.path.join(model_dir, "predictions"), step=result.step)
    info = {"tokens_seen": int(result.metrics.get("train/tokens_seen", 0) or 0),
            "params_trained": int(result.metrics.get("train/params_trained", 0) or 0), "steps": result.step,
            "params_total": count_params(result.model)}
    return metrics, info
