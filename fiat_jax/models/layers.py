"""Transformer building blocks shared by the decoder-only and encoder-decoder models (Flax NNX).

Parameter layouts follow T5X (``t5x/examples/t5/layers.py``) so checkpoints map one to one:
attention kernels are ``query/key/value [embed, heads, kv]`` and ``out [heads, kv, embed]``; MLP ``wi_* [embed, mlp]``,
``wo [mlp, embed]``; norms ``scale [embed]``; embeddings ``embedding [vocab, embed]``. Every ``nnx.Param`` carries
logical axis names (docs/CONTRACTS.md). Compute runs in ``dtype`` (fp32 default, bf16 option) with parameters
stored in ``param_dtype``; softmax and norms accumulate in fp32.

The KV cache is functional: a dict of arrays passed in and returned, so a jitted decode step compiles once.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

import fiat_jax.models.attention_core as attention_core
from fiat_jax import partitioning
from fiat_jax.errors import UserError

Array = jax.Array
DType = Any


def constrain(x: Array, names: Sequence[str | None]) -> Array:
    """``partitioning.constrain`` with ``names`` as a tuple (the logical axis names of ``x``)."""
    return partitioning.constrain(x, tuple(names))


def _param(rngs: nnx.Rngs, init: Callable, shape: tuple[int, ...], names: tuple[str, ...],
           dtype: DType) -> nnx.Param:
    return nnx.Param(init(rngs.params(), shape, dtype), sharding_names=names)


def _variance_scaling(scale: float, fan_in_axes: Sequence[int]) -> Callable:
    """Truncated-normal fan-in init over the given input axes (T5X's ``variance_scaling(1.0, 'fan_in', ...)``)."""
    def init(key: Array, shape: tuple[int, ...], dtype: DType) -> Array:
        fan_in = math.prod(shape[i] for i in fan_in_axes)
        std = math.sqrt(scale / fan_in) / 0.87962566103423978
        return (jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32) * std).astype(dtype)
    return init


class RMSNorm(nnx.Module):
    """T5 LayerNorm / Llama RMSNorm: no mean subtraction, no bias; statistics in fp32."""

    def __init__(self, dim: int, *, eps: float = 1e-6, dtype: DType = jnp.float32,
                 param_dtype: DType = jnp.float32, rngs: nnx.Rngs):
        del rngs
        self.eps, self.dtype = eps, dtype
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), sharding_names=("embed",))

    def __call__(self, x: Array) -> Array:
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(self.dtype)


class Embed(nnx.Module):
    """Token embedding ``[vocab, embed]``; ``attend`` gives tied output logits."""

    def __init__(self, num_embeddings: int, features: int, *, dtype: DType = jnp.float32,
                 param_dtype: DType = jnp.float32, init_std: float = 1.0, rngs: nnx.Rngs):
        self.dtype = dtype
        init = lambda k, s, d: (jax.random.normal(k, s, jnp.float32) * init_std).astype(d)  # noqa: E731
        self.embedding = _param(rngs, init, (num_embeddings, features), ("vocab", "embed"), param_dtype)

    def __call__(self, ids: Array) -> Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: Array) -> Array:
        x = x.astype(self.dtype)
        logits = jax.lax.dot_general(x.reshape(-1, x.shape[-1]), self.embedding[...].astype(self.dtype),
                                     (((1,), (1,)), ((), ())))  # 2-D: see contract_last
        return logits.reshape(x.shape[:-1] + (self.embedding.shape[0],))


def contract_last(x: Array, kernel: Array, n_in: int) -> Array:
    """``x[..., *in] · kernel[*in, *out]`` as one 2-D matmul ``[rows, prod(in)] @ [prod(in), prod(out)]``.

    Why 2-D: XLA:CPU lowers a rank-2 dot (and its two backward dots) to its fast matmul kernels with row-major
    operands, whereas a rank-3+ ``dot_general`` makes layout assignment insert transposes that absorb the
    neighbouring elementwise ops into slow strided copies (measured: a SwiGLU MLP's forward+backward runs 1.6x
    faster; ``benchmarks/profile_step.py``). The reshapes merge only leading/trailing axes, so shardings survive.
    """
    batch_shape, in_shape = x.shape[:x.ndim - n_in], x.shape[x.ndim - n_in:]
    out_shape = kernel.shape[n_in:]
    k = math.prod(in_shape)
    y = jnp.dot(x.reshape(-1, k), kernel.reshape(k, math.prod(out_shape)))
    return y.reshape(batch_shape + out_shape)


