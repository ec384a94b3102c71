"""Mesh shapes for the devices at hand: conftest gives 8 fake CPU devices; on a GPU host the tests use the
machine's own devices (any count), so the same mesh and train tests run there."""
from __future__ import annotations

import jax


def count() -> int:
    return jax.device_count()


def balanced(n: int | None = None) -> tuple[int, int, int]:
    """``(data, fsdp, model)`` using all ``n`` devices, as even as powers of two allow: 8 -> (2, 2, 2)."""
    n = count() if n is None else n
    data = 2 if n % 2 == 0 else 1
    fsdp = 2 if (n // data) % 2 == 0 else 1
    return data, fsdp, n // (data * fsdp)


def model_split(n: int | None = None) -> int:
    """The largest of 4, 2, 1 that divides ``n``: the tensor-parallel axis of a (data, 1, model) mesh."""
    n = count() if n is None else n
    return next(m for m in (4, 2, 1) if n % m == 0)


def spec(shape: tuple[int, int, int]) -> str:
    return ",".join(f"{axis}={size}" for axis, size in zip(("data", "fsdp", "model"), shape))
