"""``fiat eval``: seqio Evaluator glue — greedy prediction and log-likelihood scoring of a checkpoint.

For every task of a mixture (tasks are per language, so metrics are per language) the evaluator decodes
predictions, scores targets, lets seqio compute the task's metric functions, writes one JSONL row per example to
``MODEL_DIR/predictions/<task>-<step>.jsonl`` (input, target, prediction, score) and the metrics to
``metrics.jsonl`` / TensorBoard under ``eval``, plus a ``mean/<metric>`` over tasks.

Prediction is greedy decoding with the KV cache (:func:`fiat_jax.models.decoding.generate`: batched, prompt
lengths and batch sizes bucketed, prefill once, one token per step, stops when every row has emitted the task's
EOS). Decoder-only (prefix-LM) batches carry inputs and targets concatenated: only the prompt part (the
``decoder_causal_attention`` span: the start token 0 and the inputs) is fed, attended bidirectionally as in
training. Models without the cache interface (``init_cache``; e.g. minimal test models that only implement
``logits_from_batch``) fall back to a jitted greedy loop that recomputes ``logits_from_batch`` over the whole
fixed-length batch at every step (O(T^2)). Scoring (target log-likelihood) is one teacher-forced
``logits_from_batch`` pass.
"""

from __future__ import annotations

import functools
import json
import logging
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fiat_jax.errors import UserError
from fiat_jax.models import decoding
from fiat_jax.train import checkpoints as ckpt_lib
from fiat_jax.train import input_pipeline, losses
from fiat_jax.train.metrics_writer import MetricsWriter
from fiat_jax.train.trainer import build_model

_log = logging.getLogger(__name__)
EOS_ID = 1


# ---------------------------------------------------------------------------------------------------------------
# Batched model functions (jitted once per shape; graphdef closed over).
@functools.lru_cache(maxsize=16)
def _make_fns(graphdef: nnx.GraphDef, *, model_kind: str, max_decode_len: int) -> tuple[Callable, Callable]:
    """``(predict(state, batch, eos_id) -> tokens [B, T], score(state, batch) -> loglik [B])``: the
    full-recompute fallback for models without a KV cache, and the teacher-forced scorer. Memoised per graph,
    so evaluating the same model on several tasks (or after more training) reuses the compiled functions."""

    def logits(state, batch):
        model = nnx.merge(graphdef, state)
        return model.logits_from_batch(batch, deterministic=True).astype(jnp.float32)

    @functools.partial(jax.jit, static_argnames="max_positions")
    def score(state, batch, max_positions=None):
        """Teacher-forced log-likelihood; the LM head only at the (at most ``max_positions``) target positions."""
        model = nnx.merge(graphdef, state)
        tgt = batch["decoder_target_tokens"]
        weights = batch.get("decoder_loss_weights", (tgt != 0).astype(jnp.float32))
        if not hasattr(model, "hidden_from_batch"):
            lp = jax.nn.log_softmax(logits(state, batch), axis=-1)
            return jnp.sum(jnp.take_along_axis(lp, tgt[..., None], axis=-1)[..., 0] * weights, axis=-1)
        return losses.head_token_log_likelihoods(model.hidden_from_batch(batch, deterministic=True),
                                                 model.logits_from_hidden, tgt, weights,
                                                 max_positions=max_positions)

    @jax.jit
    def predict_encdec(state, batch, eos):
        enc = batch["encoder_input_tokens"]
        b, t_out = enc.shape[0], batch["decoder_target_tokens"].shape[1]
        steps = min(max_decode_len, t_out)

        def body(t, carry):
            dec_in, out, done = carry
            step_logits = logits(state, {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in})
            nxt = jnp.argmax(jax.lax.dynamic_index_in_dim(step_logits, t, axis=1, keepdims=False), axis=-1)
            nxt = jnp.where(done, 0, nxt).astype(jnp.int32)
            out = jax.lax.dynamic_update_index_in_dim(out, nxt, t, axis=1)
            dec_in = jnp.where(t + 1 < t_out,
                               jax.lax.dynamic_update_index_in_dim(dec_in, nxt, jnp.minimum(t + 1, t_out - 1), axis=1),
                               dec_in)
            return dec_in, out, done | (nxt == eos)

        zeros = jnp.zeros((b, t_out), jnp.int32)
        _, out, _ = jax.lax.fori_loop(0, steps, body, (zeros, zeros, jnp.zeros((b,), bool)))
        return out

    @jax.jit
    def predict_decoder(state, batch, eos):
        # Prefix LM: decoder_causal_attention covers the inputs plus the first target position.
        causal = batch["decoder_causal_attention"]
        b, length = causal.shape
        prefix = jnp.sum(causal, axis=-1).astype(jnp.int32) - 1  # first target position
        positions = jnp.arange(length)[None]
        seq = jnp.where(positions < prefix[:, None], batch["decoder_target_tokens"], 0)

        def body(t, carry):
            seq, out, done = carry
            dec_in = jnp.pad(seq, ((0, 0), (1, 0)))[:, :-1]
            step_logits = logits(state, {"decoder_input_tokens": dec_in, "decoder_target_tokens": seq,
                                         "decoder_causal_attention": causal})
            pos = jnp.minimum(prefix + t, length - 1)
            nxt = jnp.argmax(jnp.take_along_axis(step_logits, pos[:, None, None], axis=1)[:, 0], axis=-1)
            nxt = jnp.where(done | (prefix + t >= length), 0, nxt).astype(jnp.int32)
            seq = jnp.where(positions == pos[:, None], nxt[:, None], seq)
            out = jax.lax.dynamic_update_index_in_dim(out, nxt, t, axis=1)
            return seq, out, done | (nxt == eos)

        out0 = jnp.zeros((b, max_decode_len), jnp.int32)
        _, out, _ = jax.lax.fori_loop(0, max_decode_len, body, (seq, out0, jnp.zeros((b,), bool)))
        return out

    return (predict_encdec if model_kind == "encoder_decoder" else predict_decoder), score


