"""Modulated deformable convolution (DCNv2) from one matmul and bilinear gathers.

Semantics are those of torchvision's ``deform_conv2d`` / mmcv's ``ModulatedDeformConv2d``,
moved to NHWC. For output pixel ``(y, x)``, kernel tap
``i = ky * k + kx`` (row-major) and offset group ``g``::

    out[b, y, x, o] = bias[o] + sum_{c, i} W[ky, kx, c, o] * m[b, y, x, g*k*k + i]
                      * bilinear(in[b, :, :, c], py, px)
    py = y * stride - pad + ky * dil + offsets[b, y, x, g*2*k*k + 2*i]
    px = x * stride - pad + kx * dil + offsets[b, y, x, g*2*k*k + 2*i + 1]

with ``g = c // (C / offset_groups)``. Pixels outside the image read as zero; a sample
point with ``py <= -1``, ``py >= H``, ``px <= -1`` or ``px >= W`` contributes nothing.
Coordinate gradients use the floor-based bilinear derivative, exactly as in torchvision.

Implementation (a contraction over taps x channels and bilinear gathers, in the order
that is fastest on XLA): bilinear interpolation and the mask act on pixels, the kernel
on channels, so they commute. One dense matmul first projects every input pixel through
every tap's kernel, ``Z[pixel, i] = in[pixel] @ W[i]`` (the FLOPs of the dense
convolution, in the matmul unit); each output pixel is then a weighted sum of the 4*k*k
gathered rows ``Z[corner, i]``, which XLA fuses into one loop that reads contiguous rows
and writes only the output. The gathers index one flat table with per-image row offsets
(the batch is folded into the indices, not vmapped). The hand-written backward pass uses
a gather-dot for the offsets and mask, a scatter-add and two matmuls for the inputs and
kernel, and recomputes ``Z`` instead of storing it. Both passes go one kernel row at a
time, so only a k-tap slice of ``Z`` is alive at once. With zero offsets and no mask the
result is exactly a dense convolution.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from aspdc_jax.ops.conv import pair, tap_windows

__all__ = ["deform_conv2d", "deform_conv_output_size"]

IntPair = int | Sequence[int]


def deform_conv_output_size(size: int, kernel_size: int, stride: int, padding: int, dilation: int) -> int:
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
            f"input channels {channels} (inputs shape {ishape}) are not divisible by offset_groups={offset_groups}"
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
        raise ValueError(f"bias must have shape ({kshape[3]},) to match kernel {kshape}, got {tuple(bias.shape)}")
    return out_h, out_w


def _projection(inputs: jax.Array, kernel: jax.Array, groups: int, accum: Any) -> jax.Array:
    """Every tap's kernel applied at every input pixel: one dense matmul.

    ``(B, H, W, C)`` x ``(kh, kw, C, O)`` -> ``(G*B*H*W*T, O)`` with ``T = kh*kw``; row
    ``((g*B + b)*H*W + y*W + x)*T + i`` is ``in[b, y, x, group g] @ W[tap i, group g]``.
    Bilinear interpolation and the mask act on pixels and the kernel on channels, so
    sampling this projection equals projecting the samples.
    """
    batch, height, width, channels = inputs.shape
    kernel_h, kernel_w, _, out_channels = kernel.shape
    taps, cpg = kernel_h * kernel_w, channels // groups
    x = jnp.moveaxis(inputs.reshape(batch * height * width, groups, cpg), 1, 0)
    w = kernel.reshape(taps, groups, cpg, out_channels)
    z = jnp.einsum("gpc,kgco->gpko", x, w, preferred_element_type=accum)
    return z.reshape(-1, out_channels)


def _projection_transpose(
    d_rows: jax.Array, inputs: jax.Array, kernel: jax.Array, groups: int
) -> tuple[jax.Array, jax.Array]:
    """Cotangent of `_projection`: ``(G*B*H*W*K, O)`` -> (d_inputs, d_kernel), two matmuls."""
    batch, height, width, channels = inputs.shape
    kernel_h, kernel_w, _, out_channels = kernel.shape
    taps, cpg = kernel_h * kernel_w, channels // groups
    accum = d_rows.dtype
    dz = d_rows.reshape(groups, batch * height * width, taps * out_channels)
    x = jnp.moveaxis(inputs.reshape(batch * height * width, groups, cpg), 1, 0).astype(accum)
    w = kernel.reshape(taps, groups, cpg, out_channels).astype(accum)
    w = w.transpose(1, 2, 0, 3).reshape(groups, cpg, taps * out_channels)  # (G, Cg, K*O)
    d_x = jnp.einsum("gpj,gcj->pgc", dz, w, preferred_element_type=accum)
    d_w = jnp.einsum("gpc,gpj->gcj", x, dz, preferred_element_type=accum)
    d_w = d_w.reshape(groups, cpg, taps, out_channels).transpose(2, 0, 1, 3)  # (K, G, Cg, O)
    return d_x.reshape(inputs.shape), d_w.reshape(kernel.shape)


def _sampling_plan(
    offsets: jax.Array,  # (B, Ho, Wo, G*K*2)
    mask: jax.Array | None,  # (B, Ho, Wo, G*K)
    geometry: tuple,
    in_hw: tuple[int, int],
) -> tuple[jax.Array, jax.Array]:
    """Pixels and weights of the four bilinear corners of every tap.

    Column ``j = (g*K + i)*4 + q`` holds corner ``q`` (``(y0, x0)``, ``(y0, x0+1)``,
    ``(y0+1, x0)``, ``(y0+1, x0+1)``) of tap ``i`` in offset group ``g``.

    Returns:
      weight: ``(B*Ho*Wo, G*K*4)`` bilinear weight times the mask, zero for corners
        outside the image (torchvision's floor-based coordinate gradient follows).
      pixels: ``(B*Ho*Wo, G*K*4)`` int32 rows ``(g*B + b)*H*W + y*W + x`` of the
        group-major pixel table (clipped into range where the weight is zero).
    """
    kernel_size, stride, padding, dilation, groups = geometry
    height, width = in_hw
    batch, out_h, out_w, _ = offsets.shape
    taps = kernel_size * kernel_size
    coord_dtype = jnp.promote_types(offsets.dtype, jnp.float32)
    ky, kx = jnp.divmod(jnp.arange(taps), kernel_size)
    base_y = (jnp.arange(out_h) * stride[0] - padding[0])[:, None] + ky * dilation[0]
    base_x = (jnp.arange(out_w) * stride[1] - padding[1])[:, None] + kx * dilation[1]
    off = offsets.astype(coord_dtype).reshape(batch, out_h, out_w, groups, taps, 2)
    py = base_y.astype(coord_dtype)[:, None, None, :] + off[..., 0]  # (B, Ho, Wo, G, K)
    px = base_x.astype(coord_dtype)[None, :, None, :] + off[..., 1]
    y0f, x0f = jnp.floor(py), jnp.floor(px)
    ly, lx = py - y0f, px - x0f
    y0, x0 = y0f.astype(jnp.int32), x0f.astype(jnp.int32)
    image = (jnp.arange(groups)[:, None] * batch + jnp.arange(batch)).T  # (B, G): g*B + b
    image = image[:, None, None, :, None] * (height * width)
    weights, pixels = [], []
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            cy, cx = y0 + dy, x0 + dx
            valid = (cy >= 0) & (cy < height) & (cx >= 0) & (cx < width)
            weights.append(jnp.where(valid, wy * wx, 0))
            pixels.append(image + jnp.clip(cy, 0, height - 1) * width + jnp.clip(cx, 0, width - 1))
    weight = jnp.stack(weights, axis=-1)  # (B, Ho, Wo, G, K, 4)
    if mask is not None:
        weight = weight * mask.astype(coord_dtype).reshape(batch, out_h, out_w, groups, taps, 1)
    n = batch * out_h * out_w
    return weight.reshape(n, -1), jnp.stack(pixels, axis=-1).reshape(n, -1)


def _gather_sum(table: jax.Array, rows: jax.Array, weight: jax.Array) -> jax.Array:
    """``out[p] = sum_j weight[p, j] * table[rows[p, j]]``: (R, O), (P, J), (P, J) -> (P, O).

    One unrolled sum of row gathers: XLA fuses it into a single loop over (P, O) with O
    innermost, reading each gathered row contiguously and writing only the result.
    """
    weight = weight.astype(table.dtype)
    terms = [jnp.take(table, rows[:, j], axis=0, mode="clip") * weight[:, j : j + 1] for j in range(rows.shape[1])]
    return functools.reduce(operator.add, terms)


def _materialized(fn: Any, pixels: jax.Array, *args: jax.Array) -> jax.Array:
    """``fn(*args)`` behind a conditional that is always true but opaque to XLA.

    ``pixels`` (non-negative by construction) provides the predicate. A conditional's
    result is always materialized; left free, XLA fuses a gather-heavy producer into
    every consumer (for example the forward sum into the backward pass's per-tap
    updates) and recomputes it there, 2x slower end to end on XLA:CPU. Only the CPU
    lowering has the conditional (a GPU conditional would sync its predicate to the host).
    """
    shape = jax.eval_shape(fn, *args)

    def behind_cond(pixels, *args):
        return jax.lax.cond(pixels[0, 0] >= 0, fn, lambda *_: jnp.zeros(shape.shape, shape.dtype), *args)

    return jax.lax.platform_dependent(pixels, *args, cpu=behind_cond, default=lambda pixels, *args: fn(*args))


def _gather_dot(table: jax.Array, rows: jax.Array, vectors: jax.Array) -> jax.Array:
    """``d[p, j] = <table[rows[p, j]], vectors[p]>``: (R, C), (P, J), (P, C) -> (P, J)."""
    channels = table.shape[1]
    gathered = jnp.take(table, rows.reshape(-1), axis=0, mode="clip")
    prod = (gathered.reshape(*rows.shape, channels) * vectors[:, None, :]).reshape(-1, channels)
    # A matvec with ones runs ~2x faster on XLA:CPU than a reduce over the minor axis.
    return (prod @ jnp.ones((channels,), prod.dtype)).reshape(rows.shape)


def _kernel_rows(
    pixels: jax.Array, weight: jax.Array, kernel_size: int, groups: int
) -> Iterator[tuple[int, jax.Array, jax.Array]]:
    """Per kernel row ``ky``: (ky, rows into that row's k-tap `_projection`, weights).

    ``rows = pixel * k + kx`` and the weights of the columns of taps ``(ky, 0..k-1)``,
    shapes ``(P, G*k*4)``; both passes of the deformable conv iterate over these.
    """
    n = pixels.shape[0]
    by_row = lambda a: a.reshape(n, groups, kernel_size, kernel_size, 4)
    tap_in_row = jnp.arange(kernel_size, dtype=pixels.dtype)[:, None]  # (kx, corner)
    for ky in range(kernel_size):
        rows = by_row(pixels)[:, :, ky] * kernel_size + tap_in_row
        yield ky, rows.reshape(n, -1), by_row(weight)[:, :, ky].reshape(n, -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _deform_conv(
    inputs: jax.Array,
    offsets: jax.Array,
    mask: jax.Array | None,
    kernel: jax.Array,
    geometry: tuple,
) -> jax.Array:
    """(B, H, W, C) -> (B*Ho*Wo, O) in the accumulation dtype (no bias)."""
    return _deform_conv_forward(inputs, offsets, mask, kernel, geometry)


def _deform_conv_forward(inputs, offsets, mask, kernel, geometry):
    """One kernel row at a time: project its k taps, then add their gather-sum.

    Only a k-tap projection (``k*O`` values per input pixel) is alive at once, and each
    partial sum is materialized, which keeps XLA from fusing the sum into consumers.
    """
    kernel_size, groups = geometry[0], geometry[-1]
    accum = jnp.promote_types(inputs.dtype, jnp.float32)
    weight, pixels = _sampling_plan(offsets, mask, geometry, inputs.shape[1:3])
    out = None
    for ky, rows, row_weight in _kernel_rows(pixels, weight, kernel_size, groups):
        table = _projection(inputs, kernel[ky : ky + 1], groups, accum)
        if out is None:
            out = _materialized(_gather_sum, pixels, table, rows, row_weight)
        else:
            add = lambda t, r, w, acc: acc + _gather_sum(t, r, w)
            out = _materialized(add, pixels, table, rows, row_weight, out)
    return out


def _deform_conv_fwd(inputs, offsets, mask, kernel, geometry):
    out = _deform_conv_forward(inputs, offsets, mask, kernel, geometry)
    # Keep only the (small) inputs: the projection is recomputed in the backward pass.
    return out, (inputs, offsets, mask, kernel)


def _deform_conv_bwd(geometry, residuals, d_out):
    """Backward, one kernel row at a time (as the forward): a gather-dot for the offsets
    and mask, a scatter-add into that row's projection and two matmuls for the inputs and
    kernel. The row projections are recomputed (XLA shares them with the forward pass
    when both are in one program)."""
    inputs, offsets, mask, kernel = residuals
    kernel_size, groups = geometry[0], geometry[-1]
    accum = d_out.dtype
    # Integer pixels ride along as aux; only the weights are differentiated.
    weight, plan_vjp, pixels = jax.vjp(
        lambda o, m: _sampling_plan(o, m, geometry, inputs.shape[1:3]),
        offsets,
        mask,
        has_aux=True,
    )
    n = pixels.shape[0]

    def updates(weight, d_out):
        return (weight.astype(accum)[:, :, None] * d_out[:, None, :]).reshape(-1, d_out.shape[1])

    d_weight, d_kernel, d_inputs = [], [], None
    for ky, rows, row_weight in _kernel_rows(pixels, weight, kernel_size, groups):
        table = _projection(inputs, kernel[ky : ky + 1], groups, accum)
        d_weight.append(_gather_dot(table, rows, d_out))
        # Materialized updates: XLA:CPU's scatter runs ~1.5x slower with them fused in.
        d_table = (
            jnp.zeros_like(table)
            .at[rows.reshape(-1)]
            .add(_materialized(updates, pixels, row_weight, d_out), mode="promise_in_bounds")
        )
        d_x, d_k = _projection_transpose(d_table, inputs, kernel[ky : ky + 1], groups)
        d_inputs = d_x if d_inputs is None else d_inputs + d_x
        d_kernel.append(d_k)
    d_weight = jnp.stack([d.reshape(n, groups, kernel_size, 4) for d in d_weight], axis=2).reshape(weight.shape)
    d_offsets, d_mask = plan_vjp(d_weight.astype(weight.dtype))
    return (
        d_inputs.astype(inputs.dtype),
        d_offsets.astype(offsets.dtype),
        None if mask is None else d_mask.astype(mask.dtype),
        jnp.concatenate(d_kernel, axis=0).astype(kernel.dtype),
    )


_deform_conv.defvjp(_deform_conv_fwd, _deform_conv_bwd)


def _sample_grid(
    inputs: jax.Array,  # (B, H, W, C)
    mask: jax.Array | None,  # (B, Ho, Wo, G*K)
    geometry: tuple,
    out_hw: tuple[int, int],
) -> jax.Array:
    """Zero offsets: the taps are integer shifts, read with strided slices (no gather).

    Returns ``(B, Ho*Wo, K*C)`` samples (tap-major), times the mask where given.
    """
    kernel_size, stride, padding, dilation, groups = geometry
    batch, _, _, channels = inputs.shape
    taps, cpg = kernel_size * kernel_size, channels // groups
    windows = tap_windows(
        inputs,
        (kernel_size, kernel_size),
        out_hw,
        (stride, ((padding[0], padding[0]), (padding[1], padding[1])), (1, 1), dilation),
    )
    sampled = jnp.stack(windows, axis=1)  # (P, K, C)
    if mask is not None:
        accum = jnp.promote_types(inputs.dtype, jnp.float32)
        m = jnp.swapaxes(mask.astype(accum).reshape(-1, groups, taps), 1, 2)  # (P, K, G)
        sampled = (sampled.astype(accum) * jnp.repeat(m, cpg, axis=2)).astype(inputs.dtype)
    return sampled.reshape(batch, -1, taps * channels)


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
        pair(stride, "stride"),
        pair(padding, "padding"),
        pair(dilation, "dilation"),
    )
    out_h, out_w = _check_shapes(inputs, offsets, mask, kernel, bias, stride_, padding_, dilation_, offset_groups)
    batch = inputs.shape[0]
    kernel_size, _, channels, out_channels = kernel.shape
    accum = jnp.promote_types(inputs.dtype, jnp.float32)

    geometry = (kernel_size, stride_, padding_, dilation_, offset_groups)
    if offsets is None:
        sampled = _sample_grid(inputs, mask, geometry, (out_h, out_w))  # (B, Ho*Wo, K*C)
        out = jnp.einsum(
            "bpj,jo->bpo",
            sampled,
            kernel.astype(inputs.dtype).reshape(kernel_size * kernel_size * channels, out_channels),
            preferred_element_type=accum,
        )
    else:
        out = _deform_conv(inputs, offsets, mask, kernel.astype(inputs.dtype), geometry)
    if bias is not None:
        out = out + bias.astype(accum)
    return out.reshape(batch, out_h, out_w, out_channels).astype(inputs.dtype)