class DenseGeneral(nnx.Module):
    """``y = x[..., *in] · kernel[*in, *out]`` (no bias, like T5X/Llama); contracts the last ``len(in)`` axes."""

    def __init__(self, in_features: int | Sequence[int], out_features: int | Sequence[int], *,
                 names: Sequence[str], dtype: DType = jnp.float32, param_dtype: DType = jnp.float32,
                 init_scale: float = 1.0, rngs: nnx.Rngs):
        self.in_shape = (in_features,) if isinstance(in_features, int) else tuple(in_features)
        self.out_shape = (out_features,) if isinstance(out_features, int) else tuple(out_features)
        self.dtype = dtype
        shape = self.in_shape + self.out_shape
        if len(names) != len(shape):
            raise ValueError(f"{len(names)} axis names for a kernel of shape {shape}")
        init = _variance_scaling(init_scale, range(len(self.in_shape)))
        self.kernel = _param(rngs, init, shape, tuple(names), param_dtype)

    def __call__(self, x: Array) -> Array:
        return contract_last(x.astype(self.dtype), self.kernel[...].astype(self.dtype), len(self.in_shape))


_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "linear": lambda x: x, "relu": jax.nn.relu, "gelu": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False), "silu": jax.nn.silu, "swish": jax.nn.silu,
}


class MlpBlock(nnx.Module):
    """Gated MLP: ``wo(act_0(wi_0 x) * act_1(wi_1 x))`` (SwiGLU: ("silu", "linear"); T5 v1.1: ("gelu", "linear"));
    a single activation gives the ungated original-T5 ``wi``."""

    def __init__(self, d_model: int, mlp_dim: int, *, activations: Sequence[str] = ("silu", "linear"),
                 dropout_rate: float = 0.0, dtype: DType = jnp.float32, param_dtype: DType = jnp.float32,
                 rngs: nnx.Rngs):
        self.activations = tuple(activations)
        for a in self.activations:
            if a not in _ACTIVATIONS:
                raise ValueError(f"unknown MLP activation {a!r} (known: {sorted(_ACTIVATIONS)})")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if len(self.activations) == 1:
            self.wi = DenseGeneral(d_model, mlp_dim, names=("embed", "mlp"), **kw)
        else:
            for i in range(len(self.activations)):
                setattr(self, f"wi_{i}", DenseGeneral(d_model, mlp_dim, names=("embed", "mlp"), **kw))
        self.wo = DenseGeneral(mlp_dim, d_model, names=("mlp", "embed"), **kw)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

    def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
        if len(self.activations) == 1:
            h = _ACTIVATIONS[self.activations[0]](self.wi(x))
        else:
            h = None
            for i, a in enumerate(self.activations):
                hi = _ACTIVATIONS[a](getattr(self, f"wi_{i}")(x))
                h = hi if h is None else h * hi
        h = constrain(h, ("batch", "length", "mlp"))
        h = self.dropout(h, deterministic=deterministic)
        return self.wo(h)


# ---------------------------------------------------------------------------------------------------------------
# Positions


def rope_inverse_frequencies(d: int, *, theta: float, llama3_scaling: Sequence[float] | None = None) -> Array:
    """``[d/2]`` rotary frequencies; ``llama3_scaling = (factor, low_freq_factor, high_freq_factor,
    original_max_length)`` applies Llama 3.1/3.2's long-context rescaling (HF ``rope_type="llama3"``): long
    wavelengths divided by ``factor``, short ones kept, the band between interpolated."""
    inv = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    if llama3_scaling is None:
        return inv
    factor, low, high, original = (float(v) for v in llama3_scaling)
    wavelen = 2 * math.pi / inv
    scaled = jnp.where(wavelen > original / low, inv / factor, inv)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= original / high) & (wavelen <= original / low)
    return jnp.where(medium, smoothed, scaled)


