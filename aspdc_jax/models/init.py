"""Fast parameter initialisation with the same distribution as ``module.init``.

``jax.jit(DeblurNet().init)`` compiles one random-number fusion per parameter (~150), which
takes ~20-55 s of XLA compile on a 2-core CPU. :func:`init_params` draws all kernels with
one ``jax.random.normal`` call and slices it, so there is a single RNG fusion to compile.
The distribution is the modules' own: Xavier-normal kernels (``torch.nn.init.
xavier_normal_``), zero biases, and zero offset / mask predictors when
``zero_init_offsets`` is set. The values differ from ``module.init(rng, ...)``'s.

It is the package's one initialiser: training starts each phase's network with it.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from aspdc_jax.models.deblur_net import DeblurNet
from aspdc_jax.models.reblur_net import ReblurNet
from aspdc_jax.trees import flatten

__all__ = ["example_inputs", "init_params"]

PyTree = Any
_ZERO_INIT_PARENTS = ("offset_conv", "mask_conv")


def _leaf_paths(tree: PyTree) -> list[tuple[tuple[str, ...], Any]]:
    return [(tuple(path.split("/")), leaf) for path, leaf in flatten(tree).items()]


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
      The ``params`` collection (float32 jax arrays), same tree and shapes as
      ``module.init(rng, *inputs)["params"]``.

    Raises:
      ValueError: a parameter that is neither a conv ``kernel`` nor a ``bias``, or no
        ``inputs`` for a module other than DeblurNet and ReblurNet.
    """
    inputs = inputs or example_inputs(module)
    shapes = jax.eval_shape(module.init, jax.random.key(0), *inputs)["params"]
    zero_offsets = bool(getattr(module, "zero_init_offsets", False))
    leaves = _leaf_paths(shapes)
    xavier: list[int] = []
    for i, (path, leaf) in enumerate(leaves):
        if path[-1] == "bias" or (path[-1] == "kernel" and zero_offsets and path[-2] in _ZERO_INIT_PARENTS):
            continue
        if path[-1] == "kernel" and len(leaf.shape) in (4, 5):  # 5-D: stacked groups
            xavier.append(i)
        else:
            raise ValueError(f"init_params does not know how to initialise {'/'.join(path)} {leaf.shape}")
    sizes = {i: int(np.prod(leaves[i][1].shape)) for i in xavier}
    total = max(sum(sizes.values()), 1)

    def make(key: jax.Array) -> list[jax.Array]:
        # One random call for all kernels: a single RNG fusion to compile.
        normal = jax.random.normal(key, (total,), jnp.float32)
        values = [jnp.zeros(leaf.shape, jnp.float32) for _, leaf in leaves]
        offset = 0
        for i in xavier:
            shape = tuple(leaves[i][1].shape)
            kh, kw, fan_in, fan_out = shape[-4:]
            std = float(np.sqrt(2.0 / (kh * kw * (fan_in + fan_out))))
            values[i] = normal[offset : offset + sizes[i]].reshape(shape) * std
            offset += sizes[i]
        return values

    values = jax.jit(make)(rng)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), values)
