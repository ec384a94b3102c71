"""``fiat export``: a trained run out to the rest of the field.

``--format=peft`` writes the run's LoRA adapter as an HF peft directory (``peft.PeftModel.from_pretrained`` loads
it onto the HF base model), ``merged`` the adapters folded into the base as HF safetensors + ``config.json``
(``transformers`` loads it), ``gguf`` the merged model as a llama.cpp GGUF file (Llama family only).

The model is rebuilt from the run's own operative ``MODEL_DIR/config.gin`` exactly as ``fiat train`` built it
(``train.model_factory`` + ``initial_params`` + ``model_transform``), then the trained parameters are restored
from the run's newest checkpoint (or ``--checkpoint_step``).
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import gin

from fiat_jax.errors import UserError

FORMATS = ("peft", "merged", "gguf")
_log = logging.getLogger(__name__)


def _run_bindings(model_dir: pathlib.Path) -> dict[str, Any]:
    """Parse the run's config.gin and return ``train``'s bindings (references resolved)."""
    from fiat_jax.methods import student  # lazy: a wrong --model_dir is reported before JAX/TF load
    from fiat_jax.train import trainer  # lazy: a wrong --model_dir is reported before JAX/TF load

    config = model_dir / "config.gin"
    if not config.is_file():
        raise UserError(f"{model_dir}: no config.gin (not a `fiat train` run directory?)")
    gin.clear_config(clear_constants=True)
    try:
        # Unknown configurables (a task registrar or teacher from a module not imported here) do not matter
        # to the model; skip them instead of failing.
        gin.parse_config_files_and_bindings([str(config)], [], finalize_config=False, skip_unknown=True)
    except (ValueError, SyntaxError, ImportError) as err:
        raise UserError(f"{config}: cannot parse ({str(err).splitlines()[0] if str(err) else err})") from err
    with gin.unlock_config():
        bindings = gin.get_bindings(trainer.train)
        if "model_factory" not in bindings:
            # A method's student (MODEL_DIR/student): its StudentSpec handed the model to the trainer explicitly.
            spec = {k: v for k, v in gin.get_bindings(student.StudentSpec).items()
                    if k in ("model_factory", "initial_params", "model_transform", "trainable") and v is not None}
            bindings = {**bindings, **spec}
    if "model_factory" not in bindings:
        raise UserError(f"{config} binds no train.model_factory (not a `fiat train` run?)")
    return bindings


def restore_run(model_dir: str | pathlib.Path, *, checkpoint_step: int | None = None) -> Any:
    """The run's model with its trained parameters (the newest checkpoint, or ``checkpoint_step``)."""
    from flax import nnx  # lazy: a wrong --model_dir is reported before JAX/TF load

    from fiat_jax.train import checkpoints as ckpt_lib  # lazy: a wrong --model_dir is reported before JAX/TF load
    from fiat_jax.train.trainer import build_model  # lazy: a wrong --model_dir is reported before JAX/TF load

    model_dir = pathlib.Path(model_dir)
    b = _run_bindings(model_dir)
    model = build_model(b["model_factory"], seed=int(b.get("seed", 0)), mesh=None,
                        initial_params=b.get("initial_params"), model_transform=b.get("model_transform"))
    trainable = b.get("trainable", nnx.Param)
    _, params, _ = nnx.split(model, trainable, ...)
    restored, step = ckpt_lib.restore_params_only(model_dir, params, step=checkpoint_step)
    nnx.update(model, restored)
    _log.info("restored %s at step %d", model_dir, step)
    return model


def _merged(model: Any) -> Any:
    from fiat_jax.peft import lora, wrapper  # lazy: a wrong --model_dir is reported before JAX/TF load

    if isinstance(model, wrapper.PeftModel) and model.prompt_length:
        raise UserError("the run's model has a soft prompt, which a merged checkpoint cannot hold "
                        "(export the LoRA adapter with --format=peft)")
    return wrapper.unwrap(lora.merge(model) if lora.lora_modules(model) else model)


