"""What every peer step script shares: the SmolLM2-135M shape, the batch, and the JSON line it prints."""

from __future__ import annotations

import argparse
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


def step_args(*extra: tuple[str, dict]) -> argparse.Namespace:
    """The synthetic-step scripts' CLI: ``--mode lora|full --steps N --seq_len T`` (+ ``extra`` flags)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["lora", "full"], required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seq_len", type=int, default=SEQ_LEN)
    for flag, kwargs in extra:
        parser.add_argument(flag, **kwargs)
    return parser.parse_args()


def workload_args(*extra: tuple[str, dict]) -> argparse.Namespace:
    """The FIAT-row workload scripts' CLI: ``--arch decoder|t5 --rows ROWS.json --steps N --batch B`` (+ ``extra``)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", choices=["decoder", "t5"], required=True)
    parser.add_argument("--rows", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    for flag, kwargs in extra:
        parser.add_argument(flag, **kwargs)
    return parser.parse_args()


def torch_smollm2():
    """HF transformers' Llama with the SmolLM2-135M shape, random init, fp32, SDPA attention (torch peers only)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    s = SMOLLM2_135M
    config = LlamaConfig(vocab_size=s["vocab_size"], hidden_size=s["d_model"], num_hidden_layers=s["n_layers"],
                         num_attention_heads=s["n_heads"], num_key_value_heads=s["n_kv_heads"],
                         head_dim=s["head_dim"], intermediate_size=s["mlp_dim"], rope_theta=s["rope_theta"],
                         rms_norm_eps=s["rms_norm_eps"], tie_word_embeddings=s["tie_embeddings"],
                         max_position_embeddings=2048, attn_implementation="sdpa")
    return LlamaForCausalLM(config).float()
