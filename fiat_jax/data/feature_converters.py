"""Feature converters by model kind: encoder-decoder, or decoder-only prefix LM with loss on targets only.

Batch keys are those of docs/CONTRACTS.md (Batches). Packing puts several examples in one row with segment ids
and positions; seqio's converters do the work, this module only chooses and configures them.
"""

from __future__ import annotations

import gin
import seqio

from fiat_jax.errors import UserError


@gin.configurable
def get_feature_converter(*, model_kind: str = "decoder", pack: bool = False) -> seqio.FeatureConverter:
    """``model_kind``: "encoder_decoder" or "decoder" (as ``model.model_kind``)."""
    if model_kind == "encoder_decoder":
        return seqio.EncDecFeatureConverter(pack=pack)
    if model_kind == "decoder":
        return seqio.PrefixLMFeatureConverter(pack=pack, loss_on_targets_only=True)
    raise UserError(f"unknown model_kind {model_kind!r}: expected 'encoder_decoder' or 'decoder'")
