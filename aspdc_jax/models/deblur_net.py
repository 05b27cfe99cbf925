"""DeblurNet: the ASPDC deblurring network (official ``DeblurringNet``).

Parameter tree (width w; names follow the paper, official names in ``aspdc_jax.convert``)::

    head_conv (3->w), head_res1, head_res2 (ResBlock w), down1 (w->2w, s2), down2 (2w->4w, s2)
    groups: res1, res2 (ResBlock 4w), aspdc (ASPDC 4w); every leaf stacked along a leading
            axis of length num_groups (group k of the network is index k)
    fuse_conv (num_groups*4w -> 4w)
    up1 (ConvTranspose 4w->2w), up2 (2w->w), tail_conv (w->3)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from aspdc_jax.models.aspdc import ASPDC, validate_branches
from aspdc_jax.models.layers import ConvTranspose2x, ResBlock, conv3, lrelu

__all__ = ["DeblurGroup", "DeblurNet", "DeblurOutput"]

Dtype = Any


@flax.struct.dataclass
class DeblurOutput:
    """What :class:`DeblurNet` returns (a pytree; works under ``jit``).

    Attributes:
      deblurred: ``(B, H, W, 3)`` the deblurred image, ``input + residual``, range ~[-1, 1]
        (not clipped).
      residual: ``(B, H, W, 3)`` the predicted correction.
      offsets: ``num_groups`` arrays ``(B, H/4, W/4, 18*n_d)`` (54 channels by default):
        each ASPDC's offset maps of its deformable branches, in pixels of the H/4 grid,
        channel ``2i`` = dy and ``2i+1`` = dx of tap ``i``, branches in config order.
      attention: ``num_groups`` arrays ``(B, H/4, W/4, n_branches)``: AFIM weights per branch
        (softmax, sums to 1), or ones for ``fusion="sum"``.
    """

    deblurred: jax.Array
    residual: jax.Array
    offsets: tuple[jax.Array, ...]
    attention: tuple[jax.Array, ...]


class DeblurGroup(nn.Module):
    """One body group, ``ASPDC(res2(res1(x)))``, written as an ``nn.scan`` cell.

    Call: ``x`` ``(B, h, w, 4w)`` -> ``(out, (out, offsets, attention))``: the carry for the
    next group and this group's outputs (see :class:`~aspdc_jax.models.ASPDC`).
    """

    branches: tuple[str, ...] = ("static", "d1", "d2", "d4")
    branch_repeat: int = 1
    fusion: str = "afim"
    zero_init_offsets: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array]]:
        x = ResBlock(dtype=self.dtype, name="res1")(x)
        x = ResBlock(dtype=self.dtype, name="res2")(x)
        out, offsets, attention = ASPDC(
            branches=self.branches,
            branch_repeat=self.branch_repeat,
            fusion=self.fusion,
            zero_init_offsets=self.zero_init_offsets,
            dtype=self.dtype,
            name="aspdc",
        )(x)
        return out, (out, offsets, attention)


class DeblurNet(nn.Module):
    """The deblurring network.

    Attributes:
      width: w; feature channels are w, 2w, 4w (paper and release: 32).
      num_groups: number of ResBlock x2 + ASPDC groups in the body (6).
      branches: ASPDC branches, a subset of ``("static", "d1", "d2", "d4")``.
      branch_repeat: copies of each branch, separate weights (Table 5's "x3": 3).
      fusion: ``"afim"`` (attention fusion) or ``"sum"`` (plain sum, no attention).
      zero_init_offsets: zero-initialise the offset / mask predictors (default Xavier).
      remat: rematerialise each body group in the backward pass (``nn.remat`` inside the
        scan over groups) to save training memory; the forward result and the parameter
        tree are unchanged.
      dtype: computation dtype (params stay float32).

    Call: ``DeblurNet()(x)`` with x ``(B, H, W, 3)`` float in [-1, 1], H and W divisible
    by 4; returns a :class:`DeblurOutput`. The ASPDC outputs are also sown into the
    ``"intermediates"`` collection as ``aspdc_out``, one array ``(num_groups, B, H/4, W/4,
    4w)`` (ask with ``mutable=["intermediates"]``).
    """

    width: int = 32
    num_groups: int = 6
    branches: Sequence[str] = ("static", "d1", "d2", "d4")
    branch_repeat: int = 1
    fusion: str = "afim"
    zero_init_offsets: bool = False
    remat: bool = False
    dtype: Dtype = jnp.float32

    def check_input(self, x: jax.Array) -> None:
        """Raises ValueError unless x is (B, H, W, 3) with H, W divisible by 4."""
        shape = tuple(getattr(x, "shape", ()))
        if len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"DeblurNet expects images (B, H, W, 3) NHWC, got shape {shape}")
        if shape[1] % 4 or shape[2] % 4 or shape[1] == 0 or shape[2] == 0:
            raise ValueError(
                f"DeblurNet needs H and W divisible by 4 (two stride-2 stages), got "
                f"H={shape[1]}, W={shape[2]}; pad the image (e.g. reflect) and crop back"
            )

    @nn.compact
    def __call__(self, x: jax.Array) -> DeblurOutput:
        self.check_input(x)
        branches = tuple(self.branches)
        validate_branches(branches, self.branch_repeat, self.fusion)
        if self.num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {self.num_groups}")
        w, dt = self.width, self.dtype
        rgb = x.astype(dt)

        h = lrelu(conv3(w, name="head_conv", dtype=dt)(rgb))
        h = ResBlock(dtype=dt, name="head_res1")(h)
        h = ResBlock(dtype=dt, name="head_res2")(h)
        h = lrelu(conv3(2 * w, stride=2, name="down1", dtype=dt)(h))
        h = lrelu(conv3(4 * w, stride=2, name="down2", dtype=dt)(h))

        # The groups are identical, so they run as one nn.scan (params stacked along a
        # leading num_groups axis): a 6x smaller program, and with remat the backward
        # recomputes one group at a time inside the loop, which XLA cannot hoist.
        cell = nn.remat(DeblurGroup, prevent_cse=False) if self.remat else DeblurGroup
        # Without remat the scan is fully unrolled (same params, same math): on XLA:CPU a
        # rolled loop runs the convolutions' weight gradients ~20x slower (measured: 2.3 s
        # vs 0.13 s for two width-16 groups at 8x16x16), which dominated the train step.
        groups = nn.scan(
            cell,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=self.num_groups,
            unroll=1 if self.remat else True,
        )(
            branches=branches,
            branch_repeat=self.branch_repeat,
            fusion=self.fusion,
            zero_init_offsets=self.zero_init_offsets,
            dtype=dt,
            name="groups",
        )
        _, (features, offsets, attention) = groups(h)  # each (num_groups, B, h, w, ...)
        self.sow("intermediates", "aspdc_out", features)
        # concat of the group outputs along channels, group-major (official dense_conv input)
        b, hh, ww, c = features.shape[1:]
        dense = jnp.moveaxis(features, 0, -2).reshape(b, hh, ww, self.num_groups * c)

        h = lrelu(conv3(4 * w, name="fuse_conv", dtype=dt)(dense))
        h = lrelu(ConvTranspose2x(2 * w, dtype=dt, name="up1")(h))
        h = lrelu(ConvTranspose2x(w, dtype=dt, name="up2")(h))
        residual = conv3(3, name="tail_conv", dtype=dt)(h)
        return DeblurOutput(
            deblurred=rgb + residual,
            residual=residual,
            offsets=tuple(offsets[k] for k in range(self.num_groups)),
            attention=tuple(attention[k] for k in range(self.num_groups)),
        )
