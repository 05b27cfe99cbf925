"""Pure array ops: modulated deformable convolution, the per-pixel dynamic filter and a
dense convolution with a fast CPU kernel gradient."""

from aspdc_jax.ops.conv import conv2d
from aspdc_jax.ops.deform_conv import deform_conv2d
from aspdc_jax.ops.dynamic_filter import dynamic_filter

__all__ = ["conv2d", "deform_conv2d", "dynamic_filter"]
