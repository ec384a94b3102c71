"""A resumable grid of runs: methods x gin bindings (training-set sizes, model sizes, languages, ...) x seeds.

Each run is a subprocess (``python -m fiat_jax.cli <subcommand> --gin_file=... --gin.MODEL_DIR=RUN_DIR ...``) in
its own directory, so a crashed run cannot take the sweep down and a killed sweep loses at most the runs in flight.
A run is finished when its ``DONE`` marker exists (written atomically, holding the run's results row); rerunning a
sweep skips finished runs and starts the others again, and the trainer resumes a partial run from its checkpoint.
Every finished run adds one row to ``SWEEP_DIR/results.jsonl`` (see docs/CONTRACTS.md, "Run results").
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import fcntl
import inspect
import json
import logging
import os
import pathlib
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import gin
from tqdm import tqdm

from fiat_jax.errors import UserError
from fiat_jax.sweeps import run_results
# Re-exported: callers and tests use them as sweep.plan, sweep.gin_flag, ... (they live in plan.py, commands.py).
from fiat_jax.sweeps.commands import gin_flag, resolve_gin_files, run_commands, subcommands
from fiat_jax.sweeps.plan import RunSpec, check_only, config_hash, plan

__all__ = ["DONE_FILE", "LOG_FILE", "PLAN_FILE", "RESULTS_FILE", "RunSpec", "SweepSummary", "check_only",
           "config_hash", "configured_plan", "failure_message", "gin_flag", "plan", "read_results",
           "resolve_gin_files", "run_commands", "subcommands", "sweep", "worker_index"]

_log = logging.getLogger(__name__)

DONE_FILE = "DONE"
LOG_FILE = "sweep_run.log"
RESULTS_FILE = "results.jsonl"
PLAN_FILE = "sweep.json"


@dataclasses.dataclass
class SweepSummary:
    """What a sweep call did: counts and where to look."""

    sweep_dir: pathlib.Path
    total: int
    skipped: list[str]
    finished: list[str]
    failed: list[str]


def _write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_results(sweep_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of ``results.jsonl``, the last row per config hash (a rerun replaces an earlier row)."""
    path = pathlib.Path(sweep_dir) / RESULTS_FILE
    if not path.is_file():
        return []
    rows: dict[str, dict[str, Any]] = {}
    # A line cut short by a crash mid-write is skipped: the run's DONE marker restores it on the next sweep.
    for number, row in run_results.iter_jsonl(
            path, on_malformed=lambda n: _log.warning("%s:%d: skipping a malformed line", path, n)):
        rows[row.get("config_hash") or row.get("run_id") or str(number)] = dict(row)
    return list(rows.values())


def _append_row(sweep_dir: pathlib.Path, row: Mapping[str, Any]) -> None:
    path = sweep_dir / RESULTS_FILE
    with open(path, "a") as f:
        if f.tell() > 0:  # make sure a line cut short by a crash does not swallow this one
            with open(path, "rb") as check:
                check.seek(-1, os.SEEK_END)
                if check.read(1) != b"\n":
                    f.write("\n")
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _reconcile(sweep_dir: pathlib.Path, runs: Sequence[RunSpec]) -> list[str]:
    """Finished runs (DONE marker present); appends rows a crash left out of results.jsonl."""
    have = {row.get("config_hash") for row in read_results(sweep_dir)}
    finished = []
    for spec in runs:
        done = sweep_dir / "runs" / spec.run_id / DONE_FILE
        if not done.is_file():
            continue
        try:
            row = json.loads(done.read_text())
        except json.JSONDecodeError:
            _log.warning("%s is unreadable: the run will be redone", done)
            done.unlink()
            continue
        finished.append(spec.run_id)
        if spec.config_hash not in have:
            _append_row(sweep_dir, row)
    return finished


