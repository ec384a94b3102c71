"""``fiat run``: run one method end to end (``run.method``) or several side by side (``run.methods``, the
quickstart's ICL vs fine-tuning vs FIAT), then print a table of their held-out metrics.

    fiat run --gin_file=methods/fiat.gin --gin.MIXTURE_OR_TASK_NAME="'mgsm_sw'" --gin.MODEL_DIR=/tmp/fiat/run
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import gin

from fiat_jax import gin_utils, partitioning
from fiat_jax.errors import UserError
from fiat_jax.methods import intervals
from fiat_jax.methods import results as results_lib
from fiat_jax.models import embedded

_log = logging.getLogger(__name__)
Method = Callable[..., Mapping[str, Mapping[str, float]]]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_").lower() or "method"


@gin.configurable
def run(*, model_dir: str, method: Method | None = None, methods: Mapping[str, Method] | None = None,
        register_tasks: Callable[[], Any] | None = None, metric: str | None = None,
        print_table: bool = True) -> dict[str, dict[str, dict[str, float]]]:
    """Run ``method`` in ``model_dir`` or each of ``methods`` in ``model_dir/<name>``; returns
    ``{method: {task: {metric: value}}}`` and writes ``model_dir/comparison.md`` for several methods."""

    if (method is None) == (methods is None):
        raise UserError("fiat run: bind exactly one of run.method (one method) or run.methods (a comparison)")
    partitioning.initialize_distributed()
    os.makedirs(model_dir, exist_ok=True)
    if register_tasks is not None:
        register_tasks()
    plan = {"run": method} if method is not None else dict(methods)
    out: dict[str, dict[str, dict[str, float]]] = {}
    items: dict[str, dict[str, Any]] = {}  # per-item scores, for each mean's interval
    started = time.perf_counter()
    for i, (name, fn) in enumerate(plan.items()):
        where = model_dir if method is not None else os.path.join(model_dir, _slug(name))
        _log.info("[%d/%d] %s -> %s", i + 1, len(plan), name, where)
        t0 = time.perf_counter()
        out[name] = dict(fn(model_dir=where))
        items[name] = results_lib.item_scores(where, out[name])
        _log.info("[%d/%d] %s done in %.0f s: %s", i + 1, len(plan), name, time.perf_counter() - t0,
                  results_lib.language_average(out[name]))
    gin_utils.write_operative_config(model_dir)
    wall = time.perf_counter() - started
    if methods is not None:
        table = intervals.interval_table(out, items, metric=metric)
        with open(os.path.join(model_dir, "comparison.md"), "w") as fh:
            fh.write(table + f"\n\nwall time {wall:.0f} s\n")
        if print_table:
            print(f"\nHeld-out results ({model_dir}):\n{table}\nwall time {wall:.0f} s", flush=True)
    elif print_table:
        print(results_lib.comparison_table(out, metric=metric), flush=True)
    return out


@gin.configurable
def register_tasks_and_mixture(*, register: Callable[[], Any] | None = None, name: str | None = None,
                               tasks: tuple[str, ...] = ()) -> None:
    """Register the tasks, then (optionally) a mixture ``name`` of ``tasks`` (e.g. a few languages)."""
    # lazy: seqio pulls in TensorFlow (seconds): only when a task is read
    import seqio

    if register is not None:
        register()
    if name:
        missing = [t for t in tasks if t not in seqio.TaskRegistry.names()]
        if missing:
            raise UserError(f"mixture {name}: unknown tasks {missing}")
        if name in seqio.MixtureRegistry.names():
            seqio.MixtureRegistry.remove(name)
        seqio.MixtureRegistry.add(name, list(tasks), default_rate=1.0)


@gin.configurable
def lazy_call(*, target: str, kwargs: Mapping[str, Any] | None = None) -> Any:
    """Call ``"package.module:attribute"`` (imported only now) with ``kwargs``: lets a gin file name a component
    of another area (a teacher backend, a model) and still parse where that area is not installed."""

    module_name, _, attr = target.partition(":")
    try:
        # The config is locked by now: a module imported late may still register its own configurables.
        with gin.unlock_config():
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise UserError(f"{target}: module {module_name} is not in this build ({err})") from err
    if not hasattr(module, attr):
        raise UserError(f"{target}: {module_name} has no {attr!r}")
    return getattr(module, attr)(**dict(kwargs or {}))


@gin.configurable
def pretrained_architecture(*, rngs: Any, checkpoint: str = "embedded:smollm2-135m-instruct") -> Any:
    """A model factory (``StudentSpec.model_factory`` / ``train.model_factory``): a freshly initialised model with
    ``checkpoint``'s architecture; pair it with ``initial_params = @pretrained_params`` (same checkpoint) to load
    the weights."""

    config = embedded.load_pretrained(checkpoint).config
    return embedded._model_class(config)(config, rngs=rngs)  # noqa: SLF001 (the config -> class map lives there)


@gin.configurable
def embedded_vocabulary(*, checkpoint: str = "embedded:smollm2-135m-instruct") -> Any:
    """``get_vocabulary.vocabulary``: the tokenizer of a pretrained checkpoint (the student's own)."""

    return embedded.load_pretrained(checkpoint).vocabulary