def apply_rope(x: Array, positions: Array, *, theta: float, llama3_scaling: Sequence[float] | None = None) -> Array:
    """Rotary embedding, HF-Llama "rotate half" layout. ``x [B, T, H, D]``, ``positions [B, T]``.

    The halves are a size-2 axis and "rotate half" is a flip of it (no concatenate, whose backward is a pad: both
    were slow strided fusions on XLA:CPU)."""
    d = x.shape[-1]
    inv = rope_inverse_frequencies(d, theta=theta, llama3_scaling=llama3_scaling)
    ang = positions.astype(jnp.float32)[..., None] * inv  # [B, T, D/2]
    cos, sin = jnp.cos(ang)[:, :, None, None, :], jnp.sin(ang)[:, :, None, None, :]
    signed_sin = jnp.array([-1.0, 1.0], jnp.float32)[:, None] * sin  # [B, T, 1, 2, D/2]: (-sin, +sin)
    halves = x.astype(jnp.float32).reshape(x.shape[:-1] + (2, d // 2))
    out = halves * cos + jnp.flip(halves, axis=-2) * signed_sin
    return out.reshape(x.shape).astype(x.dtype)


def relative_position_bucket(relative_position: Array, *, bidirectional: bool = True, num_buckets: int = 32,
                             max_distance: int = 128) -> Array:
    """T5's bucketing of ``memory_position - query_position``: exact buckets for small distances, log-spaced
    up to ``max_distance``; bidirectional halves the buckets between the two signs."""
    ret = jnp.zeros_like(relative_position)
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        ret = ret + (n < 0).astype(jnp.int32) * num_buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    val_if_large = max_exact + (
        jnp.log(n.astype(jnp.float32) / max_exact + jnp.finfo(jnp.float32).eps)
        / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(jnp.int32)
    val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
    return ret + jnp.where(is_small, n, val_if_large)


class RelativePositionBiases(nnx.Module):
    """T5 relative attention bias, ``rel_embedding [heads, buckets]``; returns ``[1, H, Tq, Tk]``."""

    def __init__(self, *, num_buckets: int, max_distance: int, num_heads: int, bidirectional: bool,
                 dtype: DType = jnp.float32, param_dtype: DType = jnp.float32, rngs: nnx.Rngs):
        self.num_buckets, self.max_distance, self.bidirectional, self.dtype = (
            num_buckets, max_distance, bidirectional, dtype)
        init = _variance_scaling(1.0, (1,))
        self.rel_embedding = _param(rngs, init, (num_heads, num_buckets), ("heads", "relpos_buckets"),
                                    param_dtype)

    def __call__(self, q_positions: Array, k_positions: Array) -> Array:
        """``q_positions [Tq]``, ``k_positions [Tk]`` (slot indices) -> bias ``[1, H, Tq, Tk]``."""
        rel = k_positions[None, :] - q_positions[:, None]
        buckets = relative_position_bucket(rel.astype(jnp.int32), bidirectional=self.bidirectional,
                                           num_buckets=self.num_buckets, max_distance=self.max_distance)
        onehot = jax.nn.one_hot(buckets, self.num_buckets, dtype=self.dtype)
        return jnp.einsum("hn,qkn->hqk", self.rel_embedding[...].astype(self.dtype), onehot)[None]


# ---------------------------------------------------------------------------------------------------------------
# Masks (boolean, [B, 1, Tq, Tk]; computed, never stored)


def causal_mask(q_index: Array, k_index: Array) -> Array:
    """``q_index [Tq]`` / ``k_index [Tk]`` slot positions -> ``[1, 1, Tq, Tk]``: key not after query."""
    return (k_index[None, :] <= q_index[:, None])[None, None]


def segment_mask(q_segments: Array, k_segments: Array) -> Array:
    """Same-segment attention ``[B, 1, Tq, Tk]`` (packing / padding with segment id 0)."""
    return (q_segments[:, :, None] == k_segments[:, None, :])[:, None]


def prefix_mask(q_causal: Array, k_causal: Array) -> Array:
    """Prefix-LM bidirectional block: both positions inside the ``decoder_causal_attention`` span."""
    return (q_causal[:, :, None].astype(bool) & k_causal[:, None, :].astype(bool))[:, None]


def padding_mask(q_valid: Array, k_valid: Array) -> Array:
    return (q_valid[:, :, None].astype(bool) & k_valid[:, None, :].astype(bool))[:, None]


# ---------------------------------------------------------------------------------------------------------------
# Attention


def dot_product_attention(q: Array, k: Array, v: Array, *, mask: Array | None = None, bias: Array | None = None,
                          dtype: DType = jnp.float32) -> Array:
    """GQA attention. ``q [B, Tq, H, D]``, ``k/v [B, Tk, KV, D]`` (H a multiple of KV), ``mask`` bool broadcastable
    to ``[B, 1, Tq, Tk]``, ``bias`` to ``[B, H, Tq, Tk]``. No query scaling here (T5 folds it into the init).
    Computed by :func:`attention_core.grouped_query_attention` (batched matmuls, hand-written backward)."""
    return attention_core.grouped_query_attention(q, k, v, mask=mask, bias=bias, dtype=dtype)


class Attention(nnx.Module):
    """Multi-head (grouped-query) attention with T5X parameter layout and an optional functional KV cache."""

    def __init__(self, d_model: int, *, num_heads: int, num_kv_heads: int | None = None, head_dim: int,
                 query_scale: float | None = None, rope_theta: float | None = None,
                 rope_scaling: Sequence[float] | None = None, dropout_rate: float = 0.0,
                 dtype: DType = jnp.float32, param_dtype: DType = jnp.float32, rngs: nnx.Rngs):
        kvh = num_kv_heads or num_heads
        if num_heads % kvh:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {kvh}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, kvh, head_dim
        self.query_scale, self.rope_theta, self.dtype = query_scale, rope_theta, dtype
        self.rope_scaling = None if rope_scaling is None else tuple(float(v) for v in rope_scaling)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # T5X: query init scaled by 1/sqrt(head_dim) instead of scaling the logits.
        q_scale = 1.0 / head_dim if query_scale is None else 1.0
        self.query = DenseGeneral(d_model, (num_heads, head_dim), names=("embed", "heads", "kv"),
                                  init_scale=q_scale, **kw)
        self.key = DenseGeneral(d_model, (kvh, head_dim), names=("embed", "kv_heads", "kv"), **kw)
        self.value = DenseGeneral(d_model, (kvh, head_dim), names=("embed", "kv_heads", "kv"), **kw)
        self.out = DenseGeneral((num_heads, head_dim), d_model, names=("heads", "kv", "embed"), **kw)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

    def project_kv(self, x_kv: Array, positions: Array | None = None) -> tuple[Array, Array]:
        k, v = self.key(x_kv), self.value(x_kv)
        if self.rope_theta is not None:
            k = apply_rope(k, positions, theta=self.rope_theta, llama3_scaling=self.rope_scaling)
        return k, v

    def __call__(self, x_q: Array, x_kv: Array | None = None, *, mask: Array | None = None,
                 bias: Array | None = None, q_positions: Array | None = None, kv_positions: Array | None = None,
                 kv: tuple[Array, Array] | None = None, cache: dict[str, Array] | None = None,
                 cache_index: Array | None = None, deterministic: bool = True
                 ) -> tuple[Array, dict[str, Array] | None]:
        """``kv``: precomputed keys/values (cross-attention cache). ``cache`` ``{"k","v"} [B, S, KV, D]`` with
        ``cache_index`` (scalar slot of ``x_q[:, 0]``): the new keys are written there and all S slots attended
        (``mask`` must then be ``[B, 1, Tq, S]``). Returns ``(out [B, Tq, d_model], new cache or None)``."""
        q = self.query(x_q)
        if self.rope_theta is not None:
            q = apply_rope(q, q_positions, theta=self.rope_theta, llama3_scaling=self.rope_scaling)
        if self.query_scale is not None:
            q = q * jnp.asarray(self.query_scale, q.dtype)
        if kv is None:
            k, v = self.project_kv(x_q if x_kv is None else x_kv,
                                   q_positions if kv_positions is None else kv_positions)
        else:
            k, v = kv
        new_cache = None
        if cache is not None:
            zero = jnp.zeros((), jnp.int32)
            idx = (zero, jnp.asarray(cache_index, jnp.int32), zero, zero)
            k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), idx)
            v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), idx)
            new_cache = {"k": k, "v": v}
        out = dot_product_attention(q, k.astype(self.dtype), v, mask=mask, bias=bias, dtype=self.dtype)
        out = self.dropout(out, deterministic=deterministic)
        return self.out(out), new_cache


