"""LoRA vs full fine-tuning on the SmolLM2-135M shape (CPU, fp32): what LoRA saves, from compiled shapes.

The step is the trainer's jitted step as ``benchmarks/peers/fiat_step.py`` runs it (adamw, params/opt state
donated; LoRA r=8 alpha=16 on attention q/k/v/o through ``fiat_jax.peft.lora``), batch 8 x seq_len.

* the XLA buffers of the compiled step (arguments + temporaries + non-aliased outputs, from abstract shapes);
* adamw state in ``lora`` mode as a share of ``full`` (abstract shapes, ``jax.eval_shape``; target <= 2 %).

The measured LoRA-vs-full step time and per-process peak RSS come from ``bench_peers.py``, which runs both
modes in their own processes beside the peers (timing them here too cost ~4 minutes of ``make bench``).

python benchmarks/bench_peft.py [--quick]
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import BenchResult  # noqa: E402

TARGET_MEMORY_SAVING_PCT = 40.0
TARGET_OPT_STATE_PCT = 2.0


def optimizer_state_share() -> tuple[float, dict[str, float]]:
    """adamw state bytes in lora mode / full mode for SmolLM2-135M, from abstract shapes only."""
    import jax
    import optax
    from flax import nnx

    from fiat_jax.models import build_model
    from fiat_jax.models.decoder import DecoderConfig
    from fiat_jax.peft import lora, trainable

    tx = optax.adamw(1e-4)

    def state_bytes(use_lora: bool) -> int:
        def build():
            model = build_model(config=DecoderConfig(), seed=0)
            return lora.apply_lora(model, rank=8, alpha=16.0) if use_lora else model

        model = nnx.eval_shape(build)
        _, params, _ = nnx.split(model, trainable.peft_filter(mode="lora") if use_lora else nnx.Param, ...)
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(jax.eval_shape(tx.init, params))
                   if hasattr(x, "size"))

    full, low = state_bytes(False), state_bytes(True)
    return 100.0 * low / full, {"full_mib": full / 2**20, "lora_mib": low / 2**20}


def _model(mode: str):
    from flax import nnx

    from benchmarks.peers import fiat_step
    from fiat_jax.models import build_model

    model = build_model(config=fiat_step.decoder_config(), seed=0)
    return fiat_step.apply_lora(model) if mode == "lora" else (model, nnx.Param)


def xla_step_mb(mode: str, *, seq_len: int) -> float:
    """MiB of XLA buffers of the compiled step (abstract shapes: nothing is allocated)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from benchmarks.peers.common import BATCH
    from fiat_jax import partitioning
    from fiat_jax.train import train_step

    model = nnx.eval_shape(lambda: _model(mode)[0])
    filt = _model_filter(mode)
    graphdef, params, frozen = train_step.split_model(model, filt)
    tx = optax.adamw(1e-4)
    step_fn = train_step.make_step_fn(graphdef, tx, train_step.StepConfig(), trainable=filt)
    mesh = partitioning.make_mesh("data=1", devices=jax.devices()[:1])
    with jax.set_mesh(mesh):
        opt = jax.eval_shape(tx.init, params)
        compiled = train_step.jit_step(step_fn, mesh=mesh, abstract_params=params, abstract_opt_state=opt,
                                       abstract_frozen=frozen)
        batch = {k: jax.ShapeDtypeStruct((BATCH, seq_len), jnp.int32)
                 for k in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")}
        exe = compiled.fn.lower(params, opt, jax.ShapeDtypeStruct((), jnp.int32), frozen, batch).compile()
    m = exe.memory_analysis()
    total = m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    return total / 2**20


def _model_filter(mode: str):
    from flax import nnx

    from fiat_jax.peft import trainable

    return trainable.peft_filter(mode="lora") if mode == "lora" else nnx.Param


def run(*, quick: bool = False) -> list[BenchResult]:
    seq_len = 64 if quick else 256
    shape = {"shape": "SmolLM2-135M", "batch": 8, "seq_len": seq_len}
    results: list[BenchResult] = []
    xla = {mode: xla_step_mb(mode, seq_len=seq_len) for mode in ("lora", "full")}
    print(f"  XLA step buffers: lora {xla['lora']:.0f} MiB, full {xla['full']:.0f} MiB", flush=True)
    results.append(BenchResult("LoRA vs full XLA step buffers saving", 100 * (1 - xla["lora"] / xla["full"]), "%",
                               target=TARGET_MEMORY_SAVING_PCT, detail=shape | {"mib": xla}))
    share, detail = optimizer_state_share()
    print(f"  adamw state: lora {detail['lora_mib']:.2f} MiB = {share:.3f} % of full", flush=True)
    results.append(BenchResult("LoRA adamw state as share of full (SmolLM2-135M)", share, "%",
                               target=TARGET_OPT_STATE_PCT, lower_is_better=True, detail=detail))
    return results


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(r)
