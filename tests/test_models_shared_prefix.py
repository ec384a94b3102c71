"""Scoring rows that share a long prefix (ICL with the documents in context) computes the prefix once, with the
scores of the full pass: plain and LoRA-wrapped decoders, bidirectional prefix included."""
from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

import test_methods_helpers as MH
from fiat_jax.methods import student
from fiat_jax.models import build_model, decoding
from fiat_jax.models.decoder import DecoderConfig

CONTEXT = "Ann is the parent of Bo. Bo is taller than Cy. Every wug is blue. Dee is a wug. Eve is the parent of Fay."
TFL = {"inputs": 128, "targets": 16}


def _rows() -> list[dict]:
    options = ["Bo is the child of Ann.", "Dee is blue.", "Cy is taller than Bo.", "Fay.", "x"]
    return [{"id": f"q{i}", "inputs": f"{CONTEXT}\n\nDocument:", "targets": o} for i, o in enumerate(options)]


def _scores(model, rows, *, shared: bool, monkeypatch) -> list[float]:
    with monkeypatch.context() as m:
        if not shared:
            m.setattr(student, "_score_with_shared_prefix", lambda *a, **k: None)
        calls = []
        real = decoding.score_shared_prefix
        m.setattr(decoding, "score_shared_prefix", lambda *a, **k: calls.append(1) or real(*a, **k))
        try:
            out = student.score_rows(model, rows, task_feature_lengths=TFL, batch_size=2)
        finally:
            MH.cleanup_registry(prefixes=("methods_",))
    assert bool(calls) == shared  # the fast path ran exactly when asked for
    return out


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
def test_shared_prefix_scores_equal_the_full_pass(lora, monkeypatch):
    model = build_model(config=DecoderConfig(vocab_size=259, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                                             head_dim=8, mlp_dim=64, rope_theta=10000.0, max_length=160), seed=0)
    if lora:
        from fiat_jax.peft import lora as lora_lib

        model = lora_lib.lora_transform(targets=r".*attention/(query|value)/kernel", rank=4, alpha=8)(model)
        for path, v in nnx.iter_graph(model):  # non-zero B factors, so the adapters change the scores
            if isinstance(v, nnx.Param) and "lora_b" in "/".join(map(str, path)):
                v.value = np.full(v.value.shape, 0.05, np.float32)
    rows = _rows()
    full = _scores(model, rows, shared=False, monkeypatch=monkeypatch)
    fast = _scores(model, rows, shared=True, monkeypatch=monkeypatch)
    # fp32 sums of up to 24 log-probabilities, attention reduced in another order: rounding only
    np.testing.assert_allclose(fast, full, rtol=1e-4, atol=1e-3)
    assert len(set(np.round(full, 3))) == len(rows)  # the rows really differ


def test_rows_without_a_common_prefix_take_the_full_pass():
    batch = {"decoder_input_tokens": np.array([[0, 5, 6, 7] * 20, [0, 5, 9, 7] * 20]),
             "decoder_loss_weights": np.array([[0] * 70 + [1] * 10] * 2),
             "decoder_target_tokens": np.ones((2, 80), np.int32)}
    assert decoding.shared_prefix(batch) is None  # token 2 differs
    batch["decoder_input_tokens"][1] = batch["decoder_input_tokens"][0]
    assert decoding.shared_prefix(batch) == (70, 70)
    batch["decoder_causal_attention"] = np.array([[1] * 72 + [0] * 8] * 2)
    assert decoding.shared_prefix(batch) == (70, 72)  # the bidirectional span is shared too
    assert decoding.shared_prefix(batch, minimum=100) is None