# Activation rematerialisation per layer: "none" keeps every activation for the backward pass; "full" keeps only
# each layer's input and recomputes the layer in the backward pass; "save_dots" keeps the outputs of the weight
# matmuls (no batch dimensions) and recomputes the cheap elementwise ops, norms and attention scores around them.
REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_remat(remat: str) -> str:
    if remat != "none" and remat not in REMAT_POLICIES:
        raise UserError(f"remat must be one of none, {', '.join(REMAT_POLICIES)}; got {remat!r}")
    return remat


def remat_call(remat: str, fn: Callable[..., Any], module: nnx.Module, *args: Array) -> Any:
    """``fn(module, *args)``, rematerialised per ``remat`` (``nnx.remat`` with that policy) unless "none".

    ``fn`` closes over static Python values (``deterministic``); ``args`` are arrays (None passes through).
    """
    if check_remat(remat) == "none":
        return fn(module, *args)
    return nnx.remat(fn, policy=REMAT_POLICIES[remat], prevent_cse=True)(module, *args)


def draws_random_numbers(module: nnx.Module) -> bool:
    """Whether ``module`` holds a dropout that is active in training (it advances the shared RNG state)."""
    return any(isinstance(m, nnx.Dropout) and m.rate > 0 for _, m in nnx.iter_graph(module))


