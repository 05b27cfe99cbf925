"""Device mesh and shardings: the batch is split over a ``data`` axis, parameters and
optimizer state are replicated. Works on 1..N local devices and on several hosts. The mesh
and its two shardings are `aspdc_jax.devices`' (shared with inference; named here too).
Joining a multi-process run is `maybe_initialize_distributed`; what a process does when
one fails is :mod:`aspdc_jax.training.failures`'."""

from __future__ import annotations

import contextlib
import inspect
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from aspdc_jax.devices import DATA_AXIS, batch_sharding, make_mesh, replicated_sharding

__all__ = [
    "DATA_AXIS",
    "DISTRIBUTED_TIMEOUTS",
    "batch_sharding",
    "distributed_initialized",
    "distributed_timeouts",
    "make_mesh",
    "maybe_initialize_distributed",
    "put_global_batch",
    "replicate",
    "replicated_sharding",
]


# Environment variables that mean "this process is one of several": jax.distributed
# auto-detects the cluster (SLURM, Open MPI, Cloud TPU, Kubernetes) or reads the explicit
# coordinator variables.
_MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")
_MULTIHOST_COUNT_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_NUM_PROCESSES")

# The timeouts of jax.distributed.initialize, in seconds: environment variable -> (its
# keyword, default). Initialization: how long a process waits for all the others to
# connect (they may start minutes apart on a cluster). Heartbeat: after how long without a
# heartbeat a process counts as dead; then every other process ends with an error (sooner
# when it is waiting on the dead one in a collective: that fails at once). Shutdown: how
# long a finished process waits at exit for the others to finish too.
DISTRIBUTED_TIMEOUTS: dict[str, tuple[str, int]] = {
    "ASPDC_INITIALIZATION_TIMEOUT": ("initialization_timeout", 300),
    "ASPDC_HEARTBEAT_TIMEOUT": ("heartbeat_timeout_seconds", 100),
    "ASPDC_SHUTDOWN_TIMEOUT": ("shutdown_timeout_seconds", 300),
}

_distributed_initialized = False


def _multihost_requested() -> bool:
    """A multi-host variable is set, or ``ASPDC_DISTRIBUTED=1`` asks for
    ``jax.distributed.initialize()`` with JAX's own cluster detection (a Cloud TPU pod
    slice, where no variable says so)."""
    if os.environ.get("ASPDC_DISTRIBUTED", "").strip() == "1":
        return True
    if any(os.environ.get(name) for name in _MULTIHOST_ENV):
        return True
    for name in _MULTIHOST_COUNT_ENV:
        try:
            if int(os.environ.get(name, "1")) > 1:
                return True
        except ValueError:
            continue
    return False


def distributed_timeouts(environ: dict[str, str] | None = None) -> dict[str, int]:
    """The ``jax.distributed.initialize`` timeout keywords from ``DISTRIBUTED_TIMEOUTS``
    (the environment, else the defaults); ValueError for a value that is not a positive
    whole number of seconds. Keywords this JAX version lacks are left out."""
    environ = dict(os.environ) if environ is None else environ
    known = inspect.signature(jax.distributed.initialize).parameters
    out = {}
    for name, (keyword, default) in DISTRIBUTED_TIMEOUTS.items():
        raw = environ.get(name, "").strip()
        try:
            value = int(raw) if raw else default
        except ValueError:
            value = 0
        if value <= 0:
            raise ValueError(f"{name} must be a positive number of seconds, got {raw!r}")
        if keyword in known:
            out[keyword] = value
    return out


def _use_gloo_on_cpu() -> None:
    """Cross-process collectives on CPU need an implementation (gloo: TCP, nothing to
    install); recent JAX versions default to it, older ones had none. A choice made with
    ``JAX_CPU_COLLECTIVES_IMPLEMENTATION`` (e.g. ``mpi``) is kept."""
    if os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
        return
    with contextlib.suppress(AttributeError, ValueError):  # a JAX version without the option
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def maybe_initialize_distributed(force: bool = False) -> bool:
    """Calls ``jax.distributed.initialize()`` when a multi-host environment is set.

    Must run before any other JAX call. Returns True when it initialised. The coordinator
    address, process count and id come from the environment (``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) or from the cluster (SLURM, Open MPI; a
    Cloud TPU pod slice with ``ASPDC_DISTRIBUTED=1``); the timeouts from
    ``ASPDC_INITIALIZATION_TIMEOUT``, ``ASPDC_HEARTBEAT_TIMEOUT`` and
    ``ASPDC_SHUTDOWN_TIMEOUT`` (seconds; `DISTRIBUTED_TIMEOUTS` has the defaults). On CPU
    the processes' collectives run over gloo (TCP).
    """
    global _distributed_initialized
    if _distributed_initialized:
        return True
    if not (force or _multihost_requested()):
        return False
    kwargs: dict[str, Any] = distributed_timeouts()
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        kwargs["coordinator_address"] = os.environ["JAX_COORDINATOR_ADDRESS"]
    if os.environ.get("JAX_NUM_PROCESSES"):
        kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
    if os.environ.get("JAX_PROCESS_ID"):
        kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    _use_gloo_on_cpu()
    jax.distributed.initialize(**kwargs)
    _distributed_initialized = True
    return True


def distributed_initialized() -> bool:
    """`maybe_initialize_distributed` joined this process to a multi-process run."""
    return _distributed_initialized


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
