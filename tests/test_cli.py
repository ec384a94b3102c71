"""The gin-driven CLI: flags, search paths, REQUIRED macros and one-line errors with exit code 2."""
import pathlib
import subprocess
import sys

import gin
import pytest

from fiat_jax import cli, gin_utils, partitioning
from fiat_jax.errors import UserError

CALLS: list[dict] = []


@gin.configurable
def fake_job(*, model_dir: str, steps: int = 1, mesh_spec: str = "data=-1", lengths=None):
    """A tiny gin entry point standing in for train/eval."""
    partitioning.make_mesh(mesh_spec)
    CALLS.append(dict(model_dir=model_dir, steps=steps, lengths=lengths))
    gin_utils.write_operative_config(model_dir)


@pytest.fixture
def fake_command(monkeypatch, tmp_path):
    CALLS.clear()
    monkeypatch.setitem(cli.COMMANDS, "train", cli.Command(f"{__name__}:fake_job", "fake", "fiat train"))
    gin_dir = tmp_path / "configs"
    gin_dir.mkdir()
    (gin_dir / "job.gin").write_text(
        "MODEL_DIR = %gin.REQUIRED\nTRAIN_STEPS = 3\n"
        "fake_job.model_dir = %MODEL_DIR\nfake_job.steps = %TRAIN_STEPS\n")
    return gin_dir


def test_gin_file_search_and_overrides(fake_command, tmp_path):
    run_dir = tmp_path / "run"
    rc = cli.main(["train", "--gin_search_paths", str(fake_command), "--gin_file=job.gin",
                   f"--gin.MODEL_DIR={run_dir}", "--gin.TRAIN_STEPS=7",
                   "--gin.fake_job.lengths={'inputs': 64, 'targets': 16}"])
    assert rc == 0
    assert CALLS == [dict(model_dir=str(run_dir), steps=7, lengths={"inputs": 64, "targets": 16})]
    written = (run_dir / "config.gin").read_text()
    assert "fake_job.steps = 7" in written or "TRAIN_STEPS = 7" in written


def _error_of(capsys, argv):
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def test_missing_required_macro(fake_command, capsys):
    rc, err = _error_of(capsys, ["train", "--gin_search_paths", str(fake_command), "--gin_file=job"])
    assert rc == 2 and len(err) == 1
    assert "MODEL_DIR" in err[0] and "--gin.MODEL_DIR=" in err[0]


def test_unknown_binding_names_it(fake_command, capsys):
    rc, err = _error_of(capsys, ["train", "--gin_search_paths", str(fake_command), "--gin_file=job",
                                 "--gin.MODEL_DIR=/tmp/x", "--gin.fake_job.no_such_param=3"])
    assert rc == 2 and len(err) == 1 and "no_such_param" in err[0]


def test_unknown_configurable_in_file_names_the_file(fake_command, capsys):
    (fake_command / "bad.gin").write_text("not_a_configurable.x = 1\n")
    rc, err = _error_of(capsys, ["train", "--gin_search_paths", str(fake_command), "--gin_file=bad.gin"])
    assert rc == 2 and len(err) == 1
    assert "bad.gin" in err[0] and "not_a_configurable" in err[0]


def test_gin_file_not_found(fake_command, capsys):
    rc, err = _error_of(capsys, ["train", "--gin_file=nowhere/missing.gin"])
    assert rc == 2 and len(err) == 1 and "missing.gin" in err[0] and "not found" in err[0]


@pytest.mark.parametrize("flag", ["--gin.=3", "--gin.MODEL_DIR", "--gin.MODEL DIR=3", "--gin.X="])
def test_malformed_binding(fake_command, capsys, flag):
    rc, err = _error_of(capsys, ["train", "--gin_search_paths", str(fake_command), "--gin_file=job", flag])
    assert rc == 2 and len(err) == 1 and "malformed" in err[0]


def test_mesh_spec_that_does_not_divide_devices(fake_command, capsys):
    rc, err = _error_of(capsys, ["train", "--gin_search_paths", str(fake_command), "--gin_file=job",
                                 "--gin.MODEL_DIR=/tmp/x", "--gin.fake_job.mesh_spec='data=3'"])
    assert rc == 2 and len(err) == 1 and "data=3" in err[0]


def test_verbose_shows_the_traceback(fake_command):
    with pytest.raises(UserError):
        cli.main(["train", "--verbose", "--gin_search_paths", str(fake_command), "--gin_file=job"])


def test_subcommand_without_implementation_exits_2(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "run", cli.Command("fiat_jax.no_such_module:run", "x", "fiat run"))
    rc, err = _error_of(capsys, ["run"])
    assert rc == 2 and "not available yet" in err[0]


def test_binding_values():
    assert gin_utils.binding_from_flag("MODEL_DIR=/tmp/a b") == "MODEL_DIR = '/tmp/a b'"
    assert gin_utils.binding_from_flag("train.steps=10") == "train.steps = 10"
    assert gin_utils.binding_from_flag("X=@foo()") == "X = @foo()"
    assert gin_utils.binding_from_flag("X='quoted'") == "X = 'quoted'"


def test_every_subcommand_has_help_and_example():
    parser = cli.build_parser()
    assert set(cli.COMMANDS) == {"run", "train", "eval", "generate", "teach", "sweep", "report", "tasks", "export"}
    for command in cli.COMMANDS.values():
        assert command.example.startswith("fiat ")
    assert parser.format_help()


def test_console_script_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "fiat_jax.cli", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "generate" in out.stdout


@gin.configurable
def job_importing_late(*, model_dir: str, module_dir: str):
    """Imports, mid-run, a module that registers its own configurable (a model family or teacher loaded lazily)."""
    sys.path.insert(0, module_dir)
    try:
        import late_configurable_module
    finally:
        sys.path.remove(module_dir)
    CALLS.append(dict(model_dir=model_dir, value=late_configurable_module.late_default()))


def test_lazily_imported_configurables_register_during_the_run(monkeypatch, tmp_path, caplog):
    CALLS.clear()
    (tmp_path / "late_configurable_module.py").write_text(
        "import gin\n\n@gin.configurable\ndef late_default(*, value=5):\n    return value\n")
    monkeypatch.setitem(cli.COMMANDS, "train", cli.Command(f"{__name__}:job_importing_late", "fake", "fiat train"))
    configs = tmp_path / "configs"
    (configs / "sub").mkdir(parents=True)
    (configs / "sub" / "base.gin").write_text("MODEL_DIR = %gin.REQUIRED\n")
    (configs / "job.gin").write_text(f"include 'sub/base.gin'\njob_importing_late.model_dir = %MODEL_DIR\n"
                                     f"job_importing_late.module_dir = '{tmp_path}'\n")
    with caplog.at_level("ERROR"):
        rc = cli.main(["train", "--gin_search_paths", str(configs), "--gin_file=job.gin",
                       f"--gin.MODEL_DIR={tmp_path / 'run'}"])
    assert rc == 0
    assert CALLS == [dict(model_dir=str(tmp_path / "run"), value=5)]
    # gin tries each search path for an include; the misses before the hit are not errors to show
    assert not [r for r in caplog.records if "Path not found" in r.getMessage()]
