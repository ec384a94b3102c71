"""launch/tpu.py: dry runs print exactly the golden gcloud commands for a v4-8 and a v5e-16 slice (the data
directory going to every worker included)."""
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"


def _dry_run(accelerator: str) -> str:
    name, zone = f"fiat-{accelerator}", "us-central2-b"
    common = [f"--name={name}", f"--zone={zone}", "--project=my-project", "--dry_run"]
    steps = [
        ["create", f"--accelerator={accelerator}", "--spot"],
        ["install", "--repo=.", "--data_dir=../shared/data"],
        ["run", "--run_name=copy", "--", "fiat", "train", "--gin_file=runs/copy_tiny.gin",
         "--gin.MODEL_DIR=gs://my-bucket/copy"],
        ["logs", "--run_name=copy"],
        ["delete"],
    ]
    out = []
    for step in steps:
        argv = [sys.executable, "launch/tpu.py", step[0], *common, *step[1:]]
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        out.append(proc.stdout)
    return "".join(out)


@pytest.mark.parametrize("accelerator", ["v4-8", "v5e-16"])
def test_dry_run_matches_golden(accelerator, shared_data_dir):
    golden = (GOLDEN / f"launch_tpu_{accelerator}.txt").read_text()
    assert _dry_run(accelerator) == golden


def test_accelerator_names_and_hosts():
    sys.path.insert(0, str(REPO / "launch"))
    try:
        import tpu
    finally:
        sys.path.pop(0)
    assert tpu.parse_accelerator("v4-8")[0::2] == ("v4-8", 1)
    assert tpu.parse_accelerator("v4-32")[0::2] == ("v4-32", 4)
    assert tpu.parse_accelerator("v5e-16")[0::2] == ("v5litepod-16", 4)
    assert tpu.parse_accelerator("v5litepod-8")[0::2] == ("v5litepod-8", 1)
    assert tpu.parse_accelerator("v5e-16")[1].runtime == "v2-alpha-tpuv5-lite"
    for bad in ("v9-8", "tpu", "v5e-18"):
        with pytest.raises(ValueError):
            tpu.parse_accelerator(bad)


def test_bad_accelerator_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, "launch/tpu.py", "create", "--name=x", "--zone=z", "--accelerator=v9-8",
                           "--dry_run"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "unknown generation" in proc.stderr


def _install(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch/tpu.py", "install", "--name=x", "--zone=z", "--dry_run", *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def test_install_ships_the_data_to_every_worker(shared_data_dir):
    proc = _install("--repo=.")  # default: ../shared/data beside the checkout
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("tar -czf /tmp/fiat_jax-x-data.tar.gz -C ") for line in lines)
    assert any("fiat_data.tar.gz" in line and "scp" in line and "--worker=all" in line for line in lines)
    assert "tar -xzf ~/fiat_data.tar.gz -C ~/shared/data" in lines[-1] and "--worker=all" in lines[-1]
    assert "-> ~/shared/data on every worker" in proc.stderr


def test_install_syncs_a_bucket_or_ships_no_data():
    proc = _install("--data_dir=gs://my-bucket/fiat-data")
    assert proc.returncode == 0, proc.stderr
    assert "gcloud storage rsync --recursive gs://my-bucket/fiat-data ~/shared/data" in proc.stdout
    assert "fiat_data.tar.gz" not in proc.stdout
    proc = _install("--no_data")
    assert proc.returncode == 0 and "shared/data" not in proc.stdout and "data: none" in proc.stderr


def test_install_with_a_missing_data_dir_is_one_line_exit_2(tmp_path):
    proc = _install(f"--data_dir={tmp_path / 'nope'}")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
