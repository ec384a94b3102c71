"""FIAT student rows for the workload benchmark: real XCOPA and MGSM items with teacher-style reasoning.

Inputs are the FIAT student input (``fiat_input``: instruction, input, reasoning, answer header) and targets the
short answers ("1"/"2" for XCOPA, the number for MGSM), so the loss falls on a few tokens after a long input.
The reasoning is not a live teacher's (no teacher runs in a benchmark): MGSM rows carry the published
chain-of-thought exemplars of their language (``mgsm/exemplars.json``, real step-by-step answers, cycled over
the questions); XCOPA rows carry a *simulated* reasoning written from the item's own premise and options, of the
length of a short teacher rationale. Tokenised with the embedded SmolLM2 tokenizer (both peers train on the very
same token ids), truncated like ``gin_configs/runs/fiat_mgsm.gin`` (inputs 512, targets 16).
"""

from __future__ import annotations

import csv
import json
import pathlib

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
INPUTS_LEN, TARGETS_LEN = 512, 16
XCOPA_LANGS = ("et", "ht", "id", "it", "qu", "sw", "ta", "th", "tr", "vi", "zh")
MGSM_LANGS = ("bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")
XCOPA_INSTRUCTION = "Pick the more plausible cause or effect of the premise. Answer 1 or 2."
MGSM_INSTRUCTION = "Solve the grade-school math problem. Answer with the number only."


def _xcopa_reasoning(ex: dict) -> str:
    """A simulated rationale (no teacher ran): restates the item and argues for the labelled option."""
    rel = "cause" if ex["question"] == "cause" else "effect"
    right = ex["choice1"] if ex["label"] == 0 else ex["choice2"]
    wrong = ex["choice2"] if ex["label"] == 0 else ex["choice1"]
    return (f"The premise is: {ex['premise']} We need its most likely {rel}. Option 1 says: {ex['choice1']} "
            f"Option 2 says: {ex['choice2']} If we consider everyday situations, \"{right}\" is a natural {rel} "
            f"of this premise, while \"{wrong}\" is not directly connected to it. So option {ex['label'] + 1} is "
            f"the more plausible {rel}.")


def raw_rows(data_dir: pathlib.Path = DATA) -> list[dict[str, str]]:
    """``[{"inputs", "targets"}]``: XCOPA (validation + test of every language) and MGSM (every language),
    interleaved so any prefix has both tasks' length mix."""
    from fiat_jax.data.preprocessors import fiat_input

    xcopa, mgsm = [], []
    for lang in XCOPA_LANGS:
        for split in ("val", "test"):
            for line in (data_dir / "xcopa" / f"{split}.{lang}.jsonl").read_text().splitlines():
                ex = json.loads(line)
                what = "What was the cause?" if ex["question"] == "cause" else "What happened as a result?"
                text = (f"Premise: {ex['premise']}\n{what}\nOption 1: {ex['choice1']}\n"
                        f"Option 2: {ex['choice2']}")
                xcopa.append({"inputs": fiat_input(XCOPA_INSTRUCTION, text, _xcopa_reasoning(ex)),
                              "targets": str(ex["label"] + 1)})
    exemplars = json.loads((data_dir / "mgsm" / "exemplars.json").read_text())["MGSM_EXEMPLARS"]
    for lang in MGSM_LANGS:
        cots = [v["a"] for _, v in sorted(exemplars[lang].items(), key=lambda kv: int(kv[0]))]
        with open(data_dir / "mgsm" / f"mgsm_{lang}.tsv", newline="") as f:
            for i, (question, answer) in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)):
                mgsm.append({"inputs": fiat_input(MGSM_INSTRUCTION, question, cots[i % len(cots)]),
                             "targets": answer})
    out = []
    for i in range(max(len(xcopa), len(mgsm))):
        out.extend(r[i] for r in (xcopa, mgsm) if i < len(r))
    return out


def token_rows(n: int, *, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """``n`` rows as ``(input ids, target ids + EOS)``, shuffled with ``seed``, truncated to the benchmark lengths."""
    import random

    from fiat_jax.models import embedded, vocabularies

    vocab = vocabularies.gguf_vocabulary(embedded.embedded_gguf_path())
    rows = raw_rows()
    random.Random(seed).shuffle(rows)
    out = []
    for r in rows[:n]:
        inp = list(vocab.encode(r["inputs"]))[:INPUTS_LEN]
        tgt = (list(vocab.encode(r["targets"]))[:TARGETS_LEN - 1]) + [int(vocab.eos_id)]
        out.append((inp, tgt))
    return out
