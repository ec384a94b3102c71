"""The FIAT input template (golden), chat and few-shot helpers, and the feature converters' batches."""

import functools

import numpy as np
import pytest
import seqio
import tensorflow as tf

from fiat_jax.data import feature_converters, preprocessors
from fiat_jax.errors import UserError

GOLDEN = ("Instruction: Answer the question.\n\nInput: What is 2+2?\n\nReasoning: 2 plus 2 is 4.\n\nAnswer:")


def test_fiat_input_golden_and_ablations():
    assert preprocessors.fiat_input("Answer the question.", "What is 2+2?", "2 plus 2 is 4.") == GOLDEN
    assert preprocessors.fiat_input(None, "Q", None) == "Input: Q\n\nAnswer:"
    assert preprocessors.fiat_input("I", "Q", None) == "Instruction: I\n\nInput: Q\n\nAnswer:"
    template = preprocessors.FiatTemplate(reasoning_header="Because:", separator="\n")
    assert preprocessors.fiat_input(None, "Q", "R", template=template) == "Input: Q\nBecause: R\nAnswer:"


def test_fiat_input_same_on_tensors():
    out = preprocessors.fiat_input("Answer the question.", tf.constant("What is 2+2?"), tf.constant("2 plus 2 is 4."))
    assert out.numpy().decode() == GOLDEN


def test_fiat_format_and_chat_format_on_a_dataset():
    ds = tf.data.Dataset.from_tensors({"inputs": "Q", "targets": "A", "teacher_output": "R", "id": "x"})
    ds = preprocessors.fiat_format(ds, instruction="I")
    ds = preprocessors.chat_format(ds)
    ex = next(ds.as_numpy_iterator())
    assert ex["inputs"].decode() == ("<|im_start|>user\nInstruction: I\n\nInput: Q\n\nReasoning: R\n\nAnswer:"
                                     "<|im_end|>\n<|im_start|>assistant\n")
    assert ex["id"] == b"x" and ex["targets"] == b"A"
    with pytest.raises(ValueError):
        preprocessors.chat_format(ds, template="no placeholder")


def test_few_shot_prefix():
    ex = [{"q": f"q{i}", "a": f"a{i}"} for i in range(8)]
    assert preprocessors.few_shot_prefix(ex, k=2) == "q0\na0\n\nq1\na1\n\n"
    assert preprocessors.few_shot_prefix(ex, k=0) == ""
    seeded = preprocessors.few_shot_prefix(ex, k=3, seed=1)
    assert seeded == preprocessors.few_shot_prefix(ex, k=3, seed=1) and seeded.count("\n\n") == 3


def test_xcopa_options_two_rows_per_item():
    ds = tf.data.Dataset.from_tensors({"premise": "P", "choice1": "c1", "choice2": "c2", "question": "effect",
                                       "label": tf.constant(1, tf.int64), "id": "i"})
    rows = list(preprocessors.xcopa_to_options(ds).as_numpy_iterator())
    assert [(r["targets"], r["label"], r["option"]) for r in rows] == [(b"c1", 0, 0), (b"c2", 1, 1)]
    assert rows[0]["inputs"] == b"P so"


def _tokenized(n=3):
    vocab = seqio.ByteVocabulary()
    rows = {"inputs": [[5, 6, 7][: i + 1] for i in range(n)], "targets": [[9, 10] for _ in range(n)]}
    ds = tf.data.Dataset.from_generator(
        lambda: ({"inputs": np.array(a, np.int32), "targets": np.array(b, np.int32)}
                 for a, b in zip(rows["inputs"], rows["targets"])),
        output_signature={"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32)})
    return ds, vocab


def test_decoder_converter_puts_loss_on_targets_only():
    ds, _ = _tokenized()
    conv = feature_converters.get_feature_converter(model_kind="decoder", pack=False)
    ex = next(conv(ds, {"inputs": 4, "targets": 3}).as_numpy_iterator())
    assert set(ex) >= {"decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                       "decoder_causal_attention"}
    # inputs [5] then targets [9, 10]: loss only on the two target positions.
    assert ex["decoder_target_tokens"].tolist()[:3] == [5, 9, 10]
    assert ex["decoder_loss_weights"].tolist()[:3] == [0, 1, 1]


def test_encdec_converter_and_packing():
    ds, _ = _tokenized()
    conv = feature_converters.get_feature_converter(model_kind="encoder_decoder", pack=True)
    ex = next(conv(ds, {"inputs": 8, "targets": 8}).as_numpy_iterator())
    assert ex["encoder_segment_ids"].max() >= 2 and "decoder_positions" in ex
    with pytest.raises(UserError):
        feature_converters.get_feature_converter(model_kind="rnn")


def test_mgsm_format_keeps_answer():
    ds = tf.data.Dataset.from_tensors({"question": "Q?", "answer": "7", "id": "m"})
    ex = next(functools.partial(preprocessors.mgsm_to_text, prefix="EX\n\n")(ds).as_numpy_iterator())
    assert ex["inputs"] == b"EX\n\nQuestion: Q?\nStep-by-Step Answer:" and ex["targets"] == b"7"
