"""Dense 2-D convolution whose kernel gradient is an im2col matmul on CPU.

The forward pass and the input gradient are XLA's own convolutions. The kernel gradient
is where XLA:CPU is slow: its backward-filter convolution runs 4-9x longer than the
forward (and far longer still for the 2x zero-dilated input of a transposed
convolution), so on CPU it is computed tap by tap as ``window_i^T @ d_out``, each
window a strided slice of the padded input: k*k plain matmuls. Other platforms keep XLA's
gradient (``lax.platform_dependent`` picks at lowering time). NHWC inputs, HWIO kernels.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["conv2d", "pair", "tap_windows"]

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _conv(x, kernel, geometry):
    stride, padding, lhs_dilation, rhs_dilation = geometry
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=stride,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=_DIMENSIONS,
    )


def tap_windows(x: jax.Array, kernel_hw: tuple[int, int], out_hw: tuple[int, int], geometry: tuple) -> list[jax.Array]:
    """``(B, H, W, C)`` -> ``kh*kw`` arrays ``(B*Ho*Wo, C)``: the input each tap sees.

    ``geometry = (stride, ((top, bottom), (left, right)), lhs_dilation, rhs_dilation)``,
    each a pair; taps in row-major ``(ky, kx)`` order. Strided slices only, no gathers.
    """
    stride, padding, lhs_dilation, rhs_dilation = geometry
    (kh, kw), (out_h, out_w) = kernel_hw, out_hw
    config = [(0, 0, 0)]
    for axis in range(2):
        config.append((padding[axis][0], padding[axis][1], lhs_dilation[axis] - 1))
    config.append((0, 0, 0))
    xp = lax.pad(x, jnp.zeros((), x.dtype), config)
    # Pad the far end so every strided tap slice stays inside the array.
    need_h = (out_h - 1) * stride[0] + (kh - 1) * rhs_dilation[0] + 1
    need_w = (out_w - 1) * stride[1] + (kw - 1) * rhs_dilation[1] + 1
    xp = jnp.pad(xp, ((0, 0), (0, max(0, need_h - xp.shape[1])), (0, max(0, need_w - xp.shape[2])), (0, 0)))
    windows = []
    for ky in range(kh):
        for kx in range(kw):
            y0, x0 = ky * rhs_dilation[0], kx * rhs_dilation[1]
            window = xp[
                :, y0 : y0 + (out_h - 1) * stride[0] + 1 : stride[0], x0 : x0 + (out_w - 1) * stride[1] + 1 : stride[1]
            ]
            windows.append(window.reshape(-1, x.shape[-1]))
    return windows


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv2d(x: jax.Array, kernel: jax.Array, geometry: tuple) -> jax.Array:
    return _conv(x, kernel, geometry)


def _conv2d_fwd(x, kernel, geometry):
    return _conv(x, kernel, geometry), (x, kernel)


def _conv2d_bwd(geometry, residuals, d_out):
    x, kernel = residuals
    _, conv_vjp = jax.vjp(lambda x, k: _conv(x, k, geometry), x, kernel)

    def xla_gradients(x, kernel, d_out):
        return conv_vjp(d_out)

    def im2col_gradients(x, kernel, d_out):
        # The input gradient is XLA's (a forward-like convolution, fast); only the
        # kernel gradient is replaced. XLA removes the unused half of conv_vjp.
        d_x = conv_vjp(d_out)[0]
        kh, kw, channels, out_channels = kernel.shape
        accum = jnp.promote_types(d_out.dtype, jnp.float32)
        d_flat = d_out.reshape(-1, out_channels)
        d_kernel = jnp.stack(
            [
                jnp.dot(window.T, d_flat, preferred_element_type=accum)
                for window in tap_windows(x, (kh, kw), d_out.shape[1:3], geometry)
            ]
        )  # one (C, P) @ (P, O) matmul per tap: no (P, k*k*C) patch matrix
        return d_x, d_kernel.reshape(kernel.shape).astype(kernel.dtype)

    return lax.platform_dependent(x, kernel, d_out, cpu=im2col_gradients, default=xla_gradients)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """An int or a pair of ints as a pair; ValueError naming ``name`` otherwise."""
    values = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return values  # type: ignore[return-value]


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    stride: int | Sequence[int] = 1,
    padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0)),
    lhs_dilation: int | Sequence[int] = 1,
    rhs_dilation: int | Sequence[int] = 1,
) -> jax.Array:
    """``lax.conv_general_dilated`` (NHWC x HWIO -> NHWC) with a fast CPU kernel gradient.

    Args:
      x: ``(B, H, W, C)``.
      kernel: ``(kh, kw, C, O)``.
      stride, lhs_dilation, rhs_dilation: ints or pairs, as in ``lax.conv_general_dilated``.
      padding: ``((top, bottom), (left, right))``.

    Returns:
      ``(B, Ho, Wo, O)``, identical to ``lax.conv_general_dilated``; gradients agree with
      XLA's to float rounding.
    """
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[2] != x.shape[3]:
        raise ValueError(f"conv2d needs x (B, H, W, C) and kernel (kh, kw, C, O); got {x.shape} and {kernel.shape}")
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    geometry = (
        pair(stride, "stride"),
        padding,
        pair(lhs_dilation, "lhs_dilation"),
        pair(rhs_dilation, "rhs_dilation"),
    )
    return _conv2d(x, kernel, geometry)
