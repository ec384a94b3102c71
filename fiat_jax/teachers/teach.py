"""``fiat teach``: run a teacher with a prompt recipe over a seqio task split and materialise the outputs.

A thin gin entry over :func:`fiat_jax.teachers.materialise.materialise` (which writes, resumes, caches and reports:
see its module docstring for the layout and the recipe hash): this module checks the CLI's inputs, reads the
task's examples, and writes the operative gin config to ``<task>/<split>.config.gin`` once there is a reply.
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
import seqio

from fiat_jax import compile_cache, run_dirs
from fiat_jax.atomic_files import atomic_write_lines
from fiat_jax.data.examples import task_examples
from fiat_jax.errors import UserError
from fiat_jax.teachers import base, materialise as materialise_lib, recipes

TeachSummary = materialise_lib.Summary


def write_timing(path: pathlib.Path, summary: TeachSummary, compiles: compile_cache.CompileStats) -> dict[str, Any]:
    """``<split>.timing.json`` and one stderr line: the run's wall time and the share of it spent compiling (trace,
    lower, XLA compile), so that a teacher run bound by compiles instead of decoding shows it. A local teacher's
    rest is decoding (and the model's load); a remote teacher compiles nothing."""
    timing = {"items": summary.written, "wall_s": round(summary.seconds, 3), **{
        k.split("/", 1)[1]: (round(v, 3) if isinstance(v, float) else v)
        for k, v in compiles.metrics(summary.seconds).items()}}
    atomic_write_lines(path, [json.dumps(timing, sort_keys=True)])
    print(f"teach: {summary.written} items in {summary.seconds:.1f} s, {timing['share']:.0%} of it compiling "
          f"({compiles.compiles} programs compiled, {compiles.cache_hits} loaded from the compile cache)",
          file=sys.stderr)
    return timing


@gin.configurable
def teach(*, teacher: Any, recipe: str, task: str, output_dir: str, split: str = "train",
          register_tasks: Callable[[], Any] | None = None, variables: Mapping[str, Any] | None = None,
          num_examples: int | None = None, max_new_tokens: int | None = None, temperature: float | None = None,
          stop: Sequence[str] | None = None, parse_retries: int = 2,
          retry_temperatures: Sequence[float] = (0.7, 1.0), progress: bool = True,
          fail_on_failures: bool = True) -> TeachSummary:
    """Run ``teacher`` with ``recipe`` over ``task``/``split`` into ``output_dir`` (see the module docstring).

    ``variables``: fixed template variables, a value may be a callable of the task name (e.g.
    ``@cot_exemplars()``). ``num_examples``: the first N examples only. ``max_new_tokens``/``temperature``/``stop``
    override the recipe's. A reply the recipe cannot parse is asked again up to ``parse_retries`` times, at
    ``retry_temperatures`` (the row then records its ``temperature``). ``fail_on_failures``: end with a UserError
    (exit 2) when some prompts failed.
    """
    if teacher is None:
        raise UserError("teach: no teacher (bind teach.teacher, e.g. in gin_configs/teachers/local_smollm2.gin)")
    rec = recipes.load(recipe)
    if not output_dir:
        raise UserError("teach: no output directory (pass --gin.OUTPUT_DIR=...)")
    run_dirs.check_writable_dir(output_dir, what="OUTPUT_DIR")
    run_dirs.check_writable_dir(pathlib.Path(output_dir).expanduser() / task, what="teach output directory")
    if not getattr(teacher, "identity", None):
        raise UserError(f"teach: the teacher {type(teacher).__name__} has no identity")
    if register_tasks is not None:
        register_tasks()
    try:
        if isinstance(seqio.get_mixture_or_task(task), seqio.Mixture):
            raise UserError(f"teach: {task} is a mixture; run one task at a time (outputs go to <output_dir>/<task>)")
    except ValueError:
        raise UserError(f"teach: unknown task {task!r} (are the tasks registered? `fiat tasks list` shows them)"
                        ) from None
    examples = task_examples(task, split, limit=num_examples)
    if not examples:
        raise UserError(f"teach: task {task} has no {split!r} examples")
    if any("id" not in ex for ex in examples):
        raise UserError(f"teach: task {task} examples have no 'id' feature (needed to join outputs)")
    with base.late_imports():
        fixed = materialise_lib.resolve_variables(variables, task)
    task_dir = pathlib.Path(output_dir).expanduser() / task

    def write_config() -> None:
        """The run's config goes next to its outputs once there is a reply to describe (a refused key or a dead
        server on the first request leaves the previous run's config as it was)."""
        task_dir.mkdir(parents=True, exist_ok=True)
        text = gin.operative_config_str() or gin.config_str()
        tmp = task_dir / f"{split}.config.gin.tmp"
        tmp.write_text(text)
        tmp.replace(task_dir / f"{split}.config.gin")

    # A local (JAX) teacher's compiles are counted; a remote one's process need not import JAX for it.
    counts = str(teacher.identity).startswith("local:") or "jax" in sys.modules
    compiles_before = compile_cache.CompileStats.start() if counts else None
    result = materialise_lib.materialise(
        teacher, rec, examples, out_dir=output_dir, task=task, split=split, variables=fixed,
        max_new_tokens=max_new_tokens, temperature=temperature, stop=stop, parse_retries=parse_retries,
        retry_temperatures=retry_temperatures, progress=progress, on_first_reply=write_config)
    summary = result.summary
    if compiles_before is not None and summary.written:
        write_timing(task_dir / f"{split}.timing.json", summary,
                     compile_cache.CompileStats.since(compiles_before))
    if result.failures and fail_on_failures:
        raise UserError(f"teach: {summary.failed} of {summary.total - summary.already} prompts failed (ids and "
                        f"reasons in {summary.failures_path}); rerun to retry them")
    return summary
