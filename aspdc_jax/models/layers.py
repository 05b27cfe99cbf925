"""Building blocks shared by DeblurNet and ReblurNet.

Every convolution is initialised like the official release: Xavier (Glorot) normal
kernels (plain normal, not truncated, as ``torch.nn.init.xavier_normal_``), zero biases.
All arrays are NHWC; kernels HWIO.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from aspdc_jax.ops import conv2d, deform_conv2d

__all__ = [
    "LRELU_SLOPE",
    "Conv",
    "ConvTranspose2x",
    "DeformConv",
    "ResBlock",
    "conv3",
    "lrelu",
    "xavier_normal",
]

Dtype = Any

#: Negative slope of every leaky ReLU in the networks.
LRELU_SLOPE = 0.1

#: ``torch.nn.init.xavier_normal_``: N(0, 2 / (fan_in + fan_out)), receptive field included.
xavier_normal = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")


def lrelu(x: jax.Array) -> jax.Array:
    """Leaky ReLU with slope 0.1 (the official ``nn.LeakyReLU(0.1)``)."""
    return nn.leaky_relu(x, negative_slope=LRELU_SLOPE)


class Conv(nn.Module):
    """``nn.Conv``'s parameters and numerics (``kernel`` HWIO, ``bias``), computed with
    `aspdc_jax.ops.conv2d` (same forward; a much faster kernel gradient on CPU)."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    dilation: int = 1
    zero_init: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel_init = nn.initializers.zeros if self.zero_init else xavier_normal
        kernel = self.param("kernel", kernel_init, (k, k, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        pad = self.dilation * (k // 2)
        y = conv2d(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            stride=self.stride,
            padding=((pad, pad), (pad, pad)),
            rhs_dilation=self.dilation,
        )
        return y + bias.astype(self.dtype)


def conv3(
    features: int,
    *,
    name: str | None = None,
    stride: int = 1,
    dilation: int = 1,
    kernel_size: int = 3,
    dtype: Dtype = jnp.float32,
    zero_init: bool = False,
) -> Conv:
    """A PyTorch-style ``Conv2d(k, stride, padding=dilation*(k//2), dilation)`` with bias.

    ``zero_init`` gives zero kernel and bias (for the offset / mask predictors).
    """
    return Conv(
        features,
        kernel_size=kernel_size,
        stride=stride,
        dilation=dilation,
        zero_init=zero_init,
        dtype=dtype,
        name=name,
    )


class ResBlock(nn.Module):
    """``x + conv2(lrelu(conv1(x)))`` with 3x3, stride-1, padded convolutions.

    Input and output: ``(B, H, W, C)``; C is taken from the input.
    """

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        y = conv3(channels, name="conv1", dtype=self.dtype)(x)
        y = conv3(channels, name="conv2", dtype=self.dtype)(lrelu(y))
        return x + y


class ConvTranspose2x(nn.Module):
    """PyTorch ``ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1)``: (H, W) -> (2H, 2W).

    The kernel is stored as ``(3, 3, in, out)`` with ``kernel[ky, kx, i, o] ==
    torch_weight[i, o, ky, kx]`` (the PyTorch IOHW weight moved to HW-first, not flipped).
    The forward pass is the equivalent direct convolution of the 2x zero-dilated input
    with the spatially flipped kernel and padding ``(k-1-p, k-1-p+output_padding) = (1, 2)``.
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        kernel = self.param("kernel", xavier_normal, (3, 3, in_features, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x = x.astype(self.dtype)
        kernel = jnp.flip(kernel, axis=(0, 1)).astype(self.dtype)
        y = conv2d(x, kernel, padding=((1, 2), (1, 2)), lhs_dilation=2)
        return y + bias.astype(self.dtype)


class DeformConv(nn.Module):
    """3x3 modulated deformable convolution (DCNv2), stride 1, padding 1, dilation 1.

    Params: ``kernel`` (3, 3, C, features) HWIO and ``bias`` (features,).

    Args (call):
      x: ``(B, H, W, C)`` features.
      offsets: ``(B, H, W, 18)``; channel ``2i`` = dy, ``2i+1`` = dx of tap ``i = ky*3+kx``;
        ``None`` for zero offsets (computed without gathers).
      mask: ``(B, H, W, 9)`` modulation in [0, 1].
    Returns:
      ``(B, H, W, features)``.
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, offsets: jax.Array | None, mask: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        kernel = self.param("kernel", xavier_normal, (3, 3, in_features, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        cast = functools.partial(jnp.asarray, dtype=self.dtype)
        return deform_conv2d(
            cast(x),
            None if offsets is None else cast(offsets),
            cast(mask),
            cast(kernel),
            cast(bias),
            stride=1,
            padding=1,
            dilation=1,
            offset_groups=1,
        )
