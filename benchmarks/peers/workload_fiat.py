"""fiat_jax student LoRA training on FIAT rows, as the student path runs it: seqio's packing converter (segment-
aware attention and positions) and the train step with the LM head only at the loss positions.

python benchmarks/peers/workload_fiat.py --arch decoder|t5 --rows ROWS.json --steps N --batch B
Prints one RESULT line: seconds per step and *useful* tokens (real input + target tokens) per step.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from benchmarks.peers.common import LORA_ALPHA, LORA_RANK, emit, workload_args  # noqa: E402
from benchmarks.peers.fiat_step import LORA_TARGET_REGEX, compiled_step, decoder_config  # noqa: E402

T5_VOCAB = 32128


def t5_config():
    from fiat_jax.models.t5 import T5Config

    return T5Config()  # t5.1.1 small: d_model 512, 8 + 8 layers, 6 heads, mlp 1024, vocab 32128


def packed_batches(rows, *, arch: str, batch: int, inputs_len: int, targets_len: int):
    """seqio-packed numpy batches (the trainer's converter, pack=True) of the rows, in order."""
    import numpy as np
    import tensorflow as tf

    from fiat_jax.train import input_pipeline

    kind = "decoder" if arch == "decoder" else "encoder_decoder"
    if arch == "t5":  # the same ids folded into T5's vocabulary (0 stays padding)
        rows = [([1 + i % (T5_VOCAB - 1) for i in a], [1 + i % (T5_VOCAB - 1) for i in b]) for a, b in rows]
    ds = tf.data.Dataset.from_generator(
        lambda: ({"inputs": np.asarray(a, np.int32), "targets": np.asarray(b, np.int32)} for a, b in rows),
        output_signature={"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32)})
    ds = input_pipeline.feature_converter_for(kind, pack=True)(ds, {"inputs": inputs_len, "targets": targets_len})
    ds = ds.batch(batch, drop_remainder=True)
    return [{k: np.asarray(v) for k, v in b.items()} for b in ds.as_numpy_iterator()]


def useful_tokens(batch) -> int:
    if "encoder_segment_ids" in batch:
        return int((batch["encoder_segment_ids"] > 0).sum() + (batch["decoder_segment_ids"] > 0).sum())
    return int((batch["decoder_segment_ids"] > 0).sum())


def main() -> None:
    args = workload_args(("--inputs_len", dict(type=int, default=512)), ("--targets_len", dict(type=int, default=16)))

    import jax

    from fiat_jax.models import build_model
    from fiat_jax.peft import lora
    from fiat_jax.train import train_step

    rows = json.loads(pathlib.Path(args.rows).read_text())
    batches = packed_batches(rows, arch=args.arch, batch=args.batch, inputs_len=args.inputs_len,
                             targets_len=args.targets_len)
    if len(batches) < args.steps + 1:
        sys.exit(f"only {len(batches)} packed batches from {len(rows)} rows; need {args.steps + 1}")
    model = build_model(config=decoder_config() if args.arch == "decoder" else t5_config(), seed=0)
    model = lora.lora_transform(targets=LORA_TARGET_REGEX, rank=LORA_RANK, alpha=LORA_ALPHA)(model)
    # The trainer's setting: "auto" = the targets length per row (train_step.resolve_loss_positions).
    per_row = train_step.resolve_loss_positions("auto", {"inputs": args.inputs_len, "targets": args.targets_len})
    compiled, mesh, (params, opt_state, step, frozen, _) = compiled_step(
        model, trainable=lora.trainable_filter(), step_config=train_step.StepConfig(loss_positions_per_row=per_row))
    with jax.set_mesh(mesh):
        start = time.perf_counter()
        params, opt_state, step, m = compiled.fn(params, opt_state, step, frozen,
                                                 jax.device_put(batches[0], compiled.batch_sharding))
        jax.block_until_ready(m["loss"])
        first_s = time.perf_counter() - start
        times, useful = [], []
        for b in batches[1:args.steps + 1]:
            placed = jax.device_put(b, compiled.batch_sharding)
            start = time.perf_counter()
            params, opt_state, step, m = compiled.fn(params, opt_state, step, frozen, placed)
            jax.block_until_ready(m["loss"])
            times.append(time.perf_counter() - start)
            useful.append(useful_tokens(b))
    emit(peer="fiat_jax", arch=args.arch, step_s=sum(times) / len(times), useful_tokens_per_s=sum(useful) / sum(times),
         useful_per_step=sum(useful) / len(useful), slots_per_step=sum(
             int(v.size) for k, v in batches[0].items() if k in ("decoder_target_tokens", "encoder_input_tokens")),
         first_step_s=first_s, loss=float(m["loss"]) / max(float(m["weight"]), 1.0))


if __name__ == "__main__":
    main()
