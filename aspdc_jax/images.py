"""Images: reading and writing files, the conversions between uint8 images and the
models' NHWC float range [-1, 1], reflect-padding, and the host-side PSNR.

The conversions (one of each, used by training, inference and evaluation alike):

* `to_model`: uint8 [0, 255] -> model range [-1, 1] (``u8 / 127.5 - 1``);
* `to_pixels`: model range -> float [0, 255], clipped, not rounded (``(y + 1) * 127.5``);
* `quantize`: float [0, 255] -> uint8, rounded half to even; `to_uint8` = both;
* `to_unit`: model range -> [0, 1], clipped; `uint8_to_unit`: uint8 -> [0, 1] (the metrics').

`read_image` is the one image reader of the package (the
deblur CLI, the dataset builders and the synthetic photos use it). It reads any
Pillow-readable image as uint8 RGB and converts what it must, listing each conversion:

* grayscale, palette and CMYK images are converted to RGB; 16-bit grayscale is scaled to
  8 bit by ``round(v / 257)`` (32-bit integer grayscale too, when its values lie in
  0..65535; other values are refused); 16-bit RGB(A) keeps the high byte (``v >> 8``, as
  Pillow decodes it; within 1 of ``round(v / 257)``); float images are scaled to 8 bit;
* an alpha channel is set aside (``LoadedImage.alpha``); EXIF orientation is applied;
* a file that is not an image or is truncated raises `ImageReadError` naming the file.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "LoadedImage",
    "psnr_from_mse",
    "psnr_numpy",
    "quantize",
    "read_image",
    "reflect_pad",
    "to_model",
    "to_pixels",
    "to_uint8",
    "to_unit",
    "uint8_to_unit",
    "write_image",
]

#: File suffixes treated as images when a folder is searched (lower case).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"})


def to_model(images: Any, dtype: Any = jnp.float32) -> jax.Array:
    """uint8 images (..., H, W, 3) in [0, 255] -> float in [-1, 1] (``u8 / 127.5 - 1``),
    computed in ``dtype``."""
    return jnp.asarray(images).astype(dtype) / 127.5 - 1.0


def to_pixels(images: jax.Array) -> jax.Array:
    """Model-range images in [-1, 1] -> float32 in [0, 255], clipped, not rounded
    (``clip((y + 1) * 127.5, 0, 255)``): what the deblurring forward returns."""
    return jnp.clip((images.astype(jnp.float32) + 1.0) * 127.5, 0.0, 255.0)


def quantize(pixels: Any) -> Any:
    """Float images in [0, 255] -> uint8, rounded half to even; a NumPy array stays on the
    host (NumPy in, NumPy out), a JAX array (also traced) gives a JAX array."""
    if isinstance(pixels, np.ndarray):
        return np.round(pixels).astype(np.uint8)
    return jnp.round(pixels).astype(jnp.uint8)


def to_uint8(images: jax.Array) -> jax.Array:
    """Model-range float images in [-1, 1] -> uint8: ``quantize(to_pixels(y))``."""
    return quantize(to_pixels(images))


def to_unit(images: jax.Array) -> jax.Array:
    """Model-range images in [-1, 1] -> [0, 1], clipped (the range the metrics use)."""
    return jnp.clip((images + 1.0) / 2.0, 0.0, 1.0)


def uint8_to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 images in [0, 255] -> float32 in [0, 1] (``u8 / 255``), on the host."""
    return np.asarray(images, np.float32) / np.float32(255.0)


def _reflect_index(xp: Any, target: Any, size: Any) -> Any:
    """Indices ``0..target-1`` into an axis of ``size`` that reproduce ``np.pad(mode="reflect")``
    (mirror without repeating the edge, again and again when the pad exceeds ``size - 1``;
    a 1-pixel side repeats). ``target`` and ``size`` may be symbolic (``jax.export``)."""
    period = 2 * (size - 1)
    i = xp.arange(target) % xp.maximum(period, 1)
    return xp.where(i < size, i, period - i)


def reflect_pad(images: Any, multiple: int = 1, *, height: int | None = None, width: int | None = None) -> Any:
    """Reflect-pads (..., H, W, C) images at the bottom/right, as ``np.pad(mode="reflect")``
    does (mirrored again and again when the pad exceeds the side; a 1-pixel side repeats),
    to ``height`` x ``width`` (default: H x W), each rounded up to a multiple of ``multiple``.

    Any dtype and range (the values are only copied). A NumPy array is padded on the host
    (NumPy out); a JAX array, also traced, gives a JAX array, and its H and W may be
    symbolic dimensions (``jax.export``).

    Raises:
      ValueError: ``height`` or ``width`` smaller than the image's.
    """
    xp = np if isinstance(images, np.ndarray) else jnp
    for axis, wanted in ((images.ndim - 3, height), (images.ndim - 2, width)):
        size = images.shape[axis]
        if wanted is not None and wanted < size:
            raise ValueError(f"cannot pad {images.shape[-3]}x{images.shape[-2]} down to {height}x{width}")
        target = size if wanted is None else wanted
        target = (target + multiple - 1) // multiple * multiple
        if target == size:  # False when it cannot be proven for symbolic sizes: pad anyway
            continue
        images = xp.take(images, _reflect_index(xp, target, size), axis=axis, mode="clip")
    return images


