"""T5X checkpoints (``checkpoint_N/``: a msgpack ``checkpoint`` file whose large leaves are TensorStore specs
pointing at zarr arrays beside it; params under ``optimizer/target``) and the orbax checkpoints our trainer writes
(``MODEL_DIR/checkpoints/N/state``, params under ``params``). Both already use our names."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorstore as ts
from flax import serialization

from fiat_jax.errors import UserError
from fiat_jax.models.checkpoint_match import Flat, PathLike, flatten


# --------------------------------------------------------------------------------------------------------------
# T5X and orbax checkpoints (already in our names)
# --------------------------------------------------------------------------------------------------------------


def _is_ts_spec(x: Any) -> bool:
    return isinstance(x, Mapping) and {"driver", "kvstore"} <= set(x)


def read_t5x_checkpoint(path: PathLike) -> Flat:
    """Classic T5X ``checkpoint_N`` dir (or its ``checkpoint`` file) -> params ``optimizer/target`` flat."""
    path = pathlib.Path(path)
    ckpt_dir = path if path.is_dir() else path.parent
    ckpt_file = ckpt_dir / "checkpoint"
    try:
        contents = serialization.msgpack_restore(ckpt_file.read_bytes())
    except OSError as err:
        raise UserError(f"cannot read T5X checkpoint {ckpt_file}: {err}") from err
    except Exception as err:
        raise UserError(f"{ckpt_file}: corrupt T5X checkpoint (msgpack: {err})") from err
    if contents.get("version", 0) < 2 or "optimizer" not in contents:
        raise UserError(f"{ckpt_file}: T5X checkpoint version {contents.get('version', 0)} is not supported")
    target = contents["optimizer"].get("target")
    if not isinstance(target, Mapping):
        raise UserError(f"{ckpt_file}: no optimizer/target params in this T5X checkpoint")
    return {name: _read_t5x_leaf(value, ckpt_dir, name) for name, value in _flatten_t5x(target).items()}


def _flatten_t5x(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and not _is_ts_spec(value):
            out.update(_flatten_t5x(value, name + "."))
        else:
            out[name] = value
    return out


def _read_t5x_leaf(value: Any, ckpt_dir: pathlib.Path, name: str) -> np.ndarray:
    if not _is_ts_spec(value):
        return np.asarray(value)
    spec = json.loads(json.dumps(value))
    kvstore = spec["kvstore"]
    if kvstore.get("driver") not in ("file", "gfile"):
        raise UserError(f"{ckpt_dir}: {name} is stored on {kvstore.get('driver')!r}; copy the checkpoint to a "
                        f"local directory first")
    kvstore["driver"] = "file"
    kvstore["path"] = str(ckpt_dir / kvstore["path"])
    try:
        return ts.open(spec, open=True, read=True).result().read().result()
    except Exception as err:
        raise UserError(f"{ckpt_dir}: cannot read {name} ({err})") from err


def read_orbax_params(path: PathLike) -> Flat:
    """Params of a checkpoint our trainer wrote: ``MODEL_DIR``, ``MODEL_DIR/checkpoints``, a step dir or its
    ``state`` item dir (the newest step when not given)."""
    import orbax.checkpoint as ocp  # lazy: ~0.6 s to import; only reading an orbax checkpoint needs it

    path = pathlib.Path(path)
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    steps = sorted((int(p.name), p) for p in path.iterdir() if p.name.isdigit()) if path.is_dir() else []
    if steps:
        path = steps[-1][1]
    if (path / "state").is_dir():
        path = path / "state"
    try:
        restored = ocp.PyTreeCheckpointer().restore(path)
    except Exception as err:
        raise UserError(f"cannot read orbax checkpoint {path}: {err}") from err
    params = restored.get("params", restored) if isinstance(restored, Mapping) else None
    if not isinstance(params, Mapping):
        raise UserError(f"{path}: no params in this orbax checkpoint")
    return {k: np.asarray(v) for k, v in flatten(params).items()}
