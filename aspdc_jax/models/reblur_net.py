"""ReblurNet: the reblurring network (official ``BlurringNet``).

One set of weights, two streams. The guidance stream sees ``concat(blurred, sharp)`` and
yields per-pixel 3x3 kernel logits at each of the 7 stages; the reblur stream sees
``concat(sharp, sharp)``, and every stage output is filtered (``aspdc_jax.ops.dynamic_filter``)
with the guidance logits of the same stage before it feeds the next stage.

Parameter tree (width v; channels v, 2v, 4v, 8v)::

    head_conv (6->v)              kernel_head (v->9)
    enc1: down (v->2v, s2), res   kernel_enc1 (2v->9)
    enc2: down (2v->4v), res      kernel_enc2 (4v->9)
    enc3: down (4v->8v), res      kernel_enc3 (8v->9)
    dec3: res (8v), up (8v->4v)   kernel_dec3 (4v->9)
    dec2: res (4v), up (4v->2v)   kernel_dec2 (2v->9)
    dec1: res (2v), up (2v->v)    kernel_dec1 (v->9)
    tail_conv (v->3)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from aspdc_jax.models.layers import ConvTranspose2x, ResBlock, conv3, lrelu
from aspdc_jax.ops import dynamic_filter

__all__ = ["DecoderStage", "EncoderStage", "ReblurNet"]

Dtype = Any


class EncoderStage(nn.Module):
    """``lrelu(res(down(x)))``: stride-2 conv to ``features`` channels, one ResBlock."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = conv3(self.features, stride=2, name="down", dtype=self.dtype)(x)
        return lrelu(ResBlock(dtype=self.dtype, name="res")(x))


class DecoderStage(nn.Module):
    """``lrelu(up(res(x)))``: one ResBlock, then a 2x transposed conv to ``features``."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = ResBlock(dtype=self.dtype, name="res")(x)
        return lrelu(ConvTranspose2x(self.features, dtype=self.dtype, name="up")(x))


class ReblurNet(nn.Module):
    """Reblurs a sharp image so that it looks like the blurred one.

    Attributes:
      width: v; channels v, 2v, 4v, 8v (paper and release: 16).
      residual: return ``sharp + tail_conv(...)`` instead of ``tail_conv(...)`` (not in
        the paper: the network then only has to learn the blur, not to rebuild the image;
        with a small tail at init it starts at R(b, s) = s).
      dtype: computation dtype (params stay float32).

    Call: ``ReblurNet()(blurred, sharp)``, both ``(B, H, W, 3)`` float in [-1, 1] with H
    and W divisible by 8 and at least 16; returns the reblurred image ``(B, H, W, 3)`` (range ~[-1, 1],
    not clipped, not a residual).
    """

    width: int = 16
    residual: bool = False
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        v, dt = self.width, self.dtype
        self.head_conv = conv3(v, dtype=dt)
        self.enc1 = EncoderStage(2 * v, dtype=dt)
        self.enc2 = EncoderStage(4 * v, dtype=dt)
        self.enc3 = EncoderStage(8 * v, dtype=dt)
        self.dec3 = DecoderStage(4 * v, dtype=dt)
        self.dec2 = DecoderStage(2 * v, dtype=dt)
        self.dec1 = DecoderStage(v, dtype=dt)
        self.tail_conv = conv3(3, dtype=dt)
        self.kernel_head = conv3(9, dtype=dt)
        self.kernel_enc1 = conv3(9, dtype=dt)
        self.kernel_enc2 = conv3(9, dtype=dt)
        self.kernel_enc3 = conv3(9, dtype=dt)
        self.kernel_dec3 = conv3(9, dtype=dt)
        self.kernel_dec2 = conv3(9, dtype=dt)
        self.kernel_dec1 = conv3(9, dtype=dt)

    @staticmethod
    def check_inputs(blurred: jax.Array, sharp: jax.Array) -> None:
        """Raises ValueError unless both are (B, H, W, 3), equal shapes, H, W % 8 == 0, >= 16."""
        bshape = tuple(getattr(blurred, "shape", ()))
        sshape = tuple(getattr(sharp, "shape", ()))
        if len(bshape) != 4 or bshape[-1] != 3 or bshape != sshape:
            raise ValueError(
                f"ReblurNet expects blurred and sharp images of the same shape (B, H, W, 3), got {bshape} and {sshape}"
            )
        if bshape[1] % 8 or bshape[2] % 8 or bshape[1] < 16 or bshape[2] < 16:
            raise ValueError(
                f"ReblurNet needs H and W divisible by 8 and >= 16 (three stride-2 stages, "
                f"then a reflect-padded 3x3 filter), got "
                f"H={bshape[1]}, W={bshape[2]}; pad the images (e.g. reflect) and crop back"
            )

    def _stages(self, x: jax.Array, kernels: list[jax.Array] | None) -> tuple[jax.Array, list[jax.Array]]:
        """Runs the 7 stages; with ``kernels``, filters each stage output by its kernel.

        Returns the last stage's features and each stage's (unfiltered-input) features.
        """
        feats: list[jax.Array] = []

        def stage(k: int, y: jax.Array) -> jax.Array:
            if kernels is not None:
                y = dynamic_filter(y, kernels[k])
            feats.append(y)
            return y

        f0 = stage(0, lrelu(self.head_conv(x)))
        e1 = stage(1, self.enc1(f0))
        e2 = stage(2, self.enc2(e1))
        e3 = stage(3, self.enc3(e2))
        d3 = stage(4, self.dec3(e3) + e2)
        d2 = stage(5, self.dec2(d3) + e1)
        d1 = stage(6, self.dec1(d2))
        return d1, feats

    def __call__(self, blurred: jax.Array, sharp: jax.Array) -> jax.Array:
        self.check_inputs(blurred, sharp)
        dt = self.dtype
        blurred, sharp = blurred.astype(dt), sharp.astype(dt)
        # Guidance stream: kernel logits of every stage from (blurred, sharp).
        _, guide = self._stages(jnp.concatenate([blurred, sharp], axis=-1), None)
        heads = (
            self.kernel_head,
            self.kernel_enc1,
            self.kernel_enc2,
            self.kernel_enc3,
            self.kernel_dec3,
            self.kernel_dec2,
            self.kernel_dec1,
        )
        kernels = [head(f) for head, f in zip(heads, guide, strict=True)]
        # Reblur stream: the same stages on (sharp, sharp), each output filtered.
        d1, _ = self._stages(jnp.concatenate([sharp, sharp], axis=-1), kernels)
        out = self.tail_conv(d1)
        return sharp + out if self.residual else out
