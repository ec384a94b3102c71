"""Teacher throughput: the local teacher's generated tokens/s (the embedded SmolLM2-135M-Instruct, greedy, chat
template, KV cache) at batch 1 / 8 / 32, and the teacher cache's hit path in lookups/s (target >= 10k/s).

Tokens/s counts the tokens the teacher returns (EOS excluded) over the wall time of ``generate`` on prompts that
ask for long answers, after one untimed call with the same shapes (compilation). The cache figure is
``CachedTeacher.generate`` over prompts that are all in the sqlite cache (key hashing + batched SELECTs + JSON).

python benchmarks/bench_teachers.py [--quick]
"""

from __future__ import annotations

import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import BenchResult  # noqa: E402

BATCHES = (1, 8, 32)
CACHE_TARGET = 10_000.0
TOPICS = ("a lighthouse keeper", "a lost robot", "the first rain of spring", "a chess game", "a city at night",
          "an old map", "a friendly dragon", "the deep sea")


def _prompts(n: int) -> list[str]:
    return [f"Write a short story about {TOPICS[i % len(TOPICS)]} (story {i})." for i in range(n)]


def local_tokens_per_s(batch: int, *, new_tokens: int) -> dict:
    from fiat_jax.teachers.local import LocalTeacher

    teacher = LocalTeacher(batch_size=batch)
    prompts = _prompts(max(batch, 2))
    teacher.generate(prompts, max_new_tokens=new_tokens)  # compile
    teacher.generated_tokens = 0
    start = time.perf_counter()
    teacher.generate(prompts, max_new_tokens=new_tokens)
    seconds = time.perf_counter() - start
    return {"tokens": teacher.generated_tokens, "seconds": seconds, "prompts": len(prompts),
            "tokens_per_s": teacher.generated_tokens / seconds}


def cache_lookups_per_s(n: int) -> dict:
    from fiat_jax.teachers.cache import CachedTeacher, TeacherCache

    class Never:
        identity = "bench/never"

        def generate(self, prompts, **_):
            raise AssertionError("the hit path must not reach the backend")

    with tempfile.TemporaryDirectory() as tmp:
        cache = TeacherCache(pathlib.Path(tmp) / "cache.sqlite")
        teacher = CachedTeacher(Never(), cache)
        prompts = [f"Question {i}: " + "some words of context " * 20 for i in range(n)]
        keys = teacher.generate_keys(prompts, max_new_tokens=128)
        cache.put_many([(k, f"reasoning {i} " * 20) for i, k in enumerate(keys)], identity=teacher.identity,
                       kind="generate")
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            teacher.generate(prompts, max_new_tokens=128)
            best = min(best, time.perf_counter() - start)
        cache.close()
    return {"lookups": n, "seconds": best, "lookups_per_s": n / best}


def run(*, quick: bool = False) -> list[BenchResult]:
    results = []
    c = cache_lookups_per_s(5_000 if quick else 50_000)
    print(f"  cache hit path: {c}", flush=True)
    results.append(BenchResult("teacher cache lookups/s (hit path, batched)", c["lookups_per_s"], "lookups/s",
                               target=CACHE_TARGET, detail=c))
    new_tokens = 16 if quick else 64
    for batch in ((1, 8) if quick else BATCHES):
        m = local_tokens_per_s(batch, new_tokens=new_tokens)
        print(f"  local teacher batch {batch}: {m}", flush=True)
        results.append(BenchResult(f"local teacher generated tokens/s (SmolLM2-135M, batch {batch}, "
                                   f"{new_tokens} new tokens)", m["tokens_per_s"], "tok/s", detail=m))
    return results


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(r)
