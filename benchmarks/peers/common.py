"""What every peer step script shares: the SmolLM2-135M shape, the batch, and the JSON line it prints."""

from __future__ import annotations

import json
import resource
import sys

# SmolLM2-135M (Llama architecture): the shape every peer trains, random init, fp32.
SMOLLM2_135M = dict(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64,
                    mlp_dim=1536, rope_theta=100000.0, rms_norm_eps=1e-5, tie_embeddings=True)
BATCH, SEQ_LEN = 8, 256
LORA_RANK, LORA_ALPHA = 8, 16
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_flops_per_step(n_layers: int, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, mlp_dim: int,
                         vocab_size: int, batch: int, seq_len: int, *, lora: bool = False, **_) -> float:
    """Model FLOPs of one forward+backward step (matmuls only, causal attention counted in full).

    Full fine-tuning: 3 x forward (activation and weight gradients). LoRA: the frozen weights need no weight
    gradients, so their matmuls cost 2 x forward (the adapters themselves are negligible at rank 8).
    """
    tokens = batch * seq_len
    q = d_model * n_heads * head_dim
    kv = 2 * d_model * n_kv_heads * head_dim
    o = n_heads * head_dim * d_model
    mlp = 3 * d_model * mlp_dim
    per_layer = 2 * tokens * (q + kv + o + mlp) + 2 * 2 * batch * seq_len * seq_len * n_heads * head_dim
    forward = n_layers * per_layer + 2 * tokens * d_model * vocab_size
    return (2.0 if lora else 3.0) * forward


def emit(**fields) -> None:
    """The one JSON line the driver parses."""
    fields["peak_rss_mb"] = round(peak_rss_mb(), 1)
    sys.stdout.write("RESULT " + json.dumps(fields) + "\n")
    sys.stdout.flush()
