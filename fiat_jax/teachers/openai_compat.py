"""A teacher behind any server speaking OpenAI chat-completions (vLLM, llama.cpp server, Ollama, hosted APIs).

- Base URL and model come from gin; the API key ONLY from the environment variable whose *name* gin gives
  (``api_key_env``). The key is read per request and never kept on the object, so it is in no repr, no
  exception, no log line and no ``config.gin``; any server text we quote has it masked.
- ``check()`` (called before any work): server reachable, key accepted, model listed by ``GET /v1/models``.
- Requests run on a thread pool (``concurrency``), each with a timeout, retried with exponential backoff and full
  jitter on 429, 5xx (but not one that calls the request unsupported), connection errors, timeouts and
  malformed JSON, honouring ``Retry-After``. A prompt that still fails comes back as a
  :class:`~fiat_jax.teachers.base.Failure` from ``generate_stream`` (``generate`` raises
  :class:`~fiat_jax.teachers.base.TeacherError`).
- ``score()`` uses ``POST /v1/completions`` with ``echo`` and ``logprobs`` (vLLM supports it; many servers do
  not: they get a clear UserError). It scores the raw prompt text, without the chat template.
"""

from __future__ import annotations

import concurrent.futures
import email.utils
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import gin

from fiat_jax.errors import UserError
from fiat_jax.redact import is_env_name, looks_like_secret
from fiat_jax.teachers import base

_log = logging.getLogger(__name__)
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504}) | frozenset(range(520, 530))


