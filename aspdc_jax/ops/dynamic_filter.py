"""Per-pixel dynamic filtering used by the reblurring network.

``out[b, y, x, c] = sum_i softmax(logits[b, y, x, :])_i * in_pad[b, y + ky, x + kx, c]``
for a ``k x k`` window (``i = ky * k + kx``), with ``in_pad`` reflect-padded by ``k // 2``.
The same per-pixel filter is applied to every channel.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["dynamic_filter"]


def dynamic_filter(inputs: jax.Array, kernel_logits: jax.Array) -> jax.Array:
    """Filters every pixel of ``inputs`` with its own softmax-normalised kernel.

    Args:
      inputs: ``(B, H, W, C)`` features, any float dtype.
      kernel_logits: ``(B, H, W, k*k)`` unnormalised filter taps, ``k`` odd (9 -> 3x3).

    Returns:
      ``(B, H, W, C)`` filtered features in the dtype of ``inputs``.

    Raises:
      ValueError: on inconsistent shapes or a non-square, even tap count.
    """
    ishape, lshape = tuple(inputs.shape), tuple(kernel_logits.shape)
    if len(ishape) != 4 or len(lshape) != 4:
        raise ValueError(f"inputs (B, H, W, C) and kernel_logits (B, H, W, k*k) must be 4-D, got {ishape} and {lshape}")
    if ishape[:3] != lshape[:3]:
        raise ValueError(f"inputs {ishape} and kernel_logits {lshape} disagree on (B, H, W)")
    taps = lshape[3]
    k = math.isqrt(taps)
    if k * k != taps or k % 2 == 0:
        raise ValueError(f"kernel_logits must have k*k channels for an odd k (9 for 3x3), got {taps}")
    r = k // 2
    _, height, width, _ = ishape
    if r and (height <= r or width <= r):
        raise ValueError(f"inputs {ishape} are too small to reflect-pad by {r}")
    accum = jnp.promote_types(inputs.dtype, jnp.float32)
    weights = jax.nn.softmax(kernel_logits.astype(accum), axis=-1)
    padded = jnp.pad(inputs, ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
    out = jnp.zeros(ishape, accum)
    for i in range(taps):
        ky, kx = divmod(i, k)
        window = padded[:, ky : ky + height, kx : kx + width, :]
        out = out + weights[..., i : i + 1] * window.astype(accum)
    return out.astype(inputs.dtype)
