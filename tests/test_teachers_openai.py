"""The OpenAI-compatible teacher against a fake server on 127.0.0.1 (http.server in a thread): retries with
backoff on 429 / 5xx / timeouts / malformed JSON, Retry-After, the pre-flight checks, the API key kept secret.

``FakeOpenAIServer`` is shared with test_teachers_teach.py."""
from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time

import pytest

from fiat_jax.errors import UserError

SECRET = "sk-test-9f8e7d6c5b4a-DO-NOT-LEAK"


def fake_reply(prompt: str) -> str:
    """What the fake model answers: a deterministic function of the prompt."""
    return f"Reasoning {hashlib.sha256(prompt.encode()).hexdigest()[:10]}. The answer is 7."


class FakeOpenAIServer:
    """A tiny OpenAI-compatible server. ``fail_pattern``: for POST number n (1-based), ``fail_pattern[n % len]``
    is None (answer) or one of '429', '500', 'timeout', 'malformed', 'nochoices'. Counts every request."""

    def __init__(self, *, models=("fake-model",), key: str | None = None, fail_pattern=(None,),
                 slow_s: float = 1.0, delay_s: float = 0.0, retry_after: str | None = "0", echo: bool = False):
        self.models = list(models)
        self.echo = echo
        self.key = key
        self.fail_pattern = list(fail_pattern)
        self.slow_s = slow_s
        self.delay_s = delay_s
        self.retry_after = retry_after
        self.lock = threading.Lock()
        self.requests = 0
        self.posts = 0
        self.prompts: list[str] = []
        self.auth_seen: set[str] = set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status, body: bytes, headers=()):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in headers:
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _authorised(self) -> bool:
                auth = self.headers.get("Authorization")
                with server.lock:
                    server.auth_seen.add(str(auth))
                if server.key is not None and auth != f"Bearer {server.key}":
                    self._send(401, b'{"error": {"message": "bad key"}}')
                    return False
                return True

            def do_GET(self):
                with server.lock:
                    server.requests += 1
                if not self._authorised():
                    return
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, json.dumps({"object": "list", "data": [
                        {"id": m, "object": "model"} for m in server.models]}).encode())
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with server.lock:
                    server.requests += 1
                    server.posts += 1
                    n = server.posts
                if not self._authorised():
                    return
                mode = server.fail_pattern[n % len(server.fail_pattern)]
                if server.delay_s:
                    time.sleep(server.delay_s)
                if mode == "429":
                    hdr = [("Retry-After", server.retry_after)] if server.retry_after is not None else []
                    return self._send(429, b'{"error": "slow down"}', hdr)
                if mode == "500":
                    return self._send(500, b'{"error": "boom"}')
                if mode == "timeout":
                    time.sleep(server.slow_s)
                    return self._send(500, b'{"error": "too late"}')
                if mode == "malformed":
                    return self._send(200, b'{"choices": [{"message": {"content": "tru')
                if mode == "nochoices":
                    return self._send(200, b'{"object": "chat.completion"}')
                if self.path.rstrip("/") == "/v1/chat/completions":
                    if body.get("model") not in server.models:
                        return self._send(404, b'{"error": "model not found"}')
                    prompt = body["messages"][-1]["content"]
                    with server.lock:
                        server.prompts.append(prompt)
                    reply = {"id": "x", "object": "chat.completion", "model": body["model"], "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": fake_reply(prompt)},
                         "finish_reason": "stop"}]}
                    return self._send(200, json.dumps(reply).encode())
                if self.path.rstrip("/") == "/v1/completions" and server.echo and body.get("echo"):
                    text = body["prompt"]  # one "token" per character, log-prob -0.1 each (None for the first)
                    lp = {"tokens": list(text), "text_offset": list(range(len(text))),
                          "token_logprobs": [None] + [-0.1] * (len(text) - 1)}
                    return self._send(200, json.dumps({"choices": [{"text": text, "logprobs": lp}]}).encode())
                return self._send(404, b'{"error": "not found"}')

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


FLAKY = (None, "429", None, None, "500", None, None, "timeout", None, None,
         None, "malformed", None, None, "nochoices", None, None, "429", None, None)  # 30% of calls fail


def _teacher(url, **kw):
    from fiat_jax.teachers.openai_compat import OpenAICompatTeacher

    kw.setdefault("timeout_s", 0.3)
    kw.setdefault("backoff_base_s", 0.01)
    kw.setdefault("backoff_max_s", 0.05)
    return OpenAICompatTeacher(base_url=url, model=kw.pop("model", "fake-model"), **kw)


