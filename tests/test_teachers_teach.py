"""`fiat teach` end to end through the CLI (subprocesses) against the fake OpenAI-compatible server: a flaky server
(30% of calls fail: 429, 500, timeout, malformed JSON), SIGKILL mid-run then a rerun, and the API key kept out of
every log, config and file. Plus the output file's repair logic in process."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from test_teachers_openai import FLAKY, SECRET, FakeOpenAIServer

REPO = pathlib.Path(__file__).resolve().parents[1]
N = 200


def _cmd(server_url: str, out_dir: pathlib.Path, cache: pathlib.Path, data_dir: pathlib.Path, *extra: str):
    return [sys.executable, "-m", "fiat_jax.cli", "teach", "--gin_file=teachers/openai_compat.gin",
            f"--gin.TEACHER_BASE_URL={server_url}", "--gin.TEACHER_MODEL=fake-model", "--gin.TEACH_TASK=mgsm_en",
            "--gin.TEACH_SPLIT=full", f"--gin.TEACH_NUM_EXAMPLES={N}", f"--gin.OUTPUT_DIR={out_dir}",
            f"--gin.TEACHER_CACHE={cache}", f"--gin.register_all.data_dir={data_dir}",
            "--gin.openai_compat_teacher.timeout_s=0.8", "--gin.openai_compat_teacher.backoff_base_s=0.01",
            "--gin.openai_compat_teacher.backoff_max_s=0.05", *extra]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FIAT_TEST_KEY"}
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", **extra)
    return env


def _rows(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def flaky_runs(tmp_path_factory, shared_data_dir):
    """Run 1 over a flaky, key-protected server (--verbose: every log line), run 2 into a fresh output dir with the
    same cache. Returns what the tests check."""
    tmp = tmp_path_factory.mktemp("teach")
    cache = tmp / "cache" / "teacher.sqlite"
    out = {}
    with FakeOpenAIServer(fail_pattern=FLAKY, slow_s=1.5, key=SECRET) as server:
        for run, out_dir in (("first", tmp / "out1"), ("second", tmp / "out2")):
            before = server.requests
            proc = subprocess.run(
                _cmd(server.url, out_dir, cache, shared_data_dir, "--verbose",
                     "--gin.TEACHER_API_KEY_ENV='FIAT_TEST_KEY'"),
                cwd=REPO, env=_env(FIAT_TEST_KEY=SECRET), capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
            out[run] = {"requests": server.requests - before, "posts": server.posts, "log": proc.stdout + proc.stderr,
                        "dir": out_dir}
        out["auth_seen"] = set(server.auth_seen)
        out["prompts"] = list(server.prompts)
    out["tmp"] = tmp
    return out


def test_flaky_server_every_output_exactly_once(flaky_runs):
    from test_teachers_openai import fake_reply

    rows = _rows(flaky_runs["first"]["dir"] / "mgsm_en" / "full.jsonl")
    ids = [r["id"] for r in rows]
    assert len(ids) == N and len(set(ids)) == N
    assert {r["output"] for r in rows} == {fake_reply(p) for p in flaky_runs["prompts"]}
    assert all(r["teacher"] == "openai_compat:fake-model" and r["recipe"] == "fiat_reasoning" for r in rows)
    assert len({r["recipe_hash"] for r in rows}) == 1 and len(rows[0]["recipe_text_hash"]) == 64
    assert not (flaky_runs["first"]["dir"] / "mgsm_en" / "full.failures.ndjson").exists()
    # MGSM's chain-of-thought exemplars are in the prompt, then the example's question.
    assert all("Roger started with 5 balls" in p for p in flaky_runs["prompts"])


def test_flaky_server_costs_at_most_1_5_requests_per_prompt(flaky_runs):
    assert flaky_runs["first"]["requests"] <= 1.5 * N
    assert "ReadTimeout" in flaky_runs["first"]["log"] and "HTTP 429" in flaky_runs["first"]["log"]


def test_second_run_makes_zero_requests_and_writes_the_same_outputs(flaky_runs):
    assert flaky_runs["second"]["requests"] == 0
    first = {r["id"]: r for r in _rows(flaky_runs["first"]["dir"] / "mgsm_en" / "full.jsonl")}
    second = {r["id"]: r for r in _rows(flaky_runs["second"]["dir"] / "mgsm_en" / "full.jsonl")}
    assert first == second
    assert "0 teacher requests" in flaky_runs["second"]["log"]


def test_api_key_is_in_no_log_config_output_or_cache(flaky_runs):
    assert flaky_runs["auth_seen"] == {f"Bearer {SECRET}"}  # the key was used...
    secret = SECRET.encode()
    for run in ("first", "second"):
        assert SECRET not in flaky_runs[run]["log"]  # ...but is in no log line (--verbose)
    files = [p for p in flaky_runs["tmp"].rglob("*") if p.is_file()]
    assert any(p.name.endswith("config.gin") for p in files) and any("sqlite" in p.name for p in files)
    assert "FIAT_TEST_KEY" in (flaky_runs["first"]["dir"] / "mgsm_en" / "full.config.gin").read_text()
    for p in files:
        assert secret not in p.read_bytes(), p


@pytest.mark.slow  # two CLI runs, ~25 s on 2 busy cores
def test_sigkill_then_rerun_completes_without_duplicates(tmp_path, shared_data_dir):
    from fiat_jax.teachers.cache import TeacherCache

    cache = tmp_path / "cache.sqlite"
    out_dir = tmp_path / "out"
    path = out_dir / "mgsm_en" / "full.jsonl"
    log = open(tmp_path / "killed.log", "wb")
    with FakeOpenAIServer(delay_s=0.05) as server:  # 200 prompts over 2 connections: ~5 s of requests
        cmd = _cmd(server.url, out_dir, cache, shared_data_dir, "--gin.openai_compat_teacher.concurrency=2")
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if path.exists() and path.read_bytes().count(b"\n") >= 30:
                break
            time.sleep(0.02)
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()
        at_kill = path.read_bytes().count(b"\n")
        assert 30 <= at_kill < N, at_kill
        cached_at_kill = len(TeacherCache(cache))
        # Requests the killed process had already sent may still reach the server: let them drain first.
        posts_before, stable_since = server.posts, time.time()
        while time.time() - stable_since < 0.5:
            time.sleep(0.05)
            if server.posts != posts_before:
                posts_before, stable_since = server.posts, time.time()
        rerun = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        asked = server.posts - posts_before
        assert asked == N - cached_at_kill, (asked, N, cached_at_kill)  # only what the cache lacked was asked
    rows = _rows(path)  # every line is valid JSON
    assert len(rows) == N and len({r["id"] for r in rows}) == N
    c = TeacherCache(cache)
    assert c.integrity_ok() and len(c) == N


def test_torn_last_line_and_duplicates_are_repaired(tmp_path):
    from fiat_jax.errors import UserError
    from fiat_jax.teachers.materialise import read_existing

    path = tmp_path / "train.jsonl"
    row = {"id": "a", "teacher": "t", "recipe_hash": "h", "output": "x"}
    path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n" + '{"id": "b", "teacher": "t", "out')
    got = read_existing(path, teacher="t", recipe_hash="h")
    assert list(got) == ["a"] and path.read_text() == json.dumps(row) + "\n"
    with pytest.raises(UserError, match="use another OUTPUT_DIR"):
        read_existing(path, teacher="other", recipe_hash="h")


@pytest.mark.slow  # a CLI start-up (~9 s) for one line; the check itself is unit-tested in test_teachers_openai.py
def test_cli_missing_key_is_one_line_before_any_work(tmp_path, shared_data_dir):
    proc = subprocess.run(_cmd("http://127.0.0.1:9/v1", tmp_path / "out", tmp_path / "c.sqlite", shared_data_dir,
                               "--gin.TEACHER_API_KEY_ENV='FIAT_TEST_KEY'"),
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "fiat: error: openai_compat: the API key variable $FIAT_TEST_KEY is not set (export it, or bind "
        "openai_compat_teacher.api_key_env = None for a keyless server)")
    assert not (tmp_path / "out").exists()
