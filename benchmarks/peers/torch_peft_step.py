"""PyTorch + HF transformers + peft train step on the SmolLM2-135M shape (CPU, fp32).

python benchmarks/peers/torch_peft_step.py --mode lora|full [--steps 3]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from benchmarks.peers.common import (BATCH, LORA_ALPHA, LORA_RANK, LORA_TARGETS, SEQ_LEN, SMOLLM2_135M,  # noqa: E402
                                     emit)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["lora", "full"], required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seq_len", type=int, default=SEQ_LEN)
    args = parser.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    s = SMOLLM2_135M
    config = LlamaConfig(vocab_size=s["vocab_size"], hidden_size=s["d_model"], num_hidden_layers=s["n_layers"],
                         num_attention_heads=s["n_heads"], num_key_value_heads=s["n_kv_heads"],
                         head_dim=s["head_dim"], intermediate_size=s["mlp_dim"], rope_theta=s["rope_theta"],
                         rms_norm_eps=s["rms_norm_eps"], tie_word_embeddings=s["tie_embeddings"],
                         max_position_embeddings=2048, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).float()
    if args.mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                                 target_modules=list(LORA_TARGETS)))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    tokens = torch.randint(0, s["vocab_size"], (BATCH, args.seq_len))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        return float(loss)

    step()  # warm-up: allocations, lazy init
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    emit(peer="torch+peft", mode=args.mode, step_s=sorted(times)[len(times) // 2], min_s=min(times),
         max_s=max(times), threads=torch.get_num_threads(), trainable=sum(p.numel() for p in params))


if __name__ == "__main__":
    main()
