"""Deblur image files: ``python -m aspdc_jax.deblur --ckpt DIR INPUTS... --out OUTDIR``.

INPUTS are image files and/or folders (searched recursively for image files). Each result is
written to OUTDIR as a PNG named after its input (``photo.jpg`` -> ``photo.png``; a folder's
sub-folders are kept; with several inputs each folder's results go under its name). Names
that would clash get the input's suffix (``photo.jpg.png``); an OUTDIR that would overwrite
an input is refused, and an OUTDIR inside an input folder is not searched. Inputs are read
with Pillow:

* grayscale, palette and CMYK images are converted to RGB; 16-bit images are scaled to
  8 bit (``round(x / 257)``); an alpha channel is set aside and put back on the output;
  EXIF orientation is applied;
* a file that is not an image or is truncated/corrupt is reported and skipped, and the run
  goes on. The exit status is 1 if any input was skipped, else 0.

Large images are processed in overlapping tiles (``--tile``) so memory stays bounded.
Also installed as the ``aspdc-deblur`` console script.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from aspdc_jax.cli import FlagParser

__all__ = ["ImageReadError", "LoadedImage", "find_inputs", "main", "plan_outputs", "read_image", "write_image"]

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"}
)


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


def read_image(path: str | Path) -> LoadedImage:
    """Reads any Pillow-readable image as uint8 RGB (+ alpha), converting what it must.

    Raises:
      ImageReadError: not an image, truncated or otherwise unreadable.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError  # noqa: PLC0415

    notes: list[str] = []
    try:
        with Image.open(path) as im:
            rawmodes = [str(t.args[0] if isinstance(t.args, tuple) else t.args) for t in (im.tile or [])]
            im.load()  # decode now, so truncation is detected here
            if im.mode in ("RGB", "RGBA") and any(";16" in r for r in rawmodes):
                notes.append(f"16-bit {im.mode} reduced to 8 bit by Pillow (high byte)")
            if im.getexif().get(0x0112, 1) not in (0, 1):  # EXIF Orientation
                im = ImageOps.exif_transpose(im)
                notes.append("EXIF orientation applied")
            mode = im.mode
            if getattr(im, "n_frames", 1) > 1:
                notes.append(f"first of {im.n_frames} frames used")
            alpha = None
            if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                arr = np.asarray(im).astype(np.float64)
                scale = 257.0 if arr.max(initial=0) <= 65535 else 65535 * 257.0
                arr = np.clip(np.round(arr / scale), 0, 255).astype(np.uint8)
                notes.append(f"16-bit grayscale ({mode}) scaled to 8 bit and converted to RGB")
                return LoadedImage(np.repeat(arr[..., None], 3, axis=-1), None, notes)
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
    except UnidentifiedImageError as err:
        raise ImageReadError(f"{path}: not an image Pillow can read") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageReadError(f"{path}: unreadable or truncated image ({err})") from err
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ImageReadError(f"{path}: unsupported pixel layout {rgb.shape} {rgb.dtype}")
    return LoadedImage(np.ascontiguousarray(rgb), alpha, notes)


def write_image(path: str | Path, rgb: np.ndarray, alpha: np.ndarray | None = None) -> None:
    """Writes uint8 (H, W, 3) (plus optional (H, W) alpha) as a PNG."""
    from PIL import Image  # noqa: PLC0415

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if alpha is not None:
        Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(path)
    else:
        Image.fromarray(rgb).save(path)


def find_inputs(inputs: Sequence[str | Path], exclude: str | Path | None = None) -> Iterator[tuple[Path, Path]]:
    """Yields ``(file, output relative path)`` for files and folders (recursive).

    A file given directly yields ``name.png``; a file found under a folder keeps its path
    relative to that folder, under the folder's own name when several inputs are given
    (``deblur in1 in2`` -> ``in1/a.png``, ``in2/a.png``). Files in folders are filtered by
    image suffix; files named directly are always tried. Files under ``exclude`` (the output
    folder, if it lies inside an input folder) are not searched.

    Raises:
      FileNotFoundError: an input does not exist.
    """
    skip = Path(exclude).resolve() if exclude is not None else None
    for entry in inputs:
        entry = Path(entry)
        if entry.is_dir():
            prefix = Path(entry.resolve().name) if len(inputs) > 1 else Path()
            for f in sorted(p for p in entry.rglob("*") if p.is_file()):
                if skip is not None and f.resolve().is_relative_to(skip):
                    continue
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    yield f, prefix / f.relative_to(entry).with_suffix(".png")
        elif entry.is_file():
            yield entry, Path(entry.name).with_suffix(".png")
        else:
            raise FileNotFoundError(f"input {entry} does not exist")


