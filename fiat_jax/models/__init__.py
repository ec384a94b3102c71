"""Model definitions (decoder-only Llama family, T5 encoder-decoder) and the gin-configurable ``build_model``.

Importing this package registers ``build_model`` with gin and nothing else; the model modules load lazily.
"""

from __future__ import annotations

from typing import Any

import gin

from fiat_jax.errors import UserError


@gin.configurable
def build_model(*, config: Any, seed: int = 0, rngs: Any = None) -> Any:
    """``train.model_factory``: a ``Decoder`` for a ``DecoderConfig``, an ``EncoderDecoder`` for a ``T5Config``.

    ``rngs`` (an ``nnx.Rngs``) wins over ``seed``; parameters are created with eager sharding off (place them with
    ``partitioning.shard_state`` or build through ``partitioning.create_model``).
    """
    from flax import nnx  # lazy: `import fiat_jax.models` stays free of JAX/flax (the CLI's fast error path)

    name = type(config).__name__
    if name == "DecoderConfig":
        from fiat_jax.models.decoder import Decoder as cls  # lazy: as flax above
    elif name == "T5Config":
        from fiat_jax.models.t5 import EncoderDecoder as cls  # lazy: as flax above
    else:
        raise UserError(f"build_model: unknown model config {name} (expected DecoderConfig or T5Config)")
    if rngs is None:
        rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    with nnx.use_eager_sharding(False):
        return cls(config, rngs=rngs)
