"""``fiat export`` and ``train.export_peft_dir``: a trained LoRA run out as an HF peft adapter, merged HF
safetensors or GGUF; each read back gives the trained model's logits. The reference test loads the adapter with
``peft.PeftModel.from_pretrained`` onto the HF base the run started from, and the merged model with transformers."""
from __future__ import annotations

import functools
import json
import subprocess
import sys

import gin
import numpy as np
import pytest

import test_train_helpers as H
from fiat_jax import cli
from test_train_helpers import compilation_cache  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("compilation_cache")

TOKENS = np.random.default_rng(3).integers(2, 32, size=(2, 10)).astype(np.int32)


def _register() -> None:
    try:
        gin.external_configurable(functools.partial(H.register_toy_task, "copy", n=256), name="register_toy_copy",
                                  module="export_tests")
    except ValueError:  # registered by an earlier test in this process
        pass


def _train(model_dir, *extra: str, expect: int = 0) -> None:
    _register()
    run_gin = model_dir.parent / f"{model_dir.name}.gin"
    run_gin.write_text("\n".join([
        "include 'models/tiny_decoder.gin'", "include 'runs/train.gin'", "include 'peft/lora.gin'",
        "include 'runs/local_tiny.gin'",
        "train.register_tasks = @export_tests.register_toy_copy",
        "MIXTURE_OR_TASK_NAME = 'toy_copy_8_256'", "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 16}",
        "LEARNING_RATE = 3e-2", "learning_rate_schedule.warmup_steps = 0",
        "train.progress_bar = False", "train.async_checkpointing = False",
        "train.export_peft_dir = 'adapter'", *extra]))
    assert cli.main(["train", f"--gin_file={run_gin}", f"--gin.MODEL_DIR={model_dir}", "--gin.TRAIN_STEPS=4"]) == expect
    gin.clear_config(clear_constants=True)


def _logits(model, tokens=TOKENS):
    return np.asarray(model.logits_from_batch({"decoder_input_tokens": tokens}))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("export") / "run"
    _train(model_dir)
    return model_dir


def test_export_formats_read_back_with_the_trained_logits(lora_run, tmp_path):
    from fiat_jax import export
    from fiat_jax.models import build_model, checkpoint_import as ci, embedded
    from fiat_jax.peft import hf_adapter, lora

    trained = export.restore_run(lora_run)
    want = _logits(trained)
    base = build_model(config=trained.config, seed=0)
    assert np.abs(_logits(base) - want).max() > 1e-3  # the adapter trained (B starts at zero)

    # train.export_peft_dir wrote the adapter at the end of the run; fiat export writes the same one.
    assert cli.main(["export", f"--model_dir={lora_run}", "--format=peft"]) == 0
    for adapter in (lora_run / "adapter", lora_run / "export" / "peft"):
        cfg = json.loads((adapter / "adapter_config.json").read_text())
        assert cfg["peft_type"] == "LORA" and cfg["r"] == 8 and cfg["lora_alpha"] == 16.0
        assert isinstance(cfg["target_modules"], list) and isinstance(cfg["use_rslora"], bool)
        loaded = hf_adapter.load_peft(build_model(config=trained.config, seed=0), adapter)
        np.testing.assert_allclose(_logits(loaded), want, atol=1e-5)

    assert cli.main(["export", f"--model_dir={lora_run}", "--format=merged", f"--out={tmp_path / 'hf'}"]) == 0
    config = ci.config_from_hf(tmp_path / "hf" / "config.json")
    flat, unknown = ci.read_hf_params(tmp_path / "hf")
    assert unknown == []
    merged = embedded.build_model(config, ci.unflatten(flat), source="merged")
    np.testing.assert_allclose(_logits(merged), want, atol=1e-4)

    assert cli.main(["export", f"--model_dir={lora_run}", "--format=gguf", f"--out={tmp_path / 'm.gguf'}"]) == 0
    config = ci.config_from_gguf(tmp_path / "m.gguf")
    flat, unknown = ci.read_gguf_params(tmp_path / "m.gguf")
    assert unknown == []
    np.testing.assert_allclose(_logits(embedded.build_model(config, ci.unflatten(flat), source="gguf")), want,
                               atol=1e-4)