def test_generate_retries_through_flaky_server_and_keeps_order():
    with FakeOpenAIServer(fail_pattern=FLAKY, slow_s=1.0) as server:
        teacher = _teacher(server.url, concurrency=4, timeout_s=0.5)
        prompts = [f"question {i}" for i in range(40)]
        teacher.check()
        assert teacher.generate(prompts, max_new_tokens=16) == [fake_reply(p) for p in prompts]
        assert server.posts <= 1.6 * len(prompts)  # 30% fail: ~1.43 requests per prompt
        assert teacher.requests == server.requests


def test_persistent_failure_becomes_a_failure_not_an_output():
    from fiat_jax.teachers.base import Failure, TeacherError

    with FakeOpenAIServer(fail_pattern=("malformed",)) as server:
        teacher = _teacher(server.url, max_retries=2)
        (i, res), = list(teacher.generate_stream(["q"], max_new_tokens=4))
        assert isinstance(res, Failure) and "malformed" in res.reason and res.attempts == 3
        assert server.posts == 3
        with pytest.raises(TeacherError, match="1 of 1 prompts failed"):
            teacher.generate(["q"], max_new_tokens=4)


def test_retry_after_is_honoured():
    with FakeOpenAIServer(fail_pattern=(None, "429"), retry_after="1") as server:
        teacher = _teacher(server.url, backoff_max_s=0.0)
        start = time.perf_counter()
        assert teacher.generate(["q"], max_new_tokens=4) == [fake_reply("q")]
        assert time.perf_counter() - start >= 0.9  # waited as told, not the (zero) backoff


def test_parse_retry_after_forms():
    from fiat_jax.teachers.openai_compat import parse_retry_after

    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 2) == pytest.approx(2.0)


def test_preflight_errors_are_one_line_before_any_work(monkeypatch):
    from fiat_jax.teachers.openai_compat import OpenAICompatTeacher

    with FakeOpenAIServer(models=["real-model"]) as server:
        with pytest.raises(UserError, match="model 'wrong' is not served by .*it serves: real-model"):
            _teacher(server.url, model="wrong").check()
        assert server.posts == 0
    with pytest.raises(UserError, match="cannot reach http://127.0.0.1:9/v1"):
        _teacher("http://127.0.0.1:9/v1").check()
    monkeypatch.delenv("FIAT_TEST_MISSING_KEY", raising=False)
    with pytest.raises(UserError, match=r"\$FIAT_TEST_MISSING_KEY is not set"):
        OpenAICompatTeacher(base_url="http://127.0.0.1:9", model="m", api_key_env="FIAT_TEST_MISSING_KEY")


def test_wrong_key_is_a_user_error_that_does_not_quote_the_key(monkeypatch):
    monkeypatch.setenv("FIAT_TEST_KEY", SECRET)
    with FakeOpenAIServer(key="another-key") as server:
        teacher = _teacher(server.url, api_key_env="FIAT_TEST_KEY")
        with pytest.raises(UserError) as err:
            teacher.check()
        assert "refused the API key from $FIAT_TEST_KEY" in str(err.value) and SECRET not in str(err.value)
        assert SECRET not in repr(teacher) and SECRET not in str(vars(teacher))
    with FakeOpenAIServer(key=SECRET) as server:
        teacher = _teacher(server.url, api_key_env="FIAT_TEST_KEY")
        teacher.check()
        assert teacher.generate(["q"], max_new_tokens=4) == [fake_reply("q")]
        assert server.auth_seen == {f"Bearer {SECRET}"}


def test_score_unsupported_is_a_clear_user_error():
    with FakeOpenAIServer() as server:
        with pytest.raises(UserError, match="does not support scoring"):
            _teacher(server.url).score("2 + 2 =", [" 4", " 5"])


def test_score_through_completions_echo():
    with FakeOpenAIServer(echo=True) as server:
        assert _teacher(server.url).score("2 + 2 =", [" 4", " 42"]) == pytest.approx([-0.2, -0.3])


def test_score_sums_echoed_option_logprobs():
    from fiat_jax.teachers.openai_compat import _option_logprob

    lp = {"text_offset": [0, 3, 6, 8], "token_logprobs": [None, -1.0, -0.5, -0.25], "tokens": ["2 +", " 2 =", " 4", "!"]}
    assert _option_logprob(lp, 6, 8, "x") == -0.5
    assert _option_logprob(lp, 6, 9, "x") == -0.75
