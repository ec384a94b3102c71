"""Meshes, logical-axis rules and shardings: the pjit layer of fiat_jax.

Every parameter names its axes logically (``embed``, ``mlp``, ``heads``...); a rules table maps logical names to
mesh axes (``data``, ``fsdp``, ``model``). One table serves data, fully-sharded and tensor parallelism: a mesh axis
of size 1 makes its rules no-ops. As in flax's logical partitioning, a logical name may have several rules and takes
the first whose mesh axes are still unused in that array, so ``("batch", "length", "embed")`` activations and
``("embed", "mlp")`` kernels share one table. A parameter whose logical name has no rule at all is an error.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import gin
import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fiat_jax.errors import PartitioningError

MESH_AXES = ("data", "fsdp", "model")

# (logical axis, mesh axis or tuple of mesh axes or None). Earlier rules win when their mesh axes are free.
Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("batch", "data"),
    ("embed", "fsdp"),
    ("embed", None),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("joined_kv", "model"),
    ("vocab", "model"),
    ("kv", None),
    ("length", None),
    ("relpos_buckets", None),
    ("layers", None),
    ("lora_rank", None),
    ("prompt_len", None),
    ("norm", None),
)

_RULES: contextvars.ContextVar[Rules | None] = contextvars.ContextVar("fiat_axis_rules", default=None)
_log = logging.getLogger(__name__)


def current_rules() -> Rules:
    """The rules set by the innermost :func:`axis_rules` context, else the gin-bound or default table."""
    rules = _RULES.get()
    return rules if rules is not None else configured_rules()


@gin.configurable
def configured_rules(*, rules: Rules = DEFAULT_RULES, extra_rules: Rules = ()) -> Rules:
    """Gin hook: ``configured_rules.extra_rules = [("my_axis", "model")]`` prepends rules to the defaults."""
    return tuple(tuple(r) for r in extra_rules) + tuple(tuple(r) for r in rules)


@contextlib.contextmanager
def axis_rules(rules: Rules) -> Iterator[None]:
    """Use ``rules`` for :func:`constrain` and shardings inside the block (also inside traced functions)."""
    token = _RULES.set(tuple(tuple(r) for r in rules))
    try:
        yield
    finally:
        _RULES.reset(token)


def parse_mesh_spec(spec: str | Mapping[str, int] | Sequence[int], num_devices: int) -> dict[str, int]:
    """``"data=2,fsdp=2,model=2"`` / ``{"data": -1}`` / ``(8, 1, 1)`` -> sizes for all mesh axes.

    ``-1`` takes the devices left over; unnamed axes get size 1.
    """
    if isinstance(spec, str):
        sizes: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or name not in MESH_AXES:
                raise PartitioningError(
                    f"bad mesh spec {spec!r}: expected comma-separated {'/'.join(MESH_AXES)}=N items, got {part!r}")
            try:
                sizes[name] = int(value)
            except ValueError:
                raise PartitioningError(f"bad mesh spec {spec!r}: {value!r} is not an integer") from None
    elif isinstance(spec, Mapping):
        sizes = {str(k): int(v) for k, v in spec.items()}
        unknown = set(sizes) - set(MESH_AXES)
        if unknown:
            raise PartitioningError(f"bad mesh spec {dict(spec)}: unknown axes {sorted(unknown)}")
    else:
        values = [int(v) for v in spec]
        if len(values) != len(MESH_AXES):
            raise PartitioningError(f"bad mesh shape {tuple(values)}: need {len(MESH_AXES)} sizes {MESH_AXES}")
        sizes = dict(zip(MESH_AXES, values))
    sizes = {axis: sizes.get(axis, 1) for axis in MESH_AXES}
    free = [axis for axis, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise PartitioningError(f"bad mesh spec {spec!r}: only one axis may be -1, got {free}")
    if any(size == 0 or size < -1 for size in sizes.values()):
        raise PartitioningError(f"bad mesh spec {spec!r}: axis sizes must be positive or -1")
    known = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if num_devices % known:
            raise PartitioningError(
                f"mesh spec {spec!r} does not divide the {num_devices} devices (fixed axes take {known})")
        sizes[free[0]] = num_devices // known
    elif known != num_devices:
        raise PartitioningError(
            f"mesh spec {spec!r} uses {known} devices but {num_devices} are available; use -1 for the rest")
    return sizes


@gin.configurable
def make_mesh(spec: str | Mapping[str, int] | Sequence[int] = "data=-1", *,
              devices: Sequence[Any] | None = None) -> Mesh:
    """A ``(data, fsdp, model)`` mesh with Auto axis types, so logical constraints can drive GSPMD."""
    devices = list(devices) if devices is not None else jax.devices()
    sizes = parse_mesh_spec(spec, len(devices))
    shape = tuple(sizes[axis] for axis in MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def logical_to_mesh_axes(logical: Sequence[str | None], rules: Rules | None = None, *,
                         what: str = "array") -> PartitionSpec:
    """Map logical axis names to a PartitionSpec; unknown names raise, mesh axes are used at most once."""
    rules = current_rules() if rules is None else rules
    used: set[str] = set()
    out: list[str | tuple[str, ...] | None] = []
    for name in logical:
        if name is None:
            out.append(None)
            continue
        candidates = [mesh_axes for rule_name, mesh_axes in rules if rule_name == name]
        if not candidates:
            raise PartitioningError(
                f"{what}: logical axis {name!r} has no partitioning rule (add one with "
                f"configured_rules.extra_rules or partitioning.axis_rules)")
        chosen = None
        for mesh_axes in candidates:
            axes = () if mesh_axes is None else ((mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes))
            if not used.intersection(axes):
                chosen = axes
                break
        chosen = chosen or ()
        used.update(chosen)
        out.append(None if not chosen else (chosen[0] if len(chosen) == 1 else chosen))
    return PartitionSpec(*out)


def _fit_to_shape(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh, what: str) -> PartitionSpec:
    """Replicate (with a warning) any dimension that the mesh axes cannot divide evenly."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if axes is None:
            fitted.append(None)
            continue
        names = (axes,) if isinstance(axes, str) else tuple(axes)
        size = math.prod(mesh.shape[a] for a in names)
        if dim % size:
            _log.warning("%s: dimension %d is not divisible by mesh axes %s (size %d); replicating it",
                         what, dim, names, size)
            fitted.append(None)
        else:
            fitted.append(axes)
    return PartitionSpec(*fitted)