def plan_outputs(files: Sequence[tuple[Path, Path]], out_dir: str | Path) -> list[tuple[Path, Path]]:
    """``(input, output file)`` for every input: distinct outputs, none of them an input.

    Inputs mapping to the same PNG (``a.jpg`` and ``a.png`` in one folder, or the same
    name given twice) get ``a.jpg.png``, then ``a.jpg-2.png``, ... in input order.

    Raises:
      ValueError: an output would replace one of the input files (``--out`` is an input
        folder holding PNGs).
    """
    out_dir = Path(out_dir)
    inputs = {path.resolve() for path, _ in files}
    taken: set[Path] = set()
    plan = []
    for path, rel in files:
        target = out_dir / rel
        k = 1
        while target.resolve() in taken:
            k += 1
            name = path.name + ".png" if k == 2 else f"{path.name}-{k - 1}.png"
            target = (out_dir / rel).with_name(name)
        if target.resolve() in inputs:
            raise ValueError(
                f"the output for {path} would replace the input file {target}; choose an --out "
                "folder that holds none of the inputs"
            )
        taken.add(target.resolve())
        plan.append((path, target))
    return plan


def _parse_bucket(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(
        prog="python -m aspdc_jax.deblur",
        description=(
            "Deblur images with an ASPDC checkpoint. INPUTS are image files and/or folders "
            "(searched recursively); results are written to --out as PNGs named after the "
            "inputs. Unreadable inputs are reported and skipped (exit status 1)."
        ),
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUTS", help="image files or folders")
    parser.add_argument(
        "--ckpt", required=True,
        help="export folder (python -m aspdc_jax.convert) or train.py workdir / phase folder",
    )
    parser.add_argument("--out", required=True, help="output folder (created if needed)")
    parser.add_argument(
        "--tile", type=int, default=1280,
        help="images with a side larger than this are deblurred in overlapping tiles of this "
        "size (multiple of 4; bounds memory); 0 disables tiling (default: %(default)s)",
    )
    parser.add_argument(
        "--overlap", type=int, default=64, help="tile overlap in pixels (default: %(default)s)"
    )
    parser.add_argument(
        "--bucket", type=_parse_bucket, default="geometric",
        help="shape-bucket policy: 'geometric', 'exact' or an int multiple (default: %(default)s)",
    )
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32",
        help="compute dtype; bfloat16 is for GPUs/TPUs (default: %(default)s)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing outputs (default: skip them)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--concurrent_schedule", action="store_true",
        help="keep XLA's default concurrency-optimised CPU schedule (about 2x the peak memory); "
        "by default the memory-minimising one is selected",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 all done, 1 some inputs skipped)."""
    from tqdm import tqdm  # noqa: PLC0415

    from aspdc_jax import inference  # noqa: PLC0415
    from aspdc_jax.checkpoint import CheckpointError  # noqa: PLC0415

    args = build_parser().parse_args(argv)
    if not args.concurrent_schedule:
        inference.use_low_memory_cpu_scheduler(warn=False)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        print(f"error: --out {out_dir} exists and is not a folder", file=sys.stderr)
        return 2
    if any(Path(i).is_dir() and Path(i).resolve() == out_dir.resolve() for i in args.inputs):
        print(f"error: --out {out_dir} is one of the input folders; choose another folder", file=sys.stderr)
        return 2
    try:
        plan = plan_outputs(list(find_inputs(args.inputs, exclude=out_dir)), out_dir)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not plan:
        print("error: no image files found in the inputs", file=sys.stderr)
        return 2
    try:
        deblurrer = inference.load(
            args.ckpt, bucket=args.bucket, dtype=args.dtype,
            tile=args.tile or None, overlap=args.overlap,
        )
    except (CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    skipped: list[str] = []
    written = 0
    bar = tqdm(plan, unit="img", desc="deblur", disable=args.quiet, file=sys.stderr)
    for path, target in bar:
        if target.exists() and not args.overwrite:
            tqdm.write(f"exists, skipped (use --overwrite): {target}", file=sys.stderr)
            continue
        try:
            loaded = read_image(path)
        except ImageReadError as err:
            skipped.append(str(err))
            tqdm.write(f"skipped: {err}", file=sys.stderr)
            continue
        for note in loaded.notes:
            tqdm.write(f"{path}: {note}", file=sys.stderr)
        write_image(target, deblurrer.deblur(loaded.rgb), loaded.alpha)
        written += 1
    bar.close()
    print(f"wrote {written} image(s) to {out_dir}; skipped {len(skipped)}", file=sys.stderr)
    for message in skipped:
        print(f"  skipped: {message}", file=sys.stderr)
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
