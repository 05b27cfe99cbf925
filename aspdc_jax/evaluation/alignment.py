"""RealBlur's evaluation protocol: ECC homography alignment, then masked PSNR / SSIM.

The RealBlur benchmark (Rim et al., ECCV 2020) scores a deblurred image only after aligning
it to the ground truth, because its pairs are captured with two cameras. The official script
(``evaluate_RealBlur.py``) does, on [0, 1] float RGB images:

1. intensity matching ``zs = (sum(x * z) / sum(z * z)) * z`` (z: prediction, x: truth);
2. ``cv2.findTransformECC`` with ``MOTION_HOMOGRAPHY`` on the grayscale images
   (100 iterations, Gaussian pre-smoothing of size 5);
3. warps ``zs`` with that homography (cubic, reflected borders) and builds the mask of
   pixels that came from inside the image; multiplies both images by the mask;
4. PSNR with the MSE over the masked pixels; SSIM (gaussian variant) whose map is
   multiplied by the mask and averaged over the mask, the 5-pixel border excluded.

This module re-implements it with numpy / scipy (no OpenCV dependency). The ECC iteration
follows OpenCV's ``findTransformECC`` (Evangelidis and Psarakis, 2008); interpolation is
scipy's (cubic spline instead of OpenCV's cubic convolution), so scores can differ from the
official script in the third decimal of a dB. Slow-ish: ~100 numpy iterations per image.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from aspdc_jax.images import psnr_from_mse

__all__ = ["ecc_homography", "realblur_scores", "warp_image"]

_GRAY = np.array([0.299, 0.587, 0.114])  # cv2.COLOR_RGB2GRAY weights


def _warp_coords(warp: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Source (row, col) for each target pixel: ``src = W @ [x, y, 1]`` (inverse map)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    den = warp[2, 0] * xx + warp[2, 1] * yy + warp[2, 2]
    xs = (warp[0, 0] * xx + warp[0, 1] * yy + warp[0, 2]) / den
    ys = (warp[1, 0] * xx + warp[1, 1] * yy + warp[1, 2]) / den
    return ys, xs


def warp_image(image: np.ndarray, warp: np.ndarray, order: int = 1, mode: str = "mirror") -> np.ndarray:
    """Warps (H, W) or (H, W, C) ``image`` so that ``out(x) = image(W x)``."""
    h, w = image.shape[:2]
    ys, xs = _warp_coords(warp, h, w)
    if image.ndim == 2:
        return ndimage.map_coordinates(image, [ys, xs], order=order, mode=mode)
    return np.stack(
        [ndimage.map_coordinates(image[..., c], [ys, xs], order=order, mode=mode) for c in range(image.shape[-1])],
        axis=-1,
    )


def ecc_homography(template: np.ndarray, image: np.ndarray, iterations: int = 100) -> np.ndarray:
    """ECC maximisation (OpenCV ``findTransformECC``, MOTION_HOMOGRAPHY).

    Args:
      template: float (H, W) grayscale reference (the ground truth).
      image: float (H, W) grayscale image to align (the prediction).
      iterations: fixed number of iterations (the RealBlur script: 100, eps 0).

    Returns:
      float64 (3, 3) warp with ``image(W x) ~ template(x)``.
    """
    sigma = 0.3 * ((5 - 1) * 0.5 - 1) + 0.8  # OpenCV's sigma for a 5x5 Gaussian
    template = ndimage.gaussian_filter(template.astype(np.float64), sigma, truncate=2.0 / sigma)
    image = ndimage.gaussian_filter(image.astype(np.float64), sigma, truncate=2.0 / sigma)
    grad_x = ndimage.correlate1d(image, [-0.5, 0.0, 0.5], axis=1, mode="nearest")
    grad_y = ndimage.correlate1d(image, [-0.5, 0.0, 0.5], axis=0, mode="nearest")
    h, w = template.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    warp = np.eye(3)
    for _ in range(iterations):
        ys, xs = _warp_coords(warp, h, w)
        coords = [ys, xs]
        valid = (ys >= 0) & (ys <= h - 1) & (xs >= 0) & (xs <= w - 1)
        if valid.sum() < 16:
            raise ValueError("ECC alignment diverged (the warp left the image)")
        img_w = ndimage.map_coordinates(image, coords, order=1, mode="nearest")[valid]
        gx = ndimage.map_coordinates(grad_x, coords, order=1, mode="nearest")[valid]
        gy = ndimage.map_coordinates(grad_y, coords, order=1, mode="nearest")[valid]
        tmpl = template[valid]
        x, y = xx[valid], yy[valid]
        den = warp[2, 0] * x + warp[2, 1] * y + 1.0
        hat_x = -(warp[0, 0] * x + warp[0, 1] * y + warp[0, 2]) / den
        hat_y = -(warp[1, 0] * x + warp[1, 1] * y + warp[1, 2]) / den
        gxd, gyd = gx / den, gy / den
        temp = hat_x * gxd + hat_y * gyd
        # Parameters in row-major order of the warp's first 8 entries.
        jac = np.stack([gxd * x, gxd * y, gxd, gyd * x, gyd * y, gyd, temp * x, temp * y], axis=1)
        img_zm = img_w - img_w.mean()
        tmpl_zm = tmpl - tmpl.mean()
        hessian_inv = np.linalg.pinv(jac.T @ jac)
        img_proj = jac.T @ img_zm
        tmpl_proj = jac.T @ tmpl_zm
        img_proj_h = hessian_inv @ img_proj
        lambda_n = img_zm @ img_zm - img_proj @ img_proj_h
        lambda_d = tmpl_zm @ img_zm - tmpl_proj @ img_proj_h
        if lambda_d <= 0:
            raise ValueError("ECC alignment failed: the images are not correlated enough")
        error = (lambda_n / lambda_d) * tmpl_zm - img_zm
        delta = hessian_inv @ (jac.T @ error)
        warp = warp + np.append(delta, 0.0).reshape(3, 3)
    return warp


def realblur_scores(prediction: np.ndarray, truth: np.ndarray, iterations: int = 100) -> dict[str, float]:
    """The RealBlur protocol's PSNR / SSIM of a [0, 1] float (H, W, 3) prediction.

    Returns:
      ``{"psnr", "ssim"}`` after alignment (see the module docstring).
    """
    from skimage.metrics import structural_similarity  # noqa: PLC0415

    z = np.asarray(prediction, np.float64)
    x = np.asarray(truth, np.float64)
    zs = (np.sum(x * z) / max(np.sum(z * z), 1e-12)) * z
    warp = ecc_homography(x @ _GRAY, zs @ _GRAY, iterations)
    h, w = x.shape[:2]
    zr = warp_image(zs, warp, order=3, mode="mirror")
    ys, xs = _warp_coords(warp, h, w)
    ys, xs = np.round(ys), np.round(xs)
    mask = ((ys >= 0) & (ys <= h - 1) & (xs >= 0) & (xs <= w - 1)).astype(np.float64)
    cr = np.repeat(mask[..., None], 3, axis=-1)
    zr, xr = zr * cr, x * cr
    mse = np.sum((xr - zr) ** 2) / np.sum(cr)
    psnr = psnr_from_mse(mse)
    _, ssim_map = structural_similarity(
        xr,
        zr,
        channel_axis=-1,
        gaussian_weights=True,
        use_sample_covariance=False,
        data_range=1.0,
        full=True,
    )
    pad = 5
    s = (ssim_map * cr)[pad:-pad, pad:-pad]
    c = cr[pad:-pad, pad:-pad]
    ssim = float(np.mean(s.sum(axis=(0, 1)) / np.maximum(c.sum(axis=(0, 1)), 1e-12)))
    return {"psnr": psnr, "ssim": ssim}
