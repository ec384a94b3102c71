"""The FIAT evidence table and teacher-quality curve (fiat_jax/sweeps/evidence_fiat.py) on synthetic sweep rows:
paired on (seed, item) by id, simulated teachers labelled, baselines found by kind, bad files refused."""
import json

import numpy as np
import pytest

from fiat_jax.errors import UserError
from fiat_jax.gin_utils import DEFAULT_GIN_DIR
from fiat_jax.sweeps import evidence_fiat

IDS = [f"x{i}" for i in range(40)]


def _row(method, kind, seed, values, *, teacher=None, ablations=None, ids=IDS):
    values = [float(v) for v in values]
    return {"run_id": f"{method}-{seed}", "config_hash": f"{method}-{seed}", "method": method, "seed": seed,
            "metrics": {"sw": {"accuracy": float(np.mean(values))}},
            "extra": {"method": kind, "task": "xcopa", "teacher": teacher, "ablations": ablations or {},
                      "item_scores": {"xcopa_sw": {"accuracy": {"ids": list(ids), "targets": [],
                                                                 "values": values}}}}}


def _sweep(gain_at_q1=100.0):
    rng = np.random.default_rng(0)
    rows = []
    for seed in (0, 1, 2):
        chance = (rng.random(40) < 0.5) * 100.0
        rows.append(_row("FT (LoRA)", "finetune_lora", seed, chance))
        rows.append(_row("ICL (embedded teacher)", "icl", seed, np.roll(chance, 1), teacher="local:smollm2"))
        for q in (0.0, 1.0):
            vals = np.full(40, 100.0 if q == 1.0 else 0.0) if gain_at_q1 else chance
            rows.append(_row(f"FIAT q={q:g} (simulated)", "fiat", seed, vals,
                             teacher=f"simulated:controlled-teacher:q={q:g}:seed=0"))
    return rows


def test_table_orders_methods_labels_simulated_and_pairs_items():
    table = evidence_fiat.evidence_table(_sweep())
    lines = table.splitlines()
    names = [ln.split("|")[1].strip() for ln in lines[2:]]
    assert names == ["ICL (embedded teacher)", "FT (LoRA)", "FIAT q=0 (simulated)", "FIAT q=1 (simulated)"]
    q1 = lines[-1]
    assert "simulated:controlled-teacher:q=1" in q1 and "3 × 40" in q1
    # Every one of the 120 (seed, item) units at q=1 beats a chance baseline that is wrong: p is small.
    vs_ft = q1.split("|")[5]
    assert vs_ft.strip().startswith("+") and "p < 0.001" in vs_ft


def test_no_difference_gives_a_large_p_value():
    rows = _sweep(gain_at_q1=0.0)
    curve = evidence_fiat.quality_curve(rows)
    assert [c["q"] for c in curve] == [0.0, 1.0]
    assert all(abs(c["vs_ft"].diff.mean) < 1e-9 and c["vs_ft"].p_value > 0.5 for c in curve)


def test_items_are_paired_by_id_not_position():
    base = _row("FT (LoRA)", "finetune_lora", 0, [0, 100, 0, 100], ids=["a", "b", "c", "d"])
    same = _row("FIAT q=1 (simulated)", "fiat", 0, [100, 0, 100, 0], ids=["b", "a", "d", "c"],
                teacher="simulated:controlled-teacher:q=1:seed=0")
    comp = evidence_fiat.compare(evidence_fiat._cell([same], "accuracy"), evidence_fiat._cell([base], "accuracy"))
    assert comp.diff.mean == 0.0 and comp.diff.items == 4


def test_quality_of_reads_the_identity():
    assert evidence_fiat.quality_of({"extra": {"teacher": "simulated:controlled-teacher:q=0.8:seed=3"}}) == 0.8
    assert evidence_fiat.quality_of({"extra": {"teacher": "local:smollm2-135m"}}) is None


def test_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "q.png"
    evidence_fiat.quality_plot(_sweep(), out)
    assert out.stat().st_size > 1000


def test_cli_prints_the_table_and_refuses_bad_files(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _sweep()) + "\n")
    assert evidence_fiat.main([str(path)]) == 0
    assert capsys.readouterr().out.strip() == evidence_fiat.evidence_table(evidence_fiat.read_rows(path))
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    assert evidence_fiat.main([str(tmp_path / "bad.jsonl")]) == 2
    assert "bad.jsonl:1: not JSON" in capsys.readouterr().err
    with pytest.raises(UserError, match="no results file"):
        evidence_fiat.read_rows(tmp_path / "missing.jsonl")


def test_evidence_sweep_plans_the_q_axis_with_the_simulated_teacher():
    import gin

    from fiat_jax.sweeps import sweep

    gin.clear_config()
    gin.add_config_file_search_path(str(DEFAULT_GIN_DIR))
    gin.parse_config_file(str(DEFAULT_GIN_DIR / "evidence" / "fiat.gin"))
    gin.parse_config("SWEEP_DIR = '/tmp/unused'")
    runs = sweep.configured_plan()
    gin.clear_config()
    qs = {dict(r.bindings).get("CONTROLLED_TEACHER_Q") for r in runs if "simulated" in r.method}
    assert qs == {0.0, 0.5, 1.0}
    assert all(dict(r.bindings)["TEACHER"] == "@ControlledTeacher()" for r in runs if "simulated" in r.method)
    assert {r.seed for r in runs} == {0, 1} and {r.params["NUM_TRAIN_EXAMPLES"] for r in runs} == {80}
    assert {"ICL (embedded teacher)", "FT (LoRA)", "FIAT", "FIAT w/o reasoning", "FIAT w/o instruction",
            "FIAT reasoning as target", "FIAT full FT"} <= {r.method for r in runs}


def test_a_single_run_level_number_shows_no_interval():
    row = _row("FT (LoRA)", "finetune_lora", 0, [0, 100], ids=["a", "b"])
    row["extra"]["item_scores"] = {}
    line = evidence_fiat.evidence_table([row]).splitlines()[-1]
    assert "| 1 × 1 | 50.0 [–, –] |" in line and "nan" not in line


def test_blank_item_ids_pair_by_position_not_onto_one_item():
    """The student's scorer may write blank ids: pairing must not map every item onto one id (which made FIAT q=1
    minus an FT at 38 % read +100), but pair the same positions of the split."""
    ft = [100.0] * 15 + [0.0] * 25                      # 37.5 %, the last item wrong
    rows = [_row("FT (LoRA)", "finetune_lora", 0, ft, ids=[""] * 40),
            _row("FIAT q=1 (simulated)", "fiat", 0, [100.0] * 40, ids=[""] * 40,
                 teacher="simulated:controlled-teacher:q=1:seed=0")]
    rows.append(_row("ICL (embedded teacher)", "icl", 0, [0.0] * 39 + [100.0], teacher="local:smollm2"))
    line = next(l for l in evidence_fiat.evidence_table(rows).splitlines() if l.startswith("| FIAT q=1"))
    assert "| 1 × 40 |" in line and "+62.5 [" in line, line
    # ICL wrote real ids, FIAT none: the same 40 items in the same order, so paired by position (+97.5 on 40).
    assert "| +97.5 [" in line and line.rstrip().endswith("p < 0.001 |"), line
