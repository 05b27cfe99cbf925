"""Figures of the paper: AFIM attention maps (Fig. 8), offset fields as flow-colour images,
and reblurring difference maps (Fig. 7). numpy + Pillow only (no matplotlib).

All image outputs are uint8 RGB (H, W, 3) arrays; :func:`save_png` writes them.

:func:`attention_figure`, :func:`offsets_figure` and :func:`reblur_diff_figure` are the
readable versions that ``evaluate.py --figures`` writes: a title, one labelled panel per
branch (or per difference) with its value range, and a colour bar with ticks (the offsets
get a colour-wheel legend with the largest magnitude instead). Each returns the figure and
a JSON-able ``info`` dict (the colour scale, every panel's min / max / mean, where the
colour bar lies in the image) that :func:`save_figure` writes next to the PNG.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from aspdc_jax.images import reflect_pad, to_model, uint8_to_unit
from aspdc_jax.models.aspdc import BRANCH_DILATIONS

__all__ = [
    "attention_figure",
    "attention_strip",
    "branch_labels",
    "colormap",
    "comparison",
    "diff_map",
    "flow_to_color",
    "model_maps",
    "offset_flow_images",
    "offsets_figure",
    "reblur_diff_figure",
    "save_figure",
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
        return f"{name}  {float(psnr(uint8_to_unit(image), uint8_to_unit(sharp))):.2f} dB"

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


def _mean_flows(offsets: np.ndarray) -> list[np.ndarray]:
    """Offsets (h, w, 18 * n) -> per deformable branch the mean (dy, dx) over its 9 taps,
    float32 (h, w, 2)."""
    offsets = np.asarray(offsets, np.float32)
    h, w, c = offsets.shape
    if c % 18:
        raise ValueError(f"offset_flow_images: channels must be a multiple of 18, got {c}")
    return [offsets[..., 18 * b : 18 * (b + 1)].reshape(h, w, 9, 2).mean(axis=2) for b in range(c // 18)]


def offset_flow_images(
    offsets: np.ndarray, *, factor: int = 1, height: int | None = None, width: int | None = None
) -> list[np.ndarray]:
    """Offsets (h, w, 18 * n_branches) of one ASPDC module -> one flow-colour uint8 image per
    deformable branch: the mean (dy, dx) over the 9 taps, on a colour scale shared by all
    branches (so magnitudes compare across dilations)."""
    flows = _mean_flows(offsets)
    h, w = flows[0].shape[:2] if flows else (0, 0)
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
    x = to_model(reflect_pad(np.asarray(image), 4)[None])
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


# ----------------------------------------------------------------------------- readable figures
# A figure is a title over a row of captioned panels and a legend (a colour bar, or the
# flow colour wheel); boxes are [x0, y0, x1, y1] pixel coordinates, x1 / y1 exclusive.


def _font(size: int) -> Any:
    """Pillow's built-in font at ``size`` px (its fixed bitmap font on Pillow < 10.1)."""
    from PIL import ImageFont  # noqa: PLC0415

    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _font_size(panel_height: int) -> int:
    """Text size for panels ``panel_height`` px high: 11 px up to 28 px (for 720p and up)."""
    return int(np.clip(round(panel_height / 30), 11, 28))


def _line_height(font: Any) -> int:
    return int(font.getbbox("Ag|")[3]) + 3


def _text_width(font: Any, text: str) -> int:
    return int(math.ceil(font.getlength(text)))


def _fmt(value: float) -> str:
    return f"{float(value):.3g}"


