"""Parameter initialisation: ``module.init``'s own values, for any of the networks.

The distribution is the modules' own: Xavier-normal kernels (``torch.nn.init.
xavier_normal_``), zero biases, and zero offset / mask predictors when
``zero_init_offsets`` is set. It is the package's one initialiser: training starts each
phase's network with it, so a fresh run with a given seed starts from the same weights as
every earlier version of the trainer. The first call at full width compiles one random
fusion per parameter (~150; ~20-55 s of XLA compile on a 2-core CPU); small widths take
about a second.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from aspdc_jax.models.deblur_net import DeblurNet
from aspdc_jax.models.reblur_net import ReblurNet

__all__ = ["example_inputs", "init_params"]

PyTree = Any


def example_inputs(module: nn.Module) -> tuple[jax.ShapeDtypeStruct, ...]:
    """Small inputs ``module.init`` accepts (conv params do not depend on the image size):
    one (1, 16, 16, 3) float32 image for DeblurNet, two for ReblurNet (blurred, sharp).

    Raises:
      ValueError: another module (pass its inputs to `init_params`).
    """
    image = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
    if isinstance(module, DeblurNet):
        return (image,)
    if isinstance(module, ReblurNet):
        return (image, image)
    raise ValueError(f"init_params needs example inputs for a {type(module).__name__}; pass them after rng")


def init_params(module: nn.Module, rng: jax.Array, *inputs: Any) -> PyTree:
    """Returns a ``"params"`` tree for ``module`` (DeblurNet, ReblurNet or a submodule).

    Args:
      module: the network.
      rng: a PRNG key.
      inputs: example inputs or ``jax.ShapeDtypeStruct``s, as for ``module.init``; none
        for DeblurNet and ReblurNet (`example_inputs`).

    Returns:
      ``module.init(rng, *inputs)["params"]`` (float32 jax arrays).

    Raises:
      ValueError: no ``inputs`` for a module other than DeblurNet and ReblurNet.
    """
    inputs = inputs or example_inputs(module)
    concrete = [jnp.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x for x in inputs]
    return jax.jit(module.init)(rng, *concrete)["params"]
