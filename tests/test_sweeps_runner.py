"""The sweep runner: grid planning, gin flags, and a real 2 methods x 2 sizes x 2 seeds sweep through `fiat sweep`,
killed midway and resumed, with tests/sweep_fake_run.py standing in for `fiat run`."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from fiat_jax import gin_utils
from fiat_jax.errors import UserError
from fiat_jax.sweeps import report as report_lib
from fiat_jax.sweeps import run_results, sweep

HERE = pathlib.Path(__file__).resolve().parent
FAKE_RUN = HERE / "sweep_fake_run.py"
FAKE_DIR = HERE / "sweep_fake"


def _fiat(*args: str) -> list[str]:
    return [sys.executable, "-m", "fiat_jax.cli", *args]


def _sweep_argv(sweep_dir: pathlib.Path, *extra: str) -> list[str]:
    return _fiat("sweep", f"--gin_file={FAKE_DIR / 'sweep_tiny.gin'}", f"--gin_search_paths={FAKE_DIR}",
                 f"--gin.SWEEP_DIR={sweep_dir}", f"--gin.sweep.command=['{FAKE_RUN}']",
                 f"--gin.sweep.gin_search_paths=['{FAKE_DIR}']", *extra)


def _invocations(run_dir: pathlib.Path) -> list[int]:
    path = run_dir / "invocations.txt"
    if not path.is_file():
        return []
    return [int(line.split()[0].split("=")[1]) for line in path.read_text().splitlines()]


def test_plan_is_the_full_grid_in_a_stable_order():
    runs = sweep.plan(methods={"ICL": ["icl.gin"], "FIAT": {"gin_files": ["fiat.gin"], "bindings": {"X": 1}}},
                      grid={"NUM_TRAIN_EXAMPLES": [100, 1000]}, gin_axes={"MODEL": {"s": ["s.gin"], "b": ["b.gin"]}},
                      seeds=[0, 1, 2], base_gin_files=["base.gin"], overlay_gin_files=["tiny.gin"],
                      bindings={"LR": 0.1})
    assert len(runs) == 2 * 2 * 2 * 3
    assert len({r.run_id for r in runs}) == len({r.config_hash for r in runs}) == len(runs)
    first = runs[0]
    assert first.method == "ICL" and first.gin_files == ("base.gin", "icl.gin", "s.gin", "tiny.gin")
    assert first.params == {"MODEL": "s", "NUM_TRAIN_EXAMPLES": 100, "SEED": 0}
    assert dict(first.bindings) == {"LR": 0.1, "NUM_TRAIN_EXAMPLES": 100, "SEED": 0}
    fiat = [r for r in runs if r.method == "FIAT"][0]
    assert dict(fiat.bindings)["X"] == 1 and fiat.gin_files[-3:] == ("fiat.gin", "s.gin", "tiny.gin")
    again = sweep.plan(methods={"ICL": ["icl.gin"], "FIAT": {"gin_files": ["fiat.gin"], "bindings": {"X": 1}}},
                       grid={"NUM_TRAIN_EXAMPLES": [100, 1000]}, gin_axes={"MODEL": {"s": ["s.gin"], "b": ["b.gin"]}},
                       seeds=[0, 1, 2], base_gin_files=["base.gin"], overlay_gin_files=["tiny.gin"],
                       bindings={"LR": 0.1})
    assert [r.config_hash for r in again] == [r.config_hash for r in runs]


def test_plan_only_restricts_a_method_to_some_axis_values_and_leaves_the_others_unchanged():
    methods = {"FT": ["ft.gin"], "Aug": ["aug.gin"], "Aug-local": ["local.gin"]}
    axes = {"MODEL": {"tiny": ["tiny.gin"], "big": ["big.gin"]}}
    full = sweep.plan(methods=methods, gin_axes=axes, seeds=[0, 1])
    runs = sweep.plan(methods=methods, gin_axes=axes, seeds=[0, 1], only={"Aug-local": {"MODEL": ["tiny"]}})
    cells = {(r.method, r.params["MODEL"]) for r in runs}
    assert cells == {("FT", "tiny"), ("FT", "big"), ("Aug", "tiny"), ("Aug", "big"), ("Aug-local", "tiny")}
    assert len(runs) == 2 * 5
    # The runs kept are the same runs (ids, hashes) as without the restriction: a sweep dir resumes across it.
    assert {r.run_id for r in runs} == {r.run_id for r in full if (r.method, r.params["MODEL"]) != ("Aug-local", "big")}


@pytest.mark.parametrize("only, match", [
    ({"Nope": {"MODEL": ["tiny"]}}, "names method 'Nope'"),
    ({"FT": {"SIZE": ["tiny"]}}, "names axis 'SIZE'"),
    ({"FT": {"MODEL": []}}, "non-empty list"),
    ({"FT": {}}, "must map axis names"),
])
def test_plan_only_rejects_unknown_methods_and_axes(only, match):
    with pytest.raises(UserError, match=match):
        sweep.plan(methods={"FT": ["ft.gin"]}, gin_axes={"MODEL": {"tiny": ["tiny.gin"]}}, only=only)


@pytest.mark.parametrize("kwargs, match", [
    ({"methods": {}}, "methods is empty"),
    ({"methods": {"a": ["a.gin"]}, "grid": {"MODEL_DIR": ["x"]}}, "set by the sweep"),
    ({"methods": {"a": ["a.gin"]}, "grid": {"N": []}}, "non-empty list"),
    ({"methods": {"a": ["a.gin"]}, "grid": {"N": "100"}}, "non-empty list"),
    ({"methods": {"a": {"gin": ["a.gin"]}}}, "unknown key"),
])
def test_plan_rejects_malformed_grids(kwargs, match):
    with pytest.raises(UserError, match=match):
        sweep.plan(**kwargs)


@pytest.mark.parametrize("value", ["sw", "/tmp/a b/c", "/r/ICL-N=10-seed=0", "100", "True", "", " x", 3, 0.5, True,
                                   None, ["sw", "bn"], [100, 1000], {"a": 1}, "@foo"])
def test_gin_flags_round_trip_through_the_cli_parser(value):
    flag = sweep.gin_flag("X", value)
    binding = gin_utils.binding_from_flag(flag[len("--gin."):])
    if value == "@foo":  # references pass through unquoted
        assert binding == "X = @foo"
        return
    import gin

    gin.parse_config(binding)
    assert gin.query_parameter("%X") == value


def test_missing_gin_files_are_named_before_anything_runs(tmp_path):
    with pytest.raises(UserError, match="not found: nope.gin"):
        sweep.sweep(sweep_dir=str(tmp_path), methods={"a": ["nope.gin"]}, progress=False)
    assert not (tmp_path / "runs").exists()


def test_a_failing_run_is_reported_and_retried_on_rerun(tmp_path):
    kwargs = dict(sweep_dir=str(tmp_path), methods={"ICL": ["icl.gin"]}, base_gin_files=["base.gin"],
                  command=[str(FAKE_RUN)], gin_search_paths=[str(FAKE_DIR)], progress=False)
    with pytest.raises(UserError, match="1 of 1 runs failed"):
        sweep.sweep(bindings={"fake_run.fail": True}, **kwargs)
    assert not (tmp_path / "results.jsonl").exists()
    with pytest.raises(UserError, match="failed"):  # exit code 0 but no metrics is a failure too
        sweep.sweep(bindings={"fake_run.steps": 0, "fake_run.languages": []}, **kwargs)
    with pytest.raises(UserError, match="failed"):  # only metrics.jsonl, but results.json is required
        sweep.sweep(require_results_json=True, **kwargs)
    summary = sweep.sweep(**kwargs)
    assert len(summary.finished) == 1 and len(sweep.read_results(tmp_path)) == 1


def test_run_results_read_both_formats(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"step": 10, "kind": "eval", "language": "sw", "metrics": {"accuracy": 0.1}},
        {"step": 20, "kind": "train", "loss": 2.0, "tokens_seen": 640},
        {"step": 20, "kind": "eval", "language": "sw", "metrics": {"accuracy": 0.4}},
        {"step": 20, "eval/bn/accuracy": 0.5, "eval/bn/f1": 0.6},
    ]) + "\n{\"step\": 3")  # a last line cut short by a kill
    got = run_results.read_run_results(tmp_path)
    assert got.metrics == {"sw": {"accuracy": 0.4}, "bn": {"accuracy": 0.5, "f1": 0.6}}
    assert got.tokens_seen == 640
    # The trainer's evaluator rows: "<task>/<metric>" keys, per-language tasks, a mean over tasks.
    (tmp_path / "metrics.jsonl").write_text(json.dumps(
        {"step": 5, "split": "eval", "time": 1.0, "mgsm_sw/accuracy": 0.25, "mgsm_bn/accuracy": 0.75,
         "mean/accuracy": 0.5}) + "\n")
    got = run_results.read_run_results(tmp_path)
    assert got.metrics == {"sw": {"accuracy": 0.25}, "bn": {"accuracy": 0.75}} and got.extra["task"] == "mgsm"
    (tmp_path / "results.json").write_text(json.dumps({"metrics": {"accuracy": 0.7}, "params_trained": 9}))
    got = run_results.read_run_results(tmp_path)
    assert got.metrics == {"all": {"accuracy": 0.7}} and got.params_trained == 9
    run_results.write_run_results(tmp_path, metrics={"sw": {"accuracy": 0.5}}, tokens_seen=7, task="mgsm")
    got = run_results.read_run_results(tmp_path)
    assert (got.metrics, got.tokens_seen, got.params_trained, got.extra) == (
        {"sw": {"accuracy": 0.5}}, 7, None, {"task": "mgsm"})
    (tmp_path / "results.json").write_text(json.dumps({"metrics": {}}))
    with pytest.raises(run_results.NoResults):
        run_results.read_run_results(tmp_path)


def test_tiny_sweep_killed_midway_reruns_only_what_is_missing_then_reports(tmp_path):
    sweep_dir = tmp_path / "sweep"
    slow = ["--gin.sweep.bindings={'fake_run.step_s': 0.15, 'fake_run.steps': 4}"]
    first = subprocess.Popen(_sweep_argv(sweep_dir, "--gin.sweep.parallel=1", *slow), start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while len(list(sweep_dir.glob("runs/*/DONE"))) < 3:
        assert first.poll() is None, first.communicate()[0].decode()[-2000:]
        assert time.monotonic() < deadline, "the sweep made no progress"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the sweep and the run in flight, as a preemption would
    first.wait()
    run_dirs = {p.name: p for p in (sweep_dir / "runs").iterdir()}
    done_before = {name for name, p in run_dirs.items() if (p / "DONE").is_file()}
    partial = {name: json.loads((p / "checkpoint.json").read_text())["step"] if (p / "checkpoint.json").is_file()
               else 0 for name, p in run_dirs.items() if name not in done_before}
    started_before = {name: _invocations(p) for name, p in run_dirs.items()}
    assert 3 <= len(done_before) < 8
    assert len(sweep.read_results(sweep_dir)) >= len(done_before) - 1  # a kill may fall between DONE and append

    second = subprocess.run(_sweep_argv(sweep_dir, "--gin.sweep.parallel=2", *slow), capture_output=True, text=True,
                            timeout=360)  # 3x what a slow host needs
    assert second.returncode == 0, second.stderr[-3000:]
    runs = {p.name: p for p in (sweep_dir / "runs").iterdir()}
    assert len(runs) == 8
    for name, path in runs.items():
        starts = _invocations(path)
        if name in done_before:
            assert starts == [0], f"{name} finished before the kill but ran again: {starts}"
        elif name in partial:
            expected = started_before[name] + [partial[name]]
            assert starts == expected, f"{name}: should resume from step {partial[name]}: {starts}"
        else:
            assert starts == [0]
    rows = sweep.read_results(sweep_dir)
    assert len(rows) == 8 and len({r["config_hash"] for r in rows}) == 8
    raw_lines = (sweep_dir / "results.jsonl").read_text().strip().splitlines()
    assert len(raw_lines) == 8, "every run is appended exactly once"
    row = next(r for r in rows if r["method"] == "ICL" and r["train_examples"] == 100 and r["seed"] == 1)
    assert row["metrics"] == {"sw": {"accuracy": pytest.approx(0.42), "f1": 0.51},
                              "bn": {"accuracy": pytest.approx(0.47), "f1": 0.51}}
    assert row["tokens_seen"] == 4 * 64 * 100 and row["params_trained"] == 1234 and row["wall_s"] > 0
    assert row["params"] == {"NUM_TRAIN_EXAMPLES": 100, "SEED": 1} and row["variant"] == {}

    # A third run has nothing left to do.
    third = subprocess.run(_sweep_argv(sweep_dir, *slow), capture_output=True, text=True, timeout=180)
    assert third.returncode == 0 and "0 to run" in third.stderr
    assert all(_invocations(p) == _invocations(runs[n]) for n, p in runs.items())

    # The report: `fiat report` on the sweep directory.
    rep = subprocess.run(_fiat("report", str(sweep_dir), "--out_dir", str(tmp_path / "report")),
                         capture_output=True, text=True, timeout=360)
    assert rep.returncode == 0, rep.stderr[-3000:]
    md = (tmp_path / "report" / "report.md").read_text()
    # ICL at n=10: per-seed language means 0.325 and 0.345 -> 33.5; the fake runs write no per-item scores, so the
    # bootstrap resamples the 2 seeds only (†): its draws are 32.5, 33.5 and 34.5.
    assert "| ICL | 2 | 33.5 [32.5, 34.5]† | 50.5 [50.0, 51.0]† |" in md
    assert "| FIAT | 2 | 63.5 [62.5, 64.5]† | 50.5 [50.0, 51.0]† |" in md
    # No per-item scores: the exact test flips 2 seeds x 2 languages, so p = 2/16 at best.
    assert "| FIAT | ICL | 2 | +20.0 [20.0, 20.0]†, p = 0.12 | 0.0 [0.0, 0.0]†, p = 1.00 |" in md
    _check_report_files(tmp_path / "report")


def _check_report_files(out: pathlib.Path) -> None:
    import matplotlib.image
    import numpy as np

    pngs = sorted((out / "plots").glob("*.png"))
    kinds = {p.name.split("_")[0] for p in pngs}
    assert kinds == {"scale", "ablation"}, pngs
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(png)
        assert image.shape[0] > 100 and image.shape[1] > 100 and float(np.std(image)) > 0.01, png
        svg = png.with_suffix(".svg").read_text()
        assert "<svg" in svg and "</svg>" in svg
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(pngs)
    assert "src='plots/" not in html and 'src="http' not in html  # self-contained
    assert "[32.5, 34.5]" in html and "paired differences" in html
    runs_csv = (out / "runs.csv").read_text().strip().splitlines()
    assert len(runs_csv) == 1 + 8 * 2 * 2  # header + runs x languages x metrics
    assert report_lib.CONFIDENCE == 0.95


def test_the_sweep_process_never_imports_jax():
    """On a TPU host the sweep must leave the chips to its runs: importing jax could claim them."""
    code = ("import sys, fiat_jax.cli, fiat_jax.sweeps.sweep, fiat_jax.sweeps.report; "
            "print(sorted(m for m in ('jax', 'tensorflow', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_other_workers_of_a_multihost_sweep_run_everything_and_record_nothing(tmp_path, monkeypatch):
    kwargs = dict(sweep_dir=str(tmp_path), methods={"ICL": ["icl.gin"]}, base_gin_files=["base.gin"],
                  grid={"NUM_TRAIN_EXAMPLES": [10, 100]}, command=[str(FAKE_RUN)], gin_search_paths=[str(FAKE_DIR)],
                  progress=False)
    monkeypatch.setenv("FIAT_NUM_PROCESSES", "2")
    with pytest.raises(UserError, match="parallel must be 1"):
        sweep.sweep(parallel=2, **kwargs)
    monkeypatch.setenv("FIAT_WORKER_ID", "1")
    summary = sweep.sweep(**kwargs)
    assert len(summary.finished) == 2
    assert not (tmp_path / "results.jsonl").exists() and not list(tmp_path.glob("runs/*/DONE"))
    assert all(_invocations(p) == [0] for p in (tmp_path / "runs").iterdir())
    monkeypatch.setenv("FIAT_WORKER_ID", "0")
    summary = sweep.sweep(**kwargs)
    assert len(summary.finished) == 2 and len(sweep.read_results(tmp_path)) == 2


def test_a_language_axis_becomes_the_per_language_breakdown(tmp_path):
    sweep.sweep(sweep_dir=str(tmp_path), methods={"FT": ["icl.gin"]}, base_gin_files=["base.gin"],
                grid={"NUM_TRAIN_EXAMPLES": [10], "LANG": ["sw", "bn"]}, seeds=[0, 1], language_binding="LANG",
                bindings={"fake_run.languages": ["all"]}, command=[str(FAKE_RUN)], gin_search_paths=[str(FAKE_DIR)],
                progress=False)
    rows = sweep.read_results(tmp_path)
    assert sorted((r["language"], list(r["metrics"])[0]) for r in rows) == [("bn", "bn")] * 2 + [("sw", "sw")] * 2
    assert all(r["variant"] == {} for r in rows)
    md = (report_lib.report(results_dir=tmp_path) / "report.md").read_text()
    assert "| FT | n=10 | 31.0 [30.0, 32.0]† | 31.0 [30.0, 32.0]† | 31.0 [30.0, 32.0]† |" in md  # bn, sw, mean
    assert "| FT | 2 | 31.0 [30.0, 32.0]† |" in md  # seeds averaged over the runs of both languages


@pytest.mark.slow
@pytest.mark.integration
def test_a_sweep_of_real_train_and_eval_runs(tmp_path):
    """`fiat train` then `fiat eval` per run (the trainer and evaluator as they are), read back through
    metrics.jsonl's evaluation rows, reported."""
    sys.path.insert(0, str(HERE))
    try:
        from test_train_helpers import JAX_CACHE_ENV
    finally:
        sys.path.pop(0)
    summary = sweep.sweep(
        sweep_dir=str(tmp_path), subcommand=["train", "eval"], base_gin_files=["toy_train.gin"],
        overlay_gin_files=["runs/local_tiny.gin"],
        methods={"lr=3e-3": {"bindings": {"LEARNING_RATE": 3e-3}}}, bindings={"TRAIN_STEPS": 4},
        gin_search_paths=[str(FAKE_DIR)], progress=False,
        env={"PYTHONPATH": str(HERE), "JAX_PLATFORMS": "cpu", **JAX_CACHE_ENV})
    assert len(summary.finished) == 1
    rows = sweep.read_results(tmp_path)
    assert [r["method"] for r in rows] == ["lr=3e-3"]
    for row in rows:
        assert set(row["metrics"]) == {"toy_copy_8_512"} and "exact_match" in row["metrics"]["toy_copy_8_512"]
        assert row["extra"]["step"] == 4
        run_dir = tmp_path / row["run_dir"]
        assert "LEARNING_RATE = 0.003" in (run_dir / "config.gin").read_text()
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["4"]
    md = (report_lib.report(results_dir=tmp_path) / "report.md").read_text()
    assert "| lr=3e-3 |" in md


def test_failure_line_names_the_logs_and_says_when_a_rerun_cannot_help(tmp_path):
    kwargs = dict(methods={"ICL": ["icl.gin"], "FIAT": ["fiat.gin"]}, base_gin_files=["base.gin"], seeds=[0, 1],
                  command=[str(FAKE_RUN)], gin_search_paths=[str(FAKE_DIR)], progress=False)
    with pytest.raises(UserError) as err:  # every run fails the same way: one line, the logs, no "rerun"
        sweep.sweep(sweep_dir=str(tmp_path / "all"), bindings={"fake_run.fail": True}, **kwargs)
    message = str(err.value).splitlines()[0]  # gin appends "In call to configurable ..." (the CLI prints line 1)
    assert "4 of 4 runs failed (all of them)" in message and "exit code 1" in message
    assert f"logs: {tmp_path / 'all' / 'runs'}/*/sweep_run.log" in message
    assert "rerunning unchanged fails the same way" in message and "rerun the sweep to retry" not in message
    with pytest.raises(UserError, match="rerun the sweep to retry them"):  # timed out: a rerun may help
        sweep.sweep(sweep_dir=str(tmp_path / "slow"), timeout_s=0.001, **kwargs)
