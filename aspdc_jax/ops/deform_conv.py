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

Implementation: the image is rearranged into a table whose rows hold every 2x2
neighbourhood (``4*C`` contiguous values, zero-padded, plus one all-zero row for samples
entirely outside the image), so the four bilinear corners of a tap are one row of one
packed gather per image (``vmap`` over the batch and offset groups). The corners are blended
with the bilinear weights times the modulation mask, the taps and channels are flattened
and contracted with the kernel in a single matmul, so the FLOPs run in the matmul unit.
With zero offsets and no mask the result is exactly a dense convolution.
"""

from __future__ import annotations

import functools
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
    offsets: jax.Array | None,
    mask: jax.Array | None,
    kernel: jax.Array,
    bias: jax.Array | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    offset_groups: int,
) -> tuple[int, int]:
    """Validates every shape before anything is traced; returns (Ho, Wo)."""
    ishape, kshape = tuple(inputs.shape), tuple(kernel.shape)
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
    if offsets is not None and tuple(offsets.shape) != expected:
        raise ValueError(
            f"offsets must have shape {expected} = (B, Ho, Wo, 2*k*k*offset_groups) for "
            f"inputs {ishape}, kernel {kshape} and offset_groups={offset_groups}; "
            f"got {tuple(offsets.shape)}"
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


def _corner_table(image: jax.Array, groups: int) -> jax.Array:
    """(H, W, C) -> (G, (H+1)*(W+1) + 1, 4*C/G): every 2x2 neighbourhood as one row.

    Row ``(y0 + 1) * (W + 1) + (x0 + 1)`` holds the corners ``(y0, x0)``, ``(y0, x0+1)``,
    ``(y0+1, x0)``, ``(y0+1, x0+1)`` of the zero-padded image, so one contiguous row read
    fetches all four bilinear corners of a sample with ``-1 <= y0 < H``, ``-1 <= x0 < W``;
    the final all-zero row serves every sample that lies entirely outside the image.
    """
    height, width, channels = image.shape
    cpg = channels // groups
    padded = jnp.pad(image, ((1, 1), (1, 1), (0, 0))).reshape(height + 2, width + 2, groups, cpg)
    quad = jnp.concatenate(
        [padded[:-1, :-1], padded[:-1, 1:], padded[1:, :-1], padded[1:, 1:]], axis=-1
    )  # (H+1, W+1, G, 4*C/G)
    rows = jnp.moveaxis(quad, 2, 0).reshape(groups, (height + 1) * (width + 1), 4 * cpg)
    return jnp.concatenate([rows, jnp.zeros((groups, 1, 4 * cpg), image.dtype)], axis=1)


def _sampling_plan(
    offsets: jax.Array,  # (Ho, Wo, G*K*2)
    mask: jax.Array | None,  # (Ho, Wo, G*K)
    *,
    in_hw: tuple[int, int],
    kernel_size: int,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    coord_dtype: Any,
) -> tuple[jax.Array, jax.Array]:
    """Table rows and corner weights of every tap of one image.

    Returns:
      rows: ``(G, Ho*Wo*K)`` int32 indices into that group's corner table.
      weight: ``(G, Ho*Wo*K, 4)`` bilinear weight of each corner times the mask.
    """
    height, width = in_hw
    out_h, out_w, _ = offsets.shape
    taps = kernel_size * kernel_size
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
    # Corners outside the image read zeros, so a point with py <= -1 (etc.) gives exactly
    # 0; the coordinate gradient is torchvision's floor-based one.
    weight = jnp.stack([hy * hx, hy * lx, ly * hx, ly * lx], axis=-1)  # (Ho, Wo, G, K, 4)
    if mask is not None:
        weight = weight * mask.astype(coord_dtype).reshape(out_h, out_w, groups, taps, 1)
    y0 = y0f.astype(jnp.int32)
    x0 = x0f.astype(jnp.int32)
    inside = (y0 >= -1) & (y0 < height) & (x0 >= -1) & (x0 < width)
    rows = jnp.where(inside, (y0 + 1) * (width + 1) + (x0 + 1), (height + 1) * (width + 1))
    rows = jnp.moveaxis(rows, 2, 0).reshape(groups, out_h * out_w * taps)
    weight = jnp.moveaxis(weight, 2, 0).reshape(groups, out_h * out_w * taps, 4)
    return rows, weight


def _blend(corners: jax.Array, weight: jax.Array, accum: Any) -> jax.Array:
    """(..., 4*Cg) corner rows x (..., 4) weights -> (..., Cg) bilinear samples."""
    cpg = corners.shape[-1] // 4
    weight = weight.astype(accum)
    # Four explicit slices: XLA fuses the gather that produced `corners` into this loop.
    return sum(
        corners[..., q * cpg : (q + 1) * cpg].astype(accum) * weight[..., q : q + 1]
        for q in range(4)
    )


def _deformable_sample_impl(
    inputs: jax.Array, offsets: jax.Array, mask: jax.Array | None, geometry: tuple
) -> jax.Array:
    """(B, H, W, C) -> (B, Ho*Wo, K*C) samples of every tap (channel order c = g*Cg + c')."""
    kernel_size, stride, padding, dilation, groups = geometry
    batch, height, width, channels = inputs.shape
    _, out_h, out_w, _ = offsets.shape
    taps = kernel_size * kernel_size
    cpg = channels // groups
    accum = jnp.promote_types(inputs.dtype, jnp.float32)
    coord_dtype = jnp.promote_types(offsets.dtype, jnp.float32)

    def one(image, off, m):
        rows, weight = _sampling_plan(
            off, m, in_hw=(height, width), kernel_size=kernel_size, stride=stride,
            padding=padding, dilation=dilation, groups=groups, coord_dtype=coord_dtype,
        )
        table = _corner_table(image, groups)  # (G, R, 4*Cg)
        if groups == 1:
            corners = jnp.take(table[0], rows[0], axis=0, mode="clip")
            # (Ho*Wo*K, C): keep C innermost and the shape 2-D, so the fused gather loop
            # does no per-element index arithmetic (a 3-D root shape costs ~2x here).
            return _blend(corners, weight[0], accum).astype(inputs.dtype)
        corners = jax.vmap(lambda t, r: jnp.take(t, r, axis=0, mode="clip"))(table, rows)
        sampled = _blend(corners, weight, accum).astype(inputs.dtype)  # (G, Ho*Wo*K, Cg)
        return jnp.moveaxis(sampled, 0, 1).reshape(out_h * out_w * taps, channels)

    sampled = jax.vmap(one, in_axes=(0, 0, None if mask is None else 0))(inputs, offsets, mask)
    return sampled.reshape(batch, out_h * out_w, taps * channels)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _deformable_sample(
    inputs: jax.Array, offsets: jax.Array, mask: jax.Array | None, geometry: tuple
) -> jax.Array:
    return _deformable_sample_impl(inputs, offsets, mask, geometry)


def _deformable_sample_fwd(inputs, offsets, mask, geometry):
    return _deformable_sample_impl(inputs, offsets, mask, geometry), (inputs, offsets, mask)


def _deformable_sample_bwd(geometry, residuals, d_sampled):
    """Hand-written backward over flat row indices (one scatter-add, one gather-dot).

    The samples are recomputed from the image rather than stored, so a deformable conv
    keeps only its inputs for the backward pass.
    """
    inputs, offsets, mask = residuals
    kernel_size, stride, padding, dilation, groups = geometry
    batch, height, width, channels = inputs.shape
    _, out_h, out_w, _ = offsets.shape
    taps = kernel_size * kernel_size
    cpg = channels // groups
    per_image = out_h * out_w * taps
    table_rows = (height + 1) * (width + 1) + 1
    accum = jnp.promote_types(inputs.dtype, jnp.float32)
    coord_dtype = jnp.promote_types(offsets.dtype, jnp.float32)

    def plan(off, m):
        return jax.vmap(
            lambda o, mm: _sampling_plan(
                o, mm, in_hw=(height, width), kernel_size=kernel_size, stride=stride,
                padding=padding, dilation=dilation, groups=groups, coord_dtype=coord_dtype,
            ),
            in_axes=(0, None if m is None else 0),
        )(off, m)

    # Integer row indices ride along as aux; only the weights are differentiated.
    weight, plan_vjp, rows = jax.vjp(
        lambda o, m: plan(o, m)[::-1], offsets, mask, has_aux=True
    )
    # Flat row index over (batch, group) tables: table (B*G*R, 4*Cg).
    base = (jnp.arange(batch * groups, dtype=jnp.int32) * table_rows).reshape(batch, groups, 1)
    flat_rows = (rows + base).reshape(-1)  # (M,), M = B*G*Ho*Wo*K
    weight = weight.reshape(-1, 4)

    # d_sampled (B, Ho*Wo, K*C) -> (B, G, Ho*Wo*K, Cg) -> (M, Cg)
    d = d_sampled.astype(accum).reshape(batch, out_h * out_w, taps, groups, cpg)
    d = jnp.moveaxis(d, 3, 1).reshape(-1, cpg)

    tables, table_vjp = jax.vjp(lambda x: jax.vmap(lambda im: _corner_table(im, groups))(x), inputs)
    flat_table = tables.reshape(batch * groups * table_rows, 4 * cpg)
    corners = flat_table[flat_rows].astype(accum).reshape(-1, 4, cpg)
    d_weight = jnp.einsum("mqc,mc->mq", corners, d, preferred_element_type=accum)
    d_offsets, d_mask = plan_vjp(d_weight.reshape(batch, groups, per_image, 4).astype(weight.dtype))

    updates = (weight.astype(accum)[:, :, None] * d[:, None, :]).reshape(-1, 4 * cpg)
    d_table = jnp.zeros(flat_table.shape, accum).at[flat_rows].add(updates)
    (d_inputs,) = table_vjp(d_table.astype(tables.dtype).reshape(tables.shape))
    return (
        d_inputs.astype(inputs.dtype),
        d_offsets.astype(offsets.dtype),
        None if mask is None else d_mask.astype(mask.dtype),
    )


_deformable_sample.defvjp(_deformable_sample_fwd, _deformable_sample_bwd)


def _sample_grid_one(
    image: jax.Array,  # (H, W, C)
    mask: jax.Array | None,  # (Ho, Wo, G*K)
    *,
    kernel_size: int,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    out_hw: tuple[int, int],
) -> jax.Array:
    """Zero offsets: the taps are integer shifts, read with strided slices (no gather)."""
    height, width, channels = image.shape
    out_h, out_w = out_hw
    taps = kernel_size * kernel_size
    cpg = channels // groups
    # Pad enough that every strided window slice stays inside the array.
    need_h = (out_h - 1) * stride[0] + (kernel_size - 1) * dilation[0] + 1
    need_w = (out_w - 1) * stride[1] + (kernel_size - 1) * dilation[1] + 1
    padded = jnp.pad(
        image,
        (
            (padding[0], max(0, need_h - height - padding[0])),
            (padding[1], max(0, need_w - width - padding[1])),
            (0, 0),
        ),
    )
    shifted = []
    for i in range(taps):
        ky, kx = divmod(i, kernel_size)
        y, x = ky * dilation[0], kx * dilation[1]
        shifted.append(
            padded[y : y + (out_h - 1) * stride[0] + 1 : stride[0],
                   x : x + (out_w - 1) * stride[1] + 1 : stride[1]]
        )
    sampled = jnp.stack(shifted, axis=2)  # (Ho, Wo, K, C)
    if mask is not None:
        accum = jnp.promote_types(image.dtype, jnp.float32)
        m = mask.astype(accum).reshape(out_h, out_w, groups, taps)
        m = jnp.repeat(jnp.moveaxis(m, 2, 3), cpg, axis=3)  # (Ho, Wo, K, C)
        sampled = (sampled.astype(accum) * m).astype(image.dtype)
    return sampled.reshape(out_h * out_w, taps * channels)


def deform_conv2d(
    inputs: jax.Array,
    offsets: jax.Array | None,
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
        ``None`` means zero offsets (a mask-modulated convolution, computed with
        strided slices instead of gathers: ASPDC's static branch).
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

    geometry = dict(
        kernel_size=kernel_size,
        stride=stride_,
        padding=padding_,
        dilation=dilation_,
        groups=offset_groups,
    )
    mask_axis = None if mask is None else 0
    if offsets is None:
        sampled = jax.vmap(
            lambda image, m: _sample_grid_one(image, m, out_hw=(out_h, out_w), **geometry),
            in_axes=(0, mask_axis),
        )(inputs, mask)
    else:
        sampled = _deformable_sample(
            inputs, offsets, mask, (kernel_size, stride_, padding_, dilation_, offset_groups)
        )  # (B, Ho*Wo, K*C)
    out = jnp.einsum(
        "bpj,jo->bpo",
        sampled,
        kernel.astype(inputs.dtype).reshape(kernel_size * kernel_size * channels, out_channels),
        preferred_element_type=accum,
    )
    if bias is not None:
        out = out + bias.astype(accum)
    return out.reshape(batch, out_h, out_w, out_channels).astype(inputs.dtype)
