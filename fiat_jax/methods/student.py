"""The student side shared by the methods: a typed :class:`StudentSpec` (model, weights, PEFT hooks, steps,
lengths) that trains on in-memory rows (an unregistered seqio Task handed to the trainer), scoring rows by
log-likelihood, and evaluating rows with a task's metrics (predictions written like ``fiat eval``)."""

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
from fiat_jax.methods.common import metric_spec, require
from fiat_jax.train import evaluator, input_pipeline, losses
from fiat_jax.train import state as train_state
from fiat_jax.train import trainer as trainer_lib


def no_transform(model: Any) -> Any:
    """An explicit "no PEFT" transform (full fine-tuning): the model as built, every parameter in place."""
    return model


@gin.configurable
@dataclasses.dataclass(frozen=True)
class StudentSpec:
    """The student a method trains and evaluates, in one value instead of a dozen keyword arguments, and all of
    it explicit: what the spec holds is what the trainer gets (gin binds ``StudentSpec.*``: models/*.gin the model
    and its weights, peft/*.gin or a method's MODEL_TRANSFORM / TRAINABLE macros the PEFT pair, a method file the
    steps and lengths), so no method asks gin what is bound.

    ``model_factory`` / ``initial_params``: the student model and the weights it starts from (None: its random
    init); ``model_transform``: the PEFT transform (None: none); ``trainable``: the NNX filter of what trains
    (None: every parameter); ``pack``: several rows per sequence; ``train_fn``: the trainer (default
    ``trainer.train``, whose gin bindings still give batch size, optimizer, mesh); ``eval_batch_size``: for
    evaluation and scoring.
    """

    train_steps: int | None = None
    task_feature_lengths: Mapping[str, int] | None = None
    model_factory: Callable[..., Any] | None = None
    initial_params: Callable[[Any], Any] | None = None
    model_transform: Callable[[Any], Any] | None = None
    trainable: Any = None
    pack: bool = True
    eval_batch_size: int = 16
    train_fn: Callable[..., Any] | None = None

    def trainer(self) -> Callable[..., Any]:
        return self.train_fn if self.train_fn is not None else trainer_lib.train

    def factory(self) -> Callable[..., Any] | None:
        """The student's model factory: this spec's, else the one in a ``train_fn`` partial's keywords."""
        if self.model_factory is not None:
            return self.model_factory
        fn = self.train_fn
        return fn.keywords.get("model_factory") if isinstance(fn, functools.partial) else None

    def has_model(self) -> bool:
        """Is the student model given (here, or already in a ``train_fn`` partial's keywords)?"""
        fn = self.train_fn
        return self.model_factory is not None or (isinstance(fn, functools.partial) and "model_factory" in fn.keywords)

    def check(self, method: str) -> None:
        """Steps and a student model must be given before anything is computed (one clear line each)."""
        require(self.train_steps, "train_steps", method)
        if not self.has_model():
            raise UserError(f"{method}: missing the student model (bind StudentSpec.model_factory, e.g. include a "
                            f"models/*.gin file)")

    def trainer_kwargs(self) -> dict[str, Any]:
        """What the trainer gets from this spec, every hook explicit (a ``train_fn`` partial's model factory stays
        when the spec names none)."""
        # lazy: flax/JAX load only when a run computes, not when gin configs or the CLI import this module
        from flax import nnx

        kwargs: dict[str, Any] = {"initial_params": self.initial_params, "model_transform": self.model_transform,
                                  "trainable": nnx.Param if self.trainable is None else self.trainable}
        if self.model_factory is not None:
            kwargs["model_factory"] = self.model_factory
        if self.task_feature_lengths is not None:
            kwargs["task_feature_lengths"] = dict(self.task_feature_lengths)
        return kwargs

    def build(self, *, seed: int = 0) -> Any:
        """The student as training would start from it (weights loaded, PEFT applied), untrained: for methods
        that only score it (ICL with the documents in context)."""
        factory = self.factory()
        if factory is None:
            raise UserError("student: missing the student model (bind StudentSpec.model_factory)")
        return train_state.build_model(factory, seed=seed, mesh=None, initial_params=self.initial_params,
                                       model_transform=self.model_transform)

    def train(self, *, model_dir: str, name: str, train_rows: Sequence[Mapping[str, Any]],
              **overrides: Any) -> Any:
        """Train on in-memory rows (a seqio Task object, not registered) in ``model_dir``: a ``TrainResult``."""
        kwargs = {**self.trainer_kwargs(), "pack": bool(self.pack), "eval_fn": None, "register_tasks": None,
                  **overrides}
        task = examples_task(name, {"train": [dict(r) for r in train_rows]})
        return self.trainer()(model_dir=model_dir, train_steps=int(require(self.train_steps, "train_steps", name)),
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
    prefixed = _score_with_shared_prefix(model, feats, batch_size=batch_size)
    if prefixed is not None:
        return prefixed
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


def _score_with_shared_prefix(model: Any, feats: Sequence[Mapping[str, np.ndarray]], *, batch_size: int
                              ) -> tuple[list[float], list[int]] | None:
    """The rows' scores with their common prefix computed once (``decoding.score_shared_prefix``), or None when
    they have none worth it (or the model has no KV cache, or prepends a soft prompt). Why: ICL with the documents
    in context scores every probe option after the same long document; the full pass recomputes it per row."""
    # lazy: JAX loads only when a run computes, not when gin configs or the CLI import this module
    from fiat_jax.models import decoding

    if getattr(model, "model_kind", "decoder") != "decoder" or not hasattr(model, "init_cache") \
            or getattr(model, "prompt_length", 0):
        return None
    whole = {k: np.stack([f[k] for f in feats]) for k in feats[0]}
    found = decoding.shared_prefix(whole)
    if found is None:
        return None
    first, r = found
    weights = whole["decoder_loss_weights"] > 0
    last = int(weights.shape[1] - np.argmax(weights[:, ::-1], axis=1).min())  # one past the last loss position
    length = decoding.bucket_size(max(last - r, 1))
    sums: list[float] = []
    for start in range(0, len(feats), batch_size):
        chunk = {k: v[start:start + batch_size] for k, v in whole.items()}
        pad = batch_size - len(chunk["decoder_loss_weights"])
        if pad:  # padding rows: the shared prefix and no loss
            chunk = {k: np.concatenate([v, np.repeat(v[:1], pad, axis=0) * (k != "decoder_loss_weights")])
                     for k, v in chunk.items()}
        scores = decoding.score_shared_prefix(model, chunk, first=first, r=r, length=length)
        sums.extend(float(x) for x in scores[:batch_size - pad])
    return sums, [int(x) for x in np.count_nonzero(whole["decoder_loss_weights"], axis=-1)]


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
