"""Image quality metrics with named protocols.

All functions take float images in [0, 1], RGB, either ``(H, W, C)`` (one image; a scalar
comes back) or ``(B, H, W, C)`` (a batch; a ``(B,)`` array of per-image scores comes back).
They are pure ``jax.numpy`` and can be used inside ``jax.jit``; the protocol arguments
(``variant``, ``quantize``, ...) are static.

Protocols:

* ``psnr``: ``10 log10(1 / MSE)`` over all pixels and channels of one image, on [0, 1]
  (peak 1). ``quantize=True`` first rounds both images to uint8 levels (``round(x * 255)``),
  the MATLAB / BasicSR way of scoring saved PNGs.
* ``ssim(variant="gaussian")``: Wang et al. 2004 as in BasicSR and
  ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)``: 11x11 Gaussian window (sigma 1.5),
  K1 = 0.01, K2 = 0.03, computed per channel and averaged, border of 5 px excluded.
* ``ssim(variant="official")``: what the official ASPDC release reports: skimage's
  (formerly ``compare_ssim(multichannel=True)``) 7x7 uniform window, sample covariance and
  ``data_range=2`` on [0, 1] floats (the default range of a float image in old skimage).
  The larger ``data_range`` inflates the constants C1, C2 and therefore the score (by up to
  ~0.01 at the paper's quality level); report it only to compare with the paper.

Both SSIM variants only use window positions that lie fully inside the image, which is
exactly scikit-image's "crop the filter radius" rule, so no padding mode is involved.

The host-side PSNR (`psnr_numpy`, `psnr_from_mse`) is `aspdc_jax.images`' (named here too),
so the data and training code use it without importing evaluation.
"""

from __future__ import annotations

import functools
import operator
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from aspdc_jax.images import psnr_from_mse, psnr_numpy

__all__ = [
    "SSIM_VARIANTS",
    "crop_border",
    "mean_abs_diff_stats",
    "psnr",
    "psnr_from_mse",
    "psnr_numpy",
    "rgb_to_y",
    "ssim",
]

SSIM_VARIANTS = ("gaussian", "official")
SsimVariant = Literal["gaussian", "official"]


def _check_pair(a: jax.Array, b: jax.Array, name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: images must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim not in (3, 4):
        raise ValueError(f"{name}: expected (H, W, C) or (B, H, W, C) float images in [0, 1], got shape {a.shape}")


def _as_float(x: ArrayLike) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"metrics expect float images in [0, 1], got dtype {x.dtype}; convert uint8 with x / 255")
    # float64 stays float64 when x64 is enabled; everything else is computed in float32.
    return x if x.dtype == jnp.float64 else x.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("quantize",))
def _psnr(a: jax.Array, b: jax.Array, quantize: bool) -> jax.Array:
    if quantize:
        a = jnp.round(jnp.clip(a, 0.0, 1.0) * 255.0) / 255.0
        b = jnp.round(jnp.clip(b, 0.0, 1.0) * 255.0) / 255.0
    mse = jnp.mean(jnp.square(a - b), axis=(-3, -2, -1))
    return 10.0 * jnp.log10(1.0 / mse)


#: ITU-R BT.601 luma for RGB in [0, 1], as BasicSR's ``bgr2ycbcr(y_only=True)`` and
#: scikit-image's ``rgb2ycbcr(...)[..., 0]`` compute it: ``Y = 16 + 65.481 R + 128.553 G
#: + 24.966 B`` in [16, 235], here divided by 255 (so the peak stays 1).
_Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(x: ArrayLike) -> jax.Array:
    """(..., H, W, 3) RGB in [0, 1] -> (..., H, W, 1) luma Y in [16/255, 235/255] (BT.601;
    BasicSR ``test_y_channel``). Not rounded, as BasicSR."""
    x = _as_float(x)
    w = jnp.asarray(_Y_WEIGHTS, x.dtype)
    return ((16.0 + jnp.tensordot(x, w, axes=([-1], [0]))) / 255.0)[..., None]


