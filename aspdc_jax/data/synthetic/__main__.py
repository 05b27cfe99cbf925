"""``python -m aspdc_jax.data.synthetic --preview out.png [--strength 1.0]``: a grid of
sharp | blurred crops of the built-in synthetic motion blur (`aspdc_jax.data.synthetic`),
sorted from the least to the most blurred, with each example's drawn parameters printed.

The command line of the package; the library itself (``__init__``) has none.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Sequence

import numpy as np
from PIL import Image

from aspdc_jax.cli import FlagParser, returning_user_errors
from aspdc_jax.data.imageio import IMAGE_EXTENSIONS
from aspdc_jax.data.synthetic import (
    SyntheticBlurConfig,
    builtin_photos,
    builtin_textures,
    load_photos,
    psnr_u8,
    random_crop_pair,
    scene_crop_pair,
)

__all__ = ["main", "preview"]


def preview(path: str, strength: float, crop_size: int, rows: int, seed: int, photo_dir: str | None) -> None:
    """Writes a grid of sharp | blurred examples of the training distribution, sorted from
    the least to the most blurred, and prints each example's drawn parameters."""
    out = pathlib.Path(path)
    if out.is_dir():
        raise ValueError(f"--preview {path} is a folder; give a file name such as {out / 'preview.png'}")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--preview {path}: the folder {out.parent} does not exist")
    if out.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"--preview {path}: give an image file name ending in .png (or .jpg)")
    config = SyntheticBlurConfig(strength=strength)
    if photo_dir is None:
        photos = builtin_photos("train") + builtin_photos("test")
    else:
        photos = load_photos(photo_dir)  # every photo: a preview needs no held-out split
    small = [f"{n} ({p.shape[0]}x{p.shape[1]})" for n, p in photos if min(p.shape[:2]) < crop_size]
    if small:
        raise ValueError(f"photos smaller than --crop_size {crop_size}: {', '.join(small)}")
    rng = np.random.default_rng(seed)
    tiles = []
    psnrs = []
    for r in range(rows):
        if r % 3 == 2:  # every third example: a procedural scene, as in the training stream
            name = "(procedural scene)"
            textures = builtin_textures() if photo_dir is None else ()
            blurred, sharp, info = scene_crop_pair(crop_size, rng, config, textures)
        else:
            name, photo = photos[(r - r // 3) % len(photos)]
            blurred, sharp, info = random_crop_pair(photo, crop_size, rng, config)
        psnrs.append(psnr_u8(blurred, sharp))
        print(
            f"{name:18s} {info['path']:8s} blur {info['camera_blur_px']:5.1f}px frames {info['frames']:2d} "
            f"objects {info['objects']} highlights x{info['saturation_gain']:.1f} "
            f"noise {info['noise_sigma'] * 255:4.2f}/255 jpeg {info['jpeg_quality'] or '-':>2} "
            f"PSNR(blurred, sharp) {psnrs[-1]:5.2f} dB"
        )
        tiles.append(np.concatenate([sharp, np.full((crop_size, 4, 3), 255, np.uint8), blurred], axis=1))
    tiles = [tiles[i] for i in np.argsort(psnrs)[::-1]]  # from the sharpest to the most blurred
    sep = np.full((4, tiles[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate([x for t in tiles for x in (t, sep)][:-1], axis=0)
    Image.fromarray(grid).save(path)
    lo, mid, hi = np.percentile(psnrs, [0, 50, 100])
    print(
        f"wrote {path}: {rows} rows of sharp (left) | blurred (right); PSNR(blurred, sharp) "
        f"min {lo:.2f}, median {mid:.2f}, max {hi:.2f} dB (the training stream also draws procedural "
        "scenes; the held-out test bands are mild ~32, gopro ~26, strong ~23 dB)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = FlagParser(
        prog="python -m aspdc_jax.data.synthetic",
        description="Preview the built-in synthetic motion blur: a grid of sharp | blurred crops.",
    )
    parser.add_argument("--preview", required=True, help="output PNG: grid of sharp | blurred pairs")
    parser.add_argument(
        "--strength", type=float, default=1.0, help="blur strength multiplier, >= 0 (default: %(default)s)"
    )
    parser.add_argument("--crop_size", type=int, default=256, help="side of each crop in pixels (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=12, help="number of examples (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--photo_dir", default=None, help="folder of sharp photos (default: the built-in ones)")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.crop_size < 1 or not (np.isfinite(args.strength) and args.strength >= 0):
        parser.error("--rows and --crop_size must be >= 1 and --strength a finite number >= 0")

    def run() -> int:
        preview(args.preview, args.strength, args.crop_size, args.rows, args.seed, args.photo_dir)
        return 0

    return returning_user_errors(run, OSError, traceback=args.verbosity > 0)


if __name__ == "__main__":
    sys.exit(main())
