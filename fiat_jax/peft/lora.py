"""LoRA as a transform of any fiat_jax model: adapters on the dense kernels whose parameter path matches a regex.

Decision (qwix 0.1.8 evaluated first, on our tiny ``Decoder``): ``qwix.LoraProvider`` + ``apply_lora_to_model``
does run on our NNX models (it intercepts ``jax.lax.dot_general`` inside modules whose *module* path matches and
re-classes the model), but it does not cover this cleanly:

* 3-D kernels are flattened: ``out [H, hd, D]`` gets ``lora_a [H*hd, r]`` labelled ``('heads', None)``, so the
  flattened axis would be sharded as if it were ``heads`` and the rank axis has no logical name (we need
  ``lora_rank``, and a rule for every axis — docs/CONTRACTS.md);
* its dropout is applied on *every* call (it has no deterministic switch, and needs ``qwix_rngs`` set on the
  model), i.e. also at evaluation and decoding;
* scale is ``alpha / r`` only (no rank-stabilised ``alpha / sqrt(r)``), targets are module paths, only the
  methods named at apply time are intercepted (T5 needs ``encode``/``decode`` too), and merge / HF-peft export
  are not provided.

So this module swaps each target ``layers.DenseGeneral`` for a :class:`LoRADenseGeneral` that keeps the *same*
``kernel`` Variable (same path, frozen) and adds ``lora_a [*in, r]`` (``(*in_names, 'lora_rank')``) and
``lora_b [r, *out]`` (``('lora_rank', *out_names)``) as ``nnx.LoRAParam``: they partition like their base kernel
and the rank axis is replicated (``partitioning.DEFAULT_RULES``). ``y = x·W + s · ((drop(x)·A)·B)`` with
``s = alpha / r`` or ``alpha / sqrt(r)`` (``rslora``); ``A`` is uniform(±1/sqrt(fan_in)) (HF peft's
kaiming-uniform(a=√5)), ``B`` zero, so a fresh adapter reproduces the base model exactly.

Targets are regexes *fully matched* against base-relative parameter paths with ``/`` separators, e.g.
``layers_3/attention/query/kernel`` (decoder) or ``decoder/layers_0/encoder_decoder_attention/out/kernel`` (T5).
The result is a :class:`~fiat_jax.peft.wrapper.PeftModel` (dropout needs its training flag). HF-peft export and
import: :func:`fiat_jax.peft.hf_adapter.export_peft` / :func:`~fiat_jax.peft.hf_adapter.load_peft`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fiat_jax import partitioning
from fiat_jax.errors import UserError
from fiat_jax.models import layers
from fiat_jax.peft import wrapper
from fiat_jax.peft.trainable import peft_filter

Array = jax.Array

ATTENTION_TARGETS = r".*attention/(query|key|value|out)/kernel"
MLP_TARGETS = r".*mlp/(wi|wi_0|wi_1|wo)/kernel"


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """What :func:`apply_lora` was called with (kept on the wrapper for export; hashable: graph-static)."""

    rank: int
    alpha: float
    rslora: bool = False
    dropout: float = 0.0


def lora_scale(alpha: float, rank: int, *, rslora: bool = False) -> float:
    """``alpha / r`` (LoRA) or ``alpha / sqrt(r)`` (rank-stabilised LoRA), as HF peft computes it."""
    return float(alpha) / (math.sqrt(rank) if rslora else rank)


class LoRADenseGeneral(nnx.Module):
    """``DenseGeneral`` plus a low-rank update; holds the base module's own ``kernel`` Variable (frozen)."""

    def __init__(self, base: layers.DenseGeneral, *, rank: int, scale: float, dropout: float, key: Array):
        self.in_shape, self.out_shape, self.dtype = base.in_shape, base.out_shape, base.dtype
        self.kernel = base.kernel
        self.rank, self.scale = int(rank), float(scale)
        names = tuple(base.kernel.get_metadata().get("out_sharding") or (None,) * base.kernel.ndim)
        n = len(self.in_shape)
        pdt = base.kernel.dtype
        fan_in = math.prod(self.in_shape)
        bound = 1.0 / math.sqrt(fan_in)
        a = jax.random.uniform(key, self.in_shape + (rank,), jnp.float32, -bound, bound).astype(pdt)
        self.lora_a = nnx.LoRAParam(a, sharding_names=names[:n] + ("lora_rank",))
        self.lora_b = nnx.LoRAParam(jnp.zeros((rank,) + self.out_shape, pdt),
                                    sharding_names=("lora_rank",) + names[n:])
        self.dropout = (nnx.Dropout(dropout, rngs=nnx.Rngs(dropout=jax.random.fold_in(key, 1)))
                        if dropout > 0 else None)

    def delta(self, x: Array) -> Array:
        """The adapter's contribution ``s · (x·A)·B`` (no dropout)."""
        h = layers.contract_last(x, self.lora_a[...].astype(self.dtype), len(self.in_shape))
        d = layers.contract_last(h, self.lora_b[...].astype(self.dtype), 1)
        return d * jnp.asarray(self.scale, self.dtype)

    def __call__(self, x: Array) -> Array:
        x = x.astype(self.dtype)
        y = layers.contract_last(x, self.kernel[...].astype(self.dtype), len(self.in_shape))
        h = x
        if self.dropout is not None and wrapper.is_training():
            h = self.dropout(h, deterministic=False)
        return y + self.delta(h)

    def merged_kernel(self) -> Array:
        """``W + s · A·B`` in the kernel's dtype (computed in fp32)."""
        n = len(self.in_shape)
        ab = jnp.tensordot(self.lora_a[...].astype(jnp.float32), self.lora_b[...].astype(jnp.float32),
                           axes=([n], [0]))
        return (self.kernel[...].astype(jnp.float32) + self.scale * ab).astype(self.kernel.dtype)


