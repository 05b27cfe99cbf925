"""Reading images as 8-bit RGB, PNG encoding and the tiled PNG storage of the stores.

Files are read by `aspdc_jax.images.read_image` (its docstring lists the conversions).

Stores keep each image as a grid of PNG tiles (`TILE` x `TILE`, row-major, ragged at
the right/bottom edges) so a training crop only decodes the tiles it overlaps: a 256x256
crop of a 1280x720 image decodes ~9 of 60 tiles instead of the whole PNG (~6x less work).
"""

from __future__ import annotations

import io
import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from aspdc_jax import images

__all__ = [
    "IMAGE_EXTENSIONS",
    "TILE",
    "decode_png",
    "decode_tiles",
    "decode_window",
    "encode_png",
    "encode_tiles",
    "list_images",
    "read_rgb8",
]

IMAGE_EXTENSIONS = tuple(sorted(images.IMAGE_SUFFIXES))
TILE = 128


def list_images(folder: str | pathlib.Path) -> list[pathlib.Path]:
    """Image files (by extension, case-insensitive) directly inside ``folder``, sorted."""
    folder = pathlib.Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_rgb8(path: str | pathlib.Path) -> np.ndarray:
    """Read an image file as uint8 (H, W, 3) RGB (`aspdc_jax.images.read_image`; an alpha
    channel is discarded).

    Raises FileNotFoundError for a missing file and ValueError (`ImageReadError`) naming
    the file when it cannot be decoded.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    return images.read_image(path).rgb


def decode_png(data: bytes, what: object = "<bytes>") -> np.ndarray:
    """The store's codec, inverse of `encode_png`: PNG bytes -> uint8 (H, W, 3).

    (Files a user gives go through `aspdc_jax.images.read_image`, which converts any mode.)
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB") if im.mode != "RGB" else im)
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot decode image {what}: {e}") from e


def encode_png(image: np.ndarray, compress_level: int = 3) -> bytes:
    """uint8 (H, W, 3) -> PNG bytes (Pillow, no tensorflow)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _grid(h: int, w: int, tile: int) -> tuple[int, int]:
    return -(-h // tile), -(-w // tile)


def encode_tiles(image: np.ndarray, tile: int = TILE) -> list[bytes]:
    """uint8 (H, W, 3) -> row-major list of PNG tiles of ``tile`` x ``tile`` (ragged edges)."""
    h, w = image.shape[:2]
    rows, cols = _grid(h, w, tile)
    return [
        encode_png(np.ascontiguousarray(image[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile]))
        for r in range(rows)
        for c in range(cols)
    ]


def decode_window(
    tiles: Sequence[bytes], height: int, width: int, tile: int, y0: int, x0: int, ch: int, cw: int
) -> np.ndarray:
    """Decode only the tiles overlapping the window [y0, y0+ch) x [x0, x0+cw).

    Returns uint8 (ch, cw, 3). Raises ValueError for a window outside the image.
    """
    if y0 < 0 or x0 < 0 or y0 + ch > height or x0 + cw > width:
        raise ValueError(f"window {ch}x{cw} at ({y0}, {x0}) is outside the {height}x{width} image")
    rows, cols = _grid(height, width, tile)
    if len(tiles) != rows * cols:
        raise ValueError(f"expected {rows * cols} tiles for {height}x{width} / {tile}, got {len(tiles)}")
    out = np.empty((ch, cw, 3), np.uint8)
    for r in range(y0 // tile, (y0 + ch - 1) // tile + 1):
        for c in range(x0 // tile, (x0 + cw - 1) // tile + 1):
            t = decode_png(tiles[r * cols + c])
            ty0, tx0 = r * tile, c * tile
            ya, yb = max(y0, ty0), min(y0 + ch, ty0 + t.shape[0])
            xa, xb = max(x0, tx0), min(x0 + cw, tx0 + t.shape[1])
            out[ya - y0 : yb - y0, xa - x0 : xb - x0] = t[ya - ty0 : yb - ty0, xa - tx0 : xb - tx0]
    return out


def decode_tiles(tiles: Sequence[bytes], height: int, width: int, tile: int) -> np.ndarray:
    """Full uint8 (height, width, 3) image from its PNG tiles."""
    return decode_window(tiles, height, width, tile, 0, 0, height, width)