def _batches(ds: Any, batch_size: int, *, sort_key: Callable[[Mapping[str, np.ndarray]], int] | None = None) -> Any:
    """Enumerated seqio eval dataset -> (indices, padded numpy feature batch, real rows); ``sort_key``: rows
    sorted by it, largest first (prompts of similar length share a batch)."""
    rows = list(ds.as_numpy_iterator())
    if sort_key is not None:
        rows.sort(key=lambda row: (-sort_key(row[1]), int(row[0])))
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        indices = [int(i) for i, _ in chunk]
        feats = {k: np.stack([np.asarray(ex[k]) for _, ex in chunk]) for k in chunk[0][1]}
        pad = batch_size - len(chunk)
        if pad:
            feats = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in feats.items()}
        yield indices, feats, len(chunk)


def has_kv_cache(model: nnx.Module) -> bool:
    """Whether ``model`` (looking through wrappers that keep the real model as ``.model``, like PEFT's) has the
    cache interface :func:`fiat_jax.models.decoding.generate` drives."""
    inner = model
    while isinstance(vars(inner).get("model"), nnx.Module):
        inner = vars(inner)["model"]
    needed = ("init_cache", "encode", "decode") if getattr(model, "model_kind", "decoder") == "encoder_decoder" \
        else ("init_cache",)
    return all(callable(getattr(inner, name, None)) for name in needed)


def prompt_length(ex: Mapping[str, np.ndarray], *, model_kind: str) -> int:
    """The prompt length of one converted example, as :func:`prompt_rows` cuts it."""
    if model_kind == "encoder_decoder":
        row = np.asarray(ex["encoder_input_tokens"])
        return int(np.flatnonzero(row)[-1]) + 1 if np.any(row) else 1
    return max(1, int(np.asarray(ex.get("decoder_causal_attention", np.ones(1))).sum()))


