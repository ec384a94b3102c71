"""Report statistics and layout on hand-made results rows (no subprocesses)."""
import json
import math

import numpy as np
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
    # Per task and size: methods as rows, metrics as columns; labels name the varying variant. No per-item scores:
    # the interval resamples the 3 seeds only (marked †), percentiles of {45, 46, 47} stay within them.
    assert "### mgsm, n=100" in md and "### qa, n=100" in md
    assert "| Method | Seeds | acc (%) |" in md
    cell = md.split("| FIAT (MODEL=base) | 3 | ", 1)[1].split(" |", 1)[0]
    mean, low, high = (float(x) for x in cell.rstrip("†").replace("[", "").replace("]", "").replace(",", "").split())
    assert cell.endswith("†") and mean == 46.0 and 45.0 <= low <= mean <= high <= 47.0
    assert "| FT (MODEL=small) | 3 | 16.0 [" in md
    assert "| Method | Size | bn | sw | mean |" in md
    assert "### qa — acc per language" in md and "### mgsm — acc per language" in md
    # One size: no scale curves, but ablation bars (4 labels) per task and metric.
    assert sorted(p.name for p in (out / "plots").glob("*.png")) == ["ablation_mgsm_acc.png", "ablation_qa_acc.png"]
    summary = (out / "summary.csv").read_text()
    assert "FIAT (MODEL=base),qa,100,mean,acc,3,0," in summary


def test_unscaled_metrics_and_single_seed_cells(tmp_path):
    _write(tmp_path, [_row("ICL", 10, 0, {"all": {"loss": 2.5}}), _row("ICL", 100, 0, {"all": {"loss": 1.25}})])
    md = (report.report(results_dir=tmp_path, out_dir=tmp_path / "r") / "report.md").read_text()
    # Not a [0, 1] metric: no x100; one seed: no interval.
    assert "### s, n=10" in md and "| ICL | 1 | 2.5 |" in md and "| ICL | 1 | 1.25 |" in md
    assert (tmp_path / "r" / "plots" / "scale_s_loss.png").is_file()


def test_later_rows_replace_earlier_ones_with_the_same_hash(tmp_path):
    rows = [_row("ICL", 10, 0, {"all": {"acc": 0.1}}, run="a"), _row("ICL", 10, 0, {"all": {"acc": 0.9}}, run="a")]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps({**r, "config_hash": "h"}) + "\n" for r in rows))
    md = (report.report(results_dir=tmp_path) / "report.md").read_text()
    assert "| ICL | 1 | 90.0 |" in md


def test_no_results_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no results.jsonl"):
        report.report(results_dir=tmp_path)
    (tmp_path / "results.jsonl").write_text("")
    with pytest.raises(UserError, match="no results yet"):
        report.report(results_dir=tmp_path)


# ------------------------------------------------------------------------------------- bootstrap and paired tests
def _cell(p, seeds=3, languages=("sw", "bn"), items=120, seed=0):
    """Per-item 0/100 scores: item i of language l is right with probability p (independent per seed)."""
    rng = np.random.default_rng(seed)
    return {s: {lang: 100.0 * (rng.random(items) < p) for lang in languages} for s in range(seeds)}


def test_a_known_effect_gives_a_small_p_and_an_interval_around_it():
    fiat, ft = _cell(0.8, seed=1), _cell(0.5, seed=2)
    comp = stats.paired_difference(fiat, ft, bounds=(0.0, 100.0))
    observed = np.mean([[fiat[s][l].mean() - ft[s][l].mean() for l in fiat[s]] for s in fiat])
    assert comp.diff.mean == pytest.approx(observed)
    assert comp.p_value < 0.001 and comp.diff.per_item and comp.diff.seeds == 3
    assert 0 < comp.diff.low < observed < comp.diff.high <= 100


def test_no_effect_gives_a_large_p_and_an_interval_around_zero():
    a = _cell(0.6, seed=3)
    b = {s: {lang: np.random.default_rng(10 + s).permutation(v) for lang, v in by.items()} for s, by in a.items()}
    comp = stats.paired_difference(a, b, bounds=(0.0, 100.0))  # same scores, items shuffled: no method effect
    assert comp.diff.mean == pytest.approx(0.0, abs=1e-9)
    assert comp.p_value > 0.5 and comp.diff.low < 0 < comp.diff.high
    same = stats.paired_difference(a, a, bounds=(0.0, 100.0))
    assert same.p_value == 1.0 and same.diff.low == same.diff.high == 0.0


