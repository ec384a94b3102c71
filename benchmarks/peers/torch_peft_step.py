"""PyTorch + HF transformers + peft train step on the SmolLM2-135M shape (CPU, fp32).

python benchmarks/peers/torch_peft_step.py --mode lora|full [--steps 3]
"""

from __future__ import annotations

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from benchmarks.peers.common import (BATCH, LORA_ALPHA, LORA_RANK, LORA_TARGETS, SMOLLM2_135M,  # noqa: E402
                                     emit, step_args, torch_smollm2)


def main() -> None:
    args = step_args()

    import torch

    torch.manual_seed(0)
    s = SMOLLM2_135M
    model = torch_smollm2()
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
