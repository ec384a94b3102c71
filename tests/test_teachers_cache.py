"""The persistent teacher cache and CachedTeacher: content addressing, WAL, commit per request, batch lookups
fast enough (>= 10k/s on the hit path), reruns asking only for what is missing, failures never cached."""
from __future__ import annotations

import sqlite3
import time

import pytest

from fiat_jax.teachers.base import Failure, TeacherError
from fiat_jax.teachers.cache import CachedTeacher, TeacherCache, request_key


class CountingTeacher:
    identity = "counting/v1"

    def __init__(self, fail=()):
        self.asked: list[str] = []
        self.fail = set(fail)
        self.checked = 0

    def check(self):
        self.checked += 1

    def generate_stream(self, prompts, *, max_new_tokens, temperature=0.0, stop=()):
        for i, p in enumerate(prompts):
            self.asked.append(p)
            yield i, (Failure("nope") if p in self.fail else f"<{p}|{max_new_tokens}>")

    def score(self, prompt, options):
        self.asked.append(prompt)
        return [-float(len(o)) for o in options]


def test_keys_cover_identity_prompt_and_decoding():
    k = request_key("generate", "a", "p", {"max_new_tokens": 4})
    assert len(k) == 64
    assert k == request_key("generate", "a", "p", {"max_new_tokens": 4})
    assert len({k, request_key("generate", "b", "p", {"max_new_tokens": 4}),
                request_key("generate", "a", "q", {"max_new_tokens": 4}),
                request_key("generate", "a", "p", {"max_new_tokens": 5}),
                request_key("score", "a", "p", {"max_new_tokens": 4})}) == 5


def test_rerun_asks_only_for_the_missing_and_never_caches_failures(tmp_path):
    path = tmp_path / "c.sqlite"
    backend = CountingTeacher(fail={"p3"})
    teacher = CachedTeacher(backend, TeacherCache(path))
    assert teacher.identity == "counting/v1"
    with pytest.raises(TeacherError, match="1 of 4 prompts failed.*prompt 3: nope"):
        teacher.generate(["p0", "p1", "p1", "p3"], max_new_tokens=3)
    assert backend.asked == ["p0", "p1", "p3"]  # the repeated prompt asked once
    # A new process (new cache object on the same file): only the failed and the new prompts are asked.
    backend2 = CountingTeacher()
    teacher2 = CachedTeacher(backend2, TeacherCache(path))
    assert teacher2.generate(["p0", "p1", "p3", "p4"], max_new_tokens=3) == ["<p0|3>", "<p1|3>", "<p3|3>", "<p4|3>"]
    assert backend2.asked == ["p3", "p4"] and backend2.checked == 1
    backend3 = CountingTeacher()
    teacher3 = CachedTeacher(backend3, TeacherCache(path))
    assert teacher3.generate(["p4", "p0"], max_new_tokens=3) == ["<p4|3>", "<p0|3>"]
    assert backend3.asked == [] and backend3.checked == 0  # all hits: no pre-flight, no request
    assert teacher3.generate(["p0"], max_new_tokens=4) == ["<p0|4>"]  # other decoding: a miss
    assert teacher3.score("q", ["a", "bb"]) == teacher3.score("q", ["a", "bb"]) == [-1.0, -2.0]
    assert backend3.asked == ["p0", "q"]


def test_each_result_is_committed_as_it_completes(tmp_path):
    path = tmp_path / "c.sqlite"
    teacher = CachedTeacher(CountingTeacher(), TeacherCache(path))
    stream = teacher.generate_stream(["a", "b", "c"], max_new_tokens=2)
    next(stream)
    next(stream)  # stopped (as if killed) after two results
    conn = sqlite3.connect(str(path))  # another connection sees both committed rows
    assert conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 2
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_hit_path_does_at_least_10k_lookups_per_second(tmp_path):
    cache = TeacherCache(tmp_path / "c.sqlite")
    teacher = CachedTeacher(CountingTeacher(), cache)
    prompts = [f"prompt number {i} " * 8 for i in range(5000)]
    keys = teacher.generate_keys(prompts, max_new_tokens=8)
    cache.put_many([(k, f"out {i}") for i, k in enumerate(keys)], identity=teacher.identity, kind="generate")
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        out = teacher.generate(prompts, max_new_tokens=8)
        best = max(best, len(prompts) / (time.perf_counter() - start))
    assert out[123] == "out 123"
    assert best >= 10_000, f"{best:.0f} lookups/s"
