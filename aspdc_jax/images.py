"""Images: reading and writing files, and the conversions between uint8 images and the
models' NHWC float range [-1, 1].

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

import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "LoadedImage",
    "read_image",
    "to_model",
    "to_uint8",
    "to_unit",
    "write_image",
]

#: File suffixes treated as images when a folder is searched (lower case).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"})


def to_model(images: np.ndarray | jnp.ndarray, dtype=jnp.float32) -> jnp.ndarray:
    """uint8 images (..., H, W, 3) in [0, 255] -> float in [-1, 1] (``u8 / 127.5 - 1``)."""
    return jnp.asarray(images).astype(dtype) / 127.5 - 1.0


def to_unit(images: jnp.ndarray) -> jnp.ndarray:
    """Model-range images in [-1, 1] -> [0, 1], clipped (the range the metrics use)."""
    return jnp.clip((images + 1.0) / 2.0, 0.0, 1.0)


def to_uint8(images: jnp.ndarray) -> jnp.ndarray:
    """Model-range float images in [-1, 1] -> uint8: ``round(clip((y+1)/2, 0, 1) * 255)``."""
    return jnp.round(to_unit(images.astype(jnp.float32)) * 255.0).astype(jnp.uint8)


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
