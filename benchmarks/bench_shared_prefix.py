"""ICL with the documents in context (augmented fine-tuning's baseline): scoring every probe option after the same
long document, with the document run once into a KV cache that every option attends to, against the full pass
that recomputes the document for every option (``methods.student.score_rows`` either way).

Workload: the embedded SmolLM2-135M-Instruct and its tokenizer, one synthetic-facts world of the evidence set-up
(one document of 46 facts, about 600 tokens), ``--items`` of its probe items x 4 options, batch 16. Both paths in
this process, after one warm-up call each (compiles excluded); the scores must agree (printed max difference).

python benchmarks/bench_shared_prefix.py [--quick] [--items 4]
"""

from __future__ import annotations

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import BenchResult  # noqa: E402

TARGET = 5.0  # not an issue target: the document is ~25x the option's length, so less than 5x means a regression


def measure(*, items: int, facts: int) -> dict:
    import gin
    import numpy as np

    from fiat_jax.data import synthetic, vocab as vocab_lib
    from fiat_jax.methods import augmentation, student
    from fiat_jax.models import embedded

    pretrained = embedded.load_embedded()
    gin.parse_config("get_vocabulary.vocabulary = @checkpoint_vocabulary()")  # the student's own tokenizer
    assert vocab_lib.get_vocabulary() is pretrained.vocabulary
    model = pretrained.build_model()
    world = synthetic.generate(seed=0, languages=("en",), facts_per_document=facts)
    context = " ".join(d["text"] for d in world.documents)
    rows = augmentation.mc_rows(world.items[:items], context=context)
    n_context = len(pretrained.vocabulary.encode(context))
    lengths = {"inputs": 1024, "targets": 32}

    def full():
        saved = student._score_with_shared_prefix
        student._score_with_shared_prefix = lambda *a, **k: None
        try:
            return student.score_rows(model, rows, task_feature_lengths=lengths, batch_size=16)
        finally:
            student._score_with_shared_prefix = saved

    def shared():
        return student.score_rows(model, rows, task_feature_lengths=lengths, batch_size=16)

    out = {"rows": len(rows), "context_tokens": n_context}
    for name, fn in (("shared", shared), ("full", full)):
        fn()  # compile + warm up
        start = time.perf_counter()
        out[f"{name}_scores"] = fn()
        out[f"{name}_s"] = time.perf_counter() - start
    out["max_abs_diff"] = float(np.max(np.abs(np.asarray(out["shared_scores"]) - np.asarray(out["full_scores"]))))
    return out


def run(*, quick: bool = False, items: int | None = None) -> list[BenchResult]:
    r = measure(items=items or (2 if quick else 4), facts=12 if quick else 46)
    print(f"  {r['rows']} options after a {r['context_tokens']}-token document: shared prefix {r['shared_s']:.1f} s, "
          f"full pass {r['full_s']:.1f} s; max score difference {r['max_abs_diff']:.2g}", flush=True)
    detail = {k: v for k, v in r.items() if not k.endswith("_scores")}
    return [BenchResult("ICL scoring with the document in context: shared-prefix speed-up over the full pass",
                        r["full_s"] / r["shared_s"], "x", target=TARGET, detail=detail)]


if __name__ == "__main__":
    argv = sys.argv[1:]
    n = int(argv[argv.index("--items") + 1]) if "--items" in argv else None
    for res in run(quick="--quick" in argv, items=n):
        print(f"{res.name}: {res.value:.3g} {res.unit} {res.detail}")
