"""Every bad input is one clear line (exit 2), nothing on disk is damaged, nothing hangs (issue 20's cases).

Each case asserts the exit code (or the UserError the CLI turns into exit 2), the one-line message naming the
culprit, and that what was on disk before is unchanged.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

import test_train_helpers as H
from test_train_helpers import compilation_cache  # noqa: F401 (fixture)
from fiat_jax import cli, gin_utils, redact, run_dirs
from fiat_jax.errors import UserError

pytestmark = pytest.mark.usefixtures("compilation_cache")
REPO = pathlib.Path(__file__).resolve().parents[1]
XCOPA = "--gin_file=runs/xcopa_tiny.gin"


@pytest.fixture(autouse=True)
def _seqio_registry():
    import seqio

    yield
    for name in list(seqio.TaskRegistry.names()):
        if name.startswith("toy_"):
            seqio.TaskRegistry.remove(name)


def snapshot(root: pathlib.Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (what must be unchanged after a refused run)."""
    if not root.exists():
        return {}
    if root.is_file():
        return {"": root.read_bytes()}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PROGRESS_FRAME = re.compile(r"\d+%\||\d+/\d+ \[|\d+ examples \[|[\w?]+/s\]")


def one_error_line(err: str) -> str:
    """The CLI's stderr must be exactly one line, ``fiat: error: ...``, without a traceback. Progress-bar frames
    (TFDS preparing a split the first time this host reads it) are progress, not error text: they are dropped."""
    lines = []
    for line in _ANSI.sub("", err).splitlines():
        if "fiat: error: " in line:
            line = line[line.index("fiat: error: "):]
        frames = [f for f in line.split("\r") if f.strip() and not _PROGRESS_FRAME.search(f)]
        lines += frames
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("fiat: error: "), err
    return lines[0]


def _immutable(path: pathlib.Path, on: bool) -> bool:
    """Make ``path`` unwritable even for root (``chattr +i``), or writable again; False where impossible."""
    if os.geteuid() != 0:
        path.chmod(0o500 if on else 0o700)
        return True
    proc = subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True)
    return proc.returncode == 0


@contextlib.contextmanager
def unwritable(path: pathlib.Path):
    if not _immutable(path, True):
        pytest.skip("cannot make a directory unwritable here (no chattr / CAP_LINUX_IMMUTABLE)")
    try:
        yield
    finally:
        _immutable(path, False)


def _train_cli(capsys, *flags: str) -> tuple[int, str]:
    rc = cli.main(["train", XCOPA, *flags])
    return rc, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# 1. Configuration: one validation pass before any work.

@pytest.mark.parametrize("flag, expected", [
    ("--gin.train.batch_size=abc", "train.batch_size = 'abc': expected an integer >= 1"),
    ("--gin.train.batch_size=0", "train.batch_size = 0: expected an integer >= 1"),
    ("--gin.TRAIN_STEPS=ten", "TRAIN_STEPS (bound to train.train_steps) = 'ten': expected an integer >= 0"),
    ("--gin.train.checkpoint_every_steps=0", "train.checkpoint_every_steps = 0: expected an integer >= 1"),
    ("--gin.train.log_every_steps=-5", "train.log_every_steps = -5: expected an integer >= 1"),
    ("--gin.train.grad_accum_steps=2.5", "train.grad_accum_steps = 2.5: expected an integer >= 1"),
    ("--gin.train.z_loss=-1e-4", "train.z_loss = -0.0001: expected a number >= 0"),
    ("--gin.train.restore_anyway=yes", "train.restore_anyway = 'yes': expected True or False"),
    ("--gin.train.compute_dtype=bf16", "train.compute_dtype = 'bf16': expected one of 'bfloat16', 'float16', "
                                       "'float32' or None"),
    ("--gin.TASK_FEATURE_LENGTHS={'inputs':64,'targets':0}",
     "TASK_FEATURE_LENGTHS (bound to train.task_feature_lengths) = {'inputs': 64, 'targets': 0}: expected a dict "
     "of feature name -> integer >= 1"),
    ("--gin.train.batch_size=6", "train.batch_size 6 is not divisible by train.grad_accum_steps 4"),
])
def test_bad_values_are_one_line_naming_the_binding_before_any_work(tmp_path, capsys, flag, expected):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    (model_dir / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    extra = ["--gin.train.grad_accum_steps=4"] if "divisible" in expected else []
    start = time.perf_counter()
    rc, err = _train_cli(capsys, f"--gin.MODEL_DIR={model_dir}", flag, *extra)
    assert rc == 2
    assert one_error_line(err) == f"fiat: error: {expected}"
    assert snapshot(tmp_path) == before
    assert time.perf_counter() - start < 30  # refused before tasks, models or compilation


def test_good_values_pass_the_checks_unchanged_or_normalised():
    checks = {"n": gin_utils.integer(min=1), "x": gin_utils.number(min=0, optional=True),
              "flag": gin_utils.boolean(), "mode": gin_utils.one_of("min", "max")}
    out = gin_utils.check_arguments("f", {"n": 4.0, "x": None, "flag": False, "mode": "max", "other": object},
                                    checks)
    assert out["n"] == 4 and isinstance(out["n"], int) and out["x"] is None and out["flag"] is False
    with pytest.raises(UserError, match=r"^f.n = True: expected an integer >= 1$"):
        gin_utils.check_arguments("f", {"n": True}, checks)  # a bool is not an integer here


@pytest.mark.slow  # one real CLI process (the import of jax/TF/seqio dominates)
def test_bad_value_exit_code_from_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fiat_jax.cli", "train", XCOPA, f"--gin.MODEL_DIR={tmp_path}/r",
                           "--gin.TRAIN_STEPS=ten"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
                              str(REPO), os.environ.get("PYTHONPATH", "")]))))
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("fiat: error:")]
    assert errors == ["fiat: error: TRAIN_STEPS (bound to train.train_steps) = 'ten': expected an integer >= 0"]
    assert "Traceback" not in proc.stderr and not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------------------------