def psnr_from_mse(mse: float, peak: float = 1.0) -> float:
    """``10 log10(peak^2 / mse)`` in dB, ``inf`` for ``mse == 0``: the host-side PSNR formula
    (`psnr_numpy`, RealBlur's masked PSNR)."""
    return float("inf") if mse == 0 else float(10.0 * np.log10(peak * peak / mse))


def psnr_numpy(a: Any, b: Any, peak: float = 1.0) -> float:
    """PSNR of two same-shape images on the host, in float64 (``peak`` 1 for [0, 1] images,
    255 for uint8 or [0, 255] floats); ``inf`` for identical images. The jittable metrics
    with their protocols are `aspdc_jax.evaluation.metrics`."""
    err = float(np.mean(np.square(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
    return psnr_from_mse(err, peak)


class ImageReadError(ValueError):
    """A file could not be read as an image (not an image, truncated, unsupported)."""


@dataclasses.dataclass
class LoadedImage:
    """An input converted for the network.

    Attributes:
      rgb: uint8 (H, W, 3).
      alpha: uint8 (H, W) alpha channel to put back on the output, or None.
      notes: human-readable conversions that were applied (empty if none).
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    notes: list[str]


def _gray16_to_uint8(values: np.ndarray, mode: str, path: object) -> np.ndarray:
    """16-bit gray values -> uint8 by ``round(v / 257)`` (65535 -> 255), as the dataset reader does.

    Raises:
      ImageReadError: a value outside 0..65535 (a 32-bit integer image with a wider range).
    """
    values = values.astype(np.int64)
    lo, hi = int(values.min(initial=0)), int(values.max(initial=0))
    if lo < 0 or hi > 65535:
        raise ImageReadError(
            f"{path}: {mode} image with values {lo}..{hi}, outside the 16-bit range 0..65535; "
            "rescale it to 0..65535 (or 0..255) and save it as a 16-bit (or 8-bit) PNG or TIFF"
        )
    return np.round(values / 257.0).astype(np.uint8)  # v / 257 is never a tie (x.5)


def read_image(path: str | Path) -> LoadedImage:
    """Reads any Pillow-readable image as uint8 RGB (+ alpha), converting what it must.

    The conversions are those of the module docstring; each one applied is listed in
    ``notes``.

    Raises:
      ImageReadError: not an image, truncated, otherwise unreadable, or integer values
        outside 0..65535.
    """
    return _decode_safely(lambda: Image.open(path), path)


def _decode_safely(open_image: Callable[[], Image.Image], what: object) -> LoadedImage:
    try:
        with open_image() as im:
            return _decode(im, what)
    except ImageReadError:
        raise
    except UnidentifiedImageError as err:
        raise ImageReadError(f"{what}: not an image Pillow can read") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageReadError(f"{what}: unreadable or truncated image ({err})") from err


def _decode(im: Image.Image, path: object) -> LoadedImage:
    notes: list[str] = []
    rawmodes = [str(t.args[0] if isinstance(t.args, tuple) else t.args) for t in (getattr(im, "tile", None) or [])]
    im.load()  # decode now, so truncation is detected here
    if im.mode in ("RGB", "RGBA") and any(";16" in r for r in rawmodes):
        notes.append(f"16-bit {im.mode} reduced to 8 bit by Pillow (high byte)")
    if im.getexif().get(0x0112, 1) not in (0, 1):  # EXIF Orientation
        im = ImageOps.exif_transpose(im)
        notes.append("EXIF orientation applied")
    mode = im.mode
    frames = int(getattr(im, "n_frames", 1))
    if frames > 1:
        notes.append(f"first of {frames} frames used")
    alpha = None
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        gray = _gray16_to_uint8(np.asarray(im), mode, path)
        kind = f"16-bit grayscale ({mode})"
        if mode == "I":
            kind = "32-bit integer grayscale (I) with values in 0..65535"
        notes.append(f"{kind} scaled to 8 bit (round(v / 257)) and converted to RGB")
        return LoadedImage(np.repeat(gray[..., None], 3, axis=-1), None, notes)
    if mode == "F":
        arr = np.asarray(im).astype(np.float64)
        hi = float(arr.max(initial=0))
        arr = arr / 255.0 if hi > 1.0 else arr
        arr = np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)
        notes.append("float image converted to 8-bit RGB")
        return LoadedImage(np.repeat(arr[..., None], 3, axis=-1), None, notes)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3].copy()
        if alpha.min() == 255:
            alpha = None
        else:
            notes.append("alpha channel kept aside and restored on the output")
        rgb = np.asarray(rgba.convert("RGB"))
        if mode != "RGBA":
            notes.append(f"{mode} converted to RGB")
    elif mode == "RGB":
        rgb = np.asarray(im)
    else:
        rgb = np.asarray(im.convert("RGB"))
        notes.append(f"{mode} converted to RGB")
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ImageReadError(f"{path}: unsupported pixel layout {rgb.shape} {rgb.dtype}")
    return LoadedImage(np.ascontiguousarray(rgb), alpha, notes)


def write_image(path: str | Path, rgb: np.ndarray, alpha: np.ndarray | None = None) -> None:
    """Writes uint8 (H, W, 3) (plus optional (H, W) alpha) as a PNG.

    The PNG is written to a hidden temporary file beside ``path`` and renamed over it, so an
    interrupted run never leaves a truncated output behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA") if alpha is not None else Image.fromarray(rgb)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