def path_str(path: Sequence[Any]) -> str:
    """``a/b/0/kernel`` from a jax/nnx tree path (dict keys, attributes, sequence indices)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def param_shardings(state: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
    """NamedShardings for every leaf of an ``nnx.State`` (abstract or concrete), from its logical axis names.

    ``nnx.Param`` leaves (LoRA and prompt parameters included) must carry ``out_sharding`` names unless scalar;
    other variables (RNG counters, caches) without names are replicated.
    """
    rules = current_rules() if rules is None else rules
    problems: list[str] = []

    def one(path, leaf):
        var = leaf if _is_variable(leaf) else None
        value = leaf.get_value() if var is not None else leaf
        shape = tuple(getattr(value, "shape", ()))
        names = var.get_metadata().get("out_sharding") if var is not None else None
        where = path_str(path)
        if names is None:
            if var is not None and isinstance(var, nnx.Param) and len(shape) > 0:
                problems.append(f"{where} {shape} carries no logical axis names")
            return NamedSharding(mesh, PartitionSpec())
        if len(names) != len(shape):
            problems.append(f"{where} {shape} has {len(names)} logical names {tuple(names)}")
            return NamedSharding(mesh, PartitionSpec())
        try:
            spec = logical_to_mesh_axes(names, rules, what=where)
        except PartitioningError as err:
            problems.append(str(err))
            return NamedSharding(mesh, PartitionSpec())
        return NamedSharding(mesh, _fit_to_shape(spec, shape, mesh, where))

    shardings = jax.tree_util.tree_map_with_path(one, state, is_leaf=_is_variable)
    if problems:
        raise PartitioningError("cannot partition parameters: " + "; ".join(problems))
    return shardings


def batch_sharding(mesh: Mesh, rules: Rules | None = None) -> NamedSharding:
    """Sharding of a ``[batch, ...]`` input array: the leading axis over the batch rule, the rest replicated."""
    return NamedSharding(mesh, logical_to_mesh_axes(("batch",), rules, what="batch"))


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
    """Sharding constraint on an activation by logical names; a no-op outside a mesh (``jax.set_mesh``)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    spec = logical_to_mesh_axes(logical, what="activation")
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    fitted = []
    for dim, axes in zip(x.shape, tuple(spec) + (None,) * (x.ndim - len(spec))):
        names = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        fitted.append(axes if names and dim % math.prod(sizes[a] for a in names) == 0 else None)
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*fitted))


def create_model(factory: Callable[[], nnx.Module], *, mesh: Mesh | None = None,
                 rules: Rules | None = None) -> nnx.Module:
    """Build an NNX model with eager sharding off; with a mesh, each parameter is created in its own sharding.

    Initialising under ``jit`` with ``out_shardings`` means no host ever holds the full unsharded model.
    """
    with nnx.use_eager_sharding(False):
        if mesh is None:
            return factory()
        abstract = nnx.eval_shape(factory)
        graphdef, abstract_state = nnx.split(abstract)
        shardings = param_shardings(abstract_state, mesh, rules)

        init = jax.jit(lambda: nnx.state(factory()), out_shardings=shardings)
        with jax.set_mesh(mesh):
            state = init()
        return nnx.merge(graphdef, state)


def shard_state(state: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
    """Place an existing state on the mesh according to its logical names."""
    return jax.device_put(state, param_shardings(state, mesh, rules))


@gin.configurable
def initialize_distributed(*, coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, local_device_ids: Sequence[int] | None = None) -> bool:
    """Start ``jax.distributed`` for multi-host runs; a no-op on one host.

    Arguments fall back to FIAT_COORDINATOR_ADDRESS / FIAT_NUM_PROCESSES / FIAT_PROCESS_ID. On Cloud TPU pods call
    with ``num_processes=-1`` (gin) to let JAX discover the slice. Returns True when distributed mode started.
    """
    coordinator_address = coordinator_address or os.environ.get("FIAT_COORDINATOR_ADDRESS")
    if num_processes is None and os.environ.get("FIAT_NUM_PROCESSES"):
        num_processes = int(os.environ["FIAT_NUM_PROCESSES"])
    if process_id is None and os.environ.get("FIAT_PROCESS_ID"):
        process_id = int(os.environ["FIAT_PROCESS_ID"])
    if num_processes == -1:
        jax.distributed.initialize()
        return True
    if not num_processes or num_processes <= 1:
        return False
    if coordinator_address is None or process_id is None:
        raise PartitioningError(
            "multi-host run needs coordinator_address and process_id (or FIAT_COORDINATOR_ADDRESS/FIAT_PROCESS_ID)")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local_device_ids)
    return True


def describe(mesh: Mesh) -> str:
    """One line for logs: ``data=2 fsdp=2 model=2 (8 devices, cpu)``."""
    sizes = " ".join(f"{name}={size}" for name, size in mesh.shape.items())
    platform = np.asarray(mesh.devices).flat[0].platform
    return f"{sizes} ({mesh.devices.size} devices, {platform})"
