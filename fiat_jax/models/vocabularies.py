"""seqio vocabularies for the tokenizers our models come with: SentencePiece, HF ``tokenizer.json``, GGUF BPE.

Padding and EOS. seqio pads with id 0 and appends ``vocab.eos_id``. SentencePiece T5 vocabularies follow that
convention natively (pad 0, eos 1). HF / GGUF vocabularies have their own ids: ``eos_id`` is the tokenizer's
(GGUF ``tokenizer.ggml.eos_token_id``, e.g. 2 = ``<|im_end|>`` for SmolLM2-Instruct), and ``pad_id`` stays 0 as
seqio requires. Id 0 is usually a control token there (SmolLM2: ``<|endoftext|>``) that ordinary text never
encodes to (control tokens are only matched by their literal text), so treating 0 as padding on seqio-converted
batches (``!= 0`` masks) loses nothing; ``decode`` drops 0s as padding and control tokens as markup.

The ``*_tf`` methods wrap the Python tokenizer in ``tf.py_function`` (tf_text has no byte-level BPE), so seqio
pipelines (``seqio.preprocessors.tokenize``) work unchanged; they run in the tf.data threads, not in graph ops.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import seqio
import tensorflow as tf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers as pt

from fiat_jax.errors import UserError
from fiat_jax.models.checkpoint_gguf import GGUFFile

SentencePieceVocabulary = seqio.SentencePieceVocabulary


def sentencepiece_vocabulary(path: str | pathlib.Path, *, extra_ids: int = 0) -> seqio.SentencePieceVocabulary:
    """T5 / mT5 SentencePiece model (pad 0, eos 1, unk 2) as seqio expects; errors name a missing file."""
    if not pathlib.Path(path).exists():
        raise UserError(f"SentencePiece model not found: {path}")
    return seqio.SentencePieceVocabulary(str(path), extra_ids=extra_ids)


class TokenizersVocabulary(seqio.Vocabulary):
    """A HF ``tokenizers.Tokenizer`` as a seqio Vocabulary (see the module docstring for pad / eos ids)."""

    def __init__(self, tokenizer: Any, *, eos_id: int | None, unk_id: int | None = None,
                 bos_id: int | None = None, name: str = "tokenizers", extra_ids: int = 0):
        super().__init__(extra_ids=extra_ids)
        self.tokenizer = tokenizer
        self._eos = eos_id
        self._unk = unk_id
        self._bos = bos_id
        self.name = name
        self.special_ids = frozenset(i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special)

    # seqio properties -------------------------------------------------------------------------------------------
    @property
    def eos_id(self) -> int | None:
        return self._eos

    @property
    def unk_id(self) -> int | None:
        return self._unk

    @property
    def bos_id(self) -> int | None:
        return self._bos

    @property
    def _base_vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    # python ----------------------------------------------------------------------------------------------------
    def _encode(self, s: str) -> Sequence[int]:
        if isinstance(s, bytes):
            s = s.decode("utf-8")
        return self.tokenizer.encode(s, add_special_tokens=False).ids

    def _decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids if int(i) != self.pad_id or int(i) == self._eos]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def decode_keep_special(self, ids: Iterable[int]) -> str:
        """Text with control tokens (``<|im_end|>`` ...) left in, e.g. to debug chat formatting."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.tokenizer.id_to_token(int(i))

    # tensorflow ------------------------------------------------------------------------------------------------
    def _encode_tf(self, s):
        def one(x):
            ids = tf.py_function(lambda t: tf.constant(self._encode(t.numpy().decode("utf-8")), tf.int32),
                                 [x], tf.int32)
            ids.set_shape([None])
            return ids

        if s.shape.rank == 0:
            return one(s)
        return tf.map_fn(one, s, fn_output_signature=tf.RaggedTensorSpec(shape=[None], dtype=tf.int32))

    def _decode_tf(self, ids):
        def one(x):
            text = tf.py_function(lambda t: tf.constant(self._decode(t.numpy().tolist()), tf.string), [x],
                                  tf.string)
            text.set_shape([])
            return text

        if isinstance(ids, tf.RaggedTensor):
            return tf.map_fn(lambda r: one(r), ids, fn_output_signature=tf.TensorSpec([], tf.string))
        if ids.shape.rank == 1:
            return one(ids)
        return tf.map_fn(one, ids, fn_output_signature=tf.TensorSpec([], tf.string))

    # identity --------------------------------------------------------------------------------------------------
    @functools.cached_property
    def fingerprint(self) -> str:
        """Content hash of the tokenizer + ids: equal fingerprints tokenize identically."""
        blob = self.tokenizer.to_str() + json.dumps([self._eos, self._unk, self._bos, self.extra_ids])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenizersVocabulary) and self.fingerprint == other.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __str__(self) -> str:
        return f"{type(self).__name__}({self.name}, size={self.vocab_size}, eos_id={self.eos_id})"