def test_gguf_export_carries_the_base_gguf_tokenizer(tmp_path):
    from fiat_jax import export
    from fiat_jax.models import checkpoint_gguf, checkpoint_import as ci
    from fiat_jax.models.decoder import DecoderConfig
    from fiat_jax.models import build_model

    config = DecoderConfig(vocab_size=8, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8,
                           mlp_dim=32, max_length=64)
    model = build_model(config=config, seed=0)
    tokenizer = {"tokens": ["<pad>", "<eos>", "a", "b", "ab", "c", "d", "cd"], "merges": ["a b", "c d"],
                 "token_types": [3, 3, 1, 1, 1, 1, 1, 1], "pre": "smollm", "eos_id": 1, "bos_id": 1,
                 "chat_template": "{{ messages }}"}
    ci.export_gguf(model, tmp_path / "base.gguf", config=config, tokenizer=tokenizer)
    got = export.gguf_tokenizer_of(str(tmp_path / "base.gguf"))
    assert {k: got[k] for k in tokenizer} == tokenizer
    ci.export_gguf(model, tmp_path / "out.gguf", config=config, tokenizer=got)
    again = checkpoint_gguf.GGUFFile(tmp_path / "out.gguf")
    assert list(again.get("tokenizer.ggml.tokens")) == tokenizer["tokens"]
    assert again.get("tokenizer.ggml.model") == "gpt2" and again.get("tokenizer.chat_template") == "{{ messages }}"
    assert export.gguf_tokenizer_of(str(tmp_path / "hf_dir")) is None and export.gguf_tokenizer_of(None) is None


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fiat_jax.cli", "export", *argv], capture_output=True, text=True,
                          timeout=300)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single ``fiat: error:`` line (native libraries may log above it; no traceback may)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    (line,) = [l for l in proc.stderr.splitlines() if l.startswith("fiat:")]
    return line


def test_unknown_format_is_one_line_exit_2(tmp_path):
    proc = _cli(f"--model_dir={tmp_path}", "--format=onnx")
    assert "unknown --format 'onnx'" in _one_error_line(proc)


def test_not_a_run_directory_is_one_line_exit_2(tmp_path):
    proc = _cli(f"--model_dir={tmp_path}", "--format=peft")
    assert "no config.gin" in _one_error_line(proc)


@pytest.mark.slow
def test_peft_export_of_a_run_without_lora_is_one_line_exit_2(tmp_path):
    # A full fine-tuning run's operative config: a model factory, no model_transform (no checkpoint needed: the
    # refusal comes before anything is restored).
    (tmp_path / "config.gin").write_text("\n".join([
        "import fiat_jax.models", "from fiat_jax.models import decoder", "from fiat_jax.train import trainer",
        "train.model_factory = @fiat_jax.models.build_model", "build_model.config = @DecoderConfig()",
        "DecoderConfig.vocab_size = 64", "train.model_dir = 'x'"]))
    proc = _cli(f"--model_dir={tmp_path}", "--format=peft")
    assert "has no LoRA adapters" in _one_error_line(proc)


def test_export_peft_dir_without_lora_is_refused_before_training(tmp_path, capsys):
    _train(tmp_path / "full", "train.model_transform = None", "train.trainable = @trainable.peft_filter()",
           "peft_filter.mode = 'full'", expect=2)
    assert "export_peft_dir is set but the model has no LoRA" in capsys.readouterr().err
    assert not (tmp_path / "full" / "checkpoints").exists()


@pytest.mark.reference
@pytest.mark.slow
def test_exported_adapter_loads_in_hf_peft_with_matching_logits(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    # The tiny_decoder.gin shape, as an HF Llama the run starts from (train.initial_params).
    hf_cfg = transformers.LlamaConfig(vocab_size=264, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=8, num_key_value_heads=4, head_dim=8,
                                      max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=10000.0,
                                      tie_word_embeddings=True)
    transformers.LlamaForCausalLM(hf_cfg).save_pretrained(tmp_path / "base")
    model_dir = tmp_path / "run"
    _train(model_dir, "from fiat_jax.models import embedded", "train.initial_params = @pretrained_params",
           f"pretrained_params.checkpoint = '{tmp_path / 'base'}'", "DecoderConfig.norm_eps = 1e-6")
    from fiat_jax import export

    want = _logits(export.restore_run(model_dir))
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base").eval()
    with torch.no_grad():
        base = hf(input_ids=torch.tensor(TOKENS, dtype=torch.long)).logits.numpy()
    assert np.abs(base - want).max() > 1e-3  # the adapter trained

    assert cli.main(["export", f"--model_dir={model_dir}", "--format=peft"]) == 0
    cfg = json.loads((model_dir / "export" / "peft" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tmp_path / "base")
    hf_peft = peft.PeftModel.from_pretrained(hf, str(model_dir / "export" / "peft")).eval()
    with torch.no_grad():
        got = hf_peft(input_ids=torch.tensor(TOKENS, dtype=torch.long)).logits.numpy()
    print(f"fiat export peft vs HF peft: max |diff| {np.abs(got - want).max():.2e}")
    assert np.abs(got - want).max() < 1e-4

    assert cli.main(["export", f"--model_dir={model_dir}", "--format=merged"]) == 0
    merged = transformers.LlamaForCausalLM.from_pretrained(model_dir / "export" / "merged").eval()
    with torch.no_grad():
        got = merged(input_ids=torch.tensor(TOKENS, dtype=torch.long)).logits.numpy()
    assert np.abs(got - want).max() < 1e-4
