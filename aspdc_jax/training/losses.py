"""Image losses of the three phases.

All images are NHWC float32 in [-1, 1]. ``mse`` is the paper's plain MSE on that range;
``imagenet_mse`` reproduces the official release, which maps to [0, 1] and normalises
with the ImageNet mean/std before the MSE. ``charbonnier`` (a smooth L1) is not in the
paper; the short CPU runs of configs/quickstart.py measured a better held-out gain with it
than with MSE.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = [
    "CHARBONNIER_EPS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LOSSES",
    "charbonnier",
    "get_loss",
    "imagenet_mse",
    "mse",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHARBONNIER_EPS = 1e-3

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def mse(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error over every element; images (B,H,W,3) in [-1, 1] -> scalar f32."""
    diff = prediction.astype(jnp.float32) - target.astype(jnp.float32)
    return jnp.mean(jnp.square(diff))


def imagenet_mse(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """MSE after ``((x + 1) / 2 - mean) / std`` per RGB channel (the official loss).

    Images (B,H,W,3) in [-1, 1] (not clipped, as in the release) -> scalar f32.
    """
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)

    def norm(x: jax.Array) -> jax.Array:
        return ((x.astype(jnp.float32) + 1.0) / 2.0 - mean) / std

    return jnp.mean(jnp.square(norm(prediction) - norm(target)))


def charbonnier(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """Mean of ``sqrt(d^2 + eps^2)`` with ``d = prediction - target`` and eps 1e-3.

    Images (B,H,W,3) in [-1, 1] -> scalar f32. A smooth L1: gradients are bounded (each
    pixel pulls with at most unit strength), so large edge errors do not dominate.
    """
    diff = prediction.astype(jnp.float32) - target.astype(jnp.float32)
    return jnp.mean(jnp.sqrt(jnp.square(diff) + CHARBONNIER_EPS**2))


LOSSES: dict[str, LossFn] = {"mse": mse, "imagenet_mse": imagenet_mse, "charbonnier": charbonnier}


def get_loss(name: str) -> LossFn:
    """The image loss called ``name`` ("mse", "imagenet_mse" or "charbonnier")."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"config.loss must be one of {sorted(LOSSES)}, got {name!r}") from None
