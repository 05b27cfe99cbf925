"""ASPDC: atrous spatial pyramid deformable convolution (official ``hallucination_res_block``).

For input ``x`` (B, h, w, c)::

    r      = lrelu(feature_conv(x))
    y_k    = branch_k(r)                      # one DCN per branch, c -> c
    a      = softmax(afim(x))                 # (B, h, w, n_branches), AFIM attention
    out    = fusion_conv(sum_k a_k * y_k) + x

Branches:

* ``"static"``: mask = sigmoid(conv3(r) -> 9), offsets are zero (a modulated, not
  deformed, 3x3 conv). Its mask conv uses padding 1, as the paper describes; the official
  release has no padding there (a shape bug, see ``aspdc_jax.convert``).
* ``"d1"``, ``"d2"``, ``"d4"``: offsets = conv3(r, dilation d, padding d) -> 18 and
  mask = sigmoid(conv3(r, dilation d) -> 9); DCN 3x3 with padding 1 and dilation 1.
  Only the offset / mask predictors are dilated.

Ablations (paper Table 5): any subset of branches, each branch repeated ``branch_repeat``
times with separate weights, and ``fusion="sum"`` replacing AFIM by a plain sum (no
attention parameters; the reported attention is then all ones).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from aspdc_jax.models.layers import DeformConv, ResBlock, conv3, lrelu

__all__ = [
    "AFIM",
    "ASPDC",
    "BRANCH_DILATIONS",
    "DeformBranch",
    "FUSIONS",
    "branch_names",
    "validate_branches",
]

Dtype = Any

#: Branch name -> dilation of its offset / mask predictors (0: static, no offsets).
BRANCH_DILATIONS: dict[str, int] = {"static": 0, "d1": 1, "d2": 2, "d4": 4}
FUSIONS = ("afim", "sum")


def validate_branches(branches: Sequence[str], branch_repeat: int, fusion: str) -> None:
    """Raises ValueError for unknown / duplicated branches, a bad repeat or fusion."""
    if isinstance(branches, str):
        raise ValueError(f"branches must be a sequence of names, got the string {branches!r}")
    if not branches:
        raise ValueError(f"branches must name at least one of {tuple(BRANCH_DILATIONS)}")
    unknown = [b for b in branches if b not in BRANCH_DILATIONS]
    if unknown:
        raise ValueError(f"unknown branches {unknown}; expected names from {tuple(BRANCH_DILATIONS)}")
    if len(set(branches)) != len(branches):
        raise ValueError(f"branches {tuple(branches)} repeat a name; use branch_repeat for separate copies")
    if not isinstance(branch_repeat, int) or branch_repeat < 1:
        raise ValueError(f"branch_repeat must be an int >= 1, got {branch_repeat!r}")
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")


def branch_names(branches: Sequence[str], branch_repeat: int) -> tuple[str, ...]:
    """Submodule names of the branches, in the order of the attention channels.

    ``("static", "d1")`` x1 -> ``("branch_static", "branch_d1")``; x3 ->
    ``("branch_static_1", "branch_static_2", "branch_static_3", "branch_d1_1", ...)``.
    """
    if branch_repeat == 1:
        return tuple(f"branch_{b}" for b in branches)
    return tuple(f"branch_{b}_{k + 1}" for b in branches for k in range(branch_repeat))


class DeformBranch(nn.Module):
    """One ASPDC branch: offset / mask predictors and a 3x3 DCN (c -> c).

    Args (call): r ``(B, h, w, c)``. Returns ``(y, offsets)``: y ``(B, h, w, c)`` and the
    predicted offsets ``(B, h, w, 18)`` (``None`` for the static branch).
    """

    dilation: int  # 0: static (zero offsets)
    zero_init_offsets: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, r: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        channels = r.shape[-1]
        if self.dilation == 0:
            mask = jax.nn.sigmoid(conv3(9, name="mask_conv", dtype=self.dtype, zero_init=self.zero_init_offsets)(r))
            offsets = None
            dcn_offsets = None  # zero offsets: deform_conv2d's gather-free path
        else:
            offsets = conv3(
                18,
                name="offset_conv",
                dilation=self.dilation,
                dtype=self.dtype,
                zero_init=self.zero_init_offsets,
            )(r)
            mask = jax.nn.sigmoid(
                conv3(
                    9,
                    name="mask_conv",
                    dilation=self.dilation,
                    dtype=self.dtype,
                    zero_init=self.zero_init_offsets,
                )(r)
            )
            dcn_offsets = offsets
        y = DeformConv(channels, dtype=self.dtype, name="dcn")(r, dcn_offsets, mask)
        return y, offsets


class AFIM(nn.Module):
    """Attention fusion: ``softmax(logits(res2(res1(lrelu(conv(x))))))`` over branches.

    Args (call): x ``(B, h, w, c)``. Returns ``(B, h, w, num_branches)``, summing to 1.
    """

    num_branches: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        a = lrelu(conv3(channels, name="conv", dtype=self.dtype)(x))
        a = ResBlock(dtype=self.dtype, name="res1")(a)
        a = ResBlock(dtype=self.dtype, name="res2")(a)
        logits = conv3(self.num_branches, name="logits", kernel_size=1, dtype=self.dtype)(a)
        return jax.nn.softmax(logits, axis=-1)


class ASPDC(nn.Module):
    """Atrous spatial pyramid deformable convolution block (see the module docstring).

    Args (call):
      x: ``(B, h, w, c)`` features.
    Returns:
      ``(out, offsets, attention)``: out ``(B, h, w, c)``; offsets ``(B, h, w, 18*n_d)``,
      the concatenated offset maps of the deformable branches in branch order (54
      channels for the default d1, d2, d4); attention ``(B, h, w, n_branches)``.
    """

    branches: tuple[str, ...] = ("static", "d1", "d2", "d4")
    branch_repeat: int = 1
    fusion: str = "afim"
    zero_init_offsets: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        validate_branches(self.branches, self.branch_repeat, self.fusion)
        channels = x.shape[-1]
        r = lrelu(conv3(channels, name="feature_conv", dtype=self.dtype)(x))
        names = branch_names(self.branches, self.branch_repeat)
        kinds = [b for b in self.branches for _ in range(self.branch_repeat)]
        outputs, offset_maps = [], []
        for name, kind in zip(names, kinds, strict=True):
            y, offsets = DeformBranch(
                BRANCH_DILATIONS[kind],
                zero_init_offsets=self.zero_init_offsets,
                dtype=self.dtype,
                name=name,
            )(r)
            outputs.append(y)
            if offsets is not None:
                offset_maps.append(offsets)
        if self.fusion == "afim":
            attention = AFIM(len(names), dtype=self.dtype, name="afim")(x)
            fused = functools.reduce(operator.add, [outputs[k] * attention[..., k : k + 1] for k in range(len(names))])
        else:
            attention = jnp.ones(x.shape[:-1] + (len(names),), outputs[0].dtype)
            fused = functools.reduce(operator.add, outputs)
        out = conv3(channels, name="fusion_conv", dtype=self.dtype)(fused) + x
        if offset_maps:
            offsets_out = jnp.concatenate(offset_maps, axis=-1)
        else:
            offsets_out = jnp.zeros(x.shape[:-1] + (0,), out.dtype)
        return out, offsets_out, attention
