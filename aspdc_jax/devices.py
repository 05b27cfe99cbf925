"""The device mesh that training and inference both use: a 1-D mesh whose one axis,
`DATA_AXIS`, splits the batch; parameters are replicated on every device.

Training builds it over all (global) devices (`aspdc_jax.training.sharding` adds the
multi-host batch placement); the `aspdc_jax.inference.Deblurrer` over the local devices
it is given.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["DATA_AXIS", "batch_sharding", "make_mesh", "replicated_sharding"]

#: The mesh axis the leading (batch) axis of images is split over.
DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with the axis `DATA_AXIS` over ``devices`` (default: all global devices,
    ``jax.devices()``)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A whole copy on every device of ``mesh`` (parameters, optimizer state)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `DATA_AXIS`; the other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))
