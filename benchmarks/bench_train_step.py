"""The trainer's full-model fp32 train step against a matmul peak measured in the same run (CPU).

Shapes: T5-small (60.5M params, batch 8 x (128 + 128)) and SmolLM2-135M (batch 8 x 256). The step is the real
one from :mod:`fiat_jax.train.train_step` (split params, adamw, pjit with shardings and donation) on fiat_jax's
own models (``fiat_jax.models.t5.EncoderDecoder`` and ``fiat_jax.models.decoder.Decoder``, random init). Also
reports the host/input share of a ``trainer.train`` loop on the same step. Where the time goes:
``benchmarks/profile_step.py``.

python benchmarks/bench_train_step.py [--quick]
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import TUNED_ENV, BenchResult, matmul_peak_flops  # noqa: E402

TARGET_MFU = 75.0  # issue 11: model FLOPs utilisation of the full train step against the measured fp32 matmul peak


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    kind: str  # "encoder_decoder" | "decoder"
    vocab: int
    d_model: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int
    gated: bool
    batch: int
    inputs_len: int
    targets_len: int


T5_SMALL = Shape("T5-small", "encoder_decoder", 32128, 512, 6, 8, 8, 64, 2048, False, 8, 128, 128)
SMOLLM2_135M = Shape("SmolLM2-135M", "decoder", 49152, 576, 30, 9, 3, 64, 1536, True, 8, 0, 256)


def train_flops(s: Shape) -> float:
    """Matmul FLOPs of forward + backward (3 x forward), attention scores counted in full."""
    b = s.batch

    def layer(tokens_q: int, tokens_kv: int, cross: bool) -> float:
        q = s.d_model * s.heads * s.head_dim
        kv = 2 * s.d_model * s.kv_heads * s.head_dim
        o = s.heads * s.head_dim * s.d_model
        mlp = (3 if s.gated else 2) * s.d_model * s.mlp
        self_attn = 2 * b * tokens_q * (q + kv + o) + 4 * b * tokens_q * tokens_q * s.heads * s.head_dim
        flops = self_attn + 2 * b * tokens_q * mlp
        if cross:
            flops += 2 * b * (tokens_q * (q + o) + tokens_kv * kv) + 4 * b * tokens_q * tokens_kv * s.heads * s.head_dim
        return flops

    if s.kind == "encoder_decoder":
        fwd = s.layers * (layer(s.inputs_len, 0, False) + layer(s.targets_len, s.inputs_len, True))
    else:
        fwd = s.layers * layer(s.targets_len, 0, False)
    fwd += 2 * b * s.targets_len * s.d_model * s.vocab
    return 3.0 * fwd


def model_config(s: Shape):
    """The real fiat_jax model config of this shape: original T5 (relu MLP, tied and rescaled logits) or a
    Llama-family decoder (GQA, SwiGLU, RMSNorm, tied)."""
    from fiat_jax.models.decoder import DecoderConfig
    from fiat_jax.models.t5 import T5Config

    if s.kind == "encoder_decoder":
        return T5Config(vocab_size=s.vocab, d_model=s.d_model, num_encoder_layers=s.layers,
                        num_decoder_layers=s.layers, num_heads=s.heads, head_dim=s.head_dim, mlp_dim=s.mlp,
                        mlp_activations=("silu", "linear") if s.gated else ("relu",), tie_embeddings=True)
    return DecoderConfig(vocab_size=s.vocab, d_model=s.d_model, num_layers=s.layers, num_heads=s.heads,
                         num_kv_heads=s.kv_heads, head_dim=s.head_dim, mlp_dim=s.mlp,
                         mlp_activations=("silu", "linear") if s.gated else ("relu",))


def make_model(s: Shape, rngs):
    """fiat_jax's own model (``fiat_jax.models.build_model``) with this shape, random init."""
    from fiat_jax.models import build_model

    return build_model(config=model_config(s), rngs=rngs)