class _Retryable(Exception):
    """A transient failure: retry after ``wait`` seconds (None = backoff schedule)."""

    def __init__(self, reason: str, wait: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.wait = wait


class _Fatal(Exception):
    """A failure of this prompt that retrying will not fix (e.g. 400 Bad Request); ``attempts``: requests made."""

    def __init__(self, reason: str, attempts: int = 1):
        super().__init__(reason)
        self.attempts = attempts


# A server error that names the request as unsupported (llama.cpp's server answers HTTP 500 "logprobs is not
# supported for models created with logits_all=False"): the same request fails the same way, so never retried.
_UNSUPPORTED = re.compile(r"not supported|unsupported|not implemented", re.IGNORECASE)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None when absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(attempt: int, *, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in ``[0, min(max_s, base_s * 2**attempt)]``."""
    return rng.uniform(0.0, min(max_s, base_s * (2.0 ** attempt)))


class OpenAICompatTeacher:
    """See the module docstring. ``identity`` is ``openai_compat:<model>`` unless ``name`` overrides it (the base
    URL is left out on purpose: the same model behind another host or port shares the cache)."""

    def __init__(self, *, base_url: str, model: str, api_key_env: str | None = None, concurrency: int = 8,
                 timeout_s: float = 60.0, connect_timeout_s: float = 10.0, max_retries: int = 6,
                 backoff_base_s: float = 0.5, backoff_max_s: float = 30.0, max_retry_after_s: float = 120.0,
                 check_model: bool = True, name: str | None = None, system: str | None = None,
                 extra_body: dict[str, Any] | None = None, seed: int | None = 0):
        # lazy: optional dependency: only when the OpenAI-compatible backend is used
        import httpx

        if not base_url or not str(base_url).startswith(("http://", "https://")):
            raise UserError(f"openai_compat: base_url must start with http:// or https://, got {base_url!r}")
        if not model:
            raise UserError("openai_compat: no model name (bind openai_compat_teacher.model)")
        if concurrency < 1:
            raise UserError(f"openai_compat: concurrency must be >= 1, got {concurrency}")
        if max_retries < 0:
            raise UserError(f"openai_compat: max_retries must be >= 0, got {max_retries}")
        url = str(base_url).rstrip("/")
        self.base_url = url if url.endswith("/v1") else url + "/v1"
        self.model = str(model)
        self.api_key_env = api_key_env or None
        if self.api_key_env is not None and (looks_like_secret(self.api_key_env)
                                             or not is_env_name(self.api_key_env)):
            # Never echo it: it is most likely the key itself, given where its variable's name belongs.
            raise UserError("openai_compat: api_key_env (TEACHER_API_KEY_ENV) must be the NAME of an environment "
                            "variable holding the key, and what was given is not a variable name (it looks like "
                            "the key itself, which was not printed): export OPENAI_API_KEY=<key> and pass "
                            "--gin.TEACHER_API_KEY_ENV=OPENAI_API_KEY")
        if self.api_key_env is not None and not os.environ.get(self.api_key_env):
            raise UserError(f"openai_compat: the API key variable ${self.api_key_env} is not set "
                            f"(export it, or bind openai_compat_teacher.api_key_env = None for a keyless server)")
        self.concurrency = int(concurrency)
        self.max_retries = int(max_retries)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.max_retry_after_s = float(max_retry_after_s)
        self.check_model = bool(check_model)
        self.system = system
        self.extra_body = dict(extra_body or {})
        self.seed = seed
        self._name = name
        self._client = httpx.Client(timeout=httpx.Timeout(float(timeout_s), connect=float(connect_timeout_s)),
                                    limits=httpx.Limits(max_connections=self.concurrency + 2),
                                    follow_redirects=False)
        self._rng = random.Random()
        self._rng_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.requests = 0  # HTTP requests sent (retries included)
        # httpx logs one INFO line per request (method, URL, status; never headers): keep it quiet.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("httpcore").setLevel(logging.WARNING)

    # ---- identity, secrets -------------------------------------------------------------------------------
    @property
    def identity(self) -> str:
        return self._name or f"openai_compat:{self.model}"

    def __repr__(self) -> str:
        key = f"${self.api_key_env}" if self.api_key_env else "none"
        return f"OpenAICompatTeacher(base_url={self.base_url!r}, model={self.model!r}, key={key})"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise UserError(f"openai_compat: the API key variable ${self.api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _mask(self, text: Any) -> str:
        """``text`` (server replies, exception messages) with the API key masked, cut to one short line."""
        out = " ".join(str(text).split())
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            out = out.replace(key, "***")
        return out[:300]

    # ---- HTTP --------------------------------------------------------------------------------------------
    def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One HTTP request; returns the parsed JSON. Raises _Retryable, _Fatal or UserError (config problems)."""
        # lazy: optional dependency: only when the OpenAI-compatible backend is used
        import httpx

        with self._count_lock:
            self.requests += 1
        try:
            if method == "GET":
                resp = self._client.get(self.base_url + path, headers=self._headers())
            else:
                resp = self._client.post(self.base_url + path, headers=self._headers(), json=body)
        except httpx.TimeoutException as err:
            raise _Retryable(f"timeout ({type(err).__name__})") from None
        except httpx.TransportError as err:
            raise _Retryable(f"connection error ({type(err).__name__}: {self._mask(err)})") from None
        status = resp.status_code
        if status in (401, 403):
            raise UserError(f"openai_compat: {self.base_url} refused the API key from ${self.api_key_env} "
                            f"(HTTP {status})" if self.api_key_env else
                            f"openai_compat: {self.base_url} wants an API key (HTTP {status}); bind "
                            f"openai_compat_teacher.api_key_env to the name of the variable holding it")
        if status >= 500 and _UNSUPPORTED.search(resp.text or ""):
            raise _Fatal(f"HTTP {status}: {self._mask(resp.text)}")
        if status in RETRY_STATUS:
            wait = parse_retry_after(resp.headers.get("retry-after"))
            raise _Retryable(f"HTTP {status}", None if wait is None else min(wait, self.max_retry_after_s))
        if status == 404:
            raise UserError(f"openai_compat: {self.base_url}{path} not found (HTTP 404): wrong base_url, or the "
                            f"server does not serve model {self.model!r}: {self._mask(resp.text)}")
        if status >= 400:
            raise _Fatal(f"HTTP {status}: {self._mask(resp.text)}")
        try:
            return resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            raise _Retryable(f"malformed JSON reply: {self._mask(resp.text[:80])}") from None

    def _with_retries(self, method: str, path: str, body: dict[str, Any] | None, parse) -> tuple[Any, int]:
        """``parse(json)`` of a successful reply, retried; returns (value, attempts). Raises _Fatal after the
        last retry (with the last reason) or at once on a fatal reply."""
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                return parse(self._send(method, path, body)), attempt + 1
            except _Fatal as err:
                raise _Fatal(str(err), attempts=attempt + 1) from None
            except _Retryable as err:
                last = err.reason
                if attempt == self.max_retries:
                    break
                if err.wait is not None:
                    delay = err.wait
                else:
                    with self._rng_lock:
                        delay = backoff_delay(attempt, base_s=self.backoff_base_s, max_s=self.backoff_max_s,
                                              rng=self._rng)
                _log.debug("%s: %s; retry %d in %.2f s", self.identity, last, attempt + 1, delay)
                time.sleep(delay)
        raise _Fatal(f"{last} (gave up after {self.max_retries + 1} attempts)", attempts=self.max_retries + 1)

    # ---- pre-flight --------------------------------------------------------------------------------------
    def check(self) -> None:
        """Server reachable, key accepted, ``model`` in ``GET /v1/models``: a one-line UserError otherwise."""
        # lazy: optional dependency: only when the OpenAI-compatible backend is used
        import httpx

        with self._count_lock:
            self.requests += 1
        try:
            resp = self._client.get(self.base_url + "/models", headers=self._headers())
        except httpx.TransportError as err:
            raise UserError(f"openai_compat: cannot reach {self.base_url} ({type(err).__name__}); is the server "
                            f"running?") from None
        if resp.status_code in (401, 403):
            raise UserError(f"openai_compat: {self.base_url} refused the API key from ${self.api_key_env} "
                            f"(HTTP {resp.status_code})" if self.api_key_env else
                            f"openai_compat: {self.base_url} wants an API key (HTTP {resp.status_code}); bind "
                            f"openai_compat_teacher.api_key_env")
        if not self.check_model:
            return
        if resp.status_code >= 400:
            raise UserError(f"openai_compat: GET {self.base_url}/models failed (HTTP {resp.status_code}); set "
                            f"openai_compat_teacher.check_model = False if the server lacks it")
        try:
            ids = [str(m.get("id")) for m in resp.json().get("data", [])]
        except (ValueError, AttributeError, TypeError):
            raise UserError(f"openai_compat: GET {self.base_url}/models returned no model list") from None
        if self.model not in ids:
            shown = ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else "")
            raise UserError(f"openai_compat: model {self.model!r} is not served by {self.base_url} "
                            f"(it serves: {shown or 'nothing'})")

    # ---- Teacher API -------------------------------------------------------------------------------------
    def _chat_body(self, prompt: str, max_new_tokens: int, temperature: float, stop: Sequence[str]) -> dict:
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + \
            [{"role": "user", "content": prompt}]
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": int(max_new_tokens),
                                "temperature": float(temperature)}
        if stop:
            body["stop"] = list(stop)
        if self.seed is not None:
            body["seed"] = int(self.seed)
        body.update(self.extra_body)
        return body

    @staticmethod
    def _chat_text(reply: Any) -> str:
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise _Retryable("malformed reply: no choices[0].message.content") from None
        if not isinstance(content, str):
            raise _Retryable("malformed reply: message content is not text")
        return content

    def _one(self, prompt: str, max_new_tokens: int, temperature: float, stop: Sequence[str]) -> str | base.Failure:
        try:
            text, _ = self._with_retries("POST", "/chat/completions",
                                         self._chat_body(prompt, max_new_tokens, temperature, stop), self._chat_text)
        except _Fatal as err:
            return base.Failure(str(err), attempts=err.attempts)
        return base.cut_at_stop(text, stop)

    def generate_stream(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                        stop: Sequence[str] = ()) -> Iterator[tuple[int, str | base.Failure]]:
        stop = base.check_request(max_new_tokens, temperature, stop)
        if not prompts:
            return
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.concurrency,
                                                     thread_name_prefix="openai_compat")
        try:
            futures = {pool.submit(self._one, p, max_new_tokens, temperature, stop): i
                       for i, p in enumerate(prompts)}
            for fut in concurrent.futures.as_completed(futures):
                yield futures[fut], fut.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                 stop: Sequence[str] = ()) -> list[str]:
        return base.collect(self.generate_stream(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                                                 stop=stop), len(prompts), what=self.identity)

    def score(self, prompt: str, options: Sequence[str]) -> list[float]:
        """Sum log-probability of each option's tokens after ``prompt`` (``/v1/completions``, echo + logprobs)."""
        out = []
        for option in options:
            body = {"model": self.model, "prompt": prompt + option, "max_tokens": 1, "echo": True, "logprobs": 1,
                    "temperature": 0.0}
            try:
                lp, _ = self._with_retries("POST", "/completions", body, lambda r: r["choices"][0]["logprobs"])
            except (_Fatal, KeyError, IndexError, TypeError) as err:
                raise UserError(f"openai_compat: {self.base_url} does not support scoring (completions with echo "
                                f"and logprobs): {self._mask(err)}") from None
            except UserError as err:
                if "HTTP 404" not in str(err):
                    raise
                raise UserError(f"openai_compat: {self.base_url} does not support scoring (no /completions "
                                f"endpoint for {self.model!r}); score with a local teacher instead") from None
            out.append(_option_logprob(lp, len(prompt), len(prompt) + len(option), self.base_url))
        return out

    def close(self) -> None:
        self._client.close()


