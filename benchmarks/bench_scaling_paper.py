"""Scaling on paper: memory per chip and step time per model size x TPU slice, from FLOP counts.

For each model (T5 v1.1 small..xl, mT5 small..xl, SmolLM2-135M/360M, Llama-3.2-1B) the parameter count comes from
``nnx.eval_shape`` of the real fiat_jax model (no weights allocated), with the shapes from
``gin_configs/models/<name>.gin`` when that file exists, else the published shapes below. The train-step FLOPs are
analytic (matmuls, attention scores counted in full; full fine-tuning = 3 x forward, LoRA = 2 x forward because the
frozen weights get no weight gradient) and are cross-checked against XLA's ``compiled.cost_analysis()`` of the
real forward+backward on the two small shapes (T5-small, SmolLM2-135M): those two ratios are the benchmark's
results. The table itself is printed (and stored in the results' ``detail``) so a user can pick a slice.

Assumptions of the table (edit the constants to taste):
- a fully-sharded (FSDP) mesh over all chips of the slice: ``fsdp=<chips>``; the global batch is split evenly;
- full fine-tuning keeps fp32 params + fp32 grads + fp32 adam m, v = 16 bytes/param, sharded over the chips;
  LoRA keeps the frozen base in fp32 (4 bytes/param, sharded) plus adapters (negligible);
- activations in bf16 without rematerialisation: per layer and token ~ ``4D + 3H*hd + 2K*hd + H*T + 3F``
  values, plus fp32 logits and their gradient; ``remat`` would cut that to ~ one ``D`` per layer and token;
- step time = train FLOPs / (chips x bf16 peak x ``ASSUMED_MFU``); collectives assumed hidden under compute.
Chip data (Google Cloud TPU docs): v4: 275 TFLOP/s bf16, 32 GiB HBM; v5e: 197 TFLOP/s bf16, 16 GiB HBM.

python benchmarks/bench_scaling_paper.py [--quick]
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import BenchResult  # noqa: E402

GLOBAL_BATCH = 64
DECODER_LEN = 512  # decoder-only: tokens per row
T5_LENGTHS = (512, 128)  # encoder-decoder: (inputs, targets)
ASSUMED_MFU = 0.5
HBM_HEADROOM = 0.9  # usable share of HBM (XLA scratch, fragmentation)
CROSS_CHECK_TOLERANCE_PCT = 10.0


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    bf16_tflops: float
    hbm_gib: float
    slices: tuple[int, ...]  # chips per slice in the table
    cores_per_chip: int  # Cloud TPU slice names count TensorCores: v4-8 = 4 chips, v5litepod-8 = 8 chips
    slice_prefix: str

    def slice_name(self, chips: int) -> str:
        return f"{self.slice_prefix}-{chips * self.cores_per_chip}"


CHIPS = (Chip("v5e", 197.0, 16.0, (1, 4, 8, 16, 32), 1, "v5litepod"), Chip("v4", 275.0, 32.0, (4, 8, 16, 32), 2, "v4"))

# Published shapes, used when gin_configs/models/<name>.gin has not landed. kind: "t5" | "decoder".
_T5 = dict(mlp_activations=("gelu", "linear"), tie_embeddings=False)
_MT5 = dict(_T5, vocab_size=250112)
SHAPES: dict[str, tuple[str, dict]] = {
    "t5_small": ("t5", dict(_T5, vocab_size=32128, d_model=512, num_encoder_layers=8, num_decoder_layers=8,
                            num_heads=6, head_dim=64, mlp_dim=1024)),
    "t5_base": ("t5", dict(_T5, vocab_size=32128, d_model=768, num_encoder_layers=12, num_decoder_layers=12,
                           num_heads=12, head_dim=64, mlp_dim=2048)),
    "t5_large": ("t5", dict(_T5, vocab_size=32128, d_model=1024, num_encoder_layers=24, num_decoder_layers=24,
                            num_heads=16, head_dim=64, mlp_dim=2816)),
    "t5_xl": ("t5", dict(_T5, vocab_size=32128, d_model=2048, num_encoder_layers=24, num_decoder_layers=24,
                         num_heads=32, head_dim=64, mlp_dim=5120)),
    "mt5_small": ("t5", dict(_MT5, d_model=512, num_encoder_layers=8, num_decoder_layers=8, num_heads=6,
                             head_dim=64, mlp_dim=1024)),
    "mt5_base": ("t5", dict(_MT5, d_model=768, num_encoder_layers=12, num_decoder_layers=12, num_heads=12,
                            head_dim=64, mlp_dim=2048)),
    "mt5_large": ("t5", dict(_MT5, d_model=1024, num_encoder_layers=24, num_decoder_layers=24, num_heads=16,
                             head_dim=64, mlp_dim=2816)),
    "mt5_xl": ("t5", dict(_MT5, d_model=2048, num_encoder_layers=24, num_decoder_layers=24, num_heads=32,
                          head_dim=64, mlp_dim=5120)),
    "smollm2_135m": ("decoder", dict(vocab_size=49152, d_model=576, num_layers=30, num_heads=9, num_kv_heads=3,
                                     head_dim=64, mlp_dim=1536, rope_theta=100000.0, tie_embeddings=True)),
    "smollm2_360m": ("decoder", dict(vocab_size=49152, d_model=960, num_layers=32, num_heads=15, num_kv_heads=5,
                                     head_dim=64, mlp_dim=2560, rope_theta=100000.0, tie_embeddings=True)),
    "llama3_1b": ("decoder", dict(vocab_size=128256, d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8,
                                  head_dim=64, mlp_dim=8192, rope_theta=500000.0, tie_embeddings=True)),
}


def model_config(name: str) -> tuple[object, str]:
    """``(DecoderConfig | T5Config, source)``: from ``gin_configs/models/<name>.gin`` if present, else SHAPES."""
    from fiat_jax.models.decoder import DecoderConfig
    from fiat_jax.models.t5 import T5Config

    gin_file = ROOT / "gin_configs" / "models" / f"{name}.gin"
    kind, shape = SHAPES[name]
    if gin_file.exists():
        import gin

        with gin.unlock_config():
            gin.clear_config()
            gin.parse_config_files_and_bindings([str(gin_file)], None, skip_unknown=True,
                                                finalize_config=False)  # CHECKPOINT may be REQUIRED
            try:
                config = T5Config() if kind == "t5" else DecoderConfig()
            finally:
                gin.clear_config()
        return config, str(gin_file.relative_to(ROOT))
    return (T5Config(**shape) if kind == "t5" else DecoderConfig(**shape)), "published shape (gin file absent)"


def param_count(config: object) -> tuple[int, int]:
    """``(all params, embedding params)`` of the real model, from its abstract (shape-only) construction."""
    import jax
    from flax import nnx

    from fiat_jax.models import build_model

    abstract = nnx.eval_shape(lambda: build_model(config=config, seed=0))
    state = nnx.state(abstract, nnx.Param)
    total = sum(int(x.size) for x in jax.tree.leaves(state))
    embed = config.vocab_size * config.d_model
    return total, embed


def _mlp_mats(config) -> int:
    return len(config.mlp_activations) + 1


def forward_flops(config, *, batch: int, lengths: tuple[int, ...]) -> float:
    """Matmul FLOPs of one forward pass (attention scores in full, logits included)."""
    d, h, hd, f = config.d_model, config.num_heads, config.head_dim, config.mlp_dim
    mlp = _mlp_mats(config) * d * f
    if type(config).__name__ == "T5Config":
        ti, to = lengths
        attn_proj = 4 * d * h * hd  # q, k, v, o (no GQA)
        enc = 2 * batch * ti * (attn_proj + mlp) + 4 * batch * ti * ti * h * hd
        dec = (2 * batch * to * (attn_proj + mlp) + 4 * batch * to * to * h * hd  # self-attention + MLP
               + 2 * batch * (to * 2 * d * h * hd + ti * 2 * d * h * hd) + 4 * batch * to * ti * h * hd)  # cross
        return (config.num_encoder_layers * enc + config.num_decoder_layers * dec
                + 2 * batch * to * d * config.vocab_size)
    (t,) = lengths
    k = config.num_kv_heads
    proj = 2 * d * h * hd + 2 * d * k * hd
    layer = 2 * batch * t * (proj + mlp) + 4 * batch * t * t * h * hd
    return config.num_layers * layer + 2 * batch * t * d * config.vocab_size


def activation_bytes(config, *, batch: int, lengths: tuple[int, ...]) -> float:
    """bf16 activations kept for the backward pass (no remat), plus fp32 logits and their gradient."""
    d, h, hd, f = config.d_model, config.num_heads, config.head_dim, config.mlp_dim
    if type(config).__name__ == "T5Config":
        ti, to = lengths
        enc = batch * ti * (4 * d + 5 * h * hd + h * ti + 3 * f)
        dec = batch * to * (6 * d + 8 * h * hd + h * (to + ti) + 3 * f)
        values = config.num_encoder_layers * enc + config.num_decoder_layers * dec
        logit_tokens = batch * to
    else:
        (t,) = lengths
        values = config.num_layers * batch * t * (4 * d + 3 * h * hd + 2 * config.num_kv_heads * hd + h * t + 3 * f)
        logit_tokens = batch * t
    return 2.0 * values + 2 * 4.0 * logit_tokens * config.vocab_size


def xla_train_flops(config, *, batch: int, lengths: tuple[int, ...]) -> float:
    """FLOPs XLA's compiled cost analysis reports for forward+backward of the real model's loss."""
    import jax
    import numpy as np
    import optax
    from flax import nnx

    from fiat_jax.models import build_model

    model = build_model(config=config, seed=0)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(0)
    tgt = lengths[-1]
    batch_arrays = {"decoder_input_tokens": rng.integers(2, config.vocab_size, (batch, tgt), dtype=np.int32),
                    "decoder_target_tokens": rng.integers(2, config.vocab_size, (batch, tgt), dtype=np.int32)}
    if len(lengths) == 2:
        batch_arrays["encoder_input_tokens"] = rng.integers(2, config.vocab_size, (batch, lengths[0]),
                                                            dtype=np.int32)

    def loss(p, r, b):
        logits = nnx.merge(graphdef, p, r).logits_from_batch(b)
        return optax.softmax_cross_entropy_with_integer_labels(logits, b["decoder_target_tokens"]).mean()

    compiled = jax.jit(jax.grad(loss)).lower(params, rest, batch_arrays).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def table(rows: list[dict]) -> str:
    head = ("| model | params | slice | batch/chip | mem/chip full (GiB) | mem/chip LoRA (GiB) | step full (s) | "
            "step LoRA (s) | tokens/s full |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        def mem(x: float) -> str:
            return f"{x:.1f}" + ("" if x <= r["hbm_gib"] * HBM_HEADROOM else " OOM")
        lines.append(f"| {r['model']} | {r['params_m']:.0f}M | {r['slice']} | {r['batch_per_chip']:g} | "
                     f"{mem(r['mem_full_gib'])} | {mem(r['mem_lora_gib'])} | {r['step_full_s']:.3f} | "
                     f"{r['step_lora_s']:.3f} | {r['tokens_per_s_full']:.0f} |")
    return "\n".join(lines)


def estimate(names: tuple[str, ...]) -> list[dict]:
    rows = []
    for name in names:
        config, source = model_config(name)
        n, _ = param_count(config)
        lengths = T5_LENGTHS if type(config).__name__ == "T5Config" else (DECODER_LEN,)
        fwd = forward_flops(config, batch=GLOBAL_BATCH, lengths=lengths)
        for chip in CHIPS:
            for chips in chip.slices:
                per_chip = GLOBAL_BATCH / chips
                act = activation_bytes(config, batch=1, lengths=lengths) * per_chip
                gib = 2.0 ** 30
                peak = chips * chip.bf16_tflops * 1e12 * ASSUMED_MFU
                rows.append({
                    "model": name, "source": source, "params_m": n / 1e6,
                    "slice": f"{chip.slice_name(chips)} ({chips} chips)",
                    "hbm_gib": chip.hbm_gib, "batch_per_chip": per_chip,
                    "mem_full_gib": (16.0 * n / chips + act) / gib, "mem_lora_gib": (4.0 * n / chips + act) / gib,
                    "step_full_s": 3 * fwd / peak, "step_lora_s": 2 * fwd / peak,
                    "tokens_per_s_full": GLOBAL_BATCH * sum(lengths) / (3 * fwd / peak)})
    return rows


def run(*, quick: bool = False) -> list[BenchResult]:
    names = ("t5_small", "smollm2_135m", "llama3_1b") if quick else tuple(SHAPES)
    rows = estimate(names)
    print(f"  global batch {GLOBAL_BATCH}; decoder {DECODER_LEN} tokens, T5 {T5_LENGTHS}; FSDP over the slice; "
          f"assumed MFU {ASSUMED_MFU:.0%}; OOM = over {HBM_HEADROOM:.0%} of HBM", flush=True)
    print(table(rows), flush=True)
    results = []
    batch, lengths = (1, {"t5": (32, 32), "decoder": (32,)}) if quick else (2, {"t5": (128, 64), "decoder": (128,)})
    for name in ("t5_small", "smollm2_135m"):
        config, source = model_config(name)
        ls = lengths[SHAPES[name][0]]
        analytic = 3 * forward_flops(config, batch=batch, lengths=ls)
        xla = xla_train_flops(config, batch=batch, lengths=ls)
        print(f"  {name} fwd+bwd FLOPs at batch {batch} x {ls}: analytic {analytic / 1e9:.2f} G, "
              f"XLA {xla / 1e9:.2f} G (analytic/XLA {analytic / xla:.3f})", flush=True)
        results.append(BenchResult(f"analytic vs XLA train FLOPs gap ({name}, batch {batch} x {ls})",
                                   100 * abs(analytic / xla - 1), "%", target=CROSS_CHECK_TOLERANCE_PCT,
                                   lower_is_better=True,
                                   detail={"analytic_gflop": round(analytic / 1e9, 3),
                                           "xla_gflop": round(xla / 1e9, 3), "config_source": source}))
    # The whole table travels with the first result, so results/<date>.json holds it.
    results[0].detail["table"] = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
                                  for r in rows]
    results[0].detail["table_markdown"] = table(rows)
    return results


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(r)
