"""Pure array ops: modulated deformable convolution and the per-pixel dynamic filter."""

from aspdc_jax.ops.deform_conv import deform_conv2d
from aspdc_jax.ops.dynamic_filter import dynamic_filter

__all__ = ["deform_conv2d", "dynamic_filter"]