def hf_tokenizer_vocabulary(path: str | pathlib.Path, *, eos_token: str | None = None,
                            extra_ids: int = 0) -> TokenizersVocabulary:
    """HF ``tokenizer.json`` (or a directory holding it). The EOS comes from ``eos_token`` or the
    ``tokenizer_config.json`` beside it."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.exists():
        raise UserError(f"tokenizer.json not found: {path}")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as err:
        raise UserError(f"{path}: not a readable tokenizers file ({err})") from err
    cfg_path = path.parent / "tokenizer_config.json"
    cfg: dict[str, Any] = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}

    def token_id(value: Any) -> int | None:
        if isinstance(value, dict):
            value = value.get("content")
        return tok.token_to_id(value) if value else None

    eos = token_id(eos_token) if eos_token else token_id(cfg.get("eos_token"))
    if eos_token and eos is None:
        raise UserError(f"{path}: eos token {eos_token!r} is not in the vocabulary")
    return TokenizersVocabulary(tok, eos_id=eos, unk_id=token_id(cfg.get("unk_token")),
                                bos_id=token_id(cfg.get("bos_token")), name=str(path), extra_ids=extra_ids)


# --------------------------------------------------------------------------------------------------------------
# GGUF (llama.cpp) BPE vocabularies
# --------------------------------------------------------------------------------------------------------------

_GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"""
_LLAMA3_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                 r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
_QWEN2_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")


def _pre_tokenizer(pre: str) -> Any:
    """llama.cpp's ``tokenizer.ggml.pre`` name -> the equivalent HF pre-tokenizer (llama-vocab.cpp's regexes)."""
    byte_level = pt.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in ("default", "gpt2", "gpt-2", "olmo", "jais"):
        return pt.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva-7b"):
        # Digits one by one, then GPT-2 splitting.
        return pt.Sequence([pt.Digits(individual_digits=True), pt.ByteLevel(add_prefix_space=False,
                                                                            use_regex=True)])
    if pre in ("llama3", "llama-bpe", "llama-v3", "smaug-bpe"):
        return pt.Sequence([pt.Split(Regex(_LLAMA3_REGEX), behavior="isolated"), byte_level])
    if pre in ("qwen2", "deepseek-r1-qwen"):
        return pt.Sequence([pt.Split(Regex(_QWEN2_REGEX), behavior="isolated"), byte_level])
    raise UserError(f"GGUF pre-tokenizer {pre!r} is not supported (supported: gpt2, smollm, starcoder, llama-bpe, "
                    f"qwen2)")


# GGUF token types (gguf.TokenType): 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte.
_CONTROL, _USER_DEFINED, _UNKNOWN = 3, 4, 2


def gguf_tokenizer(gguf_file: Any) -> Any:
    """A ``tokenizers.Tokenizer`` rebuilt from the vocab, merges and pre-tokenizer type stored in a GGUF file."""
    g = gguf_file if isinstance(gguf_file, GGUFFile) else GGUFFile(gguf_file)
    kind = g.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UserError(f"{g.path}: GGUF tokenizer model {kind!r} is not supported (only byte-level BPE 'gpt2')")
    tokens = list(g.require("tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in g.require("tokenizer.ggml.merges")]
    types = list(g.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(str(g.get("tokenizer.ggml.pre", "default")))
    tok.decoder = decoders.ByteLevel()
    special = [AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types)
               if t in (_CONTROL, _UNKNOWN)]
    user = [AddedToken(tokens[i], special=False, normalized=False) for i, t in enumerate(types)
            if t == _USER_DEFINED]
    tok.add_special_tokens(special)
    if user:
        tok.add_tokens(user)
    return tok


def gguf_vocabulary(gguf_file: Any, *, extra_ids: int = 0) -> TokenizersVocabulary:
    """The BPE tokenizer inside a GGUF file as a seqio Vocabulary; eos / bos / unk ids from its metadata."""
    g = gguf_file if isinstance(gguf_file, GGUFFile) else GGUFFile(gguf_file)

    def opt(key: str) -> int | None:
        value = g.get(key)
        return None if value is None else int(value)

    return TokenizersVocabulary(gguf_tokenizer(g), eos_id=opt("tokenizer.ggml.eos_token_id"),
                                unk_id=opt("tokenizer.ggml.unknown_token_id"),
                                bos_id=opt("tokenizer.ggml.bos_token_id"), name=str(g.path), extra_ids=extra_ids)
