"""Device mesh and shardings: the batch is split over a ``data`` axis, parameters and
optimizer state are replicated. Works on 1..N local devices and on several hosts."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS",
    "batch_sharding",
    "make_mesh",
    "maybe_initialize_distributed",
    "put_global_batch",
    "replicate",
    "replicated_sharding",
]

DATA_AXIS = "data"

# Environment variables that mean "this process is one of several": jax.distributed
# auto-detects the cluster (SLURM, Open MPI, Cloud TPU, Kubernetes) or reads the explicit
# coordinator variables.
_MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")
_MULTIHOST_COUNT_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_NUM_PROCESSES")

_distributed_initialized = False


def _multihost_requested() -> bool:
    if any(os.environ.get(name) for name in _MULTIHOST_ENV):
        return True
    for name in _MULTIHOST_COUNT_ENV:
        try:
            if int(os.environ.get(name, "1")) > 1:
                return True
        except ValueError:
            continue
    return False


def maybe_initialize_distributed(force: bool = False) -> bool:
    """Calls ``jax.distributed.initialize()`` when a multi-host environment is set.

    Must run before any other JAX call. Returns True when it initialised. The coordinator
    address, process count and id come from the environment (``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) or from the cluster (SLURM, Open MPI, TPU).
    """
    global _distributed_initialized
    if _distributed_initialized:
        return True
    if not (force or _multihost_requested()):
        return False
    kwargs: dict[str, Any] = {}
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        kwargs["coordinator_address"] = os.environ["JAX_COORDINATOR_ADDRESS"]
    if os.environ.get("JAX_NUM_PROCESSES"):
        kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
    if os.environ.get("JAX_PROCESS_ID"):
        kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)
    _distributed_initialized = True
    return True


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over all (global) devices with the axis ``data``."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``; the other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf of ``tree`` on all devices of ``mesh`` (replicated)."""
    sharding = replicated_sharding(mesh)
    return jax.tree_util.tree_map(
        lambda x: _replicated_array(np.asarray(x), sharding),
        jax.device_get(tree),
    )


def put_global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's shard of the batch -> global arrays sharded over ``data``.

    ``local_batch`` leaves have shape (b_local, ...) with b_local = global // process_count.
    The global batch must split evenly over the mesh's devices.
    """
    sharding = batch_sharding(mesh)
    n_devices = mesh.devices.size
    out = {}
    for key, value in local_batch.items():
        value = np.asarray(value)
        global_batch = value.shape[0] * jax.process_count()
        if global_batch % n_devices:
            raise ValueError(
                f"global batch {global_batch} ({key!r}) does not split over {n_devices} "
                f"devices; choose config.batch_size as a multiple of {n_devices}"
            )
        out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out


def _replicated_array(x: np.ndarray, sharding: Any) -> jax.Array:
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