def test_seed_level_p_values_are_honest_about_few_seeds():
    # Three seeds, no per-item scores: 2^3 sign patterns, so p is at least 2/8 whatever the effect.
    a = {s: {"all": np.array([90.0 + s])} for s in range(3)}
    b = {s: {"all": np.array([10.0])} for s in range(3)}
    comp = stats.paired_difference(a, b, bounds=(0.0, 100.0))
    assert not comp.diff.per_item and comp.p_value == 0.25  # exact: every one of the 8 patterns


def test_intervals_stay_inside_the_metric_range():
    near_top = {s: {"en": np.array([100.0] * 49 + [0.0])} for s in range(2)}
    est = stats.bootstrap_interval(near_top, bounds=(0.0, 100.0))
    assert 0.0 <= est.low <= est.mean == 98.0 <= est.high <= 100.0
    spread = {0: {"en": np.array([0.0])}, 1: {"en": np.array([100.0])}}  # 2 seeds: Student-t would give ±635
    est = stats.bootstrap_interval(spread, bounds=(0.0, 100.0))
    assert 0.0 <= est.low <= est.high <= 100.0 and not est.per_item
    flat = stats.bootstrap_interval({0: {"en": np.zeros(30)}, 1: {"en": np.zeros(30)}}, bounds=(0.0, 100.0))
    assert flat.low == flat.high == 0.0
    # Differences of [0, 100] metrics lie in [-100, 100].
    comp = stats.paired_difference({0: {"en": np.full(20, 100.0)}}, {0: {"en": np.zeros(20)}}, bounds=(0.0, 100.0))
    assert comp.diff.low == comp.diff.high == 100.0


def test_bootstrap_is_seeded():
    cell = _cell(0.5, items=40)
    assert stats.bootstrap_interval(cell, bounds=(0, 100)) == stats.bootstrap_interval(cell, bounds=(0, 100))


@pytest.mark.parametrize("value, percent, text", [(8.3333, True, "8.3"), (100.0, True, "100.0"), (0.0, True, "0.0"),
                                                  (0.12345, False, "0.123"), (110.4, False, "110"),
                                                  (123456.7, False, "123,457"), (0.00001234, False, "1.2e-05"),
                                                  (math.nan, True, "–")])
def test_number_formatting(value, percent, text):
    assert stats.format_number(value, percent=percent) == text


def test_p_value_formatting():
    assert [stats.format_p(p) for p in (0.0001, 0.0123, 0.372, 1.0)] == ["< 0.001", "= 0.012", "= 0.37", "= 1.00"]


# ------------------------------------------------------------------------------------------ the report's sections


def _items(values, ids=None):
    ids = ids or [f"q{i}" for i in range(len(values))]
    return {"ids": ids, "targets": [], "values": list(values)}


def _rich_rows(effect=0.35, sizes=((16, 16), (64, 40))):
    rng = np.random.default_rng(0)
    rows = []
    kinds = (("FT", "finetune_lora", 0.4, {}), ("FIAT", "fiat", 0.4 + effect, {"ablations": {"no_reasoning": False}}),
             ("FIAT w/o reasoning", "fiat", 0.45, {"ablations": {"no_reasoning": True}}), ("ICL", "icl", 0.3, {}))
    for method, kind, p, extra in kinds:
        for asked, actual in sizes:
            for seed in range(3):
                metrics, items = {}, {}
                for lang in ("sw", "bn"):
                    hits = 100.0 * (rng.random(50) < p)
                    metrics[lang] = {"accuracy": float(hits.mean())}
                    items[f"mgsm_{lang}"] = {"accuracy": _items(hits)}
                rows.append({"run_id": f"{method}-{asked}-{seed}", "method": method, "seed": seed,
                             "train_examples": asked, "metrics": metrics, "variant": {}, "wall_s": 2.5,
                             "tokens_seen": 1000, "params_trained": 10, "config_hash": f"{method}{asked}{seed}",
                             "run_dir": f"runs/{method}-{asked}-{seed}",
                             "extra": {"task": "mgsm", "method": kind, "item_scores": items,
                                       "num_train_examples": actual, "num_train_examples_requested": asked,
                                       "params_total": 1000, "teacher_cost": {"calls": 7, "output_chars": 300},
                                       "provenance": {"git_commit": "0123456789abcdef", "git_dirty": True,
                                                      "packages": {"jax": "0.10.2"}, "teacher": "local:smollm2",
                                                      "hardware": "x86_64 2 CPUs"}, **extra}})
    return rows


