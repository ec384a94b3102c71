"""A persistent, content-addressed teacher cache (sqlite, WAL) and :class:`CachedTeacher`, a cache in front of any
backend.

A key is the sha256 of the canonical JSON of everything that determines a reply: the request kind, the backend
identity (backend + model), the prompt and the decoding parameters. Every completed request is committed at once
(WAL, ``synchronous=NORMAL``: a committed row survives a killed process), so a killed run loses at most the
requests in flight, and a rerun asks the backend only for what is missing. Failures are never cached: a rerun
retries them. Lookups are batched (``get_many``): the hit path does tens of thousands of lookups per second.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import gin

from fiat_jax import run_dirs
from fiat_jax.errors import UserError
from fiat_jax.teachers import base

_log = logging.getLogger(__name__)
_CHUNK = 500  # keys per SELECT ... IN (...)
DEFAULT_PATH_ENV = "FIAT_TEACHER_CACHE"


def default_cache_path() -> pathlib.Path:
    """``$FIAT_TEACHER_CACHE`` or ``~/.cache/fiat_jax/teacher_cache.sqlite``."""
    env = os.environ.get(DEFAULT_PATH_ENV)
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "fiat_jax" / \
        "teacher_cache.sqlite"


def request_key(kind: str, identity: str, prompt: str, params: Mapping[str, Any]) -> str:
    """The content address of one request (sha256 hex of its canonical JSON)."""
    blob = json.dumps({"kind": kind, "identity": identity, "prompt": prompt, "params": dict(params)},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class TeacherCache:
    """``key -> JSON value`` in one sqlite file; safe to share between threads and processes."""

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path).expanduser()
        run_dirs.check_writable_dir(self.path.parent, what="teacher cache directory")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path), timeout=60.0, check_same_thread=False,
                                         isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, identity TEXT NOT NULL, "
                "kind TEXT NOT NULL, value TEXT NOT NULL, created REAL NOT NULL) WITHOUT ROWID")
        except sqlite3.DatabaseError as err:
            raise UserError(f"teacher cache {self.path}: cannot open ({err}); delete it or choose another path")
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TeacherCache({str(self.path)!r})"

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """``{key: value}`` for the keys present (absent keys are simply missing)."""
        out: dict[str, Any] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            for start in range(0, len(unique), _CHUNK):
                part = unique[start:start + _CHUNK]
                rows = self._conn.execute(
                    f"SELECT key, value FROM entries WHERE key IN ({','.join('?' * len(part))})", part).fetchall()
                for key, value in rows:
                    out[key] = json.loads(value)
        return out

    def get(self, key: str) -> Any | None:
        return self.get_many([key]).get(key)

    def put(self, key: str, value: Any, *, identity: str, kind: str) -> None:
        """Store and commit at once (one transaction per completed request)."""
        blob = json.dumps(value, ensure_ascii=False)
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO entries (key, identity, kind, value, created) "
                               "VALUES (?, ?, ?, ?, ?)", (key, identity, kind, blob, time.time()))

    def put_many(self, items: Iterable[tuple[str, Any]], *, identity: str, kind: str) -> None:
        now = time.time()
        rows = [(k, identity, kind, json.dumps(v, ensure_ascii=False), now) for k, v in items]
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.executemany("INSERT OR REPLACE INTO entries (key, identity, kind, value, created) "
                                   "VALUES (?, ?, ?, ?, ?)", rows)
            self._conn.execute("COMMIT")

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def integrity_ok(self) -> bool:
        with self._lock:
            return self._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class CachedTeacher:
    """Any teacher with the cache in front: hits are answered from disk, misses asked of ``backend`` (each
    committed to the cache as it completes). Identical prompts in one call are asked once."""

    def __init__(self, backend: Any, cache: TeacherCache):
        self.backend = backend
        self.cache = cache
        self.hits = 0
        self.misses = 0
        self._checked = False

    def __repr__(self) -> str:
        return f"CachedTeacher({self.backend!r}, {self.cache!r})"

    @property
    def identity(self) -> str:
        return str(self.backend.identity)

    def _ensure_checked(self) -> None:
        """The backend's pre-flight check (server reachable, model known), once, and only when there is a miss."""
        if not self._checked:
            check = getattr(self.backend, "check", None)
            if check is not None:
                check()
            self._checked = True

    def generate_keys(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                      stop: Sequence[str] = ()) -> list[str]:
        params = {"max_new_tokens": int(max_new_tokens), "temperature": float(temperature),
                  "stop": list(base.check_stop(stop))}
        return [request_key("generate", self.identity, p, params) for p in prompts]

    def missing(self, prompts: Sequence[str], **decoding: Any) -> list[int]:
        """Indices of the prompts not in the cache."""
        keys = self.generate_keys(prompts, **decoding)
        found = self.cache.get_many(keys)
        return [i for i, k in enumerate(keys) if k not in found]

    def generate_stream(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                        stop: Sequence[str] = ()) -> Iterator[tuple[int, str | base.Failure]]:
        stop = base.check_request(max_new_tokens, temperature, stop)
        keys = self.generate_keys(prompts, max_new_tokens=max_new_tokens, temperature=temperature, stop=stop)
        found = self.cache.get_many(keys)
        owners: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            if k not in found:
                owners.setdefault(k, []).append(i)
        if owners:
            self._ensure_checked()  # before anything is yielded: a bad server fails before any work
        for i, k in enumerate(keys):
            if k in found:
                self.hits += 1
                yield i, found[k]
        miss_keys = list(owners)
        miss_prompts = [prompts[owners[k][0]] for k in miss_keys]
        for j, res in base.stream(self.backend, miss_prompts, max_new_tokens=max_new_tokens,
                                  temperature=temperature, stop=stop):
            self.misses += 1
            if not isinstance(res, base.Failure):
                self.cache.put(miss_keys[j], res, identity=self.identity, kind="generate")
            for i in owners[miss_keys[j]]:
                yield i, res

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                 stop: Sequence[str] = ()) -> list[str]:
        return base.collect(self.generate_stream(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                                                 stop=stop), len(prompts), what=self.identity)

    def score(self, prompt: str, options: Sequence[str]) -> list[float]:
        key = request_key("score", self.identity, prompt, {"options": list(options)})
        hit = self.cache.get(key)
        if hit is not None:
            self.hits += 1
            return [float(x) for x in hit]
        self._ensure_checked()
        out = [float(x) for x in self.backend.score(prompt, options)]
        self.misses += 1
        self.cache.put(key, out, identity=self.identity, kind="score")
        return out

    def check(self) -> None:
        self._ensure_checked()


_CACHES: dict[str, TeacherCache] = {}
_CACHES_LOCK = threading.Lock()


def open_cache(path: str | os.PathLike | None = None) -> TeacherCache:
    """The process-wide :class:`TeacherCache` of ``path`` (default :func:`default_cache_path`)."""
    resolved = str(pathlib.Path(path).expanduser().resolve() if path else default_cache_path())
    with _CACHES_LOCK:
        if resolved not in _CACHES:
            _CACHES[resolved] = TeacherCache(resolved)
        return _CACHES[resolved]


@gin.configurable
def cached_teacher(*, backend: Any, path: str | None = None) -> CachedTeacher:
    """``teach.teacher = @cached_teacher()``: ``backend`` behind the persistent cache at ``path`` (default
    ``$FIAT_TEACHER_CACHE`` or ``~/.cache/fiat_jax/teacher_cache.sqlite``)."""
    if backend is None:
        raise UserError("cached_teacher: no backend (bind cached_teacher.backend = @local_teacher() or "
                        "@openai_compat_teacher())")
    return CachedTeacher(backend, open_cache(path))
