"""Figures of the paper: AFIM attention maps (Fig. 8), offset fields as flow-colour images,
and reblurring difference maps (Fig. 7). numpy + Pillow only (no matplotlib).

All image outputs are uint8 RGB (H, W, 3) arrays; :func:`save_png` writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from aspdc_jax.images import to_model
from aspdc_jax.inference import bucket_size, pad_to

__all__ = [
    "attention_strip",
    "colormap",
    "comparison",
    "diff_map",
    "flow_to_color",
    "model_maps",
    "offset_flow_images",
    "save_png",
]

# Viridis, sampled at 9 points (linear interpolation between them is visually faithful).
_VIRIDIS = np.array(
    [
        [68, 1, 84],
        [71, 44, 122],
        [59, 81, 139],
        [44, 113, 142],
        [33, 144, 141],
        [39, 173, 129],
        [92, 200, 99],
        [170, 220, 50],
        [253, 231, 37],
    ],
    np.float64,
)


def _titled(image: np.ndarray, title: str, height: int = 18) -> np.ndarray:
    """``image`` (H, W, 3) uint8 under a white strip with ``title`` in black."""
    from PIL import Image, ImageDraw  # noqa: PLC0415

    strip = Image.new("RGB", (image.shape[1], height), "white")
    ImageDraw.Draw(strip).text((4, 3), title, fill="black")
    return np.concatenate([np.asarray(strip), image], axis=0)


def _changed_window(blurred: np.ndarray, output: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` x ``size`` window where the output differs most
    from the input (mean absolute difference, on a grid of half-window steps)."""
    diff = np.abs(output.astype(np.float64) - blurred.astype(np.float64)).mean(axis=-1)
    h, w = diff.shape
    integral = np.pad(diff.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    best, corner = -1.0, (0, 0)
    step = max(size // 2, 1)
    for y in list(range(0, max(h - size, 0) + 1, step)) + [max(h - size, 0)]:
        for x in list(range(0, max(w - size, 0) + 1, step)) + [max(w - size, 0)]:
            y1, x1 = min(y + size, h), min(x + size, w)
            total = integral[y1, x1] - integral[y, x1] - integral[y1, x] + integral[y, x]
            if total > best:
                best, corner = total, (y, x)
    return corner


def comparison(blurred: np.ndarray, output: np.ndarray, sharp: np.ndarray | None) -> np.ndarray:
    """The comparison figure: ``blurred | deblurred | sharp``, each titled with its PSNR
    against the sharp image, and below it the same three panels of the window where the
    output changed most, zoomed 2x (nearest neighbour, so pixels stay visible).

    All inputs uint8 (H, W, 3); ``sharp`` may be None (no PSNR, two panels). Returns uint8.
    """
    from aspdc_jax.evaluation.metrics import psnr  # noqa: PLC0415

    panels = [("blurred", blurred), ("deblurred", output)] + ([("sharp", sharp)] if sharp is not None else [])

    def title(name: str, image: np.ndarray) -> str:
        if sharp is None or name == "sharp":
            return name
        return f"{name}  {float(psnr(image.astype(np.float32) / 255.0, sharp.astype(np.float32) / 255.0)):.2f} dB"

    gap = np.full((blurred.shape[0] + 18, 4, 3), 255, np.uint8)
    top = [x for name, im in panels for x in (_titled(im, title(name, im)), gap)][:-1]
    size = max(8, min(blurred.shape[:2]) // 3)
    y, x = _changed_window(blurred, output, size)
    zooms = [np.repeat(np.repeat(im[y : y + size, x : x + size], 2, axis=0), 2, axis=1) for _, im in panels]
    zgap = np.full((zooms[0].shape[0] + 18, 4, 3), 255, np.uint8)
    label = f"2x zoom at ({y}, {x}): most changed"
    bottom = [z for i, zoom in enumerate(zooms) for z in (_titled(zoom, label if i == 0 else ""), zgap)][:-1]
    rows = [np.concatenate(top, axis=1), np.concatenate(bottom, axis=1)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate([rows[0], np.full((6, width, 3), 255, np.uint8), rows[1]], axis=0)


def colormap(values: np.ndarray) -> np.ndarray:
    """Maps values in [0, 1] (any shape) to viridis uint8 RGB (shape + (3,)); clips."""
    v = np.clip(np.nan_to_num(np.asarray(values, np.float64)), 0.0, 1.0) * (len(_VIRIDIS) - 1)
    lo = np.floor(v).astype(int)
    hi = np.minimum(lo + 1, len(_VIRIDIS) - 1)
    t = (v - lo)[..., None]
    return np.round(_VIRIDIS[lo] * (1 - t) + _VIRIDIS[hi] * t).astype(np.uint8)


def _color_wheel() -> np.ndarray:
    """Baker et al. (Middlebury) flow colour wheel, (55, 3) in [0, 255]."""
    ry, yg, gc, cb, bm, mr = 15, 6, 4, 11, 13, 6
    wheel = []
    for n, start, end in (
        (ry, (255, 0, 0), (255, 255, 0)),
        (yg, (255, 255, 0), (0, 255, 0)),
        (gc, (0, 255, 0), (0, 255, 255)),
        (cb, (0, 255, 255), (0, 0, 255)),
        (bm, (0, 0, 255), (255, 0, 255)),
        (mr, (255, 0, 255), (255, 0, 0)),
    ):
        t = np.arange(n)[:, None] / n
        wheel.append(np.array(start) * (1 - t) + np.array(end) * t)
    return np.concatenate(wheel)


def flow_to_color(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """Flow field (H, W, 2) as ``(dy, dx)`` (the DCN offset order) -> uint8 (H, W, 3).

    Hue is the direction (Middlebury colour wheel), saturation the magnitude relative to
    ``max_magnitude`` (default: the field's own maximum); zero motion is white.
    """
    flow = np.asarray(flow, np.float64)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"flow_to_color: expected (H, W, 2) (dy, dx), got {flow.shape}")
    dy, dx = flow[..., 0], flow[..., 1]
    mag = np.hypot(dx, dy)
    if max_magnitude is None:
        max_magnitude = float(mag.max(initial=0.0))
    rad = mag / max(max_magnitude, 1e-8)
    wheel = _color_wheel()
    ncols = len(wheel)
    angle = np.arctan2(-dy, -dx) / np.pi  # in [-1, 1]
    fk = (angle + 1) / 2 * (ncols - 1)
    k0 = np.floor(fk).astype(int)
    k1 = (k0 + 1) % ncols
    f = (fk - k0)[..., None]
    col = ((1 - f) * wheel[k0] + f * wheel[k1]) / 255.0
    r = np.clip(rad, 0, 1)[..., None]
    col = 1 - r * (1 - col)  # desaturate towards white for small motion
    return np.round(col * 255).astype(np.uint8)


def _upsample(maps: np.ndarray, factor: int, height: int, width: int) -> np.ndarray:
    up = np.repeat(np.repeat(maps, factor, axis=0), factor, axis=1)
    return up[:height, :width]


def attention_strip(
    attention: np.ndarray,
    *,
    factor: int = 1,
    height: int | None = None,
    width: int | None = None,
    gap: int = 4,
) -> np.ndarray:
    """AFIM attention (h, w, n) in [0, 1] -> uint8 strip of n viridis maps side by side
    (each nearest-upsampled by ``factor`` and cropped to ``height x width``)."""
    attention = np.asarray(attention, np.float32)
    h, w, n = attention.shape
    height = height or h * factor
    width = width or w * factor
    panels = [colormap(_upsample(attention[..., k], factor, height, width)) for k in range(n)]
    spacer = np.full((height, gap, 3), 255, np.uint8)
    out = [panels[0]]
    for p in panels[1:]:
        out += [spacer, p]
    return np.concatenate(out, axis=1)


def offset_flow_images(
    offsets: np.ndarray, *, factor: int = 1, height: int | None = None, width: int | None = None
) -> list[np.ndarray]:
    """Offsets (h, w, 18 * n_branches) of one ASPDC module -> one flow-colour uint8 image per
    deformable branch: the mean (dy, dx) over the 9 taps, on a colour scale shared by all
    branches (so magnitudes compare across dilations)."""
    offsets = np.asarray(offsets, np.float32)
    h, w, c = offsets.shape
    if c % 18:
        raise ValueError(f"offset_flow_images: channels must be a multiple of 18, got {c}")
    flows = [offsets[..., 18 * b : 18 * (b + 1)].reshape(h, w, 9, 2).mean(axis=2) for b in range(c // 18)]
    peak = max((float(np.hypot(f[..., 0], f[..., 1]).max(initial=0.0)) for f in flows), default=0.0)
    height = height or h * factor
    width = width or w * factor
    return [flow_to_color(_upsample(f, factor, height, width), max_magnitude=peak) for f in flows]


def diff_map(a: np.ndarray, b: np.ndarray, *, scale: float = 0.1) -> np.ndarray:
    """``|a - b|`` of two [0, 1] float (H, W, 3) images, averaged over channels, as a viridis
    uint8 map where ``scale`` (default 0.1 = 25.5 levels) and above is the top colour."""
    d = np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean(axis=-1)
    return colormap(d / scale)


def model_maps(module: Any, params: Any, image: np.ndarray) -> dict[str, Any]:
    """Runs DeblurNet on one uint8 (H, W, 3) image and returns the last ASPDC module's maps.

    Returns:
      dict with ``attention`` float32 (ceil(H/4), ceil(W/4), n_branches) in [0, 1],
      ``offsets`` float32 (ceil(H/4), ceil(W/4), 18 * n_deformable) (row/col offsets in
      quarter-resolution pixels) or None, and ``factor`` 4.
    """
    h, w = image.shape[:2]
    hb, wb = bucket_size(h, "exact", 4), bucket_size(w, "exact", 4)
    x = to_model(pad_to(np.asarray(image), hb, wb)[None])
    out = _apply_jit(module)({"params": params}, x)
    hq, wq = -(-h // 4), -(-w // 4)
    attention = np.asarray(out.attention[-1][0, :hq, :wq], np.float32)
    offsets = out.offsets[-1] if len(out.offsets) else None
    if offsets is not None:
        offsets = np.asarray(offsets[0, :hq, :wq], np.float32)
    return {"attention": attention, "offsets": offsets, "factor": 4}


_APPLY_CACHE: dict[int, tuple[Any, Any]] = {}


def _apply_jit(module: Any):
    """One jitted ``module.apply`` per module (a bound method is a new function each time)."""
    entry = _APPLY_CACHE.get(id(module))
    if entry is None or entry[0] is not module:
        entry = (module, jax.jit(module.apply))
        _APPLY_CACHE[id(module)] = entry
    return entry[1]


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Writes a uint8 (H, W, 3) array as PNG (creating folders)."""
    from PIL import Image  # noqa: PLC0415

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image, np.uint8)).save(path)
