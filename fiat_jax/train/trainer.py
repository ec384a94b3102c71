"""``fiat train``: the T5X-style training loop (gin-configurable, keyword-only, REQUIRED macros).

One jitted, partitioned, donating step (:mod:`fiat_jax.train.train_step`); deterministic seqio input with a prefetch
thread (:mod:`~fiat_jax.train.input_pipeline`); orbax checkpoints with exact resume
(:mod:`~fiat_jax.train.checkpoints`); metrics to TensorBoard + ``metrics.jsonl`` + tqdm
(:mod:`~fiat_jax.train.metrics_writer`). Running the same command again on the same MODEL_DIR resumes from the
newest checkpoint and sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pathlib
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fiat_jax import compile_cache, gin_utils, partitioning, run_dirs
from fiat_jax.errors import UserError
from fiat_jax.train import checkpoints as ckpt_lib
from fiat_jax.train import input_pipeline, optimizers, train_step
from fiat_jax.train.metrics_writer import MetricsWriter, Progress

_log = logging.getLogger(__name__)

ModelFactory = Callable[..., nnx.Module]


class TrainingDivergedError(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass
class TrainResult:
    step: int
    metrics: dict[str, float]
    model: nnx.Module
    preempted: bool = False


class _Preemption:
    """SIGTERM sets a flag; the loop saves a checkpoint at the next step boundary and returns (exit 0)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> "_Preemption":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def build_model(model_factory: ModelFactory, *, seed: int, mesh: jax.sharding.Mesh | None,
                initial_params: Callable[[nnx.Module], Any] | None = None,
                model_transform: Callable[[nnx.Module], nnx.Module] | None = None) -> nnx.Module:
    """Create the model (params placed on the mesh), load initial weights, apply a PEFT transform."""
    rngs_seed = int(seed)
    model = partitioning.create_model(
        lambda: model_factory(rngs=nnx.Rngs(params=rngs_seed, dropout=rngs_seed + 1)), mesh=mesh)
    if initial_params is not None:
        initial_params(model)
    if model_transform is not None:
        model = model_transform(model)
    return model


# The declared type and range of train()'s configurable values, checked before any work (gin_utils.check_arguments).
TRAIN_ARGUMENT_CHECKS: dict[str, gin_utils.Check] = {
    "model_dir": gin_utils.string(),
    "train_steps": gin_utils.integer(min=0),
    "mixture_or_task_name": gin_utils.string(),
    "task_feature_lengths": gin_utils.lengths(),
    "batch_size": gin_utils.integer(min=1),
    "split": gin_utils.string(),
    "pack": gin_utils.boolean(),
    "shuffle": gin_utils.boolean(),
    "use_cached": gin_utils.boolean(),
    "seed": gin_utils.integer(min=0),
    "num_devices": gin_utils.integer(min=1, optional=True),
    "grad_accum_steps": gin_utils.integer(min=1),
    "z_loss": gin_utils.number(min=0),
    "compute_dtype": gin_utils.one_of("bfloat16", "float16", "float32", optional=True),
    "checkpoint_every_steps": gin_utils.integer(min=1),
    "keep_checkpoints": gin_utils.integer(min=1),
    "best_mode": gin_utils.one_of("min", "max"),
    "async_checkpointing": gin_utils.boolean(),
    "restore_anyway": gin_utils.boolean(),
    "log_every_steps": gin_utils.integer(min=1),
    "eval_every_steps": gin_utils.integer(min=1, optional=True),
    "prefetch_depth": gin_utils.integer(min=1),
    "progress_bar": gin_utils.boolean(),
    "tensorboard": gin_utils.boolean(),
}


def _global_sum(metrics: list[Mapping[str, jax.Array]]) -> list[dict[str, float]]:
    host = jax.device_get(metrics)
    return [{k: float(np.asarray(v)) for k, v in m.items()} for m in host]


