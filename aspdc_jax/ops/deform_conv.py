"""Modulated deformable convolution (DCNv2) from bilinear gathers and one matmul.

Semantics are those of torchvision's ``deform_conv2d`` / mmcv's ``ModulatedDeformConv2d``
(DESIGN.md section 3), moved to NHWC. For output pixel ``(y, x)``, kernel tap
``i = ky * k + kx`` (row-major) and offset group ``g``::

    out[b, y, x, o] = bias[o] + sum_{c, i} W[ky, kx, c, o] * m[b, y, x, g*k*k + i]
                      * bilinear(in[b, :, :, c], py, px)
    py = y * stride - pad + ky * dil + offsets[b, y, x, g*2*k*k + 2*i]
    px = x * stride - pad + kx * dil + offsets[b, y, x, g*2*k*k + 2*i + 1]

with ``g = c // (C / offset_groups)``. Pixels outside the image read as zero; a sample
point with ``py <= -1``, ``py >= H``, ``px <= -1`` or ``px >= W`` contributes nothing.
Coordinate gradients use the floor-based bilinear derivative, exactly as in torchvision.

Implementation: the four bilinear corners of every tap are fetched with one packed row
gather per image (``vmap`` over the batch) from the image flattened to ``(H*W + 1, C)``,
whose last row is zero and absorbs every out-of-image corner. The corners are blended
with the bilinear weights times the modulation mask, the taps and channels are flattened
and contracted with the kernel in a single matmul, so the FLOPs run in the matmul unit.
With zero offsets and no mask the result is exactly a dense convolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["deform_conv2d", "deform_conv_output_size"]

IntPair = int | Sequence[int]


def _pair(value: IntPair, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        pair = (value, value)
    else:
        pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


def deform_conv_output_size(
    size: int, kernel_size: int, stride: int, padding: int, dilation: int
) -> int:
    """Output length of a convolution along one axis (PyTorch's formula)."""
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def _check_shapes(
    inputs: jax.Array,
    offsets: jax.Array,
    mask: jax.Array | None,
    kernel: jax.Array,
    bias: jax.Array | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    offset_groups: int,
) -> tuple[int, int]:
    """Validates every shape before anything is traced; returns (Ho, Wo)."""
    ishape, oshape, kshape = tuple(inputs.shape), tuple(offsets.shape), tuple(kernel.shape)
    if len(ishape) != 4:
        raise ValueError(f"inputs must be 4-D (B, H, W, C), got shape {ishape}")
    if len(kshape) != 4:
        raise ValueError(f"kernel must be 4-D (kh, kw, C, O) HWIO, got shape {kshape}")
    batch, height, width, channels = ishape
    kh, kw, kc, _ = kshape
    if kh != kw:
        raise ValueError(f"kernel must be square, got shape {kshape}")
    if kc != channels:
        raise ValueError(
            f"kernel input channels {kc} (kernel shape {kshape}) do not match the "
            f"inputs' {channels} channels (inputs shape {ishape})"
        )
    if offset_groups < 1 or channels % offset_groups:
        raise ValueError(
            f"input channels {channels} (inputs shape {ishape}) are not divisible by "
            f"offset_groups={offset_groups}"
        )
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(
            f"need stride >= 1, dilation >= 1, padding >= 0; got stride={stride}, "
            f"dilation={dilation}, padding={padding}"
        )
    out_h = deform_conv_output_size(height, kh, stride[0], padding[0], dilation[0])
    out_w = deform_conv_output_size(width, kw, stride[1], padding[1], dilation[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"inputs of shape {ishape} are too small for a {kh}x{kw} kernel with "
            f"stride={stride}, padding={padding}, dilation={dilation}"
        )
    taps = kh * kw
    expected = (batch, out_h, out_w, 2 * taps * offset_groups)
    if oshape != expected:
        raise ValueError(
            f"offsets must have shape {expected} = (B, Ho, Wo, 2*k*k*offset_groups) for "
            f"inputs {ishape}, kernel {kshape} and offset_groups={offset_groups}; "
            f"got {oshape}"
        )
    if mask is not None:
        mexpected = (batch, out_h, out_w, taps * offset_groups)
        if tuple(mask.shape) != mexpected:
            raise ValueError(
                f"mask must have shape {mexpected} = (B, Ho, Wo, k*k*offset_groups) for "
                f"inputs {ishape}, kernel {kshape} and offset_groups={offset_groups}; "
                f"got {tuple(mask.shape)}"
            )
    if bias is not None and tuple(bias.shape) != (kshape[3],):
        raise ValueError(
            f"bias must have shape ({kshape[3]},) to match kernel {kshape}, got "
            f"{tuple(bias.shape)}"
        )
    return out_h, out_w


def _sample_one(
    image: jax.Array,  # (H, W, C)
    offsets: jax.Array,  # (Ho, Wo, G*K*2)
    mask: jax.Array | None,  # (Ho, Wo, G*K)
    *,
    kernel_size: int,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    coord_dtype: Any,
) -> jax.Array:
    """Bilinearly samples one image at every tap: returns (Ho*Wo, K*C), K = k*k."""
    height, width, channels = image.shape
    out_h, out_w, _ = offsets.shape
    taps = kernel_size * kernel_size
    cpg = channels // groups

    ky, kx = jnp.divmod(jnp.arange(taps), kernel_size)
    base_y = (jnp.arange(out_h) * stride[0] - padding[0])[:, None] + ky * dilation[0]
    base_x = (jnp.arange(out_w) * stride[1] - padding[1])[:, None] + kx * dilation[1]
    off = offsets.astype(coord_dtype).reshape(out_h, out_w, groups, taps, 2)
    py = base_y.astype(coord_dtype)[:, None, None, :] + off[..., 0]  # (Ho, Wo, G, K)
    px = base_x.astype(coord_dtype)[None, :, None, :] + off[..., 1]

    y0f = jnp.floor(py)
    x0f = jnp.floor(px)
    ly = py - y0f
    lx = px - x0f
    hy = 1 - ly
    hx = 1 - lx
    # Corners outside the image read the zero row, so a point with py <= -1 (etc.)
    # gives exactly 0; the coordinate gradient is torchvision's (floor-based).
    scale = None if mask is None else mask.astype(coord_dtype).reshape(out_h, out_w, groups, taps)
    y0 = y0f.astype(jnp.int32)
    x0 = x0f.astype(jnp.int32)
    sentinel = height * width  # index of the zero row

    def corner(yc: jax.Array, xc: jax.Array) -> jax.Array:
        ok = (yc >= 0) & (yc < height) & (xc >= 0) & (xc < width)
        return jnp.where(ok, yc * width + xc, sentinel)

    # (Ho, Wo, G, K, 4): the four corners of every tap, packed for one gather.
    index = jnp.stack(
        [corner(y0, x0), corner(y0, x0 + 1), corner(y0 + 1, x0), corner(y0 + 1, x0 + 1)],
        axis=-1,
    )
    weight = jnp.stack([hy * hx, hy * lx, ly * hx, ly * lx], axis=-1)
    if scale is not None:
        weight = weight * scale[..., None]

    flat = jnp.concatenate(
        [image.reshape(height * width, channels), jnp.zeros((1, channels), image.dtype)]
    )
    # (G, HW+1, C/G): the rows each offset group reads from.
    flat = flat.reshape(height * width + 1, groups, cpg).transpose(1, 0, 2)
    index = jnp.moveaxis(index, 2, 0).reshape(groups, -1)  # (G, Ho*Wo*K*4)
    weight = jnp.moveaxis(weight, 2, 0).reshape(groups, out_h * out_w, taps, 4)
    corners = jax.vmap(lambda rows, idx: jnp.take(rows, idx, axis=0, mode="clip"))(
        flat, index
    ).reshape(groups, out_h * out_w, taps, 4, cpg)
    accum = jnp.promote_types(image.dtype, jnp.float32)
    sampled = jnp.einsum(
        "gpkq,gpkqc->pkgc",
        weight.astype(accum),
        corners,
        preferred_element_type=accum,
    )  # (Ho*Wo, K, G, C/G): channel order c = g * C/G + c'
    return sampled.astype(image.dtype).reshape(out_h * out_w, taps * channels)


def deform_conv2d(
    inputs: jax.Array,
    offsets: jax.Array,
    mask: jax.Array | None,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    *,
    stride: IntPair = 1,
    padding: IntPair = 1,
    dilation: IntPair = 1,
    offset_groups: int = 1,
) -> jax.Array:
    """Modulated deformable 2-D convolution (DCNv2), NHWC.

    Args:
      inputs: ``(B, H, W, C)`` images or features (float32, float64 or bfloat16).
      offsets: ``(B, Ho, Wo, 2*k*k*G)`` sampling offsets in pixels; for group ``g`` and tap
        ``i`` channel ``g*2*k*k + 2*i`` is the row (y) offset, ``+1`` the column (x).
      mask: ``(B, Ho, Wo, k*k*G)`` modulation scalars (usually a sigmoid), or ``None`` for
        ones (plain DCNv1).
      kernel: ``(k, k, C, O)`` HWIO weights.
      bias: ``(O,)`` or ``None``.
      stride, padding, dilation: ints or ``(h, w)`` pairs, as in ``lax.conv``.
      offset_groups: ``G``; channel ``c`` uses the offsets of group ``c // (C / G)``.

    Returns:
      ``(B, Ho, Wo, O)`` in the dtype of ``inputs``; products are accumulated in float32
      (float64 for float64 inputs).

    Raises:
      ValueError: on inconsistent shapes, before anything is traced.
    """
    stride_, padding_, dilation_ = (
        _pair(stride, "stride"),
        _pair(padding, "padding"),
        _pair(dilation, "dilation"),
    )
    out_h, out_w = _check_shapes(
        inputs, offsets, mask, kernel, bias, stride_, padding_, dilation_, offset_groups
    )
    batch = inputs.shape[0]
    kernel_size, _, channels, out_channels = kernel.shape
    accum = jnp.promote_types(inputs.dtype, jnp.float32)
    coord_dtype = jnp.promote_types(offsets.dtype, jnp.float32)

    sample = jax.vmap(
        lambda image, off, m: _sample_one(
            image,
            off,
            m,
            kernel_size=kernel_size,
            stride=stride_,
            padding=padding_,
            dilation=dilation_,
            groups=offset_groups,
            coord_dtype=coord_dtype,
        ),
        in_axes=(0, 0, None if mask is None else 0),
    )
    sampled = sample(inputs, offsets, mask)  # (B, Ho*Wo, K*C)
    out = jnp.einsum(
        "bpj,jo->bpo",
        sampled,
        kernel.astype(inputs.dtype).reshape(kernel_size * kernel_size * channels, out_channels),
        preferred_element_type=accum,
    )
    if bias is not None:
        out = out + bias.astype(accum)
    return out.reshape(batch, out_h, out_w, out_channels).astype(inputs.dtype)
