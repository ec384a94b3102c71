"""Every shipped ``*_local_tiny`` sweep runs to the end: each of its method x size configurations (one seed) through
``fiat run`` subprocesses, shrunk by tests/sweep_ci/ci_overlay.gin (2 steps, 4 eval items, a tiny random teacher).
A failed run fails the test with its log."""
import csv
import json
import math
import os
import pathlib

import gin
import pytest

from fiat_jax import gin_utils
from fiat_jax.errors import UserError
from fiat_jax.sweeps import report as report_lib
from fiat_jax.sweeps import sweep
from test_train_helpers import JAX_CACHE_ENV

SWEEPS_DIR = gin_utils.DEFAULT_GIN_DIR / "sweeps"
CI_DIR = pathlib.Path(__file__).resolve().parent / "sweep_ci"
LOCAL_TINY = sorted(p.stem for p in SWEEPS_DIR.glob("*_local_tiny.gin"))


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("name", LOCAL_TINY)
def test_local_tiny_sweep_runs_to_the_end(name, tmp_path, repo_root):
    gin.add_config_file_search_path(str(gin_utils.DEFAULT_GIN_DIR))
    gin.parse_config_file(str(SWEEPS_DIR / f"{name}.gin"))
    shipped = sweep.configured_plan()
    overlay = ["runs/local_tiny.gin", str(CI_DIR / "ci_overlay.gin")]  # the shipped overlay, then CI's
    if name.startswith("fiat_"):  # the MGSM sweeps (runs/fiat_mgsm.gin)
        overlay.append(str(CI_DIR / "mgsm_one_language.gin"))
    gin.parse_config([f"SWEEP_DIR = '{tmp_path / 'sweep'}'", "sweep.seeds = [0]", "sweep.parallel = 1",
                      f"sweep.overlay_gin_files = {overlay!r}"])
    # The runs share compiled programs through JAX's persistent cache (same shapes across sizes and sweeps).
    env = {**JAX_CACHE_ENV, "PYTHONPATH": os.pathsep.join([str(repo_root), str(CI_DIR)]),
           "FIAT_TEACHER_CACHE": str(tmp_path / "teacher_cache.sqlite")}
    try:
        summary = sweep.sweep(env=env, timeout_s=900, progress=False)
    except UserError as err:
        logs = sorted((tmp_path / "sweep" / "runs").glob("*/sweep_run.log"))
        tails = "\n".join(f"--- {p}\n" + "\n".join(p.read_text().splitlines()[-15:]) for p in logs)
        pytest.fail(f"{err}\n{tails}")
    configs = {(r.method, tuple(sorted((k, v) for k, v in r.params.items() if k != "SEED"))) for r in shipped}
    assert len(summary.finished) == len(configs) and not summary.failed
    rows = sweep.read_results(tmp_path / "sweep")
    assert len(rows) == len(configs) and all(row["metrics"] for row in rows)
    assert {row["method"] for row in rows} == {r.method for r in shipped}
    for row in rows:  # every training run used exactly the size the grid asked for
        assert row["num_train_examples_requested"] == row["train_examples"]
        if "num_train_examples" in row:
            assert row["num_train_examples"] == row["train_examples"], json.dumps(row)[:500]
    assert any("num_train_examples" in row for row in rows)
    # Its report: paired differences with p-values, every interval of a percentage inside [0, 100].
    out = report_lib.report(results_dir=tmp_path / "sweep")
    md = (out / "report.md").read_text()
    assert "paired differences" in md and ("p = " in md or "p < " in md), md[:3000]
    with open(out / "summary.csv", newline="") as f:
        cells = list(csv.DictReader(f))
    with_interval = [c for c in cells if c["ci95_low"] not in ("", "nan") and math.isfinite(float(c["ci95_low"]))]
    assert with_interval, cells[:5]
    for cell in with_interval:
        low, high = float(cell["ci95_low"]), float(cell["ci95_high"])
        assert low <= float(cell["mean"]) <= high, cell
        if report_lib._PERCENT_NAMES.search(cell["metric"]):
            assert 0.0 <= low <= high <= 100.0, cell