def scan_enabled() -> bool:
    """``FIAT_JAX_SCAN_LAYERS=1`` turns the layer scan on. Off by default: on XLA:CPU it did not shorten the cold
    compile of the 30-layer SmolLM2 LoRA step (12.0 s vs 11.3 s, trace + compile; benchmarks/bench_compile.py),
    so the unrolled loop, which XLA schedules across layers, stays the default until an accelerator shows a win."""
    return os.environ.get("FIAT_JAX_SCAN_LAYERS", "0") == "1"


def apply_layers(stack: Sequence[nnx.Module], fn: Callable[..., Array], x: Array, *args: Array, remat: str,
                 training: bool) -> Array:
    """``x = fn(layer, x, *args)`` for each layer of ``stack`` in order, rematerialised per ``remat`` in training.

    With ``FIAT_JAX_SCAN_LAYERS=1``, one ``jax.lax.scan`` over the layers: the program holds one layer instead of
    all of them (tracing and lowering 1.7 s instead of 4.1 s for SmolLM2's LoRA step), the lever MaxText and
    Levanter use against long compiles on accelerators. The parameter tree stays per layer
    (``layers_{i}``: what checkpoints, LoRA regexes and exports name); the layers' parameters are stacked inside
    the program. The unrolled loop is kept where a scan cannot stand in: layers that differ in structure (LoRA on
    some layers only) and training with dropout (a scan body cannot advance the layers' own RNG state).
    """
    remat = check_remat(remat) if training else "none"
    split = [nnx.split(m, nnx.Param, ...) for m in stack] if len(stack) > 1 and scan_enabled() else []
    if split and all(s[0] == split[0][0] for s in split) and not (training and draws_random_numbers(stack[0])):
        graphdef, rest = split[0][0], split[0][2]

        def body(carry: Array, params: Any) -> tuple[Array, None]:
            return fn(nnx.merge(graphdef, params, rest), carry, *args), None

        if remat != "none":
            body = jax.checkpoint(body, policy=REMAT_POLICIES[remat], prevent_cse=False)
        stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[s[1] for s in split])
        return jax.lax.scan(body, x, stacked)[0]
    for layer in stack:
        x = remat_call(remat, fn, layer, x, *args)
    return x


# -- pieces the decoder and T5 build the same way ---------------------------------------------------------------
def as_dtype(name: Any) -> Any:
    """A config's dtype field ("float32", "bfloat16") as a dtype (a dtype passes through)."""
    return jnp.dtype(name) if isinstance(name, str) else name


