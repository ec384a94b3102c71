"""Greedy decode tokens/s of the SmolLM2-135M-shaped decoder with the KV cache against full recomputation.

Random-init weights (the speed does not depend on them), fp32, a random prompt of ``PROMPT_LEN`` tokens,
``NEW_TOKENS`` new tokens, batch 1 / 8 / 32; target: the cache >= 5x faster at 128 new tokens.

- With cache: ``fiat_jax.models.decoding.generate`` (greedy, no EOS stop: one jitted prefill + decode loop),
  timed end to end (prefill included) after a compile run.
- Without cache: generating token ``i`` needs a forward over all ``PROMPT_LEN + i`` tokens. Running all 128 such
  forwards (128 shapes to compile, minutes each batch on 2 cores) would dominate ``make bench``, so the forward is
  timed at three lengths (first, middle, last step) and the 128 step times are summed from the piecewise-linear
  fit through them (the cost is linear in length plus a small quadratic attention term, so the fit slightly
  overestimates the middle steps: at most a few % in the cache's favour at these lengths; the timed points are in
  ``detail``).

python benchmarks/bench_decode.py [--quick]
"""

from __future__ import annotations

import pathlib
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import BenchResult  # noqa: E402

PROMPT_LEN = 32
NEW_TOKENS = 128
BATCHES = (1, 8, 32)
TARGET_SPEEDUP = 5.0


def _model():
    from fiat_jax.models import build_model
    from benchmarks.peers.fiat_step import decoder_config

    return build_model(config=decoder_config(), seed=0)


def _cached_fn(model, new_tokens: int):
    """``prompt [B, P] -> new tokens [B, N]`` (blocking): greedy ``decoding.generate`` with the KV cache, no EOS."""
    import numpy as np

    from fiat_jax.models import decoding

    def generate(prompt):
        return np.asarray(decoding.generate(model, prompt, max_new_tokens=new_tokens, temperature=0.0,
                                            eos_id=None).tokens)

    return generate


def _uncached_forward(model):
    """``(tokens [B, L], repeats) -> (seconds, next token [B])``: one full forward over all L tokens (no cache),
    compiled ahead of time so that no warm-up forward is needed (they are the slow half of this benchmark)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(model)

    @jax.jit
    def next_token(state, tokens):
        return jnp.argmax(nnx.merge(graphdef, state)(tokens)[:, -1], axis=-1)

    def time_one(tokens, repeats: int) -> tuple[float, Any]:
        compiled = next_token.lower(state, tokens).compile()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = compiled(state, tokens).block_until_ready()
            times.append(time.perf_counter() - start)
        return min(times), out

    return time_one


def _timed(fn, *args, repeats: int) -> tuple[float, Any]:
    fn(*args)  # compile + warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - start)
    return min(times), out


def uncached_total_s(step_s: dict[int, float], lengths: range) -> float:
    """Sum of per-step forward times over ``lengths``, linearly interpolated between the timed lengths."""
    import numpy as np

    xs = sorted(step_s)
    return float(np.interp(list(lengths), xs, [step_s[x] for x in xs]).sum())


def measure(model, batch: int, *, new_tokens: int, prompt_len: int, repeats: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(batch)
    vocab = model.config.vocab_size
    prompt = rng.integers(2, vocab, (batch, prompt_len), dtype=np.int32)
    cached = _cached_fn(model, new_tokens)
    cached_s, generated = _timed(cached, prompt, repeats=repeats)
    forward = _uncached_forward(model)
    lengths = range(prompt_len, prompt_len + new_tokens)
    points = sorted({lengths[0], lengths[len(lengths) // 2], lengths[-1]})
    step_s = {}
    first_token_matches = None
    for length in points:
        tokens = prompt if length == prompt_len else rng.integers(2, vocab, (batch, length), dtype=np.int32)
        step_s[length], next_token = forward(tokens, repeats)
        if length == prompt_len:  # the cached path must pick the token a full forward picks
            first_token_matches = bool((np.asarray(next_token) == generated[:, 0]).all())
    uncached_s = uncached_total_s(step_s, lengths)
    return {"batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens, "cached_s": round(cached_s, 3),
            "cached_tokens_per_s": round(batch * new_tokens / cached_s, 1),
            "uncached_s_estimated": round(uncached_s, 3),
            "uncached_tokens_per_s": round(batch * new_tokens / uncached_s, 1),
            "uncached_forward_s_at_length": {str(k): round(v, 4) for k, v in step_s.items()},
            "first_token_matches_full_forward": first_token_matches}


def run(*, quick: bool = False) -> list[BenchResult]:
    new_tokens = NEW_TOKENS  # the 5x target is stated at 128 new tokens, quick or not
    prompt_len = 16 if quick else PROMPT_LEN
    batches = (1, 8) if quick else BATCHES
    try:
        from fiat_jax.models import decoding  # noqa: F401
    except ImportError as err:
        print(f"  skipped: fiat_jax.models.decoding not importable ({err})", flush=True)
        return []
    model = _model()
    results = []
    for batch in batches:
        repeats = 1 if batch > 8 else 2
        m = measure(model, batch, new_tokens=new_tokens, prompt_len=prompt_len, repeats=repeats)
        print(f"  batch {batch}: {m}", flush=True)
        results.append(BenchResult(f"decode KV cache speed-up (SmolLM2-135M shape, batch {batch}, "
                                   f"{new_tokens} new tokens)", m["uncached_s_estimated"] / m["cached_s"], "x",
                                   target=TARGET_SPEEDUP, detail=m))
        results.append(BenchResult(f"decode tokens/s with KV cache (batch {batch})", m["cached_tokens_per_s"],
                                   "tok/s", detail={"without_cache_tok_per_s": m["uncached_tokens_per_s"]}))
    return results


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(r)