def prompt_buckets(batch_longest: Sequence[int], *, max_prompt_len: int, min_batches_per_shape: int = 4) -> list[int]:
    """Padded prompt length of each batch, given its longest prompt (batches sorted longest first):
    ``max_prompt_len``, or a half / quarter of it (a multiple of 8) when the batch fits and enough batches share
    that shape to pay for its compilation (``min_batches_per_shape``: a small eval compiles one program)."""
    sizes = sorted({max_prompt_len} | {-(-max_prompt_len // (8 * d)) * 8 for d in (2, 4)
                                       if -(-max_prompt_len // (8 * d)) * 8 < max_prompt_len})
    chosen = [next((s for s in sizes if s >= n), max(n, max_prompt_len)) for n in batch_longest]
    for size in sizes[:-1]:  # from the smallest: a shape too few batches use moves up to the next one
        users = [b for b, c in enumerate(chosen) if c == size]
        if len(users) < min_batches_per_shape:
            larger = sizes[sizes.index(size) + 1]
            for b in users:
                chosen[b] = larger
    return chosen


def prompt_rows(feats: Mapping[str, np.ndarray], *, model_kind: str, n: int) -> list[list[int]]:
    """The prompt of each of the first ``n`` rows of a converted batch: encoder inputs up to their last
    non-padding token (enc-dec), or the ``decoder_causal_attention`` span of ``decoder_input_tokens`` (prefix LM:
    start token 0 then the inputs; the targets that follow are never fed)."""
    if model_kind == "encoder_decoder":
        tokens = np.asarray(feats["encoder_input_tokens"])[:n]
        lengths = [int(np.flatnonzero(row)[-1]) + 1 if np.any(row) else 1 for row in tokens]
    else:
        if "decoder_causal_attention" not in feats:
            raise UserError("decoder-only evaluation needs prefix-LM batches (decoder_causal_attention): use "
                            "seqio.PrefixLMFeatureConverter")
        tokens = np.asarray(feats["decoder_input_tokens"])[:n]
        lengths = [max(1, int(c)) for c in np.asarray(feats["decoder_causal_attention"])[:n].sum(axis=-1)]
    return [row[:length].tolist() for row, length in zip(tokens, lengths)]


class ModelRunner:
    """Predict and score with one model over seqio's enumerated eval datasets (caches both per example)."""

    def __init__(self, model: nnx.Module, *, batch_size: int, max_decode_len: int, kv_cache: bool | None = None,
                 max_prompt_len: int = 1):
        self.model = model
        self.kind = getattr(model, "model_kind", "decoder")
        self.graphdef, self.state = nnx.split(model)
        self.batch_size = batch_size
        self.max_decode_len = max_decode_len
        self.kv_cache = has_kv_cache(model) if kv_cache is None else kv_cache
        self.max_prompt_len = max_prompt_len  # every batch padded to this bucket: one compilation per eval
        self._memo: dict[int, Any] = {}
        self._predict, self._score = _make_fns(self.graphdef, model_kind=self.kind, max_decode_len=max_decode_len)

    def predictions(self, ds: Any, *, eos_id: int = EOS_ID) -> dict[int, list[int]]:
        """Greedy tokens by example index (``max_decode_len`` each: EOS included, 0 after it); computed once per
        dataset object."""
        return self._memoised("predictions", ds, lambda: self._predict_sorted(ds, eos_id=eos_id))

    def _predict_sorted(self, ds: Any, *, eos_id: int) -> dict[int, list[int]]:
        """KV-cache decoding over prompts sorted by length, each batch padded to its prompt bucket
        (:func:`prompt_buckets`): short prompts do not pay for the longest one's prefill."""
        if not self.kv_cache or self.max_prompt_len <= 1:
            return self._run(ds, self._predict_rows, eos_id=eos_id)
        key = functools.partial(prompt_length, model_kind=self.kind)
        batches = list(_batches(ds, self.batch_size, sort_key=key))
        longest = [max(len(r) for r in prompt_rows(feats, model_kind=self.kind, n=n)) for _, feats, n in batches]
        out: dict[int, list[int]] = {}
        for (indices, feats, n), length in zip(batches, prompt_buckets(longest, max_prompt_len=self.max_prompt_len)):
            for idx, value in zip(indices, self._predict_rows(feats, n, eos_id=eos_id, prompt_length=length)):
                out[idx] = value
        return out

    def scores(self, ds: Any) -> dict[int, float]:
        """Target log-likelihoods by example index; computed once per dataset object, and only when a metric
        asks for them (a second full forward per batch)."""
        return self._memoised("scores", ds, lambda: self._run(ds, self._score_rows))

    def known_scores(self, ds: Any) -> dict[int, float] | None:
        """Scores if a metric already asked for them (the predictions file does not pay for a scoring pass)."""
        hit = self._memo.get(("scores", id(ds)))
        return None if hit is None else hit[1]

    def _memoised(self, kind: str, ds: Any, compute: Callable[[], Any]) -> Any:
        key = (kind, id(ds))
        if key not in self._memo:
            self._memo[key] = (ds, compute())  # ds is kept alive so its id stays unique
        return self._memo[key][1]

    def predict_batch(self, feats: Mapping[str, np.ndarray], n: int, *, eos_id: int = EOS_ID,
                      prompt_length: int | None = None) -> np.ndarray:
        """Greedy tokens ``[n, T]`` (``T`` = ``max_decode_len`` capped by the batch's target length) for the
        first ``n`` rows of a converted batch."""
        steps = min(self.max_decode_len, int(np.asarray(feats["decoder_target_tokens"]).shape[1]))
        if not self.kv_cache:
            batch = {k: jnp.asarray(v) for k, v in feats.items()}
            return np.asarray(self._predict(self.state, batch, jnp.int32(eos_id)))[:n]

        rows = prompt_rows(feats, model_kind=self.kind, n=n)
        result = decoding.generate(self.model, rows, max_new_tokens=steps, temperature=0.0, eos_id=eos_id,
                                   prefix_bidirectional=self.kind != "encoder_decoder",
                                   min_batch=self.batch_size, min_prompt_length=prompt_length or self.max_prompt_len)
        width = (int(np.asarray(feats["decoder_target_tokens"]).shape[1]) if self.kind == "encoder_decoder"
                 else self.max_decode_len)  # the fallback loop's output widths
        out = np.zeros((n, width), np.int32)
        out[:, :steps] = result.tokens
        return out

    def _predict_rows(self, feats: Mapping[str, np.ndarray], n: int, *, eos_id: int = EOS_ID,
                      prompt_length: int | None = None) -> list[list[int]]:
        return [[int(t) for t in row] for row in self.predict_batch(feats, n, eos_id=eos_id,
                                                                     prompt_length=prompt_length)]

    def _score_rows(self, feats: Mapping[str, np.ndarray], n: int) -> list[float]:
        batch = {k: jnp.asarray(v) for k, v in feats.items()}
        weights = feats.get("decoder_loss_weights", np.asarray(feats["decoder_target_tokens"]) != 0)
        scores = self._score(self.state, batch, max_positions=losses.position_bucket(weights))
        return [float(x) for x in np.asarray(scores)[:n]]

    def _run(self, ds: Any, per_batch: Callable[..., list[Any]], **kwargs: Any) -> dict[int, Any]:
        out: dict[int, Any] = {}
        for indices, feats, n in _batches(ds, self.batch_size):
            for idx, value in zip(indices, per_batch(feats, n, **kwargs)):
                out[idx] = value
        return out


def evaluate_model(model: nnx.Module, *, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                   split: str = "validation", batch_size: int = 32, num_examples: int | None = None,
                   feature_converter: Any = None, step: int | None = None,
                   predictions_dir: str | pathlib.Path | None = None, seed: int = 42,
                   predictions_with_scores: bool = True) -> dict[str, float]:
    """Metrics of ``model`` on every task of a mixture: ``{"<task>/<metric>": v, "mean/<metric>": v}``.

    ``predictions_with_scores=False`` leaves the target log-likelihood out of the predictions file unless a metric
    needed it anyway (it costs a second forward pass per batch)."""
    # lazy: seqio pulls in TensorFlow (seconds): only when a task is read
    import seqio
    # lazy: seqio pulls in TensorFlow (seconds): only when a task is read
    from seqio import metrics as metrics_lib

    input_pipeline.get_task(mixture_or_task_name)  # a clear error for unknown names
    kind = getattr(model, "model_kind", "decoder")
    if feature_converter is None:
        feature_converter = input_pipeline.feature_converter_for(kind, pack=False)
    evaluator = seqio.Evaluator(mixture_or_task_name=mixture_or_task_name, feature_converter=feature_converter,
                                eval_split=split, seed=seed, sequence_length=dict(task_feature_lengths),
                                num_examples=num_examples, shuffle=False, logger_cls=(),
                                async_compute_metrics=False)
    if not evaluator.eval_tasks:
        raise UserError(f"{mixture_or_task_name}: no task has metric functions for split {split!r}")
    # Longest possible prompt: the inputs (enc-dec), or start token + inputs (prefix LM).
    max_prompt = int(task_feature_lengths.get("inputs", 1)) + (0 if kind == "encoder_decoder" else 1)
    runner = ModelRunner(model, batch_size=batch_size, max_decode_len=int(task_feature_lengths["targets"]),
                         max_prompt_len=max_prompt)
    eos_by_dataset = {id(evaluator._cached_model_datasets[task.name]):  # noqa: SLF001 (seqio has no getter)
                      _eos_id(task) for task in evaluator.eval_tasks}

    def predict_fn(ds):
        return sorted(runner.predictions(ds, eos_id=eos_by_dataset.get(id(ds), EOS_ID)).items())

    def score_fn(ds):
        return sorted(runner.scores(ds).items())

    model_fns = {metrics_lib.ModelOutputType.PREDICTION: predict_fn, metrics_lib.ModelOutputType.SCORE: score_fn}
    metrics_future, _ = evaluator.evaluate(compute_metrics=True, step=step, model_fns=model_fns)
    all_metrics = metrics_future.result()
    flat: dict[str, float] = {}
    per_metric: dict[str, list[float]] = {}
    for task_name, task_metrics in all_metrics.items():
        for name, value in task_metrics.items():
            value = getattr(value, "value", value)
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            flat[f"{task_name}/{name}"] = value
            per_metric.setdefault(name, []).append(value)
    for name, values in per_metric.items():
        flat[f"mean/{name}"] = float(np.mean(values))
    if predictions_dir is not None and jax.process_index() == 0:
        _write_predictions(evaluator, runner, pathlib.Path(predictions_dir), step, with_scores=predictions_with_scores)
    return flat


def _eos_id(task: Any) -> int:
    """The EOS id of a task's target vocabulary (seqio's 1 unless the vocabulary says otherwise)."""
    eos = getattr(task.output_features["targets"].vocabulary, "eos_id", None)
    return EOS_ID if eos is None else int(eos)


def _write_predictions(evaluator: Any, runner: ModelRunner, out_dir: pathlib.Path, step: int | None, *,
                       with_scores: bool = True) -> None:
    """One JSONL per task: id (when the task's examples carry one), input, target, prediction (decoded +
    postprocessed), score."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for task in evaluator.eval_tasks:
        ds = evaluator._cached_model_datasets[task.name]  # noqa: SLF001 (seqio has no getter)
        tokens = runner.predictions(ds, eos_id=_eos_id(task))
        scores = runner.scores(ds) if with_scores else runner.known_scores(ds)
        vocab = task.output_features["targets"].vocabulary
        in_vocab = task.output_features.get("inputs", task.output_features["targets"]).vocabulary
        examples = list(evaluator.cached_task_datasets[task.name].as_numpy_iterator())
        targets = evaluator._cached_targets[task.name]  # noqa: SLF001
        path = out_dir / f"{task.name}-{step if step is not None else 'final'}.jsonl"
        with open(path, "w") as fh:
            for idx, ex in enumerate(examples):
                raw_in = ex.get("inputs_pretokenized")
                text_in = raw_in.decode() if isinstance(raw_in, bytes) else (
                    in_vocab.decode(list(ex["inputs"])) if "inputs" in ex else "")
                prediction = task.postprocess_fn(vocab.decode(tokens[idx]), example=ex, is_target=False)
                row = {"input": _jsonable(text_in), "target": _jsonable(targets[idx]),
                       "prediction": _jsonable(prediction), "score": None if scores is None else scores[idx]}
                if "id" in ex:  # the example's own id (kept by the task's preprocessors): pairs runs item by item
                    row = {"id": _jsonable(ex["id"]), **row}
                fh.write(json.dumps(row) + "\n")


def _jsonable(x: Any) -> Any:
    if isinstance(x, bytes):
        return x.decode("utf-8", "replace")
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    return x


@gin.configurable
def evaluate(*,
             model_dir: str,
             mixture_or_task_name: str,
             task_feature_lengths: Mapping[str, int],
             model_factory: Callable[..., nnx.Module],
             register_tasks: Callable[[], Any] | None = None,
             split: str = "validation",
             batch_size: int = 32,
             num_examples: int | None = None,
             checkpoint_step: int | str | None = None,
             best_metric: str | None = None,
             best_mode: str = "max",
             seed: int = 0,
             trainable: Any = nnx.Param,
             initial_params: Callable[[nnx.Module], Any] | None = None,
             model_transform: Callable[[nnx.Module], nnx.Module] | None = None,
             feature_converter: Any = None) -> dict[str, float]:
    """Evaluate the newest checkpoint in ``model_dir`` (or ``checkpoint_step``; ``"best"`` = best by ``best_metric``).

    The model is rebuilt exactly as ``train`` builds it (same gin), then its trainable parameters are restored.
    Writes predictions JSONL and eval metrics into ``model_dir``; returns the flat metrics.
    """

    if register_tasks is not None:
        register_tasks()
    model = build_model(model_factory, seed=seed, mesh=None, initial_params=initial_params,
                        model_transform=model_transform)
    _, params, _ = nnx.split(model, trainable, ...)
    step: int | None = None
    if checkpoint_step == "best":
        if not best_metric:
            raise UserError("evaluate.checkpoint_step='best' needs evaluate.best_metric (as train.best_metric)")
        ckpts = ckpt_lib.Checkpoints(model_dir, async_save=False, best_metric=best_metric, best_mode=best_mode)
        step = ckpts.best_step()
        ckpts.close()
        if step is None:
            raise UserError(f"no checkpoint in {model_dir} carries the metric {best_metric!r}")
    elif checkpoint_step is not None:
        step = int(checkpoint_step)
    restored, step = ckpt_lib.restore_params_only(model_dir, params, step=step)
    nnx.update(model, restored)
    metrics = evaluate_model(model, mixture_or_task_name=mixture_or_task_name,
                             task_feature_lengths=task_feature_lengths, split=split, batch_size=batch_size,
                             num_examples=num_examples, feature_converter=feature_converter, step=step,
                             predictions_dir=pathlib.Path(model_dir) / "predictions")
    writer = MetricsWriter(model_dir)
    writer.write(step, metrics, split="eval")
    writer.close()
    for name, value in sorted(metrics.items()):
        _log.info("eval step %s %s = %.4f", step, name, value)
    return metrics


@gin.configurable
def training_eval_fn(*, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                     split: str = "validation", batch_size: int = 32, num_examples: int | None = None,
                     write_predictions: bool = True) -> Callable[..., dict[str, float]]:
    """An ``eval_fn`` for :func:`fiat_jax.train.trainer.train` (``train.eval_fn = @training_eval_fn()``)."""
    kwargs = dict(mixture_or_task_name=mixture_or_task_name, task_feature_lengths=task_feature_lengths,
                  split=split, batch_size=batch_size, num_examples=num_examples)

    def eval_fn(*, model: nnx.Module, step: int, model_dir: str | None = None) -> dict[str, float]:
        out = pathlib.Path(model_dir) / "predictions" if (model_dir and write_predictions) else None
        return evaluate_model(model, step=step, predictions_dir=out, **kwargs)

    return eval_fn