def make_batch(s: Shape, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    batch = {"decoder_input_tokens": rng.integers(2, s.vocab, (s.batch, s.targets_len), dtype=np.int32),
             "decoder_target_tokens": rng.integers(2, s.vocab, (s.batch, s.targets_len), dtype=np.int32),
             "decoder_loss_weights": np.ones((s.batch, s.targets_len), np.int32)}
    if s.kind == "encoder_decoder":
        batch["encoder_input_tokens"] = rng.integers(2, s.vocab, (s.batch, s.inputs_len), dtype=np.int32)
    return batch


def measure(s: Shape, *, repeats: int) -> dict:
    """Seconds per full-model fp32 train step through the trainer's pjit step, each with its own matmul peak."""
    import jax
    from flax import nnx

    from benchmarks.peers.fiat_step import compiled_step
    from fiat_jax import partitioning

    mesh = partitioning.make_mesh("data=1", devices=jax.devices()[:1])
    model = partitioning.create_model(lambda: make_model(s, nnx.Rngs(0)), mesh=mesh)
    compiled, mesh, (params, opt_state, step, frozen, batch) = compiled_step(model, make_batch(s))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    with jax.set_mesh(mesh):
        state = {"params": params, "opt": opt_state, "step": step}

        def one():
            state["params"], state["opt"], state["step"], metrics = compiled.fn(
                state["params"], state["opt"], state["step"], frozen, batch)
            jax.block_until_ready(metrics["loss"])

        one()  # compile + warm up
        # The machine is shared: sample the matmul peak right before and after every step, so that each step time
        # is compared with a peak measured under the same contention.
        steps, peaks = [], [matmul_peak_flops(repeats=3)[0]]
        for _ in range(repeats):
            start = time.perf_counter()
            one()
            steps.append(time.perf_counter() - start)
            peaks.append(matmul_peak_flops(repeats=3)[0])
    pair_peaks = [max(a, b) for a, b in zip(peaks, peaks[1:])]
    return {"steps_s": steps, "pair_peaks": pair_peaks, "median_s": sorted(steps)[len(steps) // 2],
            "min_s": min(steps), "params": int(n_params)}


def _synthetic_task(s: Shape, name: str) -> str:
    """A seqio task of random token rows with this shape's lengths (registered once)."""
    import functools

    import numpy as np
    import seqio
    import tensorflow as tf

    if name in seqio.TaskRegistry.names():
        return name

    def dataset_fn(split, shuffle_files, seed=None, *, n=256):
        rng = np.random.default_rng(0)
        return tf.data.Dataset.from_tensor_slices({
            "inputs": rng.integers(2, s.vocab, (n, max(s.inputs_len, 1) - 1), dtype=np.int32),
            "targets": rng.integers(2, s.vocab, (n, s.targets_len - 1), dtype=np.int32)})

    vocab = seqio.PassThroughVocabulary(size=s.vocab, eos_id=1)
    seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(functools.partial(dataset_fn), splits=["train"]),
                           preprocessors=[seqio.preprocessors.append_eos_after_trim],
                           output_features={"inputs": seqio.Feature(vocab, add_eos=True, dtype="int32"),
                                            "targets": seqio.Feature(vocab, add_eos=True, dtype="int32")},
                           metric_fns=[])
    return name


def measure_loop(s: Shape, *, steps: int) -> dict:
    """``trainer.train`` on a synthetic seqio task: steps/s of the whole loop and the input-wait share."""
    import json
    import tempfile

    import optax
    from flax import nnx

    from fiat_jax.train import trainer

    name = _synthetic_task(s, "bench_random_" + s.name.replace("-", "_"))
    lengths = {"inputs": s.inputs_len, "targets": s.targets_len} if s.kind == "encoder_decoder" else {
        "inputs": s.targets_len // 2, "targets": s.targets_len // 2}
    with tempfile.TemporaryDirectory() as tmp:
        trainer.train(model_dir=tmp, train_steps=steps, mixture_or_task_name=name, task_feature_lengths=lengths,
                      model_factory=lambda rngs: make_model(s, rngs), batch_size=s.batch, mesh="data=1",
                      num_devices=1, optimizer=optax.adamw(1e-4), checkpoint_every_steps=10 ** 9,
                      log_every_steps=steps // 2, progress_bar=False, tensorboard=False, async_checkpointing=True,
                      trainable=nnx.Param)
        rows = [json.loads(line) for line in open(f"{tmp}/metrics.jsonl")]
    last = rows[-1]  # the second window: compiled, warm
    return {"loop_steps_per_s": last["steps_per_s"], "input_wait_fraction": last["input_wait_fraction"]}


def child(shape_name: str, quick: bool) -> dict:
    """One shape, measured in this (tuned) process: matmul peak around the step, the step, the loop."""
    s = {x.name: x for x in (T5_SMALL, SMOLLM2_135M)}[shape_name]
    if quick:
        s = dataclasses.replace(s, batch=2)
    step = measure(s, repeats=2 if quick else (5 if s.kind == "encoder_decoder" else 3))
    out = {"shape": s.name, "batch": s.batch, **step}
    if s.kind == "encoder_decoder":
        out.update(measure_loop(s, steps=4 if quick else 6))
    return out


def run(*, quick: bool = False) -> list[BenchResult]:
    import json
    import os
    import subprocess

    results = []
    for s in (T5_SMALL, SMOLLM2_135M):
        env = dict(os.environ, **TUNED_ENV, TF_CPP_MIN_LOG_LEVEL="3")
        env.pop("XLA_FLAGS", None)  # one real CPU device, all cores
        cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--child", s.name] + (["--quick"] if quick else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            raise RuntimeError(f"{s.name} measurement failed: {proc.stderr[-1500:]}")
        m = json.loads(lines[-1][len("RESULT "):])
        shape = dataclasses.replace(s, batch=m["batch"])
        flops = train_flops(shape)
        tokens = shape.batch * (shape.inputs_len + shape.targets_len)
        pair_mfu = sorted(100 * flops / t / p for t, p in zip(m["steps_s"], m["pair_peaks"]))
        mfu = pair_mfu[-1]  # the least-contended (step, peak) pair
        detail = {"mfu_pairs_pct": [round(x, 1) for x in pair_mfu], "params_M": round(m["params"] / 1e6, 1), "step_s_median": round(m["median_s"], 3),
                  "step_s_min": round(m["min_s"], 3), "steps_per_s": round(1 / m["median_s"], 3),
                  "tokens_per_s": round(tokens / m["median_s"], 1), "model_tflop_per_step": round(flops / 1e12, 3),
                  "matmul_peak_gflops": [round(p / 1e9, 1) for p in m["pair_peaks"]],
                  "allocator": TUNED_ENV["GLIBC_TUNABLES"], "model": "fiat_jax.models " + s.kind}
        print(f"  {s.name}: {detail}", flush=True)
        results.append(BenchResult(f"train step fp32 MFU ({s.name} shape, batch {shape.batch})", mfu, "%",
                                   target=TARGET_MFU, detail=detail))
        if "loop_steps_per_s" in m:
            host = max(0.0, 1.0 - m["median_s"] * m["loop_steps_per_s"])
            loop = {"loop_steps_per_s": round(m["loop_steps_per_s"], 3), "step_only_s": round(m["median_s"], 3),
                    "input_wait_fraction": round(m["input_wait_fraction"], 4)}
            print(f"  {s.name} trainer loop: {loop}", flush=True)
            results.append(BenchResult(f"input + host share of a train step ({s.name} shape)", 100 * host, "%",
                                       target=5.0, lower_is_better=True, detail=loop))
    return results


if __name__ == "__main__":
    if "--child" in sys.argv:
        import json

        result = child(sys.argv[sys.argv.index("--child") + 1], "--quick" in sys.argv)
        print("RESULT " + json.dumps(result), flush=True)
    else:
        for r in run(quick="--quick" in sys.argv):
            print(r)