# 2. Run directories.

def test_model_dir_that_is_a_file(tmp_path, capsys):
    model_dir = tmp_path / "run"
    model_dir.write_text("a file")
    rc, err = _train_cli(capsys, f"--gin.MODEL_DIR={model_dir}")
    assert rc == 2
    assert one_error_line(err) == f"fiat: error: MODEL_DIR {model_dir} is a file, not a directory"
    assert model_dir.read_text() == "a file"


def test_model_dir_under_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    rc, err = _train_cli(capsys, f"--gin.MODEL_DIR={tmp_path / 'f' / 'run'}")
    assert rc == 2
    assert one_error_line(err) == (f"fiat: error: MODEL_DIR {tmp_path / 'f' / 'run'} cannot be created: "
                                   f"{tmp_path / 'f'} is a file, not a directory")


def test_unwritable_model_dir(tmp_path, capsys):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    before = snapshot(tmp_path)
    with unwritable(model_dir):
        rc, err = _train_cli(capsys, f"--gin.MODEL_DIR={model_dir}")
    assert rc == 2
    line = one_error_line(err)
    assert line.startswith(f"fiat: error: MODEL_DIR {model_dir} is not writable (")
    assert snapshot(tmp_path) == before


def test_writable_dir_check_leaves_nothing_behind(tmp_path):
    run_dirs.check_writable_dir(tmp_path / "a" / "b", what="MODEL_DIR")
    run_dirs.check_writable_dir(tmp_path, what="MODEL_DIR")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # trains a toy model (a few compiles)