def export_run(*, model_dir: str, format: str, out: str | None = None,  # noqa: A002 (the flag's name)
               checkpoint_step: int | None = None, quant: str = "F32") -> pathlib.Path:
    """Write a run as ``format`` (peft | merged | gguf) to ``out`` (default ``MODEL_DIR/export/<format>``,
    ``.gguf`` for GGUF); returns the path written."""
    if format not in FORMATS:
        raise UserError(f"fiat export: unknown --format {format!r} (choose from {', '.join(FORMATS)})")
    model_dir_path = pathlib.Path(model_dir)
    if not model_dir_path.is_dir():
        raise UserError(f"fiat export: --model_dir {model_dir} is not a directory")
    if not (model_dir_path / "config.gin").is_file():  # checked before the heavy imports
        raise UserError(f"{model_dir}: no config.gin (not a `fiat train` run directory?)")
    default = model_dir_path / "export" / ("model.gguf" if format == "gguf" else format)
    target = pathlib.Path(out) if out else default
    if format == "peft":
        _require_lora_before_restoring(model_dir_path)
    model = restore_run(model_dir_path, checkpoint_step=checkpoint_step)
    if format == "peft":
        from fiat_jax.peft import hf_adapter  # lazy: a wrong --model_dir is reported before JAX/TF load

        written = hf_adapter.export_peft(model, target, base_model_name_or_path=_base_checkpoint())
    else:
        from fiat_jax.models import checkpoint_import as ci  # lazy: a wrong --model_dir is reported before JAX/TF load

        merged = _merged(model)
        config = getattr(merged, "config", None)
        if config is None:
            raise UserError(f"fiat export: the run's model ({type(merged).__name__}) has no config")
        if format == "merged":
            ci.export_safetensors(merged, target / "model.safetensors", names="hf", config=config)
            written = target
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            tokenizer = gguf_tokenizer_of(_base_checkpoint())
            if tokenizer is None:
                _log.warning("the run's base checkpoint is not a GGUF: the exported GGUF holds no tokenizer")
            ci.export_gguf(merged, target, config=config, quant=quant, tokenizer=tokenizer)
            written = target
    print(f"fiat export: wrote {format} to {written}")
    return written


def _require_lora_before_restoring(model_dir: pathlib.Path) -> None:
    """``--format=peft`` of a run without LoRA: say so before building or restoring anything."""
    b = _run_bindings(model_dir)
    if b.get("model_transform") is None:
        raise UserError(f"fiat export --format=peft: the run in {model_dir} has no LoRA adapters "
                        f"(train.model_transform is unset); use --format=merged or --format=gguf")


_GGUF_TOKENIZER_KEYS = {"tokens": "tokenizer.ggml.tokens", "merges": "tokenizer.ggml.merges",
                        "token_types": "tokenizer.ggml.token_type", "pre": "tokenizer.ggml.pre",
                        "eos_id": "tokenizer.ggml.eos_token_id", "bos_id": "tokenizer.ggml.bos_token_id",
                        "unk_id": "tokenizer.ggml.unknown_token_id", "pad_id": "tokenizer.ggml.padding_token_id",
                        "chat_template": "tokenizer.chat_template"}


def gguf_tokenizer_of(checkpoint: str | None) -> dict[str, Any] | None:
    """The tokenizer of a GGUF base (``embedded:...`` or a ``.gguf`` path) as :func:`export_gguf` takes it, so
    the exported file carries the tokenizer llama.cpp needs; None for other bases."""
    if not checkpoint:
        return None
    from fiat_jax.models import checkpoint_gguf, embedded  # lazy: a wrong --model_dir is reported before JAX/TF load

    if str(checkpoint).startswith("embedded:"):
        path = embedded.embedded_gguf_path()
    elif str(checkpoint).endswith(".gguf"):
        path = pathlib.Path(checkpoint).expanduser()
    else:
        return None
    g = checkpoint_gguf.GGUFFile(path)
    if g.get("tokenizer.ggml.model") != "gpt2" or g.get("tokenizer.ggml.tokens") is None:
        return None
    out = {ours: g.get(key) for ours, key in _GGUF_TOKENIZER_KEYS.items() if g.get(key) is not None}
    out.setdefault("merges", [])
    return out


def _base_checkpoint() -> str | None:
    try:
        value = gin.query_parameter("pretrained_params.checkpoint")
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def export_main(*, model_dir: str, format: str, out: str | None = None,  # noqa: A002
                checkpoint_step: int | None = None, quant: str = "F32") -> None:
    """The ``fiat export`` subcommand (no gin flags: the run's own config.gin says how to rebuild it)."""
    export_run(model_dir=model_dir, format=format, out=out, checkpoint_step=checkpoint_step, quant=quant)
