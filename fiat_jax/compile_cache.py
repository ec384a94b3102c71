"""Compile once per shape, across processes: JAX's persistent compilation cache, on by default, and counters.

A sweep runs many short processes with the same programs; XLA compiles dominate them unless compiled
executables are kept on disk. :func:`configure` points JAX's persistent cache at ``~/.cache/fiat_jax/jax_cache``
(``$XDG_CACHE_HOME`` honoured), or at ``$FIAT_JAX_COMPILE_CACHE`` / the gin binding
``compile_cache.configure.cache_dir``; ``FIAT_JAX_COMPILE_CACHE=off`` or ``--compile_cache=off`` (CLI) or
``compile_cache.configure.enabled = False`` turns it off. Every compile is cached (JAX's default skips those under
a second, which on a laptop is most of ours).

:class:`CompileStats` counts what XLA did, from ``jax.monitoring`` events: compile requests, persistent-cache hits
(a hit is a load, not a compile) and the seconds spent, so each run can report its compile share.

Nothing happens at import, and JAX is imported only when a function here is called.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import pathlib
import sys
import threading

import gin

from fiat_jax.errors import UserError

ENV_VAR = "FIAT_JAX_COMPILE_CACHE"
_OFF = ("0", "off", "false", "no", "none", "")
_log = logging.getLogger(__name__)

# The jax.monitoring events counted (jax 0.10: jax/_src/dispatch.py, compiler.py, compilation_cache.py).
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # every XLA compile request, hit or miss
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
CACHE_MISS_EVENT = "/jax/compilation_cache/cache_misses"
TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
LOWER_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"


def default_cache_dir() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "fiat_jax" / "jax_cache"


# Per jax.monitoring event name: how often it fired, and (key "<event> s") the seconds it reported.
_TOTALS: collections.Counter[str] = collections.Counter()
_LOCK = threading.Lock()
_listening = False
_configured: pathlib.Path | None | bool = False  # False: not yet; None: off; a path: on


def _on_event(event: str, **_kwargs) -> None:
    with _LOCK:
        _TOTALS[event] += 1


def _on_duration(event: str, seconds: float, **_kwargs) -> None:
    with _LOCK:
        _TOTALS[event] += 1
        _TOTALS[f"{event} s"] += seconds


def install_listeners() -> None:
    """Register the monitoring listeners once per process (idempotent)."""
    global _listening
    with _LOCK:
        if _listening:
            return
        _listening = True
    from jax import monitoring  # lazy: the CLI configures the cache before (and without) importing JAX

    monitoring.register_event_listener(_on_event)
    monitoring.register_event_duration_secs_listener(_on_duration)


@dataclasses.dataclass(frozen=True)
class CompileStats:
    """Compile work between :meth:`start` and :meth:`since`: ``compiles`` are real XLA compiles (not cache loads)."""

    requests: int
    cache_hits: int
    compiles: int
    compile_s: float  # backend compile time, cache loads included
    trace_s: float
    lower_s: float

    @staticmethod
    def start() -> collections.Counter[str]:
        install_listeners()
        with _LOCK:
            return collections.Counter(_TOTALS)

    @classmethod
    def since(cls, start: collections.Counter[str]) -> "CompileStats":
        with _LOCK:
            delta = collections.Counter({key: value - start[key] for key, value in _TOTALS.items()})
        requests, hits = int(delta[BACKEND_COMPILE_EVENT]), int(delta[CACHE_HIT_EVENT])
        return cls(requests=requests, cache_hits=hits, compiles=requests - hits,
                   compile_s=delta[f"{BACKEND_COMPILE_EVENT} s"], trace_s=delta[f"{TRACE_EVENT} s"],
                   lower_s=delta[f"{LOWER_EVENT} s"])

    def metrics(self, wall_s: float, prefix: str = "compile/") -> dict[str, float]:
        """Flat metrics for a run's results: counts, seconds and the share of ``wall_s`` spent compiling."""
        total = self.compile_s + self.trace_s + self.lower_s
        return {f"{prefix}requests": float(self.requests), f"{prefix}cache_hits": float(self.cache_hits),
                f"{prefix}compiles": float(self.compiles), f"{prefix}backend_s": self.compile_s,
                f"{prefix}trace_lower_s": self.trace_s + self.lower_s,
                f"{prefix}share": total / wall_s if wall_s > 0 else 0.0}


def _resolve(enabled: bool, cache_dir: str | os.PathLike | None) -> pathlib.Path | None:
    env = os.environ.get(ENV_VAR)
    if not enabled:
        return None
    if cache_dir is not None:
        value = str(cache_dir)
    elif env is not None:
        value = env
    else:
        return default_cache_dir()
    if value.strip().lower() in _OFF:
        return None
    return pathlib.Path(value).expanduser()


@gin.configurable(module="compile_cache")
def configure(*, enabled: bool = True, cache_dir: str | None = None, min_compile_time_s: float = 0.0) -> \
        pathlib.Path | None:
    """Turn JAX's persistent compilation cache on (default) or off for this process; returns the directory.

    ``cache_dir`` (gin) wins over ``$FIAT_JAX_COMPILE_CACHE``, which wins over the default; "off" in either
    disables it. Call before the first compile: JAX reads the setting when it first compiles.
    """
    global _configured
    path = _resolve(enabled, cache_dir)
    if path is not None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"compile cache directory {path} cannot be created: {err}") from err
        settings = {"jax_enable_compilation_cache": True, "jax_compilation_cache_dir": str(path),
                    "jax_persistent_cache_min_compile_time_secs": float(min_compile_time_s),
                    "jax_persistent_cache_min_entry_size_bytes": 0}
    else:
        settings = {"jax_enable_compilation_cache": False}
    if "jax" in sys.modules:
        import jax  # lazy: only when JAX is already imported (else the environment carries the settings)

        for name, value in settings.items():
            jax.config.update(name, value)
    else:  # JAX reads these when it is imported: the CLI need not import it to configure it
        for name, value in settings.items():
            os.environ[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    _configured = path
    _log.debug("persistent compilation cache: %s", path or "off")
    return path


def ensure_configured() -> pathlib.Path | None:
    """:func:`configure` with its gin bindings unless this process already configured the cache."""
    if _configured is False:
        return configure()
    return _configured  # type: ignore[return-value]