def test_checkpoint_save_failing_mid_run_stops_promptly_keeping_the_last_good_one(tmp_path):
    """The checkpoint directory turns unwritable during the run (after step 2's save): the step-4 save fails at
    once (no 300 s wait), step 2 stays intact, metrics.jsonl holds no row past it, and a later run resumes there."""
    from fiat_jax.train import checkpoints

    model_dir = tmp_path / "run"
    ckpt_dir = model_dir / "checkpoints"
    flipped = []

    def lock_checkpoints(*, model, step, model_dir):  # noqa: ARG001 (the eval hook as a fault injector)
        if step == 3 and not flipped:
            if not _immutable(ckpt_dir, True):
                pytest.skip("cannot make a directory unwritable here")
            flipped.append(step)
        return {"probe": 0.0}

    start = time.perf_counter()
    try:
        with pytest.raises(checkpoints.CheckpointSaveError,
                           match=r"^saving checkpoint step 4 to .* failed \(.*\); stopped\. Last good checkpoint: "
                                 r"step 2"):
            H.toy_train(str(model_dir), 8, checkpoint_every_steps=2, async_checkpointing=False,
                        eval_fn=lock_checkpoints, eval_every_steps=3)
    finally:
        _immutable(ckpt_dir, False)
    assert time.perf_counter() - start < 60
    assert sorted(p.name for p in ckpt_dir.iterdir() if p.name.isdigit()) == ["2"]
    rows = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    again = H.toy_train(str(model_dir), 6, checkpoint_every_steps=2)
    rows = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert again.step == 6 and [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


# ---------------------------------------------------------------------------------------------------------------
# 3. Restores write nothing until they succeed; "does not fit" is not "unreadable".

@pytest.mark.slow  # trains a toy model (a few compiles)
def test_restore_anyway_into_another_shape_writes_nothing_and_says_it_does_not_fit(tmp_path, capfd, caplog):
    from fiat_jax.train import checkpoints

    model_dir = tmp_path / "run"
    H.toy_train(str(model_dir), 2, checkpoint_every_steps=2)
    before = snapshot(model_dir)
    capfd.readouterr()
    wider = functools.partial(H.tiny_encdec, d_model=48)
    with pytest.raises(checkpoints.CheckpointMismatchError,
                       match=r"^checkpoint step 2 in .* does not fit this model \(.*: checkpoint shape \(.*32.*\), "
                             r"model shape \(.*48.*\)\)"):
        H.toy_train(str(model_dir), 4, factory=wider, restore_anyway=True)
    out = capfd.readouterr()
    assert "Event loop is closed" not in out.err + out.out + caplog.text
    assert snapshot(model_dir) == before  # fingerprint.json, config.gin, metrics.jsonl, checkpoints untouched
    assert H.toy_train(str(model_dir), 4, checkpoint_every_steps=2).step == 4  # its own model still resumes


# ---------------------------------------------------------------------------------------------------------------
# 4. Exactly-once metrics rows across resumes.

@pytest.mark.slow  # trains a toy model (a few compiles)
def test_unwritable_checkpoints_refused_at_once_then_rows_past_the_restored_step_dropped(tmp_path):
    """(One toy run serves both cases.) A checkpoint directory made unwritable before a resume is refused before
    any work, everything left as it was; then a resume drops the rows a killed run logged past its checkpoint."""
    import shutil

    model_dir = tmp_path / "run"
    H.toy_train(str(model_dir), 6, checkpoint_every_steps=4)
    before = snapshot(model_dir)
    start = time.perf_counter()
    with unwritable(model_dir / "checkpoints"):
        with pytest.raises(UserError, match=rf"^checkpoint directory {model_dir / 'checkpoints'} is not writable"):
            H.toy_train(str(model_dir), 8, checkpoint_every_steps=4)
    assert time.perf_counter() - start < 30
    assert snapshot(model_dir) == before

    shutil.rmtree(model_dir / "checkpoints" / "6")  # as if killed after logging steps 5-6, before their save
    with open(model_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "spl')  # and a torn last line
    H.toy_train(str(model_dir), 8, checkpoint_every_steps=4)
    steps = [json.loads(line)["step"] for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]


# ---------------------------------------------------------------------------------------------------------------
# 5. Secrets, the teacher's first request, the progress bar.

KEY = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"


def test_secret_looking_values_are_recognised_and_redacted():
    for secret in (KEY, "hf_abcdefghijklmnopqrstuvwxyz12", "ghp_" + "a1B2" * 6, "Zx81kLmq0Pw9Rt7Uv5Ys3Ab1Cd4Ef6Gh"):
        assert redact.looks_like_secret(secret), secret
        assert secret not in redact.redact(f"the API key variable ${secret} is not set")
    for harmless in ("OPENAI_API_KEY", "/tmp/fiat/xcopa_tiny/checkpoints", "train.batch_size = 'abc'",
                     "0123456789abcdef0123456789abcdef", "fiat_xcopa-train.tfrecord-00000-of-00001"):
        assert not redact.looks_like_secret(harmless), harmless
        assert redact.redact(harmless) == harmless


def test_teach_never_prints_a_key_given_as_the_variable_name(tmp_path, capsys, shared_data_dir):
    out_dir = tmp_path / "out"
    rc = cli.main(["teach", "--gin_file=teachers/openai_compat.gin", "--gin.TEACHER_MODEL=fake-model",
                   "--gin.TEACH_TASK=mgsm_en", f"--gin.OUTPUT_DIR={out_dir}", f"--gin.TEACHER_API_KEY_ENV={KEY}",
                   f"--gin.register_all.data_dir={shared_data_dir}", f"--gin.TEACHER_CACHE={tmp_path / 'c.sqlite'}"])
    captured = capsys.readouterr()
    assert rc == 2
    line = one_error_line(captured.err)
    assert "api_key_env (TEACHER_API_KEY_ENV) must be the NAME of an environment variable" in line
    assert KEY not in captured.err + captured.out and KEY[8:] not in captured.err
    assert not out_dir.exists()


def test_cli_redacts_a_secret_in_any_error_line(capsys):
    rc = cli.main(["train", f"--gin.{KEY}"])  # a malformed flag that echoes what was typed
    assert rc == 2
    err = capsys.readouterr().err
    assert KEY not in err and "***" in err


def test_teach_refused_key_leaves_the_previous_config_and_outputs_as_they_were(tmp_path, capsys, shared_data_dir):
    from test_teachers_openai import FakeOpenAIServer

    task_dir = tmp_path / "out" / "mgsm_en"
    task_dir.mkdir(parents=True)
    (task_dir / "full.config.gin").write_text("# the previous run's config\n")
    before = snapshot(tmp_path / "out")
    with FakeOpenAIServer(key="the-right-key") as server:
        os.environ["FIAT_TEST_WRONG_KEY"] = "the-wrong-key"
        try:
            rc = cli.main(["teach", "--gin_file=teachers/openai_compat.gin", f"--gin.TEACHER_BASE_URL={server.url}",
                           "--gin.TEACHER_MODEL=fake-model", "--gin.TEACH_TASK=mgsm_en", "--gin.TEACH_SPLIT=full",
                           "--gin.TEACH_NUM_EXAMPLES=3", f"--gin.OUTPUT_DIR={tmp_path / 'out'}",
                           "--gin.TEACHER_API_KEY_ENV='FIAT_TEST_WRONG_KEY'",
                           "--gin.openai_compat_teacher.check_model=False",
                           f"--gin.register_all.data_dir={shared_data_dir}",
                           f"--gin.TEACHER_CACHE={tmp_path / 'c.sqlite'}", "--gin.teach.progress=False"])
        finally:
            del os.environ["FIAT_TEST_WRONG_KEY"]
    assert rc == 2
    assert "refused the API key from $FIAT_TEST_WRONG_KEY (HTTP 401)" in one_error_line(capsys.readouterr().err)
    assert snapshot(tmp_path / "out") == before


def test_teach_output_dir_that_is_a_file(tmp_path, capsys, shared_data_dir):
    out = tmp_path / "out"
    out.write_text("a file")
    rc = cli.main(["teach", "--gin_file=teachers/openai_compat.gin", "--gin.TEACHER_MODEL=fake-model",
                   "--gin.TEACH_TASK=mgsm_en", f"--gin.OUTPUT_DIR={out}",
                   f"--gin.register_all.data_dir={shared_data_dir}", f"--gin.TEACHER_CACHE={tmp_path / 'c.sqlite'}"])
    assert rc == 2
    assert one_error_line(capsys.readouterr().err) == f"fiat: error: OUTPUT_DIR {out} is a file, not a directory"
    assert out.read_text() == "a file"


@pytest.mark.slow  # trains a toy model
def test_teach_unwritable_output_dir_and_cache_dir(tmp_path, capsys, shared_data_dir):
    locked = tmp_path / "locked"
    locked.mkdir()
    common = ["teach", "--gin_file=teachers/openai_compat.gin", "--gin.TEACHER_MODEL=fake-model",
              "--gin.TEACH_TASK=mgsm_en", f"--gin.register_all.data_dir={shared_data_dir}"]
    with unwritable(locked):
        rc = cli.main([*common, f"--gin.OUTPUT_DIR={locked}", f"--gin.TEACHER_CACHE={tmp_path / 'c.sqlite'}"])
        assert rc == 2
        line = one_error_line(capsys.readouterr().err)
        assert line.startswith(f"fiat: error: OUTPUT_DIR {locked} is not writable (")
        import gin

        gin.clear_config()
        rc = cli.main([*common, f"--gin.OUTPUT_DIR={tmp_path / 'out'}",
                       f"--gin.TEACHER_CACHE={locked / 'sub' / 'c.sqlite'}"])
        assert rc == 2
        line = one_error_line(capsys.readouterr().err)
        assert line.startswith(f"fiat: error: teacher cache directory {locked / 'sub'} cannot be created: {locked} "
                               f"is not writable (")
    assert list(locked.iterdir()) == [] and not (tmp_path / "out").exists()


def test_diverged_run_closes_the_progress_bar_before_its_error(tmp_path, capfd):
    import test_train_loop as L
    from fiat_jax.train import trainer

    name = H.register_toy_task("copy", n=512)
    with pytest.raises(trainer.TrainingDivergedError):
        trainer.train(model_dir=str(tmp_path / "run"), train_steps=10, mixture_or_task_name=name,
                      task_feature_lengths={"inputs": 9, "targets": 9}, model_factory=H.tiny_encdec, batch_size=16,
                      num_devices=1, optimizer=L._nan_after(3), checkpoint_every_steps=100, log_every_steps=1,
                      progress_bar=True, tensorboard=False)
    err = capfd.readouterr().err
    assert "train:" in err and err.endswith("\n"), repr(err[-200:])  # the next message starts on its own line
