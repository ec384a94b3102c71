"""The benchmark helpers that produce figures: analytic FLOPs (checked against XLA), param counts, decode sums."""

from __future__ import annotations

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import bench_decode, bench_scaling_paper  # noqa: E402


def _tiny_decoder():
    from fiat_jax.models.decoder import DecoderConfig

    return DecoderConfig(vocab_size=256, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                         mlp_dim=64)


def _tiny_t5():
    from fiat_jax.models.t5 import T5Config

    return T5Config(vocab_size=256, d_model=32, num_encoder_layers=2, num_decoder_layers=2, num_heads=4,
                    head_dim=8, mlp_dim=64)


@pytest.mark.parametrize("make,lengths", [(_tiny_decoder, (16,)), (_tiny_t5, (16, 8))])
def test_analytic_train_flops_match_xla(make, lengths):
    config = make()
    analytic = 3 * bench_scaling_paper.forward_flops(config, batch=2, lengths=lengths)
    xla = bench_scaling_paper.xla_train_flops(config, batch=2, lengths=lengths)
    # Tiny shapes: elementwise ops (norms, softmax, RoPE) weigh more than at real sizes, hence 20 %.
    assert abs(analytic / xla - 1) < 0.2, (analytic, xla)


def test_param_count_is_the_real_models():
    config = _tiny_decoder()
    total, embed = bench_scaling_paper.param_count(config)
    d, f = config.d_model, config.mlp_dim
    per_layer = d * config.num_heads * 8 * 2 + d * config.num_kv_heads * 8 * 2 + 3 * d * f + 2 * d
    assert embed == 256 * 32
    assert total == embed + config.num_layers * per_layer + d  # tied embeddings, final norm


def test_published_smollm2_and_llama_sizes():
    assert round(bench_scaling_paper.param_count(bench_scaling_paper.model_config("smollm2_135m")[0])[0] / 1e6) == 135
    assert round(bench_scaling_paper.param_count(bench_scaling_paper.model_config("llama3_1b")[0])[0] / 1e7) == 124


def test_uncached_total_interpolates_between_timed_lengths():
    total = bench_decode.uncached_total_s({10: 1.0, 14: 3.0}, range(10, 15))
    assert total == pytest.approx(1.0 + 1.5 + 2.0 + 2.5 + 3.0)


def test_table_marks_out_of_memory_rows():
    rows = bench_scaling_paper.estimate(("smollm2_135m",))
    text = bench_scaling_paper.table(rows)
    one_chip = [line for line in text.splitlines() if "v5litepod-1 " in line]
    assert one_chip and "OOM" in one_chip[0]  # 64 x 512 tokens of activations do not fit one 16 GiB v5e chip
    assert "OOM" not in [line for line in text.splitlines() if "v4-64 " in line][0]