def _section(md, title):
    return md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_report_pairs_each_method_with_its_baselines(tmp_path):
    _write(tmp_path, _rich_rows())
    md = (report.report(results_dir=tmp_path) / "report.md").read_text()
    paired = _section(md, "Paired comparisons")
    assert "### mgsm, n=40 (asked 64): paired differences" in paired  # the actual size, the asked one beside it
    lines = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in paired.splitlines()
             if line.startswith("| ") and "Baseline" not in line}
    assert set(lines) == {("FIAT", "FT"), ("FIAT", "ICL"), ("FIAT w/o reasoning", "FIAT")}
    assert "p < 0.001" in lines[("FIAT", "FT")] and "+" in lines[("FIAT", "FT")]
    comps = (tmp_path / "report" / "comparisons.csv").read_text().splitlines()
    assert comps[0].startswith("method,baseline,task,num_train_examples,metric,seeds,items,diff")
    for line in comps[1:]:
        low, high, p = (float(x) for x in line.split(",")[-3:])
        assert -100 <= low <= high <= 100 and 0 < p <= 1
    results = _section(md, "Results")
    assert "### mgsm, n=16" in results and "| FIAT | 3 | " in results and "†" not in results
    # Every interval in the tables lies in [0, 100] and has one decimal.
    import re

    for low, high in re.findall(r"\[(-?[\d.]+), (-?[\d.]+)\]", results):
        assert 0.0 <= float(low) <= float(high) <= 100.0 and len(low.split(".")[1]) == 1
    cost = _section(md, "Cost")
    assert "| FIAT | n=40 (asked 64) | 3 | 2.5 | 1,000 | 10 | 4.02e+06 | 7 | 300 |" in cost
    prov = _section(md, "Provenance")
    assert "| git commit | 0123456789ab (dirty) | 24 |" in prov and "| teacher | local:smollm2 | 24 |" in prov


def test_icl_baseline_metrics_get_their_own_row(tmp_path):
    rows = []
    for method, local in (("FT", False), ("Aug-FT (local)", True)):
        for seed in range(3):
            rows.append({**_row(method, 12, seed, {"synthetic_facts_en": {"accuracy": 40.0 + 20 * local + seed,
                                                                         "icl_accuracy": 30.0 + seed}}),
                         "extra": {"method": "augmented_ft", "local": local, "global_": False}})
    _write(tmp_path, rows)
    md = (report.report(results_dir=tmp_path) / "report.md").read_text()
    results = _section(md, "Results")
    assert "icl_accuracy" not in md
    assert "| Method | Seeds | accuracy (%) |" in results
    assert "| ICL baseline (in context) | 3 | 31.0 [" in results  # once, though both methods' runs carry it
    assert results.count("ICL baseline (in context)") == 1
    paired = _section(md, "Paired comparisons")
    assert "| Aug-FT (local) | FT | 3 | +20.0" in paired  # augmented vs plain FT
    assert "| FT | ICL baseline (in context) |" in paired


def test_failed_runs_are_named_with_their_logs(tmp_path):
    rows = _rich_rows(sizes=((16, 16),))
    _write(tmp_path, rows)
    runs = [{"run_id": r["run_id"], "method": r["method"], "params": {"NUM_TRAIN_EXAMPLES": 16, "SEED": r["seed"]}}
            for r in rows]
    runs += [{"run_id": "FIAT-1000-0", "method": "FIAT", "params": {"NUM_TRAIN_EXAMPLES": 1000, "SEED": 0}},
             {"run_id": "FT-1000-0", "method": "FT", "params": {"NUM_TRAIN_EXAMPLES": 1000, "SEED": 0}}]
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "s", "runs": runs}))
    log = tmp_path / "runs" / "FIAT-1000-0" / "sweep_run.log"
    log.parent.mkdir(parents=True)
    log.write_text("boom\n")
    md = (report.report(results_dir=tmp_path) / "report.md").read_text()
    failed = _section(md, "Failed or missing runs")
    assert f"| FIAT-1000-0 | FIAT | 1000 | 0 | failed | {log} |" in failed
    assert "| FT-1000-0 | FT | 1000 | 0 | not run | – |" in failed
    assert "12 finished runs of 14 planned" in md


