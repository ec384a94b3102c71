"""The sweep configs in gin_configs/sweeps/: each parses, plans the grid it promises, and names existing gin files."""
import pathlib

import gin
import pytest

from fiat_jax import gin_utils
from fiat_jax.sweeps import sweep

SWEEPS_DIR = gin_utils.DEFAULT_GIN_DIR / "sweeps"
SWEEP_FILES = sorted(p for p in SWEEPS_DIR.glob("*.gin") if p.name != "methods.gin")
NAMES = ["fiat_scale", "fiat_ablations", "augmented_ft", "phased_ift"]


def _plan(path: pathlib.Path) -> list[sweep.RunSpec]:
    gin.add_config_file_search_path(str(gin_utils.DEFAULT_GIN_DIR))
    gin.parse_config_file(str(path))
    gin.parse_config("SWEEP_DIR = '/tmp/unused'")
    return sweep.configured_plan()


def test_every_sweep_has_a_local_tiny_variant():
    names = {p.stem for p in SWEEP_FILES}
    for name in NAMES:
        assert name in names and f"{name}_local_tiny" in names


def test_fiat_scale_is_three_methods_by_three_sizes_by_three_seeds():
    runs = _plan(SWEEPS_DIR / "fiat_scale.gin")
    assert len(runs) == 27
    assert {r.method for r in runs} == {"ICL", "FT", "FIAT"}
    assert {r.params["NUM_TRAIN_EXAMPLES"] for r in runs} == {10, 30, 100}  # MGSM has 125 per language
    assert {r.seed for r in runs} == {0, 1, 2}


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_sweep_config_plans_a_grid(path):
    runs = _plan(path)
    assert len({r.method for r in runs}) >= 2 and len({r.seed for r in runs}) >= 3  # 3 seeds at least
    if path.stem.endswith("_local_tiny"):
        assert len(runs) <= 18, "a local_tiny sweep must stay small enough for a CPU"
        assert all(r.gin_files[-1] == "runs/local_tiny.gin" for r in runs)  # the overlay comes last


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_sweep_config_gin_files_exist(path):
    """Every gin file a sweep names exists (a missing one is a failure, not an xfail)."""
    runs = _plan(path)
    paths = gin_utils.search_paths()
    missing = []
    for name in sorted({f for r in runs for f in r.gin_files}):
        try:
            gin_utils.resolve_gin_file(name, paths)
        except Exception:
            missing.append(name)
    assert not missing, f"{path.name} names gin files that do not exist: {', '.join(missing)}"


@pytest.mark.parametrize("path", [p for p in SWEEP_FILES if p.stem.endswith("_local_tiny")], ids=lambda p: p.stem)
def test_each_local_tiny_run_config_is_complete(path, tmp_path):
    """Every distinct run configuration of a CPU sweep parses with all its REQUIRED macros bound, exactly as the
    sweep will launch it (its gin files and bindings): a missing macro fails here, not an hour into a sweep."""
    runs = _plan(path)
    seen = set()
    for spec in runs:
        if spec.gin_files in seen:
            continue
        seen.add(spec.gin_files)
        gin.clear_config()
        flags = [sweep.gin_flag("MODEL_DIR", str(tmp_path / "run")),
                 *(sweep.gin_flag(k, v) for k, v in spec.bindings)]
        gin_utils.parse_gin(gin_files=list(spec.gin_files),
                            bindings=[f.removeprefix("--gin.") for f in flags], finalize=True)
    gin.clear_config()
    assert seen


def _train_sizes_available(setup_files) -> dict[str, int]:
    """Training items per task of a sweep's task set-up, read from the shipped data as the tasks serve them."""
    from fiat_jax.data import readers, sources, splits, synthetic, tfds_builders
    from tasks import common

    data_dir = common.default_data_dir()
    if data_dir is None:
        pytest.skip("no shared data")
    if "runs/augmented_facts.gin" in setup_files:  # documents of the synthetic world's language ('en')
        return {"synthetic_docs_en": len(synthetic.generate(seed=0, languages=("en",)).documents)}
    source = next(s for f, s in (("runs/fiat_mgsm.gin", "mgsm"), ("runs/phased_alpaca.gin", "alpaca_scored"))
                  if f in setup_files)
    spec = sources.SOURCES[source]
    return {f"{source}_{lang}": len(tfds_builders.build_splits(
        spec, data_dir, lang, seed=0, fractions=splits.DEFAULT_FRACTIONS,
        report=readers.RowReport(strict=False))["train"]) for lang in spec.languages}


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_every_sweep_asks_only_for_sizes_its_data_has(path):
    runs = _plan(path)
    available = _train_sizes_available({f for r in runs for f in r.gin_files})
    asked = max(r.params["NUM_TRAIN_EXAMPLES"] for r in runs)
    smallest = min(available, key=available.get)
    assert asked <= available[smallest], f"{path.name} asks for {asked}, {smallest} has {available[smallest]}"
