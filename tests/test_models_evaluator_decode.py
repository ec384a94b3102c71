"""The evaluator's KV-cache prediction path equals its full-recompute fallback; generate refuses over-long prompts."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fiat_jax.errors import UserError
from fiat_jax.models import build_model, decoding
from fiat_jax.models.decoder import DecoderConfig
from fiat_jax.models.t5 import T5Config
from fiat_jax.train import evaluator

V = 97


def _decoder(**kw):
    cfg = DecoderConfig(vocab_size=V, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
                        rope_theta=10000.0, tie_embeddings=False, embedding_init_std=1.0, **kw)
    return build_model(config=cfg, seed=0)


def _t5():
    cfg = T5Config(vocab_size=V, d_model=32, num_encoder_layers=2, num_decoder_layers=2, num_heads=4, head_dim=8,
                   mlp_dim=64, relative_attention_num_buckets=8, relative_attention_max_distance=16)
    return build_model(config=cfg, seed=1)


def _examples(n: int, rng: np.random.Generator) -> list[tuple[list[int], list[int]]]:
    out = []
    for _ in range(n):
        x = rng.integers(2, V, size=int(rng.integers(1, 9))).tolist() + [1]
        y = rng.integers(2, V, size=int(rng.integers(1, 5))).tolist() + [1]
        out.append((x, y))
    return out


def prefix_lm_batch(examples, *, inputs_len: int, targets_len: int, batch: int) -> dict[str, np.ndarray]:
    """What seqio.PrefixLMFeatureConverter(pack=False) makes (checked against seqio 0.0.20): targets = inputs +
    targets, inputs = the same shifted right, causal attention over the start token and the inputs."""
    length = inputs_len + targets_len
    f = {k: np.zeros((batch, length), np.int32) for k in ("decoder_target_tokens", "decoder_input_tokens",
                                                          "decoder_loss_weights", "decoder_causal_attention")}
    for i, (x, y) in enumerate(examples):
        seq = x + y
        f["decoder_target_tokens"][i, :len(seq)] = seq
        f["decoder_input_tokens"][i, 1:len(seq)] = seq[:-1]
        f["decoder_loss_weights"][i, len(x):len(seq)] = 1
        f["decoder_causal_attention"][i, :len(x) + 1] = 1
    return f


def encdec_batch(examples, *, inputs_len: int, targets_len: int, batch: int) -> dict[str, np.ndarray]:
    f = {"encoder_input_tokens": np.zeros((batch, inputs_len), np.int32)}
    for k in ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights"):
        f[k] = np.zeros((batch, targets_len), np.int32)
    for i, (x, y) in enumerate(examples):
        f["encoder_input_tokens"][i, :len(x)] = x
        f["decoder_target_tokens"][i, :len(y)] = y
        f["decoder_input_tokens"][i, 1:len(y)] = y[:-1]
        f["decoder_loss_weights"][i, :len(y)] = 1
    return f


@pytest.mark.parametrize("kind", ["decoder", "encoder_decoder"])
def test_kv_cache_prediction_equals_full_recompute(kind):
    model = _decoder() if kind == "decoder" else _t5()
    examples = _examples(5, np.random.default_rng(0))
    make = prefix_lm_batch if kind == "decoder" else encdec_batch
    feats = make(examples, inputs_len=12, targets_len=6, batch=8)  # 3 batch-padding rows, as the evaluator pads
    cached = evaluator.ModelRunner(model, batch_size=8, max_decode_len=6)
    assert cached.kv_cache
    slow = evaluator.ModelRunner(model, batch_size=8, max_decode_len=6, kv_cache=False)
    # EOS = a token the model actually emits, so early stopping and the zeros after EOS are exercised.
    free = slow.predict_batch(feats, 5, eos_id=-1)
    eos = int(free[0, 2])
    got, want = cached.predict_batch(feats, 5, eos_id=eos), slow.predict_batch(feats, 5, eos_id=eos)
    assert got.shape == want.shape == (5, 6)
    np.testing.assert_array_equal(got, want)
    assert (got[0, 3:] == 0).all() or eos in got[0, :2]


def test_prompt_rows_feed_only_the_prompt():
    examples = [([5, 6, 7, 1], [8, 9, 1]), ([4, 1], [3, 1])]
    feats = prefix_lm_batch(examples, inputs_len=6, targets_len=4, batch=4)
    assert evaluator.prompt_rows(feats, model_kind="decoder", n=2) == [[0, 5, 6, 7, 1], [0, 4, 1]]
    feats = encdec_batch(examples, inputs_len=6, targets_len=4, batch=4)
    assert evaluator.prompt_rows(feats, model_kind="encoder_decoder", n=2) == [[5, 6, 7, 1], [4, 1]]


def test_models_without_a_cache_use_the_fallback():
    from flax import nnx

    class PlainModule(nnx.Module):  # only logits_from_batch, like tests/test_train_helpers.py's models
        model_kind = "decoder"

    class Wrapper(nnx.Module):  # PEFT-style wrapper: forwards init_cache, so look at the wrapped model
        def __init__(self, model):
            self.model = model

        def init_cache(self, *args):
            return self.model.init_cache(*args)

    assert not evaluator.has_kv_cache(PlainModule())
    assert not evaluator.has_kv_cache(Wrapper(PlainModule()))
    assert evaluator.has_kv_cache(_decoder())
    assert evaluator.has_kv_cache(Wrapper(_decoder()))


def test_generate_refuses_prompt_longer_than_context():
    model = _decoder(max_length=16)
    with pytest.raises(UserError, match="context is 16"):
        decoding.generate(model, [list(range(2, 20))], max_new_tokens=1)
    with pytest.raises(UserError, match="at most 6 new tokens"):
        decoding.generate(model, [list(range(2, 12))], max_new_tokens=8)
    assert decoding.generate(model, [list(range(2, 12))], max_new_tokens=6).tokens.shape == (1, 6)


def test_kv_cache_prediction_is_faster_than_recompute():
    model = _decoder()
    examples = _examples(8, np.random.default_rng(1))
    feats = prefix_lm_batch(examples, inputs_len=64, targets_len=64, batch=8)
    runners = {"cache": evaluator.ModelRunner(model, batch_size=8, max_decode_len=64),
               "recompute": evaluator.ModelRunner(model, batch_size=8, max_decode_len=64, kv_cache=False)}
    times = {}
    for name, runner in runners.items():
        runner.predict_batch(feats, 8, eos_id=-1)  # compile
        start = time.perf_counter()
        runner.predict_batch(feats, 8, eos_id=-1)
        times[name] = time.perf_counter() - start
    assert times["cache"] < times["recompute"], times


def test_one_compilation_for_every_batch_of_an_eval():
    """Short and long prompts, full and partial batches: all padded to one (batch, length) bucket."""
    model = _decoder()
    runner = evaluator.ModelRunner(model, batch_size=4, max_decode_len=4, max_prompt_len=31)
    rng = np.random.default_rng(2)
    short = [([5, 1], [6, 1])] * 3
    long = [(rng.integers(2, V, size=29).tolist() + [1], [7, 1])] * 4
    runner.predict_batch(prefix_lm_batch(long, inputs_len=30, targets_len=4, batch=4), 4, eos_id=1)
    before = decoding._generate_jit._cache_size()
    runner.predict_batch(prefix_lm_batch(short, inputs_len=30, targets_len=4, batch=4), 3, eos_id=1)
    assert decoding._generate_jit._cache_size() == before


@pytest.mark.parametrize("kind", ["decoder", "encoder_decoder"])
def test_evaluate_model_predictions_identical_with_and_without_cache(kind, tmp_path, monkeypatch):
    """End to end through seqio (toy copy task): same predictions JSONL rows, format and metrics either way."""
    import json

    import test_train_helpers as H

    task = H.register_toy_task("copy", n=64)
    if kind == "decoder":
        model = build_model(config=DecoderConfig(vocab_size=H.VOCAB, d_model=32, num_layers=2, num_heads=4,
                                                 num_kv_heads=2, head_dim=8, mlp_dim=64, rope_theta=10000.0,
                                                 embedding_init_std=1.0), seed=3)
    else:
        model = build_model(config=T5Config(vocab_size=H.VOCAB, d_model=32, num_encoder_layers=2,
                                            num_decoder_layers=2, num_heads=4, head_dim=8, mlp_dim=64), seed=3)
    kwargs = dict(mixture_or_task_name=task, task_feature_lengths={"inputs": 9, "targets": 9}, batch_size=8,
                  num_examples=12, step=0)
    fast = evaluator.evaluate_model(model, predictions_dir=tmp_path / "fast", **kwargs)
    monkeypatch.setattr(evaluator, "has_kv_cache", lambda m: False)
    slow = evaluator.evaluate_model(model, predictions_dir=tmp_path / "slow", **kwargs)
    assert fast == slow
    rows = {d: [json.loads(line) for line in (tmp_path / d / f"{task}-0.jsonl").read_text().splitlines()]
            for d in ("fast", "slow")}
    assert len(rows["fast"]) == 12 and set(rows["fast"][0]) == {"input", "target", "prediction", "score"}
    for a, b in zip(rows["fast"], rows["slow"]):
        assert a["prediction"] == b["prediction"] and a["score"] == pytest.approx(b["score"], abs=1e-4)


def test_prompt_buckets_pad_short_batches_less_and_only_when_worth_a_compile():
    # 97 = start token + 96 inputs: the sizes are 97, 56 (half, multiple of 8) and 32 (quarter)
    longest = [97, 90, 60, 50, 50, 40, 30, 20, 12, 10, 9, 9]
    assert evaluator.prompt_buckets(longest, max_prompt_len=97, min_batches_per_shape=1) == \
        [97, 97, 97, 56, 56, 56, 32, 32, 32, 32, 32, 32]
    assert evaluator.prompt_buckets(longest, max_prompt_len=97, min_batches_per_shape=4) == \
        [97, 97, 97, 97, 97, 97, 32, 32, 32, 32, 32, 32]  # three batches of 56 would not pay their compile
    assert evaluator.prompt_buckets([97, 20], max_prompt_len=97) == [97, 97]  # a small eval: one program
    assert evaluator.prompt_buckets([5, 3], max_prompt_len=8, min_batches_per_shape=1) == [8, 8]


def test_sorted_predictions_equal_the_unsorted_ones():
    """Prompts of many lengths, through the sorted / bucketed path and through one fixed shape per batch."""
    model = _decoder()
    rng = np.random.default_rng(5)
    examples = [(rng.integers(2, V, size=int(k)).tolist() + [1], [7, 1]) for k in rng.integers(1, 30, size=40)]
    feats = prefix_lm_batch(examples, inputs_len=30, targets_len=4, batch=len(examples))

    class _Dataset:  # the enumerated seqio eval dataset's interface
        def as_numpy_iterator(self):
            return iter([(i, {k: v[i] for k, v in feats.items()}) for i in range(len(examples))])

    runner = evaluator.ModelRunner(model, batch_size=4, max_decode_len=4, max_prompt_len=31)
    sorted_out = runner._predict_sorted(_Dataset(), eos_id=1)
    plain = runner._run(_Dataset(), runner._predict_rows, eos_id=1)
    assert sorted_out == plain and len(plain) == len(examples)


def test_prediction_rows_carry_the_example_ids_and_pair_by_them(tmp_path):
    """The evaluator's predictions file names each row by its example's id, and results.item_scores keeps those
    ids (plus target digests) so the report pairs two runs item by item, not by position."""
    import json

    import seqio

    from fiat_jax.data import examples, metrics
    from fiat_jax.methods import results

    rows = [{"id": f"item/{i}", "inputs": f"word {i}", "targets": "yes" if i % 2 else "no"} for i in range(6)]
    name = "ids_in_predictions"
    examples.register_examples_task(name, {"validation": rows}, metric_fns=[metrics.accuracy],
                                    vocabulary=seqio.ByteVocabulary())
    model = build_model(config=DecoderConfig(vocab_size=260, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                                             head_dim=8, mlp_dim=64, rope_theta=10000.0), seed=0)
    run = tmp_path / "run"
    out = evaluator.evaluate_model(model, mixture_or_task_name=name, task_feature_lengths={"inputs": 16,
                                   "targets": 4}, batch_size=4, step=0, predictions_dir=run / "predictions")
    written = [json.loads(line) for line in (run / "predictions" / f"{name}-0.jsonl").read_text().splitlines()]
    assert [r["id"] for r in written] == [r["id"] for r in rows]
    scores = results.item_scores(str(run), {name: {"accuracy": out[f"{name}/accuracy"]}})
    entry = scores[name]["accuracy"]
    assert entry["ids"] == [r["id"] for r in rows] and len(entry["targets"]) == len(rows)
