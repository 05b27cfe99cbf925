"""Conversions between uint8 images and the models' NHWC float range [-1, 1]."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = ["to_model", "to_uint8", "to_unit"]


def to_model(images: np.ndarray | jnp.ndarray, dtype=jnp.float32) -> jnp.ndarray:
    """uint8 images (..., H, W, 3) in [0, 255] -> float in [-1, 1] (``u8 / 127.5 - 1``)."""
    return jnp.asarray(images).astype(dtype) / 127.5 - 1.0


def to_unit(images: jnp.ndarray) -> jnp.ndarray:
    """Model-range images in [-1, 1] -> [0, 1], clipped (the range the metrics use)."""
    return jnp.clip((images + 1.0) / 2.0, 0.0, 1.0)


def to_uint8(images: jnp.ndarray) -> jnp.ndarray:
    """Model-range float images in [-1, 1] -> uint8: ``round(clip((y+1)/2, 0, 1) * 255)``."""
    return jnp.round(to_unit(images.astype(jnp.float32)) * 255.0).astype(jnp.uint8)
