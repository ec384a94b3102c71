"""A tiny random local teacher for the CI runs of the shipped *_local_tiny sweeps: the real LocalTeacher code path
(batched KV-cache decoding) on a 2-layer byte-level decoder, so a FIAT or ICL run takes seconds, not the minutes
SmolLM2-135M needs on a CPU. Its reasoning is noise: CI checks that every run finishes, not its scores."""
from __future__ import annotations

import types


def tiny_local_teacher(*, batch_size: int = 4, seed: int = 0):
    import seqio

    from fiat_jax.models import build_model
    from fiat_jax.models.decoder import DecoderConfig
    from fiat_jax.teachers.local import LocalTeacher

    cfg = DecoderConfig(vocab_size=260, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                        mlp_dim=64, max_length=4096)
    model = build_model(config=cfg, seed=seed)
    pre = types.SimpleNamespace(vocabulary=seqio.ByteVocabulary(), chat_template=None, source="tiny-random")
    return LocalTeacher(checkpoint="tiny-random-ci", pretrained=pre, model=model, batch_size=batch_size, chat=False)
