"""Report statistics and layout on hand-made results rows (no subprocesses)."""
import json
import math

import pytest

from fiat_jax.errors import UserError
from fiat_jax.sweeps import report, stats


@pytest.mark.parametrize("df, expected", [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (9, 2.262),
                                          (30, 2.042), (120, 1.980)])
def test_t_quantile_matches_the_published_table(df, expected):
    assert stats.t_quantile(0.95, df) == pytest.approx(expected, abs=1e-3)


def test_t_quantile_agrees_with_scipy_when_available():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 5, 7, 8, 31):
        for confidence in (0.8, 0.95, 0.99):
            assert stats.t_quantile(confidence, df) == pytest.approx(
                scipy_stats.t.ppf(0.5 + confidence / 2, df), rel=1e-9)


def test_mean_ci():
    est = stats.mean_ci([1.0, 2.0, 3.0])
    assert est.mean == 2.0 and est.n == 3
    assert est.half_width == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-3)
    single = stats.mean_ci([5.0])
    assert single.mean == 5.0 and math.isnan(single.half_width)
    assert stats.mean_ci([]).n == 0


def _row(method, size, seed, metrics, variant=None, task=None, run=None):
    return {"run_id": run or f"{method}-{size}-{seed}-{json.dumps(variant)}-{task}", "config_hash": None,
            "method": method, "train_examples": size, "seed": seed, "metrics": metrics, "variant": variant or {},
            "extra": {"task": task} if task else {}, "sweep": "s", "wall_s": 1.0, "tokens_seen": 10,
            "params_trained": 5}


def _write(tmp_path, rows):
    for i, row in enumerate(rows):
        row["config_hash"] = str(i)
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_variants_tasks_and_languages_shape_the_tables(tmp_path):
    rows = []
    for model in ("small", "base"):
        for method, bonus in (("FT", 0.0), ("FIAT", 0.2)):
            for task in ("qa", "mgsm"):
                for seed in (0, 1, 2):
                    value = 0.1 + bonus + (0.1 if model == "base" else 0) + 0.01 * seed
                    rows.append(_row(method, 100, seed, {"sw": {"acc": value}, "bn": {"acc": value + 0.1}},
                                     variant={"MODEL": model}, task=task))
    _write(tmp_path, rows)
    out = report.report(results_dir=tmp_path)
    md = (out / "report.md").read_text()
    # Labels name the varying variant; columns are task x size; 3 seeds -> t(0.975, 2) = 4.303.
    half = 4.303 * 0.01 / math.sqrt(3) * 100
    assert "| Method | mgsm n=100 | qa n=100 |" in md  # without sweep.json: ordered by run id
    assert f"| FIAT (MODEL=base) | 46.0 ± {half:.1f} | 46.0 ± {half:.1f} |" in md
    assert f"| FT (MODEL=small) | 16.0 ± {half:.1f} | 16.0 ± {half:.1f} |" in md
    assert "| Method | Size | bn | sw | mean |" in md
    assert "### qa — acc per language" in md and "### mgsm — acc per language" in md
    # One size: no scale curves, but ablation bars (4 labels) per task and metric.
    assert sorted(p.name for p in (out / "plots").glob("*.png")) == ["ablation_mgsm_acc.png", "ablation_qa_acc.png"]
    summary = (out / "summary.csv").read_text()
    assert "FIAT (MODEL=base),qa,100,mean,acc,3," in summary


def test_unscaled_metrics_and_single_seed_cells(tmp_path):
    _write(tmp_path, [_row("ICL", 10, 0, {"all": {"loss": 2.5}}), _row("ICL", 100, 0, {"all": {"loss": 1.25}})])
    md = (report.report(results_dir=tmp_path, out_dir=tmp_path / "r") / "report.md").read_text()
    assert "| ICL | 2.5 | 1.25 |" in md  # not a [0, 1] metric: no x100; one seed: no interval
    assert (tmp_path / "r" / "plots" / "scale_s_loss.png").is_file()


def test_later_rows_replace_earlier_ones_with_the_same_hash(tmp_path):
    rows = [_row("ICL", 10, 0, {"all": {"acc": 0.1}}, run="a"), _row("ICL", 10, 0, {"all": {"acc": 0.9}}, run="a")]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps({**r, "config_hash": "h"}) + "\n" for r in rows))
    md = (report.report(results_dir=tmp_path) / "report.md").read_text()
    assert "| ICL | 90.0 |" in md


def test_no_results_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no results.jsonl"):
        report.report(results_dir=tmp_path)
    (tmp_path / "results.jsonl").write_text("")
    with pytest.raises(UserError, match="no results yet"):
        report.report(results_dir=tmp_path)
