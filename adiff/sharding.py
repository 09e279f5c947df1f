"""Device meshes, shardings and multi-host batch helpers.

Conventions (big_vision / Flax examples, without `pmap`):

- A mesh has the axis "data" and optionally "fsdp". Both are `AxisType.Auto` (the classic
  GSPMD behaviour; `jax.make_mesh` defaults to explicit axes in jax 0.10).
- The batch's leading dimension is split over every mesh axis ("data", and "fsdp" when present),
  so each device sees `global_batch / num_devices` examples.
- Parameters are replicated, or, with an "fsdp" axis of size > 1, each large enough array is
  split along its largest dimension divisible by the "fsdp" size (`state_sharding`).

Multi-host: call `jax.distributed.initialize()` first; `shard_batch` then builds global arrays
from each process's local slice with `jax.make_array_from_process_local_data`.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from adiff.typing import PyTree

__all__ = [
    "DATA_AXIS",
    "FSDP_AXIS",
    "make_mesh",
    "data_sharding",
    "replicated_sharding",
    "state_sharding",
    "batch_axis_size",
    "shard_batch",
    "pad_to_multiple",
]

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"


def make_mesh(num_devices: int | None = None, *, fsdp: int = 1) -> Mesh:
    """Builds a mesh over the first `num_devices` devices with axes ("data",) or ("data", "fsdp").

    Args:
      num_devices: number of devices to use (default: all of `jax.devices()`).
      fsdp: size of the "fsdp" axis; 1 gives a pure data-parallel mesh with the single axis
        "data". Must divide `num_devices`.

    Returns:
      A `jax.sharding.Mesh` with `AxisType.Auto` axes.
    """
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if isinstance(num_devices, bool) or not isinstance(num_devices, int):
        raise TypeError(f"num_devices must be an int or None, got {type(num_devices).__name__}")
    if not 1 <= num_devices <= len(devices):
        raise ValueError(
            f"num_devices must be in [1, {len(devices)}] (available devices), got {num_devices}")
    if isinstance(fsdp, bool) or not isinstance(fsdp, int) or fsdp < 1:
        raise ValueError(f"fsdp must be a positive int, got {fsdp!r}")
    if num_devices % fsdp:
        raise ValueError(f"fsdp must divide num_devices={num_devices}, got fsdp={fsdp}")
    auto = jax.sharding.AxisType.Auto
    if fsdp == 1:
        return jax.make_mesh((num_devices,), (DATA_AXIS,), axis_types=(auto,),
                             devices=devices[:num_devices])
    return jax.make_mesh((num_devices // fsdp, fsdp), (DATA_AXIS, FSDP_AXIS),
                         axis_types=(auto, auto), devices=devices[:num_devices])


def _batch_axes(mesh: Mesh) -> tuple[str, ...]:
    return tuple(a for a in (DATA_AXIS, FSDP_AXIS) if a in mesh.axis_names)


def batch_axis_size(mesh: Mesh) -> int:
    """Number of shards the batch's leading dimension is split into (data x fsdp)."""
    return int(np.prod([mesh.shape[a] for a in _batch_axes(mesh)]))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a batch: leading dimension over "data" (and "fsdp" when present)."""
    axes = _batch_axes(mesh)
    if not axes:
        raise ValueError(f"mesh must have a '{DATA_AXIS}' axis, got axes {mesh.axis_names}")
    return NamedSharding(mesh, P(axes if len(axes) > 1 else axes[0]))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that places a full copy on every device of `mesh`."""
    return NamedSharding(mesh, P())


def _fsdp_spec(shape: tuple[int, ...], size: int, min_size: int) -> P:
    if size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    # Largest dimension divisible by the fsdp size.
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % size == 0:
            spec = [None] * len(shape)
            spec[dim] = FSDP_AXIS
            return P(*spec)
    return P()


def state_sharding(mesh: Mesh, tree: PyTree, *, min_size_to_shard: int = 2**12) -> PyTree:
    """Shardings for a parameter/train-state pytree on `mesh`.

    Replicated on a data-only mesh. With an "fsdp" axis of size > 1, every array with at least
    `min_size_to_shard` elements is split along its largest dimension divisible by that size;
    smaller arrays (and scalars such as the step counter) are replicated.

    Args:
      mesh: the device mesh.
      tree: a pytree of arrays (or `jax.ShapeDtypeStruct`s).
      min_size_to_shard: arrays smaller than this stay replicated.

    Returns:
      A pytree of `NamedSharding`s with the structure of `tree`.
    """
    size = mesh.shape[FSDP_AXIS] if FSDP_AXIS in mesh.axis_names else 1
    return jax.tree.map(
        lambda x: NamedSharding(mesh, _fsdp_spec(tuple(np.shape(x)), size, min_size_to_shard)),
        tree)


def shard_batch(batch: PyTree, mesh: Mesh) -> PyTree:
    """Turns a (process-local) batch of numpy arrays into global arrays sharded over the batch.

    Single host: `jax.device_put` with `data_sharding(mesh)`; the leading dimension must be
    divisible by the number of batch shards. Multi-host: each process passes its own slice and
    the global batch is the concatenation over processes (`jax.make_array_from_process_local_data`).

    Args:
      batch: pytree of arrays with a common leading (batch) dimension.
      mesh: the device mesh.

    Returns:
      The same pytree of global `jax.Array`s.
    """
    sharding = data_sharding(mesh)
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("batch must contain at least one array, got an empty pytree")
    n = np.shape(leaves[0])[0] if np.ndim(leaves[0]) else None
    for leaf in leaves:
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] != n:
            raise ValueError(
                f"batch arrays must share a leading dimension {n}, got shape {np.shape(leaf)}")
    shards = batch_axis_size(mesh)
    if jax.process_count() == 1:
        if n % shards:
            raise ValueError(
                f"batch size must be divisible by the mesh's batch shards ({shards}), got {n}")
        return jax.device_put(batch, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                        batch)


def pad_to_multiple(x: Any, multiple: int) -> tuple[Any, int]:
    """Pads the leading dimension of `x` (array or pytree of arrays) up to a multiple.

    Padding repeats the last row (so padded rows are valid inputs and produce finite outputs);
    drop them again with `out[:n_valid]`. Use it to score any number of samples in fixed-size,
    device-divisible batches (one compilation).

    Args:
      x: array [N, ...] or pytree of arrays with a common leading dimension N >= 1.
      multiple: positive int.

    Returns:
      (x_padded with leading dimension ceil(N / multiple) * multiple, N).
    """
    if isinstance(multiple, bool) or not isinstance(multiple, (int, np.integer)) or multiple < 1:
        raise ValueError(f"multiple must be a positive int, got {multiple!r}")
    leaves = jax.tree.leaves(x)
    if not leaves or np.ndim(leaves[0]) == 0:
        raise ValueError("x must be an array (or pytree of arrays) with a leading dimension")
    n = int(np.shape(leaves[0])[0])
    if n == 0:
        raise ValueError("x must have at least one row, got 0")
    for leaf in leaves:
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] != n:
            raise ValueError(f"all arrays in x must have leading dimension {n}, got {np.shape(leaf)}")
    pad = (-n) % int(multiple)
    if pad == 0:
        return x, n

    def _pad(a):
        xp = np if isinstance(a, np.ndarray) else jax.numpy
        return xp.concatenate([a, xp.repeat(a[-1:], pad, axis=0)], axis=0)

    return jax.tree.map(_pad, x), n