def crop_border(x: ArrayLike, border: int) -> jax.Array:
    """Drops ``border`` pixels on every side of (..., H, W, C) (BasicSR's ``crop_border``)."""
    x = jnp.asarray(x)
    if border < 0 or 2 * border >= min(x.shape[-3], x.shape[-2]):
        raise ValueError(f"crop_border {border} must be >= 0 and leave pixels of a {x.shape[-3]}x{x.shape[-2]} image")
    return x[..., border : x.shape[-3] - border, border : x.shape[-2] - border, :] if border else x


def psnr(a: ArrayLike, b: ArrayLike, *, quantize: bool = False) -> jax.Array:
    """Peak signal-to-noise ratio in dB with peak 1.

    Args:
      a, b: float images in [0, 1], (H, W, C) or (B, H, W, C), same shape.
      quantize: round both to uint8 levels first (MATLAB / BasicSR protocol).

    Returns:
      float32 scalar (one image) or (B,) per-image PSNR. Identical images give ``inf``.
    """
    a, b = _as_float(a), _as_float(b)
    _check_pair(a, b, "psnr")
    return _psnr(a, b, bool(quantize))


def _gaussian_taps(sigma: float, truncate: float) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)  # scipy.ndimage's rule
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _valid_filter(x: jax.Array, taps: np.ndarray) -> jax.Array:
    """Separable 'valid' filter over axes -3 (H) and -2 (W) of (..., H, W, C)."""
    k = len(taps)
    h, w = x.shape[-3], x.shape[-2]
    weights = [float(t) for t in taps]
    rows = functools.reduce(operator.add, [weights[i] * x[..., i : i + h - k + 1, :, :] for i in range(k)])
    return functools.reduce(operator.add, [weights[i] * rows[..., :, i : i + w - k + 1, :] for i in range(k)])


@functools.partial(jax.jit, static_argnames=("variant",))
def _ssim(a: jax.Array, b: jax.Array, variant: str) -> jax.Array:
    if variant == "gaussian":
        taps = _gaussian_taps(1.5, 3.5)
        data_range, cov_norm = 1.0, 1.0
    else:
        win = 7
        taps = np.full((win,), 1.0 / win)
        data_range, cov_norm = 2.0, win * win / (win * win - 1.0)
    ux = _valid_filter(a, taps)
    uy = _valid_filter(b, taps)
    uxx = _valid_filter(a * a, taps)
    uyy = _valid_filter(b * b, taps)
    uxy = _valid_filter(a * b, taps)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return jnp.mean(s, axis=(-3, -2, -1))


def ssim(a: ArrayLike, b: ArrayLike, *, variant: SsimVariant = "gaussian") -> jax.Array:
    """Structural similarity, per image, averaged over channels.

    Args:
      a, b: float images in [0, 1], (H, W, C) or (B, H, W, C), same shape; H and W at
        least 11 (gaussian) or 7 (official).
      variant: ``"gaussian"`` (Wang et al. / BasicSR) or ``"official"`` (the ASPDC
        release's skimage settings); see the module docstring.

    Returns:
      float32 scalar (one image) or (B,) per-image SSIM.
    """
    if variant not in SSIM_VARIANTS:
        raise ValueError(f"ssim: variant must be one of {SSIM_VARIANTS}, got {variant!r}")
    a, b = _as_float(a), _as_float(b)
    _check_pair(a, b, "ssim")
    win = 11 if variant == "gaussian" else 7
    if min(a.shape[-3], a.shape[-2]) < win:
        raise ValueError(f"ssim({variant}): images must be at least {win}x{win}, got {a.shape[-3]}x{a.shape[-2]}")
    return _ssim(a, b, variant)


@jax.jit
def _abs_diff_stats(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    d = jnp.abs(a - b)
    return jnp.mean(d, axis=(-3, -2, -1)), jnp.var(d, axis=(-3, -2, -1))


def mean_abs_diff_stats(a: ArrayLike, b: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Mean and variance of ``|a - b|`` over all pixels and channels of each image.

    Args:
      a, b: float images in [0, 1], (H, W, C) or (B, H, W, C).

    Returns:
      ``(mean, variance)``, each a scalar or (B,) float32 array, in [0, 1] units.
    """
    a, b = _as_float(a), _as_float(b)
    _check_pair(a, b, "mean_abs_diff_stats")
    return _abs_diff_stats(a, b)
