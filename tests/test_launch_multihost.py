"""launch/local.py: N JAX processes on one machine over jax.distributed (the multi-host code path).

Two training checks, each "two processes x 1 device == one process x 2 devices" on an fsdp mesh spanning both:
tests/launch_tiny_train.py, a small pure-JAX loop (written first, independent of the trainer), and
tests/launch_trainer_run.py, the real fiat_jax.train trainer on the toy copy task (seqio input sharded by process,
orbax checkpoints written by both processes).
"""
import importlib.util
import json
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_TRAIN = REPO / "tests" / "launch_tiny_train.py"


def _local():
    spec = importlib.util.spec_from_file_location("launch_local", REPO / "launch" / "local.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_process_env_gives_each_process_its_rank_and_devices():
    local = _local()
    env = local.process_env(process_id=1, num_processes=2, coordinator="127.0.0.1:1234", devices_per_process=4,
                            base_env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --foo"})
    assert env["FIAT_PROCESS_ID"] == "1" and env["FIAT_NUM_PROCESSES"] == "2"
    assert env["FIAT_COORDINATOR_ADDRESS"] == "127.0.0.1:1234" and env["JAX_PLATFORMS"] == "cpu"
    assert env["XLA_FLAGS"] == "--foo --xla_force_host_platform_device_count=4"
    gpu = local.process_env(process_id=1, num_processes=2, coordinator="c", platform="gpu", devices_per_process=2,
                            base_env={})
    assert gpu["CUDA_VISIBLE_DEVICES"] == "2,3" and "JAX_PLATFORMS" not in gpu


def test_one_failing_process_stops_the_others(tmp_path):
    local = _local()
    code = ("import os, sys, time\n"
            "print('rank', os.environ['FIAT_PROCESS_ID'], flush=True)\n"
            "sys.exit(3) if os.environ['FIAT_PROCESS_ID'] == '1' else time.sleep(60)")
    started = time.monotonic()
    codes = local.launch([sys.executable, "-c", code], num_processes=2, log_dir=tmp_path, echo=False)
    assert time.monotonic() - started < 30
    assert codes[1] == 3 and codes[0] != 0
    assert (tmp_path / "process_0.log").read_text() == "rank 0\n"


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    single = subprocess.run([sys.executable, str(TINY_TRAIN), f"--out={one}"], capture_output=True, text=True,
                            timeout=300, env={**_clean_env(), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert single.returncode == 0, single.stderr[-3000:]
    multi = subprocess.run([sys.executable, str(REPO / "launch" / "local.py"), "--num_processes=2",
                            f"--log_dir={tmp_path / 'logs'}", "--timeout_s=240", "--",
                            sys.executable, str(TINY_TRAIN), f"--out={two}"],
                           capture_output=True, text=True, timeout=300, env=_clean_env())
    assert multi.returncode == 0, multi.stdout[-3000:] + multi.stderr[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["distributed"], a["process_count"], a["device_count"]) == (False, 1, 2)
    assert (b["distributed"], b["process_count"], b["device_count"]) == (True, 2, 2)
    assert a["mesh"] == b["mesh"] == "data=1 fsdp=2 model=1 (2 devices, cpu)"
    assert b["w1_sharding"] == "P('fsdp',)"  # the parameter really is split across the two processes
    assert a["losses"][-1] < 0.5 * a["losses"][0]  # it trains
    np.testing.assert_allclose(b["losses"], a["losses"], rtol=1e-5)
    for name in a["params"]:
        np.testing.assert_allclose(np.array(b["params"][name]), np.array(a["params"][name]), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_processes_run_the_trainer_like_one(tmp_path):
    script = REPO / "tests" / "launch_trainer_run.py"
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from test_train_helpers import JAX_CACHE_ENV
    finally:
        sys.path.pop(0)
    env = {**_clean_env(), **JAX_CACHE_ENV}
    steps = 6
    # Both at once: most of their time is importing TensorFlow/seqio, not computing.
    single = subprocess.Popen([sys.executable, str(script), str(tmp_path / "one"), str(steps)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    multi = subprocess.Popen([sys.executable, str(REPO / "launch" / "local.py"), "--num_processes=2",
                              "--timeout_s=400", "--", sys.executable, str(script), str(tmp_path / "two"), str(steps)],
                             text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    single_out, multi_out = single.communicate(timeout=450)[0], multi.communicate(timeout=450)[0]
    assert single.returncode == 0, single_out[-3000:]
    assert multi.returncode == 0, multi_out[-3000:]
    assert "[p1] process 1 of 2: 2 devices, done" in multi_out

    def losses(run):
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if r.get("split") == "train"]

    assert len(losses("one")) == steps
    np.testing.assert_allclose(losses("two"), losses("one"), rtol=1e-5)
    one, two = _restore_params(tmp_path / "one"), _restore_params(tmp_path / "two")
    assert one.keys() == two.keys() and len(one) > 10
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-4, atol=1e-5, err_msg=name)


def _restore_params(model_dir: pathlib.Path) -> dict:
    """The newest checkpoint's params on one device, whatever topology wrote them."""
    import jax
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(model_dir / "checkpoints", item_names=("state", "meta"),
                                    item_handlers={"state": ocp.StandardCheckpointHandler()},
                                    options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    step = manager.latest_step()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          manager.item_metadata(step)["state"])
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    manager.close()
    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(restored.state["params"])[0]}


def _clean_env() -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("FIAT_") and k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    return env