def _text_block(lines: Sequence[str], width: int, font: Any, *, center: bool = False) -> np.ndarray:
    """White uint8 (len(lines) * line height, width, 3) block with ``lines`` in black."""
    from PIL import Image, ImageDraw  # noqa: PLC0415

    lh = _line_height(font)
    image = Image.new("RGB", (max(width, 1), lh * max(len(lines), 1)), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        x = max((width - _text_width(font, line)) // 2, 0) if center else 0
        draw.text((x, i * lh), line, fill="black", font=font)
    return np.asarray(image)


def _wrap(text: str, font: Any, width: int) -> list[str]:
    """``text`` broken at spaces into lines at most ``width`` px wide (a longer word stays whole)."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and _text_width(font, trial) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + ([line] if line else [])


def _place(canvas: np.ndarray, image: np.ndarray, y: int, x: int) -> list[int]:
    """Copies ``image`` into ``canvas`` with its top-left corner at (y, x); returns its box."""
    h, w = image.shape[:2]
    canvas[y : y + h, x : x + w] = image
    return [x, y, x + w, y + h]


Column = tuple[Sequence[str], np.ndarray]  # (caption lines, uint8 (H, W, 3) image)


def _compose(title: str, panels: Sequence[Column], legend: Column, legend_box: list[int], size: int):
    """The figure: ``title`` (wrapped) over the ``panels`` side by side, each under its
    caption, and the ``legend`` column on the right; ``legend_box`` is the box of its scale
    inside the legend image.

    Returns (uint8 figure, {"panels": [box per panel], "legend": the scale's box in the figure}).
    """
    font = _font(size)
    lh, pad = _line_height(font), max(4, size // 2)
    columns = [*panels, legend]
    caption_lines = max(len(cap) for cap, _ in columns)
    widths = [max([img.shape[1]] + [_text_width(font, t) for t in cap]) for cap, img in columns]
    row_width = sum(widths) + pad * (len(columns) - 1)
    title_lines = _wrap(title, font, max(row_width, 36 * size))
    width = max([row_width] + [_text_width(font, t) for t in title_lines]) + 2 * pad
    top = pad + lh * len(title_lines) + pad
    height = top + lh * caption_lines + max(img.shape[0] for _, img in columns) + pad
    canvas = np.full((height, width, 3), 255, np.uint8)
    _place(canvas, _text_block(title_lines, width - 2 * pad, font), pad, pad)
    x, boxes = pad, []
    for (caption, image), w in zip(columns, widths):
        _place(canvas, _text_block(caption, w, font, center=True), top, x)
        boxes.append(_place(canvas, image, top + lh * caption_lines, x + (w - image.shape[1]) // 2))
        x += w + pad
    lx, ly = boxes[-1][:2]
    x0, y0, x1, y1 = legend_box
    return canvas, {"panels": boxes[:-1], "legend": [lx + x0, ly + y0, lx + x1, ly + y1]}


def _colorbar(vmin: float, vmax: float, height: int, font: Any, *, clipped: bool = False):
    """Vertical viridis bar, ``vmax`` at the top, with ticks at ``vmin``, the middle and
    ``vmax`` (read "<vmax>+" when ``clipped``: larger values take the top colour).

    Returns (uint8 image, the bar's box in it); the bar's row r (from its top, n rows) is
    ``colormap(1 - r / (n - 1))``.
    """
    from PIL import Image, ImageDraw  # noqa: PLC0415

    lh = _line_height(font)
    bar_w, bar_h, margin, tick = max(10, lh), max(height, 4 * lh), lh // 2 + 1, max(3, lh // 3)
    ticks = [(0.0, vmin), (0.5, (vmin + vmax) / 2), (1.0, vmax)]
    labels = [_fmt(v) for _, v in ticks]
    labels[-1] += "+" if clipped else ""
    label_w = max(_text_width(font, t) for t in labels)
    image = Image.new("RGB", (bar_w + tick + 2 + label_w, bar_h + 2 * margin), "white")
    bar = np.repeat(colormap(np.linspace(1.0, 0.0, bar_h))[:, None, :], bar_w, axis=1)
    image.paste(Image.fromarray(bar), (0, margin))
    draw = ImageDraw.Draw(image)
    for (t, _), text in zip(ticks, labels):
        y = margin + round((1 - t) * (bar_h - 1))
        draw.line([(bar_w, y), (bar_w + tick, y)], fill="black")
        draw.text((bar_w + tick + 2, y - lh // 2), text, fill="black", font=font)
    return np.asarray(image), [0, margin, bar_w, margin + bar_h]


def _stats(values: np.ndarray) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    return {"min": float(v.min()), "max": float(v.max()), "mean": float(v.mean())}


def _scaled_figure(
    title: str,
    panels: Sequence[Column],
    stats: Sequence[dict[str, Any]],
    vmin: float,
    vmax: float,
    *,
    quantity: str,
    clipped: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """``panels`` (viridis images of values scaled from [vmin, vmax] to [0, 1]) with a
    colour bar captioned ``quantity``; returns (uint8 figure, info)."""
    size = _font_size(max(img.shape[0] for _, img in panels))
    bar, box = _colorbar(vmin, vmax, max(img.shape[0] for _, img in panels), _font(size), clipped=clipped)
    image, layout = _compose(title, panels, ([quantity], bar), box, size)
    info = {
        "title": title,
        "colormap": "viridis",
        "vmin": float(vmin),
        "vmax": float(vmax),
        "clipped_above": bool(clipped),
        "panels": [dict(s, box=b) for s, b in zip(stats, layout["panels"])],
        "colorbar": {"box": layout["legend"], "orientation": "vertical", "bottom": float(vmin), "top": float(vmax)},
    }
    return image, info


def branch_labels(branches: Sequence[str], branch_repeat: int = 1) -> list[str]:
    """One label per ASPDC branch (the attention channels' order, `aspdc.branch_names`):
    ``"static: no offsets"``, ``"d2: dilation 2"``; repeated branches ``"d2 #1: dilation 2"``."""
    labels = []
    for branch in branches:
        dilation = BRANCH_DILATIONS.get(branch, 1)
        what = f"dilation {dilation}" if dilation else "no offsets"
        for k in range(branch_repeat):
            labels.append(f"{branch}{f' #{k + 1}' if branch_repeat > 1 else ''}: {what}")
    return labels


def attention_figure(
    attention: np.ndarray,
    labels: Sequence[str],
    *,
    factor: int = 1,
    height: int | None = None,
    width: int | None = None,
    title: str = "",
) -> tuple[np.ndarray, dict[str, Any]]:
    """AFIM attention float (h, w, n) in [0, 1] (a softmax over the n branches) -> figure.

    One panel per branch (``labels``, e.g. `branch_labels`), nearest-upsampled by ``factor``
    and cropped to ``height x width``, captioned with that branch's own min .. max; all on
    one viridis scale from the smallest to the largest weight of every panel (the colour
    bar's ends, ``info["vmin"]`` / ``info["vmax"]``). Returns (uint8 (H, W, 3), info).
    """
    attention = np.asarray(attention, np.float32)
    h, w, n = attention.shape
    if len(labels) != n:
        raise ValueError(f"attention_figure: {n} attention maps but {len(labels)} labels")
    height, width = height or h * factor, width or w * factor
    lo, hi = float(attention.min()), float(attention.max())
    span = max(hi - lo, 1e-6)
    panels, stats = [], []
    for k, label in enumerate(labels):
        a = attention[..., k]
        stats.append({"label": label, **_stats(a)})
        caption = [label, f"{_fmt(a.min())} .. {_fmt(a.max())}"]
        panels.append((caption, colormap(_upsample((a - lo) / span, factor, height, width))))
    return _scaled_figure(title, panels, stats, lo, lo + span, quantity="weight")


def _flow_wheel(size: int) -> np.ndarray:
    """uint8 (size, size, 3) colour wheel: each point has the colour of a motion from the
    centre to it, saturated at the rim (= the largest magnitude); white outside."""
    r = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size]
    flow = np.stack([(yy - r) / r, (xx - r) / r], axis=-1)
    wheel = flow_to_color(flow, max_magnitude=1.0)
    wheel[np.hypot(flow[..., 0], flow[..., 1]) > 1.0] = 255
    return wheel


def offsets_figure(
    offsets: np.ndarray,
    labels: Sequence[str],
    *,
    factor: int = 1,
    height: int | None = None,
    width: int | None = None,
    title: str = "",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Offsets float (h, w, 18 * n) of one ASPDC module (quarter-resolution px) -> figure.

    One panel per deformable branch (``labels``): `offset_flow_images` (the mean (dy, dx)
    over the 9 taps; hue = direction, saturation = magnitude on one scale for all
    branches), captioned with the branch's largest magnitude; the legend is the colour
    wheel, whose rim is the largest magnitude of all (``info["max_magnitude"]``).
    Returns (uint8 (H, W, 3), info).
    """
    flows = _mean_flows(offsets)
    if not flows:
        raise ValueError("offsets_figure: no deformable branch (offsets with 0 channels)")
    if len(labels) != len(flows):
        raise ValueError(f"offsets_figure: {len(flows)} deformable branches but {len(labels)} labels")
    images = offset_flow_images(offsets, factor=factor, height=height, width=width)
    mags = [np.hypot(f[..., 0], f[..., 1]) for f in flows]
    peak = max((float(m.max(initial=0.0)) for m in mags), default=0.0)
    stats: list[dict[str, Any]] = [
        {"label": label, "max_magnitude": float(m.max(initial=0.0)), "mean_magnitude": float(m.mean())}
        for label, m in zip(labels, mags)
    ]
    panels: list[Column] = [([s["label"], f"max {_fmt(s['max_magnitude'])} px"], img) for s, img in zip(stats, images)]
    size = _font_size(max(img.shape[0] for img in images))
    side = int(np.clip(images[0].shape[0], 48, 160))
    legend = (["hue: direction", f"rim: {_fmt(peak)} px"], _flow_wheel(side))
    image, layout = _compose(title, panels, legend, [0, 0, side, side], size)
    info = {
        "title": title,
        "max_magnitude": peak,
        "units": "pixels at quarter resolution (x4 in input pixels)",
        "panels": [dict(s, box=b) for s, b in zip(stats, layout["panels"])],
        "wheel": {"box": layout["legend"], "rim_magnitude": peak},
    }
    return image, info


def reblur_diff_figure(
    sharp: np.ndarray, reblurred: np.ndarray, blurred: np.ndarray, *, scale: float = 0.1, title: str = ""
) -> tuple[np.ndarray, dict[str, Any]]:
    """Fig. 7: ``|sharp - blurred|`` and ``|reblurred - blurred|`` side by side.

    Inputs float (H, W, 3) in [0, 1]; each difference is averaged over the channels and
    drawn on one viridis scale 0 .. ``scale`` (default 0.1 = 25.5 grey levels; larger values
    take the top colour and the colour bar's top tick reads "0.1+"), captioned with its own
    max and mean. Returns (uint8 (H, W, 3), info).
    """
    blurred = np.asarray(blurred, np.float32)
    diffs = {
        "|sharp - blurred|": np.abs(np.asarray(sharp, np.float32) - blurred).mean(axis=-1),
        "|reblurred - blurred|": np.abs(np.asarray(reblurred, np.float32) - blurred).mean(axis=-1),
    }
    panels = [
        ([label, f"max {_fmt(d.max())}, mean {_fmt(d.mean())}"], colormap(d / scale)) for label, d in diffs.items()
    ]
    stats: list[dict[str, Any]] = [{"label": label, **_stats(d)} for label, d in diffs.items()]
    clipped = any(s["max"] > scale for s in stats)
    return _scaled_figure(title, panels, stats, 0.0, scale, quantity="|diff|", clipped=clipped)


def save_figure(path: str | Path, image: np.ndarray, info: dict[str, Any]) -> None:
    """Writes the figure ``image`` (uint8 (H, W, 3)) as PNG and ``info`` next to it (.json)."""
    path = Path(path)
    save_png(path, image)
    path.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