def _option_logprob(logprobs: Any, start: int, end: int, where: str) -> float:
    """Sum of the echoed token log-probs whose text offsets fall in ``[start, end)``."""
    try:
        offsets, values = logprobs["text_offset"], logprobs["token_logprobs"]
    except (KeyError, TypeError):
        raise UserError(f"openai_compat: {where} returned no echoed token logprobs (text_offset, "
                        f"token_logprobs): scoring is not supported there") from None
    total, seen = 0.0, False
    for off, value in zip(offsets, values):
        if start <= int(off) < end:
            if value is None:
                raise UserError(f"openai_compat: {where} gave no logprob for an echoed option token")
            total += float(value)
            seen = True
    if not seen:
        raise UserError(f"openai_compat: {where} echoed no tokens for the option (echo unsupported?)")
    return total


@gin.configurable
def openai_compat_teacher(*, model: str, base_url: str = "http://127.0.0.1:8000/v1",
                          api_key_env: str | None = None, concurrency: int = 8, timeout_s: float = 60.0,
                          connect_timeout_s: float = 10.0, max_retries: int = 6, backoff_base_s: float = 0.5,
                          backoff_max_s: float = 30.0, max_retry_after_s: float = 120.0, check_model: bool = True,
                          name: str | None = None, system: str | None = None,
                          extra_body: dict[str, Any] | None = None, seed: int | None = 0) -> OpenAICompatTeacher:
    """An OpenAI-compatible teacher. ``api_key_env`` is the NAME of the environment variable holding the key
    (never the key itself); None for a keyless local server."""
    return OpenAICompatTeacher(base_url=base_url, model=model, api_key_env=api_key_env, concurrency=concurrency,
                               timeout_s=timeout_s, connect_timeout_s=connect_timeout_s, max_retries=max_retries,
                               backoff_base_s=backoff_base_s, backoff_max_s=backoff_max_s,
                               max_retry_after_s=max_retry_after_s, check_model=check_model, name=name,
                               system=system, extra_body=extra_body, seed=seed)