def test_a_row_missing_a_required_field_is_one_line_and_loses_nothing(tmp_path):
    rows = _rich_rows(sizes=((16, 16),))
    _write(tmp_path, rows)
    out = report.report(results_dir=tmp_path)
    before = (out / "report.md").read_text()
    del rows[3]["metrics"]
    _write(tmp_path, rows)
    with pytest.raises(UserError) as err:
        report.report(results_dir=tmp_path)
    message = str(err.value)
    assert "\n" not in message and "results.jsonl" in message and rows[3]["run_id"] in message
    assert "'metrics'" in message
    assert (out / "report.md").read_text() == before  # the earlier report is still there


def test_results_files_with_missing_optional_fields_are_listed(tmp_path, capsys):
    rows = _rich_rows(sizes=((16, 16),))
    del rows[0]["extra"]["provenance"]
    rows[1]["wall_s"] = None
    _write(tmp_path, rows)
    md = (report.report(results_dir=tmp_path) / "report.md").read_text()
    lines = _section(md, "Results files with missing fields").strip().splitlines()
    assert lines == [f"- {tmp_path / rows[0]['run_dir'] / 'results.json'}: no 'provenance' field",
                     f"- {tmp_path / rows[1]['run_dir'] / 'results.json'}: no 'wall_s' field"]
    assert f"report: warning: {tmp_path / rows[0]['run_dir'] / 'results.json'}: no 'provenance' field" \
        in capsys.readouterr().out


# ---------------------------------------------------------------------------------- what runs write for the report


def test_item_scores_are_kept_only_when_they_reproduce_the_metric(tmp_path):
    from fiat_jax.methods import results as results_lib

    rows = []
    for item, (good, bad, kind) in enumerate([(0.0, -1.0, "reversal"), (-0.5, -0.1, "reversal"),
                                              (-0.2, -2.0, "two_hop"), (-3.0, -1.0, "two_hop")]):
        rows += [{"id": f"i{item}", "option": 0, "label": 1, "score": good, "kind": kind},
                 {"id": f"i{item}", "option": 1, "label": 0, "score": bad, "kind": kind}]
    results_lib.write_jsonl(tmp_path / "predictions" / "synthetic_facts_en-mc.jsonl", rows)
    metrics = {"synthetic_facts_en": {"accuracy": 50.0, "accuracy_reversal": 50.0, "accuracy_two_hop": 12.0}}
    scores = results_lib.item_scores(str(tmp_path), metrics)["synthetic_facts_en"]
    assert scores["accuracy"]["values"] == [100.0, 0.0, 100.0, 0.0]
    assert scores["accuracy"]["ids"] == ["i0", "i1", "i2", "i3"]
    assert scores["accuracy_reversal"]["values"] == [100.0, 0.0]
    assert "accuracy_two_hop" not in scores  # 50% per item, 12 reported: not the items behind the number


def test_results_json_records_provenance_and_teacher_cost(tmp_path):
    from fiat_jax.methods import results as results_lib

    results_lib.write_jsonl(tmp_path / "teacher_outputs" / "mgsm_sw" / "train.jsonl",
                            [{"id": "a", "teacher": "local:tiny", "output": "abc"},
                             {"id": "b", "teacher": "local:tiny", "output": "de"}])
    path = results_lib.write_results(str(tmp_path), metrics={"mgsm_sw": {"accuracy": 10.0}}, method="fiat")
    data = json.loads(path.read_text())
    assert data["teacher_cost"] == {"calls": 2, "input_chars": 0, "output_chars": 5}
    prov = data["provenance"]
    assert prov["teacher"] == "local:tiny" and "numpy" in prov["packages"] and prov["hardware"]
    assert set(prov) >= {"git_commit", "git_dirty", "config_hash", "python"}


def test_per_item_scores_decide_whether_a_metric_is_a_percentage(tmp_path):
    # A tiny model's 0.8% accuracy (1 hit in 125, items scored 0 or 100) stays 0.8, not 80.
    rows = [_row("FT", 10, seed, {"en": {"accuracy": 0.8}}) for seed in range(2)]
    for row in rows:
        row["extra"] = {"item_scores": {"en": {"accuracy": _items([100.0] + [0.0] * 124)}}}
    _write(tmp_path, rows)
    md = (report.report(results_dir=tmp_path) / "report.md").read_text()
    assert "| FT | 2 | 0.8 [0.0, 2.4] |" in md
