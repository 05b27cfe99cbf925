"""aspdc_jax.evaluation.metrics against scikit-image."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from aspdc_jax.evaluation import metrics


def _pair(seed: int, shape: tuple[int, ...], noise: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Smooth-ish content plus noise so SSIM is in an interesting range (not ~0, not ~1).
    base = rng.random(shape)
    base = (base + np.roll(base, 1, axis=-2) + np.roll(base, 1, axis=-3)) / 3
    other = np.clip(base + noise * rng.standard_normal(shape), 0, 1)
    return base.astype(np.float32), other.astype(np.float32)


def _sk_ssim(a: np.ndarray, b: np.ndarray, variant: str) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if variant == "gaussian":
        return structural_similarity(
            a64,
            b64,
            channel_axis=-1,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
    return structural_similarity(a64, b64, channel_axis=-1, win_size=7, data_range=2.0)


@pytest.mark.parametrize("shape", [(32, 40, 3), (17, 23, 3), (64, 48, 1)])
@pytest.mark.parametrize("variant", ["gaussian", "official"])
def test_ssim_matches_skimage(shape, variant):
    a, b = _pair(0, shape)
    got = float(metrics.ssim(a, b, variant=variant))
    want = _sk_ssim(a, b, variant)
    assert abs(got - want) <= 1e-4, (got, want)


@pytest.mark.parametrize("noise", [0.0, 0.01, 0.3])
def test_ssim_gaussian_range_of_qualities(noise):
    a, b = _pair(1, (40, 36, 3), noise=noise)
    got = float(metrics.ssim(a, b))
    assert abs(got - _sk_ssim(a, b, "gaussian")) <= 1e-4


def test_official_ssim_is_inflated():
    a, b = _pair(2, (48, 48, 3), noise=0.1)
    assert float(metrics.ssim(a, b, variant="official")) > float(metrics.ssim(a, b))


def test_psnr_matches_skimage_and_quantized():
    a, b = _pair(3, (30, 20, 3))
    got = float(metrics.psnr(a, b))
    want = peak_signal_noise_ratio(a.astype(np.float64), b.astype(np.float64), data_range=1.0)
    assert abs(got - want) <= 1e-4
    qa = np.round(a * 255).astype(np.uint8)
    qb = np.round(b * 255).astype(np.uint8)
    got_q = float(metrics.psnr(a, b, quantize=True))
    assert abs(got_q - peak_signal_noise_ratio(qa, qb, data_range=255)) <= 1e-4


def test_batched_equals_per_image_and_jits():
    a, b = _pair(4, (3, 24, 28, 3))
    for fn in (metrics.psnr, metrics.ssim, lambda x, y: metrics.ssim(x, y, variant="official")):
        batched = np.asarray(jax.jit(fn)(a, b))
        assert batched.shape == (3,)
        single = np.array([float(fn(a[i], b[i])) for i in range(3)])
        np.testing.assert_allclose(batched, single, atol=1e-6)
    want = [_sk_ssim(a[i], b[i], "gaussian") for i in range(3)]
    np.testing.assert_allclose(np.asarray(metrics.ssim(a, b)), want, atol=1e-4)


def test_abs_diff_stats():
    a, b = _pair(5, (2, 12, 10, 3))
    mean, var = metrics.mean_abs_diff_stats(a, b)
    d = np.abs(a.astype(np.float64) - b)
    np.testing.assert_allclose(np.asarray(mean), d.mean(axis=(1, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(np.asarray(var), d.var(axis=(1, 2, 3)), atol=1e-6)


@pytest.mark.parametrize(
    "a_shape,b_shape,dtype,match",
    [
        ((8, 8, 3), (8, 9, 3), np.float32, "same shape"),
        ((8, 8), (8, 8), np.float32, r"\(H, W, C\)"),
        ((16, 16, 3), (16, 16, 3), np.uint8, "float images"),
    ],
)
def test_bad_inputs(a_shape, b_shape, dtype, match):
    with pytest.raises(ValueError, match=match):
        metrics.psnr(np.zeros(a_shape, dtype), np.zeros(b_shape, dtype))


def test_ssim_too_small():
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(np.zeros((8, 20, 3), np.float32), np.zeros((8, 20, 3), np.float32))
    with pytest.raises(ValueError, match="variant"):
        metrics.ssim(np.zeros((8, 20, 3), np.float32), np.zeros((8, 20, 3), np.float32), variant="x")


def test_y_channel_scores_match_skimage_rgb2ycbcr():
    """BasicSR's test_y_channel: skimage's rgb2ycbcr luma (Y in [16, 235] for RGB in [0, 1])
    divided by 255, then PSNR / Gaussian SSIM after crop_border pixels per side."""
    from skimage.color import rgb2ycbcr

    a, b = _pair(3, (40, 36, 3))
    y_a = rgb2ycbcr(a.astype(np.float64))[..., 0] / 255.0
    y_b = rgb2ycbcr(b.astype(np.float64))[..., 0] / 255.0
    np.testing.assert_allclose(np.asarray(metrics.rgb_to_y(a))[..., 0], y_a, atol=1e-6)
    assert 16 / 255 <= float(np.min(metrics.rgb_to_y(np.zeros((4, 4, 3), np.float32)))) <= 16 / 255 + 1e-7
    border = 4
    ca, cb = y_a[border:-border, border:-border], y_b[border:-border, border:-border]
    got_psnr = float(
        metrics.psnr(metrics.crop_border(metrics.rgb_to_y(a), border), metrics.crop_border(metrics.rgb_to_y(b), border))
    )
    np.testing.assert_allclose(got_psnr, peak_signal_noise_ratio(ca, cb, data_range=1.0), atol=1e-4)
    got_ssim = float(
        metrics.ssim(metrics.crop_border(metrics.rgb_to_y(a), border), metrics.crop_border(metrics.rgb_to_y(b), border))
    )
    want_ssim = structural_similarity(
        ca, cb, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
    )
    np.testing.assert_allclose(got_ssim, want_ssim, atol=1e-5)
    with pytest.raises(ValueError, match="crop_border"):
        metrics.crop_border(a, 20)
