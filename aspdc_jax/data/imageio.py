"""Reading images as 8-bit RGB, PNG encoding and the tiled PNG storage of the stores.

Conversions done by `read_rgb8` (documented, never silent failures):
- grayscale (L, 1, LA, I;16 gray) -> the gray value replicated to R, G and B;
- RGBA / LA / palette with transparency -> the alpha channel is discarded (colour kept);
- 16-bit grayscale (I;16*, and I with values in 0..65535) -> 8-bit by ``round(v / 257)``
  (65535 -> 255); an I image with values outside 0..65535 is refused;
- 48/64-bit RGB(A) PNG -> 8-bit by Pillow's decoder, which keeps the high byte (``v >> 8``;
  within 1 of ``round(v / 257)``);
- palette, CMYK, YCbCr -> RGB via Pillow.
Any file that cannot be decoded raises ValueError naming the file.

Stores keep each image as a grid of PNG tiles (`TILE` x `TILE`, row-major, ragged at
the right/bottom edges) so a training crop only decodes the tiles it overlaps: a 256x256
crop of a 1280x720 image decodes ~9 of 60 tiles instead of the whole PNG (~6x less work).
"""

from __future__ import annotations

import io
import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

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

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
TILE = 128


def list_images(folder: str | pathlib.Path) -> list[pathlib.Path]:
    """Image files (by extension, case-insensitive) directly inside ``folder``, sorted."""
    folder = pathlib.Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _to_rgb8(arr: np.ndarray, path: object) -> np.ndarray:
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype in (np.uint16, np.int32, np.uint32, np.int64) or (arr.dtype.kind in "iu" and arr.dtype.itemsize > 1):
        if arr.min() < 0 or arr.max() > 65535:
            raise ValueError(f"{path}: integer image with values outside [0, 65535] ({arr.dtype}); cannot convert to 8-bit")
        arr = np.rint(arr.astype(np.float64) / 257.0).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ValueError(f"{path}: unsupported pixel type {arr.dtype}; expected 8- or 16-bit integers")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 2:  # gray + alpha
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:  # RGBA: alpha discarded
        arr = arr[:, :, :3]
    elif not (arr.ndim == 3 and arr.shape[2] == 3):
        raise ValueError(f"{path}: unsupported image shape {arr.shape}; expected HxW, HxWx3 or HxWx4")
    return np.ascontiguousarray(arr)


def read_rgb8(path: str | pathlib.Path) -> np.ndarray:
    """Read an image file as uint8 (H, W, 3) RGB, converting as the module doc says.

    Raises FileNotFoundError for a missing file and ValueError naming the file when it
    cannot be decoded.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            return _pil_to_rgb8(im, path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, ValueError) and str(path) in str(e):
            raise
        raise ValueError(f"cannot read image {path}: {e}") from e


def _pil_to_rgb8(im: Image.Image, path: object) -> np.ndarray:
    mode = im.mode
    if mode in ("RGB", "L", "RGBA", "LA"):
        return _to_rgb8(np.asarray(im), path)
    if mode.startswith("I;16") or mode == "I":
        return _to_rgb8(np.asarray(im).astype(np.int64), path)
    if mode == "1":
        return _to_rgb8(np.asarray(im.convert("L")), path)
    if mode in ("P", "PA"):
        return _to_rgb8(np.asarray(im.convert("RGBA")), path)
    if mode == "F":
        raise ValueError(f"{path}: floating-point image (mode F) is not supported; save it as 8- or 16-bit PNG")
    return _to_rgb8(np.asarray(im.convert("RGB")), path)


def decode_png(data: bytes, what: object = "<bytes>") -> np.ndarray:
    """Decode PNG (or any Pillow-readable) bytes to uint8 (H, W, 3)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return _pil_to_rgb8(im, what)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
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