def dtype_kwargs(cfg: TransformerConfig, rngs: nnx.Rngs) -> dict[str, Any]:
    """``dtype`` / ``param_dtype`` / ``rngs`` keyword arguments of every module a model config builds."""
    return dict(dtype=as_dtype(cfg.dtype), param_dtype=as_dtype(cfg.param_dtype), rngs=rngs)


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class TransformerConfig:
    """What every model config here has: the fields the shared layers read (each config gives its own defaults),
    the compute/storage dtypes and remat (``dtype`` is the compute dtype, "bfloat16" option; ``param_dtype`` the
    storage dtype of parameters), and the check that a wrong ``remat`` fails when the config is made.

    A config's repr is part of every checkpoint's fingerprint, so it lists the fields in the config's own
    ``FIELD_ORDER`` (the order each config has always had; a field it does not name follows, in definition order)
    rather than in the order the class hierarchy gives them."""

    FIELD_ORDER: ClassVar[tuple[str, ...]] = ()

    vocab_size: int
    d_model: int
    num_heads: int
    head_dim: int = 64
    mlp_dim: int
    mlp_activations: tuple[str, ...]
    norm_eps: float
    tie_embeddings: bool
    dropout_rate: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    # Activation rematerialisation of each layer in training: "none", "full" or "save_dots" (REMAT_POLICIES).
    remat: str = "none"

    def __post_init__(self) -> None:
        check_remat(self.remat)

    def __repr__(self) -> str:
        names = [f.name for f in dataclasses.fields(self)]
        ordered = [n for n in self.FIELD_ORDER if n in names] + [n for n in names if n not in self.FIELD_ORDER]
        return f"{type(self).__qualname__}({', '.join(f'{n}={getattr(self, n)!r}' for n in ordered)})"


def pre_norm(cfg: TransformerConfig, **kw: Any) -> RMSNorm:
    """The RMSNorm in front of each attention / MLP sublayer."""
    return RMSNorm(cfg.d_model, eps=cfg.norm_eps, **kw)


def add_mlp_sublayer(layer: nnx.Module, cfg: TransformerConfig, **kw: Any) -> None:
    """The last sublayer every transformer layer here builds: ``pre_mlp_layer_norm``, ``mlp``, ``dropout`` (the
    names checkpoints use, built in this order: the order their parameters draw random numbers in)."""
    layer.pre_mlp_layer_norm = pre_norm(cfg, **kw)
    layer.mlp = MlpBlock(cfg.d_model, cfg.mlp_dim, activations=cfg.mlp_activations, dropout_rate=cfg.dropout_rate,
                         **kw)
    layer.dropout = nnx.Dropout(cfg.dropout_rate, rngs=kw["rngs"])


def mlp_residual(layer: nnx.Module, x: Array, *, deterministic: bool) -> Array:
    """The sublayer :func:`add_mlp_sublayer` built, applied: ``x + dropout(mlp(pre_mlp_layer_norm(x)))``,
    sharding-constrained."""
    h = layer.mlp(layer.pre_mlp_layer_norm(x), deterministic=deterministic)
    return constrain(x + layer.dropout(h, deterministic=deterministic), ("batch", "length", "embed"))


def add_layers(module: nnx.Module, count: int, build: Callable[[], nnx.Module]) -> None:
    """``module.layers_0 .. layers_{count-1}`` = ``build()`` each (the names checkpoints and LoRA regexes use)."""
    for i in range(count):
        setattr(module, f"layers_{i}", build())


def add_output_head(module: nnx.Module, cfg: TransformerConfig, **kw: Any) -> None:
    """How both decoders end: ``decoder_norm``, ``logits_dense`` unless the embeddings are tied, ``dropout``
    (built in this order, the order their parameters draw random numbers in)."""
    module.decoder_norm = pre_norm(cfg, **kw)
    if not cfg.tie_embeddings:
        module.logits_dense = DenseGeneral(cfg.d_model, cfg.vocab_size, names=("embed", "vocab"), **kw)
    module.dropout = nnx.Dropout(cfg.dropout_rate, rngs=kw["rngs"])