def _lock(sweep_dir: pathlib.Path):
    """An exclusive lock on the sweep directory: two sweeps writing one results.jsonl would corrupt it."""
    handle = open(sweep_dir / ".sweep.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"another sweep is running in {sweep_dir} (lock {sweep_dir / '.sweep.lock'})") from None
    return handle


@dataclasses.dataclass
class _Attempt:
    spec: RunSpec
    returncode: int | None
    wall_s: float
    error: str = ""


def _execute(spec: RunSpec, argvs: Sequence[Sequence[str]], run_dir: pathlib.Path, env: Mapping[str, str],
             timeout_s: float | None, log_name: str = LOG_FILE) -> _Attempt:
    """Run the run's subprocesses in order (stopping at the first failure), output appended to its log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    code, error = 0, ""
    with open(run_dir / log_name, "a") as log:
        log.write(f"\n=== {datetime.datetime.now(datetime.timezone.utc).isoformat()} attempt\n")
        for index, argv in enumerate(argvs):
            log.write(f"+ {shlex.join(argv)}\n")
            log.flush()
            left = None if timeout_s is None else max(1e-3, timeout_s - (time.monotonic() - started))
            try:
                code = subprocess.run(list(argv), stdout=log, stderr=subprocess.STDOUT, env=dict(env),
                                      timeout=left, check=False).returncode
                step = f" (command {index + 1} of {len(argvs)})" if len(argvs) > 1 else ""
                error = "" if code == 0 else f"exit code {code}{step}"
            except subprocess.TimeoutExpired:
                code, error = None, f"timed out after {timeout_s} s"
            except OSError as err:
                code, error = None, f"could not start: {err}"
            if error:
                break
    return _Attempt(spec=spec, returncode=code, wall_s=time.monotonic() - started, error=error)


def _finish(sweep_dir: pathlib.Path, name: str, attempt: _Attempt, axes: Mapping[str, Any]) -> dict[str, Any]:
    """Read a successful run's results, write its DONE marker (atomically) and append its row."""
    spec = attempt.spec
    run_dir = sweep_dir / "runs" / spec.run_id
    results = run_results.read_run_results(run_dir, require_results_json=bool(axes.get("require_results_json")))
    attempts = _count_attempts(run_dir)
    size_binding, seed_binding, language_binding = axes["size"], axes["seed"], axes["language"]
    metrics = results.metrics
    language = spec.params.get(language_binding) if language_binding else None
    if language is not None and set(metrics) == {run_results.AGGREGATE}:
        metrics = {str(language): metrics[run_results.AGGREGATE]}  # one language per run: name it
    variant = {k: v for k, v in spec.params.items() if k not in (size_binding, seed_binding, language_binding)}
    row = {"sweep": name, **spec.row_fields(), "train_examples": spec.params.get(size_binding),
           "variant": variant, "language": language, "metrics": metrics, "wall_s": round(attempt.wall_s, 3),
           "attempts": attempts, "tokens_seen": results.tokens_seen, "params_trained": results.params_trained,
           "extra": results.extra, "run_dir": str(pathlib.Path("runs") / spec.run_id),
           "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    # The training-set size the run actually used (its results.json), next to the size the grid asked for.
    requested = results.extra.get("num_train_examples_requested", spec.params.get(size_binding))
    if requested is not None:
        row["num_train_examples_requested"] = requested
    if results.extra.get("num_train_examples") is not None:
        row["num_train_examples"] = results.extra["num_train_examples"]
    _write_atomic(run_dir / DONE_FILE, json.dumps(row, sort_keys=True, indent=1))
    _append_row(sweep_dir, row)
    return row


def _count_attempts(run_dir: pathlib.Path) -> int:
    try:
        return sum(1 for line in open(run_dir / LOG_FILE) if line.startswith("=== "))
    except OSError:
        return 1


@gin.configurable(denylist=["progress"])
def sweep(*, sweep_dir: str = gin.REQUIRED, methods: Mapping[str, Any] = gin.REQUIRED,
          grid: Mapping[str, Sequence[Any]] | None = None,
          gin_axes: Mapping[str, Mapping[str, Sequence[str]]] | None = None, seeds: Sequence[int] = (0,),
          seed_binding: str = "SEED", size_binding: str = "NUM_TRAIN_EXAMPLES",
          language_binding: str | None = None, base_gin_files: Sequence[str] = (),
          setup_gin_files: Sequence[str] = (), overlay_gin_files: Sequence[str] = (), bindings: Mapping[str, Any] | None = None,
          subcommand: str | Sequence[str] = "run", command: Sequence[str] = ("-m", "fiat_jax.cli"),
          python: str | None = None,
          gin_search_paths: Sequence[str] = (), parallel: int = 1, timeout_s: float | None = None,
          env: Mapping[str, str] | None = None, name: str | None = None, dry_run: bool = False,
          require_results_json: bool = False, progress: bool = True,
          only: Mapping[str, Mapping[str, Sequence[Any]]] | None = None) -> SweepSummary:
    """Run every missing run of the grid (``parallel`` at once) and append their rows to results.jsonl.

    Args:
      sweep_dir: where runs/<run_id>/ and results.jsonl live; rerunning on the same directory resumes.
      methods: method name -> list of gin files, or -> ``{'gin_files': [...], 'bindings': {...}}`` (ablations).
      grid: gin binding -> values; the cartesian product over all axes (e.g. NUM_TRAIN_EXAMPLES: [100, 1000]).
      gin_axes: axis name -> {value name: gin files}, for axes that are gin files (model sizes).
      seeds: values bound to ``seed_binding`` for each grid point.
      size_binding: the grid axis that is the training-set size (the x axis of the report's scale curves).
      language_binding: a grid axis holding the language (or languages) of each run, if the grid has one; the
        report treats it as the per-language breakdown instead of as a variant.
      base_gin_files / bindings: shared by every run (before the method's files / bindings).
      setup_gin_files: the task set-up shared by every run (``runs/fiat_mgsm.gin``), right after the method's
        files so its macros (task, teacher, lengths) override the method's defaults.
      overlay_gin_files: shared by every run, after all other files (``runs/local_tiny.gin``).
      subcommand / command / python: argv is ``python *command subcommand --gin_file=... --gin.MODEL_DIR=...``;
        a list of subcommands (``['train', 'eval']``) runs them one after the other with the same flags.
      parallel: runs at once (subprocesses); 1 = sequential.
      timeout_s: per-run wall-clock limit (a run over it counts as failed; rerunning the sweep resumes it).
      env: extra environment variables for the runs.
      dry_run: print the commands of the missing runs and run nothing.
      require_results_json: count a run as finished only if it wrote MODEL_DIR/results.json (not just
        metrics.jsonl evaluations); see docs/CONTRACTS.md, "Run results".
      only: method name -> {axis: allowed values}: that method runs at those axis values only (see ``plan``).

    Raises UserError when a gin file is missing, the grid is malformed, or any run failed (after all ran).
    """
    root = pathlib.Path(sweep_dir).expanduser().resolve()
    name = name or root.name
    worker, workers = worker_index()
    if workers != 1 and parallel != 1:
        raise UserError(f"sweep.parallel must be 1 on a multi-host job (FIAT_NUM_PROCESSES={workers}): every host "
                        "must start the same run at the same time")
    runs = plan(methods=methods, grid=grid, gin_axes=gin_axes, seeds=seeds, seed_binding=seed_binding,
                base_gin_files=base_gin_files, setup_gin_files=setup_gin_files,
                overlay_gin_files=overlay_gin_files, bindings=bindings,
                subcommand=subcommand, only=only)
    resolved = resolve_gin_files(runs, gin_search_paths)
    python = python or sys.executable
    if parallel < 1:
        raise UserError(f"sweep.parallel must be >= 1, got {parallel}")
    root.mkdir(parents=True, exist_ok=True)
    if worker != 0:
        return _follow(root, runs, resolved, subcommand=subcommand, command=command, python=python,
                       gin_search_paths=gin_search_paths, env=env, timeout_s=timeout_s, name=name, worker=worker)
    lock = _lock(root)
    try:
        done = set(_reconcile(root, runs))
        pending = [spec for spec in runs if spec.run_id not in done]
        argvs = {spec.run_id: run_commands(spec, run_dir=root / "runs" / spec.run_id, resolved_files=resolved,
                                           subcommand=subcommand, command=command, python=python,
                                           gin_search_paths=gin_search_paths) for spec in pending}
        if dry_run:
            for spec in pending:
                for argv in argvs[spec.run_id]:
                    print(shlex.join(argv))
            return SweepSummary(root, len(runs), sorted(done), [], [])
        _write_atomic(root / PLAN_FILE, json.dumps(
            {"name": name, "subcommand": subcommand, "size_binding": size_binding, "seed_binding": seed_binding,
             "language_binding": language_binding,
             "runs": [spec.row_fields() for spec in runs]}, indent=1, sort_keys=True))
        _log.info("sweep %s: %d runs, %d finished, %d to run (%d at once)", name, len(runs), len(done),
                  len(pending), parallel)
        run_env = {**os.environ, **dict(env or {})}
        axes = {"size": size_binding, "seed": seed_binding, "language": language_binding,
                "require_results_json": require_results_json}
        finished, failed = [], []
        attempts: dict[str, _Attempt] = {}
        for attempt in _run_all(pending, argvs, root, run_env, parallel, timeout_s, progress, name):
            log_path = root / "runs" / attempt.spec.run_id / LOG_FILE
            if not attempt.error:
                try:
                    _finish(root, name, attempt, axes)
                    finished.append(attempt.spec.run_id)
                    continue
                except run_results.NoResults as err:
                    attempt.error = str(err)
            failed.append(attempt.spec.run_id)
            attempts[attempt.spec.run_id] = attempt
            _log.error("run %s failed (%s); log: %s", attempt.spec.run_id, attempt.error, log_path)
    finally:
        lock.close()
    summary = SweepSummary(root, len(runs), sorted(done), finished, failed)
    if failed:
        failed = [spec.run_id for spec in pending if spec.run_id in attempts]  # plan order, not finishing order
        raise UserError(failure_message(name, root, [attempts[r] for r in failed], len(pending)))
    _log.info("sweep %s: done, results in %s", name, root / RESULTS_FILE)
    return summary


def _transient(attempt: _Attempt) -> bool:
    """A run that timed out, could not start or was killed by a signal may pass when retried; one that exited
    with an error (or left no results) fails the same way again."""
    code = attempt.returncode
    return code is None or code < 0 or code in (137, 143)


def _error_line(log_path: pathlib.Path) -> str:
    """The run's own one-line error (``fiat: error: ...``) from the last attempt in its log, if it printed one."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    starts = [i for i, line in enumerate(lines) if line.startswith("=== ")]
    for line in reversed(lines[starts[-1] if starts else 0:]):
        if line.startswith("fiat: error: "):
            return line[len("fiat: error: "):].strip()
    return ""


def failure_message(name: str, root: pathlib.Path, failed: Sequence[_Attempt], pending: int) -> str:
    """One line: how many runs failed, the first one's error and log, and whether retrying can help."""
    logs = [root / "runs" / a.spec.run_id / LOG_FILE for a in failed]
    first = failed[0]
    reason = " ".join((_error_line(logs[0]) or first.error).split())
    if len(failed) == pending and pending > 1:
        where = f"logs: {root / 'runs'}/*/{LOG_FILE} (first: {logs[0]})"
        head = (f"sweep {name}: {len(failed)} of {pending} runs failed (all of them); "
                f"first {first.spec.run_id}: {reason}")
    else:
        where = f"log: {logs[0]}"
        head = f"sweep {name}: {len(failed)} of {pending} runs failed, first {first.spec.run_id}: {reason}"
    retry = [a for a in failed if _transient(a)]
    if len(retry) == len(failed):
        hint = "rerun the sweep to retry them (they timed out or were killed)"
    elif retry:
        hint = (f"{len(retry)} timed out or were killed (a rerun retries them); the others fail the same way "
                "until their error is fixed")
    else:
        hint = "rerunning unchanged fails the same way: fix the error first (finished runs are kept)"
    return f"{head} ({where}); {hint}"


def worker_index() -> tuple[int, int]:
    """(this host's index, number of hosts; -1 = unknown) of a multi-host job, from the launchers' variables.

    On a TPU pod every worker runs the same sweep (``launch/tpu.py run`` sets ``FIAT_WORKER_ID`` from the VM
    metadata); ``launch/local.py`` sets ``FIAT_PROCESS_ID``. Each host starts every run, so the runs' JAX processes
    join one ``jax.distributed`` job; only worker 0 records results.
    """
    index = os.environ.get("FIAT_WORKER_ID") or os.environ.get("FIAT_PROCESS_ID") or "0"
    count = os.environ.get("FIAT_NUM_PROCESSES") or "1"
    try:
        return int(index), int(count)
    except ValueError:
        raise UserError(f"FIAT_WORKER_ID/FIAT_PROCESS_ID={index!r}, FIAT_NUM_PROCESSES={count!r}: expected "
                        "integers") from None


def _follow(root: pathlib.Path, runs: Sequence[RunSpec], resolved: Mapping[str, pathlib.Path], *,
            subcommand: str | Sequence[str],
            command: Sequence[str], python: str, gin_search_paths: Sequence[str], env: Mapping[str, str] | None,
            timeout_s: float | None, name: str, worker: int) -> SweepSummary:
    """A non-zero worker of a multi-host sweep: run the same unfinished runs in the same order, record nothing.

    The sweep directory must be shared by all hosts; worker 0 writes DONE markers and results.jsonl.
    """
    done = sorted(spec.run_id for spec in runs if (root / "runs" / spec.run_id / DONE_FILE).is_file())
    pending = [spec for spec in runs if spec.run_id not in done]
    _log.info("sweep %s (worker %d): %d runs, %d finished, %d to run", name, worker, len(runs), len(done),
              len(pending))
    run_env = {**os.environ, **dict(env or {})}
    finished, failed = [], []
    for spec in pending:
        run_dir = root / "runs" / spec.run_id
        argvs = run_commands(spec, run_dir=run_dir, resolved_files=resolved, subcommand=subcommand,
                             command=command, python=python, gin_search_paths=gin_search_paths)
        attempt = _execute(spec, argvs, run_dir, run_env, timeout_s, log_name=f"sweep_run.worker{worker}.log")
        (failed if attempt.error else finished).append(spec.run_id)
        if attempt.error:
            _log.error("run %s failed on worker %d (%s)", spec.run_id, worker, attempt.error)
    return SweepSummary(root, len(runs), done, finished, failed)


def _run_all(pending: Sequence[RunSpec], argvs: Mapping[str, Sequence[Sequence[str]]], root: pathlib.Path,
             env: Mapping[str, str], parallel: int, timeout_s: float | None, progress: bool,
             name: str) -> Iterator[_Attempt]:
    bar = tqdm(total=len(pending), desc=f"sweep {name}", unit="run", disable=not progress or not pending,
               file=sys.stderr)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=parallel)
    try:
        futures = [pool.submit(_execute, spec, argvs[spec.run_id], root / "runs" / spec.run_id, env, timeout_s)
                   for spec in pending]
        for future in concurrent.futures.as_completed(futures):
            attempt = future.result()
            bar.update(1)
            bar.set_postfix_str(f"{attempt.spec.run_id[:40]} {'ok' if not attempt.error else attempt.error}")
            yield attempt
    finally:
        # On Ctrl-C or an error, start no further runs (the running ones get the same SIGINT from the terminal).
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()


def configured_plan() -> list[RunSpec]:
    """The runs the gin-configured ``sweep`` would launch, from the parsed gin bindings (nothing is resolved)."""
    bound = gin.get_bindings(sweep)
    accepted = inspect.signature(plan).parameters
    return plan(**{k: v for k, v in bound.items() if k in accepted})