def path_str(path: tuple[Any, ...]) -> str:
    return "/".join(str(p) for p in path)


def dense_modules(model: nnx.Module) -> dict[str, layers.DenseGeneral]:
    """Base-relative module path -> each plain ``DenseGeneral`` (LoRA candidates)."""
    base = wrapper.unwrap(model)
    return {path_str(p): m for p, m in nnx.iter_modules(base) if type(m) is layers.DenseGeneral}


def lora_modules(model: nnx.Module) -> dict[str, LoRADenseGeneral]:
    """Base-relative module path -> each ``LoRADenseGeneral`` in the model."""
    base = wrapper.unwrap(model)
    return {path_str(p): m for p, m in nnx.iter_modules(base) if isinstance(m, LoRADenseGeneral)}


def _set_submodule(root: nnx.Module, path: str, module: nnx.Module) -> None:
    parts = path.split("/")
    parent = root
    for part in parts[:-1]:
        parent = getattr(parent, part)
    setattr(parent, parts[-1], module)


def _place_like(module: nnx.Module, reference: Any) -> None:
    """Shard the new LoRA params of ``module`` on the mesh of ``reference`` (a base kernel), if it has one."""
    sharding = getattr(reference, "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if not isinstance(sharding, jax.sharding.NamedSharding) or mesh is None or mesh.size == 1:
        return
    state = nnx.state(module, nnx.LoRAParam)
    nnx.update(module, jax.device_put(state, partitioning.param_shardings(state, mesh)))


def apply_lora(model: nnx.Module, *, targets: str = ATTENTION_TARGETS, rank: int = 8, alpha: float = 16.0,
               rslora: bool = False, dropout: float = 0.0, include_mlp: bool = False,
               seed: int = 0) -> wrapper.PeftModel:
    """Add LoRA adapters to every dense kernel whose path fully matches ``targets`` (``| MLP_TARGETS`` with
    ``include_mlp``); returns the wrapped model (the base module tree is modified in place)."""
    if rank < 1:
        raise UserError(f"LoRA rank must be >= 1, got {rank}")
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"LoRA dropout must be in [0, 1), got {dropout}")
    pattern = f"(?:{targets})|(?:{MLP_TARGETS})" if include_mlp else targets
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise UserError(f"LoRA targets {targets!r} is not a valid regex: {err}") from err
    if lora_modules(model):
        raise UserError("apply_lora: the model already has LoRA adapters (merge them first)")
    candidates = dense_modules(model)
    chosen = {p: m for p, m in candidates.items() if regex.fullmatch(p + "/kernel")}
    if not chosen:
        examples = ", ".join(p + "/kernel" for p in sorted(candidates)[:4])
        raise UserError(f"LoRA targets {pattern!r} match no dense kernel (paths look like: {examples})")
    for p, m in chosen.items():
        limit = min(math.prod(m.in_shape), math.prod(m.out_shape))
        if rank > limit:
            raise UserError(f"LoRA rank {rank} exceeds {p}/kernel's dims {m.in_shape + m.out_shape} "
                            f"(at most {limit})")
    scale = lora_scale(alpha, rank, rslora=rslora)
    root = jax.random.key(seed)
    base = wrapper.unwrap(model)
    for i, (p, m) in enumerate(sorted(chosen.items())):
        with nnx.use_eager_sharding(False):
            new = LoRADenseGeneral(m, rank=rank, scale=scale, dropout=dropout, key=jax.random.fold_in(root, i))
        _place_like(new, m.kernel.get_value())
        _set_submodule(base, p, new)
    peft = wrapper.wrap(model)
    peft.lora_settings = LoraSettings(int(rank), float(alpha), bool(rslora), float(dropout))
    return peft


