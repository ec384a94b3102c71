"""PyTorch + transformers + peft student LoRA training on FIAT rows, the way its users do it: batches of rows
padded to the longest row in the batch (DataCollatorForSeq2Seq-style, right padding), labels -100 on the inputs
and the padding, and the model's own loss over its full logits.

python benchmarks/peers/workload_torch.py --arch decoder|t5 --rows ROWS.json --steps N --batch B
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from benchmarks.peers.common import (LORA_ALPHA, LORA_RANK, LORA_TARGETS, emit, torch_smollm2,  # noqa: E402
                                     workload_args)

T5_VOCAB = 32128


def build(arch: str):
    from transformers import T5Config, T5ForConditionalGeneration

    if arch == "decoder":
        return torch_smollm2(), list(LORA_TARGETS)
    config = T5Config(vocab_size=T5_VOCAB, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8,
                      num_heads=6, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                      decoder_start_token_id=0, pad_token_id=0)
    return T5ForConditionalGeneration(config).float(), ["q", "k", "v", "o"]


def collate(rows, arch: str):
    """Pad to the longest in the batch; ``(model kwargs, useful tokens)``."""
    import torch

    if arch == "decoder":
        seqs = [a + b for a, b in rows]
        width = max(map(len, seqs))
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, ((a, b), s) in enumerate(zip(rows, seqs)):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
            labels[i, len(a):len(s)] = torch.tensor(b)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}, sum(map(len, seqs))
    rows = [([1 + i % (T5_VOCAB - 1) for i in a], [1 + i % (T5_VOCAB - 1) for i in b]) for a, b in rows]
    wi, wt = max(len(a) for a, _ in rows), max(len(b) for _, b in rows)
    ids = torch.zeros((len(rows), wi), dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full((len(rows), wt), -100, dtype=torch.long)
    for i, (a, b) in enumerate(rows):
        ids[i, :len(a)] = torch.tensor(a)
        mask[i, :len(a)] = 1
        labels[i, :len(b)] = torch.tensor(b)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}, sum(len(a) + len(b) for a, b in rows)


def main() -> None:
    args = workload_args()

    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    rows = json.loads(pathlib.Path(args.rows).read_text())
    model, targets = build(args.arch)
    model = get_peft_model(model, LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                             target_modules=targets))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    batches = [collate(rows[i:i + args.batch], args.arch) for i in range(0, len(rows) - args.batch + 1, args.batch)]

    def step(kwargs):
        optimizer.zero_grad(set_to_none=True)
        loss = model(**kwargs).loss
        loss.backward()
        optimizer.step()
        return float(loss)

    start = time.perf_counter()
    step(batches[0][0])  # warm-up: allocations, lazy init
    first_s = time.perf_counter() - start
    times, useful = [], []
    for kwargs, n in batches[1:args.steps + 1]:
        start = time.perf_counter()
        loss = step(kwargs)
        times.append(time.perf_counter() - start)
        useful.append(n)
    emit(peer="torch+peft", arch=args.arch, step_s=sum(times) / len(times),
         useful_tokens_per_s=sum(useful) / sum(times), useful_per_step=sum(useful) / len(useful),
         first_step_s=first_s, loss=loss, threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
