"""End to end: the embedded SmolLM2-135M-Instruct answers a chat-formatted question, streamed as it goes."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import pytest

from fiat_jax.models import embedded, generate


@pytest.fixture(scope="module")
def smollm():
    try:
        embedded.embedded_gguf_path()
    except Exception as err:  # noqa: BLE001 - package missing on this machine
        pytest.skip(str(err))
    start = time.perf_counter()
    pre = embedded.load_embedded()
    load_s = time.perf_counter() - start
    return pre, load_s


def test_embedded_loads_in_seconds_and_is_cached(smollm):
    pre, load_s = smollm
    assert load_s < 30, load_s
    assert pre.config.__class__.__name__ == "DecoderConfig"
    start = time.perf_counter()
    assert embedded.load_embedded() is pre
    assert time.perf_counter() - start < 0.1


@pytest.mark.slow
def test_greedy_answer_mentions_paris_and_streams(smollm):
    pre, _ = smollm
    out = io.StringIO()
    writes = []

    class Recorder(io.StringIO):
        def write(self, s):
            writes.append(s)
            return out.write(s)

    answer = generate.generate(prompt="What is the capital of France?", max_new_tokens=16, temperature=0.0,
                               stream=Recorder())
    assert "Paris" in answer
    assert out.getvalue().strip() == answer.strip()
    assert len([w for w in writes if w.strip()]) > 2  # printed piece by piece, not at the end


@pytest.mark.slow
@pytest.mark.integration
def test_fiat_generate_cli(repo_root):
    proc = subprocess.run([sys.executable, "-m", "fiat_jax.cli", "generate", "--gin_file=models/smollm2_135m.gin",
                           "--prompt", "What is the capital of France?", "--max_new_tokens", "12"],
                          capture_output=True, text=True, cwd=repo_root, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Paris" in proc.stdout
