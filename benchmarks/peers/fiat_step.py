"""fiat_jax's own train step on the peers' shape: the Llama decoder, fiat_jax LoRA and the trainer's jitted step.

SmolLM2-135M shape, random init, fp32, batch 8 x seq_len, LoRA r=8 alpha=16 on q/k/v/o (attention query, key,
value and out kernels), adamw; the same CLI and RESULT line as the other peer scripts:
python benchmarks/peers/fiat_step.py --mode lora|full [--steps 3] [--seq_len 256] [--remat none|full|save_dots]

Exits with status 3 and a one-line reason on stderr (no RESULT line) when ``--mode lora`` is asked for and
``fiat_jax.peft`` has not landed, so the driver reports the peer as missing instead of a made-up figure.
"""

from __future__ import annotations

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from benchmarks.peers.common import (  # noqa: E402
    BATCH, LORA_ALPHA, LORA_RANK, SMOLLM2_135M, emit, step_args)

MEMORY: dict[str, float] = {}  # filled by train_step_seconds: XLA's buffer sizes of the compiled step

# fiat_jax's parameter names for the peers' q_proj/k_proj/v_proj/o_proj (docs/CONTRACTS.md).
LORA_TARGET_REGEX = r".*attention/(query|key|value|out)/kernel"


def decoder_config(remat: str = "none"):
    from fiat_jax.models.decoder import DecoderConfig

    s = SMOLLM2_135M
    return DecoderConfig(vocab_size=s["vocab_size"], d_model=s["d_model"], num_layers=s["n_layers"],
                         num_heads=s["n_heads"], num_kv_heads=s["n_kv_heads"], head_dim=s["head_dim"],
                         mlp_dim=s["mlp_dim"], rope_theta=s["rope_theta"], norm_eps=s["rms_norm_eps"],
                         tie_embeddings=s["tie_embeddings"], remat=remat)


def apply_lora(model):
    """``(model, trainable filter)`` with fiat_jax's LoRA on q/k/v/o; raises ImportError until fiat_jax.peft lands."""
    from fiat_jax.peft import lora  # noqa: F401  (ImportError = not landed)

    transform = lora.lora_transform(targets=LORA_TARGET_REGEX, rank=LORA_RANK, alpha=LORA_ALPHA)
    model = transform(model)
    return model, lora.trainable_filter()


def compiled_step(model, batch=None, *, trainable=None, tx=None, step_config=None):
    """``(compiled step, mesh, [params, opt_state, step, frozen, batch])``: the trainer's jitted step on one device
    (``tx`` default adamw 1e-4, params/opt state donated), its arguments placed with the step's shardings; the
    benchmarks and the PEFT training test all drive the step through this one set-up. ``trainable``: an nnx filter
    (default every ``nnx.Param``); ``batch`` None leaves the last slot None (place batches with
    ``compiled.batch_sharding``)."""
    import jax
    import numpy as np
    import optax
    from flax import nnx

    from fiat_jax import partitioning
    from fiat_jax.train import train_step

    trainable = nnx.Param if trainable is None else trainable
    mesh = partitioning.make_mesh("data=1", devices=jax.devices()[:1])
    graphdef, params, frozen = train_step.split_model(model, trainable)
    tx = optax.adamw(1e-4) if tx is None else tx
    step_fn = train_step.make_step_fn(graphdef, tx, step_config or train_step.StepConfig(), trainable=trainable)
    with jax.set_mesh(mesh):
        compiled = train_step.jit_step(step_fn, mesh=mesh, abstract_params=params,
                                       abstract_opt_state=jax.eval_shape(tx.init, params), abstract_frozen=frozen)
        params = jax.device_put(params, compiled.params_shardings)
        opt_state = jax.jit(tx.init, out_shardings=compiled.opt_shardings)(params)
        step = jax.device_put(np.zeros((), np.int32), compiled.replicated)
        frozen = jax.device_put(frozen, compiled.frozen_shardings)
        batch = None if batch is None else jax.device_put(dict(batch), compiled.batch_sharding)
    return compiled, mesh, [params, opt_state, step, frozen, batch]


def train_step_seconds(model, batch, *, trainable, steps: int, head_chunk: int | None = None
                       ) -> tuple[list[float], float, int]:
    """``(seconds per step, last summed loss, trainable count)`` of :func:`compiled_step`, after one compile +
    warm-up step. ``head_chunk``: the LM head + cross-entropy in rematerialised chunks of that many positions
    (``StepConfig.head_chunk_size``; the loss is on every position, so every position is a loss position)."""
    import jax

    from fiat_jax.train import train_step

    config = None
    if head_chunk:
        config = train_step.StepConfig(loss_positions_per_row=batch["decoder_target_tokens"].shape[1],
                                       head_chunk_size=int(head_chunk))
    compiled, mesh, args = compiled_step(model, batch, trainable=trainable, step_config=config)
    with jax.set_mesh(mesh):
        step_fn = compiled.fn.lower(*args).compile()
        memory = step_fn.memory_analysis()
        if memory is not None:  # XLA's own account of the step's buffers (activations are the temporaries)
            MEMORY.update(temp_mb=memory.temp_size_in_bytes / 2**20,
                          peak_mb=(memory.temp_size_in_bytes + memory.argument_size_in_bytes
                                   + memory.output_size_in_bytes - memory.alias_size_in_bytes) / 2**20)
        if steps == 0:  # memory only (bench_remat --memory_only): XLA's account needs no step to run
            return [float("nan")], float("nan"), int(sum(x.size for x in jax.tree.leaves(args[0])))
        args[0], args[1], args[2], metrics = step_fn(*args)  # warm-up
        jax.block_until_ready(metrics["loss"])
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            args[0], args[1], args[2], metrics = step_fn(*args)
            jax.block_until_ready(metrics["loss"])
            times.append(time.perf_counter() - start)
    return times, float(metrics["loss"]), int(sum(x.size for x in jax.tree.leaves(args[0])))


def main() -> None:
    args = step_args(("--remat", dict(default="none", help="activation remat per layer: none, full, save_dots")),
                     ("--head_chunk", dict(type=int, default=0, help="LM head + CE in chunks of N positions")))

    import numpy as np
    from flax import nnx

    from fiat_jax.models import build_model

    model = build_model(config=decoder_config(args.remat), seed=0)
    trainable = nnx.Param
    if args.mode == "lora":
        try:
            model, trainable = apply_lora(model)
        except ImportError as err:
            sys.stderr.write(f"fiat_jax LoRA not available yet ({err}); no LoRA figure\n")
            sys.exit(3)
    b, t = BATCH, args.seq_len
    tokens = np.random.default_rng(1).integers(0, SMOLLM2_135M["vocab_size"], (b, t + 1), dtype=np.int32)
    batch = {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
             "decoder_loss_weights": np.ones((b, t), np.int32)}
    times, loss, trainable_count = train_step_seconds(model, batch, trainable=trainable, steps=args.steps,
                                                      head_chunk=args.head_chunk or None)
    emit(peer="fiat_jax", mode=args.mode, step_s=sorted(times)[len(times) // 2], min_s=min(times),
         max_s=max(times), trainable=trainable_count, loss=loss / (b * t), remat=args.remat,
         head_chunk=args.head_chunk, **MEMORY)


if __name__ == "__main__":
    main()
