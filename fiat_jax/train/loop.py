"""The step loop and the run around it: prepare the state, stream batches, step, let the hooks act (metrics, NaN
halting, evaluation, checkpoints, preemption), write the results, and always close what was opened."""

from __future__ import annotations

import logging
import pathlib
import time
from typing import Any

import jax
from flax import nnx

from fiat_jax import compile_cache, gin_utils, partitioning, run_dirs
from fiat_jax.train import checkpoints as ckpt_lib
from fiat_jax.train import input_pipeline
from fiat_jax.train.config import TrainConfig
from fiat_jax.train.hooks import (Checkpointing, Evaluation, LoopState, MetricsLog, Preemption, tokens_in,
                                  write_results)
from fiat_jax.train.metrics_writer import MetricsWriter, Progress
from fiat_jax.train.result import TrainResult
from fiat_jax.train.state import Prepared, build_mesh, build_model, host_copy, prepare

_log = logging.getLogger(__name__)


def run_steps(state: LoopState, *, train_steps: int, batches: Any, step_fn: Any, frozen: Any, log: MetricsLog,
              evaluation: Evaluation, checkpointing: Checkpointing, preemption: Preemption) -> None:
    """Step until ``train_steps`` (or a SIGTERM: save and stop at the step boundary)."""
    while state.step < train_steps:
        if preemption.requested:
            checkpointing.on_preemption(state)
            break
        batch = next(batches)
        if state.tokens_per_step is None:
            state.tokens_per_step = tokens_in(batch)
        state.params, state.opt_state, state.step_arr, metrics = step_fn(state.params, state.opt_state,
                                                                         state.step_arr, frozen, batch)
        state.step += 1
        log.add(state, metrics)
        evaluation.after_step(state)
        checkpointing.after_step(state)
    log.flush(state)


def check_directories(model_dir: str) -> None:
    run_dirs.check_writable_dir(model_dir, what="MODEL_DIR")
    run_dirs.check_writable_dir(pathlib.Path(model_dir) / "checkpoints", what="checkpoint directory")


def _train(config: TrainConfig, p: Prepared, *, compiles_at_start: Any, wall_start: float) -> None:
    """The loop with its input stream and hooks; closes the checkpointer and the writer whatever happens."""
    d, state = config.dataset, p.state
    converter = d.feature_converter or input_pipeline.feature_converter_for(
        getattr(p.model, "model_kind", "decoder"), pack=d.pack)
    # Rows past the restored step (a killed run's) are dropped: each step appears once in metrics.jsonl.
    writer = MetricsWriter(config.model_dir, tensorboard=config.log.tensorboard, resume_step=state.step)
    prefetcher = progress = None
    try:
        if state.step >= config.train_steps:
            _log.info("already trained to step %d >= TRAIN_STEPS %d", state.step, config.train_steps)
            return
        ds = input_pipeline.train_dataset(
            mixture_or_task_name=d.mixture_or_task_name, task=d.task, task_feature_lengths=d.task_feature_lengths,
            split=d.split, global_batch_size=d.batch_size, feature_converter=converter, seed=d.seed,
            start_batch=p.start_batch, shuffle=d.shuffle, use_cached=d.use_cached)
        prefetcher = input_pipeline.Prefetcher(input_pipeline.numpy_batches(ds), input_pipeline.device_placer(
            p.compiled.batch_sharding), depth=d.prefetch_depth)
        progress = Progress(total=config.train_steps, initial=state.step, enabled=config.log.progress_bar)
        log = MetricsLog(config.log, writer=writer, progress=progress, prefetcher=prefetcher, ckpts=p.ckpts,
                         schedule_lr=p.schedule_lr, params_trained=p.params_trained, z_loss=config.z_loss)
        evaluation = Evaluation(config.eval, log=log, writer=writer, merge=p.merge, model_dir=config.model_dir)
        checkpointing = Checkpointing(config.checkpoint, ckpts=p.ckpts, log=log, writer=writer,
                                      fingerprint_hash=p.fingerprint["hash"], train_steps=config.train_steps)
        with Preemption() as preemption:
            run_steps(state, train_steps=config.train_steps, batches=prefetcher, step_fn=p.compiled.fn,
                      frozen=p.frozen, log=log, evaluation=evaluation, checkpointing=checkpointing,
                      preemption=preemption)
            if config.eval.eval_fn is not None and not state.preempted and state.step >= config.train_steps:
                write_results(config.model_dir, evaluation.final(state), tokens_seen=state.tokens_seen,
                              params_trained=p.params_trained, task=d.name, steps=state.step,
                              compile=compile_cache.CompileStats.since(compiles_at_start).metrics(
                                  time.perf_counter() - wall_start, prefix=""))
    finally:
        if progress is not None:
            progress.close()  # also on an error, so its message starts on a line of its own
        if prefetcher is not None:
            prefetcher.close()
        try:
            p.ckpts.close()
        except ckpt_lib.CheckpointSaveError:
            writer.truncate_after(p.ckpts.last_good_step() or 0)
            raise
        else:
            compiles = compile_cache.CompileStats.since(compiles_at_start)
            compile_metrics = compiles.metrics(time.perf_counter() - wall_start)
            state.metrics.update(compile_metrics)
            writer.write_process_record("compile.jsonl", {"step": int(state.step), **compile_metrics})
            _log.info("compiles: %d (%d more loaded from the persistent cache), %.1f s", compiles.compiles,
                      compiles.cache_hits, compiles.compile_s)
        finally:
            writer.close()


def run(config: TrainConfig) -> TrainResult:
    """Train as ``config`` says in ``config.model_dir`` (resuming from its newest checkpoint)."""
    check_directories(config.model_dir)
    compile_cache.ensure_configured()
    compiles_at_start, wall_start = compile_cache.CompileStats.start(), time.perf_counter()
    if not jax.distributed.is_initialized():
        partitioning.initialize_distributed()  # a no-op on one host
    if config.dataset.register_tasks is not None:
        config.dataset.register_tasks()
    mesh = build_mesh(config)
    m = config.model
    # Built outside ``set_mesh``: NNX would read logical names as mesh axes there (create_model uses the mesh).
    model = build_model(m.model_factory, seed=m.seed, mesh=mesh, initial_params=m.initial_params,
                        model_transform=m.model_transform)
    if config.check_model is not None:
        config.check_model(model)
    initial = host_copy(nnx.state(model, m.trainable)) if m.keep_initial_trainable else None
    with jax.set_mesh(mesh):
        p = prepare(config, mesh, model)
        _train(config, p, compiles_at_start=compiles_at_start, wall_start=wall_start)
        gin_utils.write_operative_config(config.model_dir)
        state = p.state
        final_model = p.merge(state.params)
    wall_s = time.perf_counter() - wall_start
    compile_metrics = {k: v for k, v in state.metrics.items() if k.startswith("compile/")}
    return TrainResult(step=state.step, metrics=state.metrics, model=final_model, preempted=state.preempted,
                       tokens_seen=state.tokens_seen, params_trained=p.params_trained, wall_s=wall_s,
                       compile=compile_metrics, initial_trainable=initial)
