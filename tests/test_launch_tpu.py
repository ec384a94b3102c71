"""launch/tpu.py: dry runs print exactly the golden gcloud commands for a v4-8 and a v5e-16 slice."""
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
        ["install", "--repo=."],
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
def test_dry_run_matches_golden(accelerator):
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