@gin.configurable
def train(*,
          model_dir: str,
          train_steps: int,
          mixture_or_task_name: str,
          task_feature_lengths: Mapping[str, int],
          model_factory: ModelFactory,
          batch_size: int = 8,
          split: str = "train",
          register_tasks: Callable[[], Any] | None = None,
          feature_converter: Any = None,
          pack: bool = False,
          shuffle: bool = True,
          use_cached: bool = False,
          seed: int = 0,
          optimizer: optax.GradientTransformation | Callable[[], optax.GradientTransformation] | None = None,
          trainable: Any = nnx.Param,
          initial_params: Callable[[nnx.Module], Any] | None = None,
          model_transform: Callable[[nnx.Module], nnx.Module] | None = None,
          mesh: str = "data=-1",
          num_devices: int | None = None,
          grad_accum_steps: int = 1,
          z_loss: float = 0.0,
          compute_dtype: str | None = None,
          loss_positions_per_row: int | str | None = "auto",
          checkpoint_every_steps: int = 1000,
          keep_checkpoints: int = 3,
          best_metric: str | None = None,
          best_mode: str = "min",
          async_checkpointing: bool = True,
          restore_anyway: bool = False,
          log_every_steps: int = 10,
          eval_every_steps: int | None = None,
          eval_fn: Callable[..., Mapping[str, float]] | None = None,
          prefetch_depth: int = 2,
          progress_bar: bool = True,
          tensorboard: bool = True,
          export_peft_dir: str | None = None) -> TrainResult:
    """Train ``model_factory(rngs=...)`` on a seqio task or mixture for ``train_steps`` steps in ``model_dir``.

    Resumes from the newest checkpoint in ``model_dir/checkpoints`` when there is one. ``trainable`` is an NNX
    filter choosing the differentiated parameters (PEFT passes its own). ``eval_fn(model=..., step=...)`` returns
    metrics logged under ``eval/`` every ``eval_every_steps`` (and usable as ``best_metric``).
    ``loss_positions_per_row``: the LM head runs only at this many loss positions per row ("auto": the targets
    length; None: every position; see ``train_step.StepConfig``). Raises
    :class:`TrainingDivergedError` on a NaN/inf loss, naming the step. ``export_peft_dir`` (absolute, or relative
    to ``model_dir``): when training finishes, the LoRA adapter is also written there as an HF peft directory.
    """
    checked = gin_utils.check_arguments("train", {name: value for name, value in locals().items()
                                                  if name in TRAIN_ARGUMENT_CHECKS}, TRAIN_ARGUMENT_CHECKS)
    train_steps, batch_size, seed = checked["train_steps"], checked["batch_size"], checked["seed"]
    grad_accum_steps, checkpoint_every_steps = checked["grad_accum_steps"], checked["checkpoint_every_steps"]
    log_every_steps, eval_every_steps = checked["log_every_steps"], checked["eval_every_steps"]
    task_feature_lengths = checked["task_feature_lengths"]
    if batch_size % grad_accum_steps:
        raise UserError(f"train.batch_size {batch_size} is not divisible by train.grad_accum_steps "
                        f"{grad_accum_steps}")
    run_dirs.check_writable_dir(model_dir, what="MODEL_DIR")
    run_dirs.check_writable_dir(pathlib.Path(model_dir) / "checkpoints", what="checkpoint directory")
    compile_cache.ensure_configured()
    compiles_at_start, wall_start = compile_cache.CompileStats.start(), time.perf_counter()
    if not jax.distributed.is_initialized():
        partitioning.initialize_distributed()  # a no-op on one host
    if register_tasks is not None:
        register_tasks()
    devices = jax.devices()[:num_devices] if num_devices else jax.devices()
    the_mesh = partitioning.make_mesh(mesh, devices=devices)
    divisor = train_step.batch_divisor(the_mesh)
    if (batch_size // grad_accum_steps) % divisor:
        raise UserError(f"batch_size {batch_size} / grad_accum_steps {grad_accum_steps} is not divisible by the "
                        f"mesh's batch axes ({divisor} devices)")
    _log.info("mesh %s", partitioning.describe(the_mesh))

    # Built outside ``set_mesh``: NNX would read logical names as mesh axes there (create_model uses the mesh).
    model = build_model(model_factory, seed=seed, mesh=the_mesh, initial_params=initial_params,
                        model_transform=model_transform)
    if export_peft_dir:
        from fiat_jax.peft import lora

        if not lora.lora_modules(model):
            raise UserError("train.export_peft_dir is set but the model has no LoRA adapters "
                            "(bind train.model_transform = @lora_transform())")
    with jax.set_mesh(the_mesh):
        graphdef, params, frozen = train_step.split_model(model, trainable)
        schedule_lr = None
        if optimizer is None:
            tx = optimizers.make_optimizer()
            schedule_lr = optimizers.learning_rate_schedule()
        elif isinstance(optimizer, optax.GradientTransformation):
            tx = optimizer
        else:
            tx = optimizer()
        abstract_opt = jax.eval_shape(tx.init, params)
        step_fn = train_step.make_step_fn(graphdef, tx, train_step.StepConfig(
            grad_accum_steps=grad_accum_steps, z_loss=z_loss, compute_dtype=compute_dtype, dropout_seed=seed + 2,
            loss_positions_per_row=train_step.resolve_loss_positions(loss_positions_per_row, task_feature_lengths)),
            trainable=trainable)
        compiled = train_step.jit_step(step_fn, mesh=the_mesh, abstract_params=params,
                                       abstract_opt_state=abstract_opt, abstract_frozen=frozen)
        params = jax.device_put(params, compiled.params_shardings)
        frozen = jax.device_put(frozen, compiled.frozen_shardings)
        opt_state = jax.jit(tx.init, out_shardings=compiled.opt_shardings)(params)
        step_arr = jax.device_put(jnp.zeros((), jnp.int32), compiled.replicated)

        ckpts = ckpt_lib.Checkpoints(model_dir, keep=keep_checkpoints, best_metric=best_metric,
                                     best_mode=best_mode, async_save=async_checkpointing)
        print_ = ckpt_lib.fingerprint(model=model, abstract_params=params,
                                      extra={"trainable": str(trainable)})
        ckpts.check_fingerprint(print_, restore_anyway=restore_anyway)
        state = {"params": params, "opt_state": opt_state, "step": step_arr}
        shardings = {"params": compiled.params_shardings, "opt_state": compiled.opt_shardings,
                     "step": compiled.replicated}
        start_batch = 0
        if ckpts.latest_step() is not None:
            # Raises CheckpointMismatchError ("does not fit this model") or a UserError ("unreadable").
            restored = ckpts.restore(ckpt_lib.abstract_with_shardings(state, shardings))
            if restored is not None:
                state, meta = restored
                start_batch = int(meta.get("input_batches", meta["step"]))
                _log.info("resumed from step %d (input position %d batches)", meta["step"], start_batch)
        params, opt_state, step_arr = state["params"], state["opt_state"], state["step"]
        del state
        step = int(jax.device_get(step_arr))
        # Nothing is written into MODEL_DIR before the restore has succeeded.
        ckpts.record_fingerprint(print_)
        gin_utils.write_operative_config(model_dir)

        if feature_converter is None:
            feature_converter = input_pipeline.feature_converter_for(getattr(model, "model_kind", "decoder"),
                                                                     pack=pack)
        # Rows past the restored step (a killed run's) are dropped: each step appears once in metrics.jsonl.
        writer = MetricsWriter(model_dir, tensorboard=tensorboard, resume_step=step)
        result_metrics: dict[str, float] = {}
        preempted = False
        prefetcher = None
        progress = None
        last_saved = step if ckpts.latest_step() == step else None
        last_eval: tuple[int, dict[str, float]] | None = None
        n_trainable = int(sum(x.size for x in jax.tree.leaves(params)))
        try:
            if step >= train_steps:
                _log.info("already trained to step %d >= TRAIN_STEPS %d", step, train_steps)
            else:
                ds = input_pipeline.train_dataset(
                    mixture_or_task_name=mixture_or_task_name, task_feature_lengths=task_feature_lengths,
                    split=split, global_batch_size=batch_size, feature_converter=feature_converter, seed=seed,
                    start_batch=start_batch, shuffle=shuffle, use_cached=use_cached)
                prefetcher = input_pipeline.Prefetcher(
                    input_pipeline.numpy_batches(ds), input_pipeline.device_placer(compiled.batch_sharding),
                    depth=prefetch_depth)
                progress = Progress(total=train_steps, initial=step, enabled=progress_bar)
                pending: list[tuple[int, Any]] = []
                window_start = time.perf_counter()
                window_wait = prefetcher.wait_s
                tokens_per_step = None

                def flush() -> None:
                    """Fetch pending step metrics, stop on NaN/inf, log the window's means."""
                    nonlocal window_start, window_wait, result_metrics
                    if not pending:
                        return
                    values = _global_sum([m for _, m in pending])
                    for (s, _), v in zip(pending, values):
                        if not all(math.isfinite(v[k]) for k in ("loss", "grad_norm", "param_norm")):
                            good = ckpts.latest_step()
                            ckpts.wait()
                            raise TrainingDivergedError(
                                f"loss is {v['loss']} (grad norm {v['grad_norm']}, updated parameter norm "
                                f"{v['param_norm']}) at step {s}; stopped. "
                                f"Last good checkpoint: "
                                f"{'step ' + str(good) if good is not None else 'none'} in {ckpts.directory}")
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    n = len(values)
                    weight = sum(v["weight"] for v in values)
                    last_step = pending[-1][0]
                    scalars = {
                        "loss": sum(v["loss"] for v in values) / max(weight, 1.0),
                        "cross_entropy": sum(v["cross_entropy"] for v in values) / max(weight, 1.0),
                        "accuracy": sum(v["correct"] for v in values) / max(weight, 1.0),
                        "grad_norm": values[-1]["grad_norm"],
                        "param_norm": values[-1]["param_norm"],
                        "learning_rate": float(schedule_lr(last_step - 1)) if schedule_lr else float("nan"),
                        "steps_per_s": n / elapsed,
                        "target_tokens_per_s": weight / elapsed,
                        "tokens_per_s": n * (tokens_per_step or 0) / elapsed,
                        "input_wait_fraction": (prefetcher.wait_s - window_wait) / elapsed,
                        "tokens_seen": last_step * (tokens_per_step or 0),
                        "params_trained": n_trainable,
                    }
                    if z_loss:
                        scalars["z_loss"] = sum(v["z_loss"] for v in values) / max(weight, 1.0)
                    writer.write(last_step, scalars, split="train")
                    result_metrics = {f"train/{k}": v for k, v in scalars.items()}
                    progress.update(n, loss=scalars["loss"], tok_s=f"{scalars['tokens_per_s']:.0f}")
                    pending.clear()
                    window_start = time.perf_counter()
                    window_wait = prefetcher.wait_s

                def run_eval() -> None:
                    nonlocal last_eval
                    flush()
                    eval_metrics = dict(eval_fn(model=nnx.merge(graphdef, params, frozen), step=step,
                                                model_dir=str(model_dir)))
                    writer.write(step, eval_metrics, split="eval")
                    result_metrics.update({f"eval/{k}": float(v) for k, v in eval_metrics.items()})
                    last_eval = (step, eval_metrics)

                def save(at: int) -> None:
                    nonlocal last_saved
                    flush()
                    try:
                        ckpts.save(at, {"params": params, "opt_state": opt_state, "step": step_arr},
                                   meta={"input_batches": at, "fingerprint": print_["hash"]},
                                   metrics=result_metrics or None)
                    except ckpt_lib.CheckpointSaveError:
                        # No checkpoint holds the steps after the last good one: neither may metrics.jsonl.
                        writer.truncate_after(ckpts.last_good_step() or 0)
                        raise
                    last_saved = at

                with _Preemption() as preemption:
                    while step < train_steps:
                        if preemption.requested:
                            _log.warning("SIGTERM: saving a checkpoint at step %d and exiting", step)
                            if last_saved != step:
                                save(step)
                            preempted = True
                            break
                        batch = next(prefetcher)
                        if tokens_per_step is None:
                            tokens_per_step = sum(int(np.prod(v.shape)) for k, v in batch.items()
                                                  if k.endswith("_tokens") and not k.startswith("decoder_target"))
                        params, opt_state, step_arr, metrics = compiled.fn(params, opt_state, step_arr, frozen,
                                                                           batch)
                        step += 1
                        pending.append((step, metrics))
                        if step % log_every_steps == 0:
                            flush()
                        if eval_fn is not None and eval_every_steps and step % eval_every_steps == 0:
                            run_eval()
                        if step % checkpoint_every_steps == 0 or step == train_steps:
                            save(step)
                    flush()
                    if eval_fn is not None and not preempted and step >= train_steps:
                        if last_eval is None or last_eval[0] != step:
                            run_eval()
                        _write_results(model_dir, last_eval[1], tokens_seen=step * (tokens_per_step or 0),
                                       params_trained=n_trainable, task=mixture_or_task_name, steps=step,
                                       compile=compile_cache.CompileStats.since(compiles_at_start).metrics(
                                           time.perf_counter() - wall_start, prefix=""))
        finally:
            if progress is not None:
                progress.close()  # also on an error, so its message starts on a line of its own
            if prefetcher is not None:
                prefetcher.close()
            try:
                ckpts.close()
            except ckpt_lib.CheckpointSaveError:
                writer.truncate_after(ckpts.last_good_step() or 0)
                raise
            else:
                compiles = compile_cache.CompileStats.since(compiles_at_start)
                compile_metrics = compiles.metrics(time.perf_counter() - wall_start)
                result_metrics.update(compile_metrics)
                writer.write_process_record("compile.jsonl", {"step": int(step), **compile_metrics})
                _log.info("compiles: %d (%d more loaded from the persistent cache), %.1f s", compiles.compiles,
                          compiles.cache_hits, compiles.compile_s)
            finally:
                writer.close()
        gin_utils.write_operative_config(model_dir)
        final_model = nnx.merge(graphdef, params, frozen)
        if export_peft_dir and not preempted and step >= train_steps and jax.process_index() == 0:
            from fiat_jax.peft import hf_adapter

            out = hf_adapter.export_peft(final_model, pathlib.Path(model_dir) / export_peft_dir)
            _log.info("LoRA adapter written as an HF peft directory to %s", out)
    return TrainResult(step=step, metrics=result_metrics, model=final_model, preempted=preempted)


def _write_results(model_dir: str, eval_metrics: Mapping[str, float], **extra: Any) -> None:
    """``results.json`` for sweeps: ``{"<task>": {"<metric>": v}}`` from the evaluator's ``<task>/<metric>`` keys."""
    try:
        from fiat_jax.sweeps import run_results
    except ImportError:
        return
    nested: dict[str, dict[str, float]] = {}
    for key, value in eval_metrics.items():
        task, _, metric = key.rpartition("/")
        if task and task != "mean":
            nested.setdefault(task, {})[metric] = float(value)
    run_results.write_run_results(model_dir, metrics=nested or dict(eval_metrics), **extra)
