"""Compile once per shape, across processes: the persistent cache, its switches, and the compile counters."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from fiat_jax import compile_cache

TESTS_DIR = pathlib.Path(__file__).resolve().parent

# One tiny `fiat train` (toy copy task, tiny enc-dec, local_tiny overlay) in its own process.
TRAIN_SCRIPT = textwrap.dedent("""
    import functools, sys
    sys.path.insert(0, {tests!r})
    import gin
    import test_train_helpers as H
    from fiat_jax import cli
    gin.external_configurable(H.tiny_encdec, name="tiny_encdec", module="train_tests")
    gin.external_configurable(functools.partial(H.register_toy_task, "copy", n=64), name="register_toy_copy",
                              module="train_tests")
    sys.exit(cli.main(sys.argv[1:]))
""")


def _train(tmp_path: pathlib.Path, run: str, cache: str) -> dict[str, float]:
    run_gin = tmp_path / "toy_run.gin"
    run_gin.write_text("\n".join([
        "include 'runs/train.gin'",
        "train.model_factory = @train_tests.tiny_encdec",
        "train.register_tasks = @train_tests.register_toy_copy",
        "MIXTURE_OR_TASK_NAME = 'toy_copy_8_64'",
        "train.progress_bar = False",
        "train.tensorboard = False",
    ]))
    model_dir = tmp_path / run
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION", "JAX_PERSISTENT",
                                                                     "JAX_ENABLE_COMPILATION"))}
    env.pop(compile_cache.ENV_VAR, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-c", TRAIN_SCRIPT.format(tests=str(TESTS_DIR)), "train", f"--gin_file={run_gin}",
         "--gin_file=runs/local_tiny.gin", f"--gin.MODEL_DIR={model_dir}", "--gin.TRAIN_STEPS=2",
         f"--compile_cache={cache}"],
        capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    compiles = [json.loads(line) for line in (model_dir / "compile.jsonl").read_text().splitlines()]
    assert len(compiles) == 1, compiles
    rows = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in rows if r["split"] == "compile"], "compile work belongs in compile.jsonl"
    return {k.removeprefix("compile/"): v for k, v in compiles[0].items()}


@pytest.mark.slow
def test_a_second_run_compiles_nothing_the_first_compiled(tmp_path):
    cache = tmp_path / "jax_cache"
    first = _train(tmp_path, "first", str(cache))
    assert first["compiles"] >= 2 and first["requests"] >= first["compiles"]
    assert any(cache.iterdir()), "the first run wrote nothing to the cache"
    second = _train(tmp_path, "second", str(cache))
    assert second["requests"] == first["requests"]
    assert second["compiles"] == 0 and second["cache_hits"] == second["requests"], second
    assert 0.0 < first["share"] < 1.0 and second["backend_s"] < first["backend_s"]


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache._resolve(True, None) == tmp_path / "xdg" / "fiat_jax" / "jax_cache"
    assert compile_cache._resolve(False, None) is None
    monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "env"))
    assert compile_cache._resolve(True, None) == tmp_path / "env"
    assert compile_cache._resolve(True, str(tmp_path / "gin")) == tmp_path / "gin"  # gin wins over the env
    monkeypatch.setenv(compile_cache.ENV_VAR, "off")
    assert compile_cache._resolve(True, None) is None
    assert compile_cache._resolve(True, "OFF") is None


def test_configure_without_jax_sets_jax_environment(tmp_path):
    code = textwrap.dedent(f"""
        import os, sys
        from fiat_jax import compile_cache
        compile_cache.configure(cache_dir={str(tmp_path / 'c')!r})
        assert "jax" not in sys.modules
        import jax
        print(jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs,
              jax.config.jax_enable_compilation_cache)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(tmp_path / "c"), "0.0", "True"]


COUNT_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from fiat_jax import compile_cache
    compile_cache.configure(cache_dir=sys.argv[1])
    import jax
    start = compile_cache.CompileStats.start()
    f = jax.jit(lambda x: x * 3.0 + 1.0)
    f(np.ones((7, 5), np.float32)).block_until_ready()
    f(np.ones((7, 5), np.float32)).block_until_ready()  # jit's in-memory cache: no second compile request
    f(np.ones((9, 5), np.float32)).block_until_ready()  # a new shape: one more
    print(json.dumps(compile_cache.CompileStats.since(start).metrics(wall_s=100.0)))
""")


def _count(cache: str) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", COUNT_SCRIPT, cache], capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_counters_across_processes_and_the_off_switch(tmp_path):
    first = _count(str(tmp_path / "c"))
    assert first["compile/requests"] == 2 and first["compile/compiles"] == 2 and first["compile/cache_hits"] == 0
    assert 0 < first["compile/share"] < 1
    second = _count(str(tmp_path / "c"))
    assert second["compile/requests"] == 2 and second["compile/compiles"] == 0 and second["compile/cache_hits"] == 2
    off = _count("off")
    assert off["compile/compiles"] == 2 and off["compile/cache_hits"] == 0