@gin.configurable
def lora_transform(*, targets: str = ATTENTION_TARGETS, rank: int = 8, alpha: float = 16.0,
                   rslora: bool = False, dropout: float = 0.0, include_mlp: bool = False,
                   seed: int = 0) -> Callable[[nnx.Module], nnx.Module]:
    """``train.model_transform``: a ``model -> model`` callable applying :func:`apply_lora` with these settings."""
    if rank < 1:
        raise UserError(f"lora_transform: rank must be >= 1, got {rank}")

    def transform(model: nnx.Module) -> nnx.Module:
        return apply_lora(model, targets=targets, rank=rank, alpha=alpha, rslora=rslora, dropout=dropout,
                          include_mlp=include_mlp, seed=seed)

    transform.__name__ = transform.__qualname__ = f"lora_transform(rank={rank}, alpha={alpha})"
    return transform


def trainable_filter() -> Any:
    """The NNX filter training only the LoRA adapters (``peft_filter(mode='lora')``)."""
    return peft_filter(mode="lora")


def merge(model: nnx.Module, *, copy: bool = True) -> nnx.Module:
    """Fold every adapter into its kernel: ``W <- W + s·A·B``, ``LoRADenseGeneral`` -> plain ``DenseGeneral``.

    Returns the bare model (or the wrapper when it also holds a soft prompt). ``copy=False`` reuses (and
    changes) the given model's kernels instead of cloning it first."""
    if copy:
        model = nnx.clone(model)
    base = wrapper.unwrap(model)
    mods = lora_modules(base)
    if not mods:
        raise UserError("merge: the model has no LoRA adapters")
    for p, m in mods.items():
        names = tuple(m.kernel.get_metadata().get("out_sharding") or ())
        pdt = m.kernel.dtype
        with nnx.use_eager_sharding(False):
            dense = nnx.eval_shape(lambda m=m, names=names, pdt=pdt: layers.DenseGeneral(
                m.in_shape, m.out_shape, names=names, dtype=m.dtype, param_dtype=pdt, rngs=nnx.Rngs(0)))
        old = m.kernel.get_value()
        merged = m.merged_kernel()
        if isinstance(getattr(old, "sharding", None), jax.sharding.NamedSharding):
            merged = jax.device_put(merged, old.sharding)
        m.kernel.set_value(merged)
        dense.kernel = m.kernel
        _set_submodule(base, p, dense)
    if isinstance(model, wrapper.PeftModel) and model.prompt_length:
        if "lora_settings" in vars(model):
            del model.lora_settings
        return model
    return base


def count_params(model: nnx.Module, filt: Any = nnx.LoRAParam) -> int:
    """How many scalars the filter selects (e.g. adapter size)."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, filt))))
