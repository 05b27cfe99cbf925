"""What the web app does, as plain functions and no Gradio: load the weights, deblur
uploaded files exactly as the deblur CLI does, and build what the page shows.

`DeblurApp` holds the loaded weights (or the reason there are none) and one
:class:`aspdc_jax.inference.Deblurrer` per choice of options. A photo goes through the
deblur CLI's path: `aspdc_jax.images.read_image` (grayscale, palette, CMYK and 16-bit
converted, alpha set aside, EXIF orientation applied), ``Deblurrer.deblur`` with the
CLI's defaults (geometric buckets, tiles of 1280 pixels overlapping by 64) and
`aspdc_jax.images.write_image` (alpha put back), so the PNG it writes is the CLI's, byte
for byte, for the same photo, weights and options.

Bad input never raises out of `DeblurApp.deblur_files`: each photo that cannot be
deblurred gets one line in `Batch.messages` (named by its uploaded file name) and the
others go on. `DeblurApp.deblur_one` (the ``deblur`` API endpoint) raises `AppError`
with that line instead.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from PIL import Image

from aspdc_jax.app import DEFAULT_MAX_MEGAPIXELS
from aspdc_jax.errors import USER_ERRORS
from aspdc_jax.images import ImageReadError, LoadedImage, read_image, write_image

__all__ = [
    "DEFAULT_MAX_MEGAPIXELS",
    "PREVIEW_SIDE",
    "WEIGHTS_HELP",
    "AppError",
    "Batch",
    "DeblurApp",
    "Options",
    "PhotoResult",
    "changed_most",
    "zoom_pair",
]

log = logging.getLogger("aspdc_jax.app")

#: Longest side of the before/after previews on the page (the download is full size).
PREVIEW_SIDE = 1600

#: Side of the zoomed crop, in image pixels, where the output changed most.
ZOOM_SIDE = 128

#: How to get weights, in the one sentence the page and the terminal show without them.
WEIGHTS_HELP = (
    "convert the authors' DeblurringNet_FT.pth (linked from the README of "
    "https://github.com/Dong-Huo/ASPDC) with `python -m aspdc_jax.convert --deblur DeblurringNet_FT.pth "
    "--out weights/official` and start the app with `--ckpt weights/official`, or train the CPU quickstart "
    "(`python train.py --config=configs/quickstart.py --workdir=runs/quickstart`, then `--ckpt runs/quickstart`); "
    "the project ships no demo weights yet"
)


class AppError(ValueError):
    """A request the app cannot serve (bad file, no weights, bad option), with one line saying why."""


@dataclasses.dataclass(frozen=True)
class Options:
    """How a photo is deblurred; the defaults are the deblur CLI's.

    Attributes:
      self_ensemble: the geometric x8 self-ensemble (8x the time).
      dtype: ``"float32"`` or ``"bfloat16"`` compute.
      tile: photos with a side larger than this run in overlapping tiles of this size
        (a multiple of 4, at least twice ``overlap``); 0 runs them whole.
      overlap: tile overlap in pixels.
      bucket: the shape-bucket policy (``"geometric"``, ``"exact"`` or an int).
    """

    self_ensemble: bool = False
    dtype: str = "float32"
    tile: int = 1280
    overlap: int = 64
    bucket: int | str = "geometric"


@dataclasses.dataclass(frozen=True)
class PhotoResult:
    """One deblurred photo.

    Attributes:
      name: the uploaded file's name.
      output: the full-resolution PNG (the deblur CLI's bytes), named ``<stem>.png``.
      before, after: PNG previews of the input and the output, the same size (downscaled
        to at most `PREVIEW_SIDE` pixels a side).
      zoom: PNG of the input and output crops where the output changed most, side by side.
      zoom_box: (x, y, side) of that crop in the photo, in pixels.
      size: (width, height) of the photo.
      notes: the conversions `read_image` applied (grayscale, CMYK, alpha, ...).
      metrics: PSNR/SSIM of the input and the output against the sharp reference, or None.
      seconds: the time the deblurring took (reading and writing included).
    """

    name: str
    output: Path
    before: Path
    after: Path
    zoom: Path
    zoom_box: tuple[int, int, int]
    size: tuple[int, int]
    notes: tuple[str, ...]
    metrics: dict[str, float] | None
    seconds: float

    def summary(self) -> str:
        """One line for the page: name, size, time, and the conversions applied."""
        w, h = self.size
        line = f"{self.name}: deblurred ({w}x{h}, {self.seconds:.1f} s) -> {self.output.name}"
        if self.notes:
            line += f" [{'; '.join(self.notes)}]"
        return line

    def metrics_text(self) -> str:
        """PSNR/SSIM of the input and the output against the reference, as one line ('' without)."""
        m = self.metrics
        if m is None:
            return ""
        return (
            f"Against the sharp reference: input PSNR {m['psnr_in']:.2f} dB, SSIM {m['ssim_in']:.4f}; "
            f"output PSNR {m['psnr_out']:.2f} dB, SSIM {m['ssim_out']:.4f} "
            f"(change {m['psnr_out'] - m['psnr_in']:+.2f} dB)"
        )


@dataclasses.dataclass(frozen=True)
class Batch:
    """What one press of Deblur gives: the results, and one line per photo (done or why not)."""

    results: list[PhotoResult]
    messages: list[str]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _display_name(path: str | Path) -> str:
    """The uploaded file's own name (Gradio keeps it as the file name in its cache)."""
    return Path(path).name or str(path)


class DeblurApp:
    """The loaded weights and the deblurrers built from them; thread-safe.

    Args:
      ckpt: any folder the deblur CLI's ``--ckpt`` loads (an export from
        ``python -m aspdc_jax.convert`` or ``aspdc_jax.publish``, a ``train.py`` workdir,
        phase or step folder); None for none. A folder that does not load is not an
        error here: `weights_error` then says why, and every request is answered with it.
      workdir: where results are written (a new temporary folder if None; removed by
        `close` only if the app made it).
      max_megapixels: photos with more pixels are refused with the reason.
    """

    def __init__(
        self,
        ckpt: str | Path | None,
        *,
        workdir: str | Path | None = None,
        max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    ) -> None:
        self.ckpt = None if ckpt is None else str(ckpt)
        self.max_pixels = int(max_megapixels * 1e6)
        self.max_megapixels = float(max_megapixels)
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="aspdc-app-")) if workdir is None else Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._deblurrers: collections.OrderedDict[Options, Any] = collections.OrderedDict()
        self.loaded: Any | None = None  # aspdc_jax.weights.LoadedModels
        self.weights_error: str | None = None
        self._load()

    # ------------------------------------------------------------------ weights
    def _load(self) -> None:
        from aspdc_jax.weights import load_for_inference  # noqa: PLC0415 (keeps orbax off --help)

        if self.ckpt is None:
            self.weights_error = f"No weights loaded (no --ckpt given): {WEIGHTS_HELP}."
            return
        try:
            self.loaded = load_for_inference(self.ckpt)
        except Exception as err:  # any folder that does not load: the page says why
            log.debug("--ckpt %s did not load", self.ckpt, exc_info=True)
            reason = _first_line(err).rstrip(".")
            self.weights_error = f"No weights loaded (--ckpt {self.ckpt}: {reason}): {WEIGHTS_HELP}."

    @property
    def ready(self) -> bool:
        """Whether weights are loaded."""
        return self.loaded is not None

    def model_card(self) -> dict[str, str]:
        """Which weights, EMA or not, step, parameter count, compute device (as strings)."""
        devices = jax.local_devices()
        device = f"{len(devices)} x {devices[0].platform.upper()} ({getattr(devices[0], 'device_kind', '?')})"
        if self.loaded is None:
            return {"weights": "none", "device": device}
        source = str(self.loaded.source)
        training = self._training_source()
        described = f"{source}; trained as {training}" if training else source
        step = re.search(r"step (\d+)", training or source)
        ema = "EMA weights" in (training or source)
        kind = "train.py workdir" in source or training is not None
        config = self.loaded.model_config
        params = sum(int(np.size(p)) for p in jax.tree_util.tree_leaves(self.loaded.deblur_params))
        return {
            "weights": described,
            "ema": ("yes" if ema else "no") if kind else "not recorded (an export)",
            "step": step.group(1) if step else "not recorded",
            "parameters": f"{params:,} (DeblurNet width {config.get('deblur_width', '?')}, "
            f"{config.get('num_groups', '?')} ASPDC groups)",
            "device": device,
        }

    def _training_source(self) -> str | None:
        """The workdir an export was published from (``training.json``'s ``source``), if any."""
        if self.ckpt is None:
            return None
        path = Path(self.ckpt) / "training.json"
        try:
            return str(json.loads(path.read_text())["source"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def deblurrer(self, options: Options) -> Any:
        """The :class:`aspdc_jax.inference.Deblurrer` for ``options`` (built once, up to 4 kept).

        Raises:
          AppError: no weights, or options the deblurrer refuses (a bad tile size).
        """
        from aspdc_jax.inference import Deblurrer  # noqa: PLC0415 (JAX-heavy; after the allocator)

        if self.loaded is None:
            raise AppError(self.weights_error or "no weights loaded")
        with self._lock:
            if options in self._deblurrers:
                self._deblurrers.move_to_end(options)
                return self._deblurrers[options]
            try:
                deblurrer = Deblurrer.from_loaded(
                    self.loaded,
                    bucket=options.bucket,
                    dtype=options.dtype,
                    tile=options.tile or None,
                    overlap=options.overlap,
                    self_ensemble=options.self_ensemble,
                )
            except USER_ERRORS as err:
                raise AppError(f"options: {_first_line(err)}") from err
            self._deblurrers[options] = deblurrer
            while len(self._deblurrers) > 4:
                self._deblurrers.popitem(last=False)
            return deblurrer

    # ------------------------------------------------------------------ photos
    def _check_size(self, path: Path, name: str) -> None:
        """Refuses a photo above the pixel limit from its header, before decoding it."""
        try:
            with Image.open(path) as im:
                w, h = im.size
        except Image.DecompressionBombError as err:
            raise AppError(
                f"{name}: too large ({_first_line(err)}); this app takes photos up to "
                f"{self.max_megapixels:g} megapixels: downscale it or use python -m aspdc_jax.deblur"
            ) from err
        except Exception:  # not an image, or a header Pillow cannot read: read_image says which
            return
        if w * h > self.max_pixels:
            raise AppError(
                f"{name}: {w}x{h} is {w * h / 1e6:.3g} megapixels, above this app's limit of "
                f"{self.max_megapixels:g} (--max_megapixels); downscale it, start the app with a higher "
                "--max_megapixels, or use python -m aspdc_jax.deblur (it tiles any size)"
            )

    def read(self, path: str | Path, name: str | None = None) -> LoadedImage:
        """`read_image` with the size limit; errors name the file by ``name``.

        Raises:
          AppError: not an image, truncated, unsupported values, or too large.
        """
        path = Path(path)
        name = name or _display_name(path)
        self._check_size(path, name)
        try:
            return read_image(path)
        except ImageReadError as err:
            raise AppError(_first_line(err).replace(str(path), name)) from err
        except Exception as err:  # Pillow's own errors that read_image does not translate
            raise AppError(f"{name}: unreadable image ({_first_line(err)})") from err

    def deblur_path(
        self,
        path: str | Path,
        options: Options = Options(),
        *,
        reference: LoadedImage | None = None,
        name: str | None = None,
    ) -> PhotoResult:
        """Deblurs one file as the deblur CLI does and writes its PNG and the previews.

        Raises:
          AppError: the one line saying why this photo was not deblurred.
        """
        name = name or _display_name(path)
        start = time.perf_counter()
        deblurrer = self.deblurrer(options)
        self._prune()
        image = self.read(path, name)
        try:
            with self._lock:
                out = np.asarray(deblurrer.deblur(image.rgb))
        except USER_ERRORS as err:
            raise AppError(f"{name}: {_first_line(err)}") from err
        folder = self.workdir / uuid.uuid4().hex
        output = folder / f"{Path(name).stem or 'image'}.png"
        write_image(output, out, image.alpha)
        before, after = _previews(image.rgb, out, folder)
        x, y, side = changed_most(image.rgb, out)
        zoom = folder / "zoom.png"
        Image.fromarray(zoom_pair(image.rgb, out, (x, y, side))).save(zoom)
        metrics = None
        notes = list(image.notes)
        h, w = image.rgb.shape[:2]
        if reference is not None:
            rh, rw = reference.rgb.shape[:2]
            if (rh, rw) == (h, w):
                metrics = _metrics(image.rgb, out, reference.rgb)
            else:
                notes.append(f"no PSNR/SSIM: the reference is {rw}x{rh}, this photo {w}x{h}")
        return PhotoResult(
            name=name,
            output=output,
            before=before,
            after=after,
            zoom=zoom,
            zoom_box=(x, y, side),
            size=(w, h),
            notes=tuple(notes),
            metrics=metrics,
            seconds=time.perf_counter() - start,
        )

    def deblur_one(self, path: str | Path | None) -> Path:
        """The ``deblur`` API endpoint: one image file in, the path of its PNG out (CLI defaults).

        Raises:
          AppError: no file, no weights, or the photo cannot be deblurred (one line).
        """
        if not path:
            raise AppError("no image given; send one image file")
        try:
            return self.deblur_path(path, Options()).output
        except AppError:
            raise
        except Exception as err:  # never a traceback to the client
            log.exception("deblurring %s failed", path)
            raise AppError(f"{_display_name(path)}: could not be deblurred ({_first_line(err)})") from err

    def deblur_files(
        self,
        paths: Sequence[str | Path],
        options: Options = Options(),
        *,
        reference: str | Path | None = None,
        progress: Callable[[int, int, str], None] | None = None,
    ) -> Batch:
        """Deblurs every file of ``paths``; each one that fails gets its line and the rest go on.

        Args:
          paths: uploaded image files (named as uploaded).
          options: how to deblur them.
          reference: an optional sharp image: PSNR/SSIM of the input and output of each
            photo of its size against it.
          progress: called as ``progress(done, total, name)`` before each photo.
        """
        paths = [p for p in paths if p]
        if not paths:
            return Batch([], ["No photo given: drop one or several image files above, then press Deblur."])
        if self.loaded is None:
            return Batch([], [self.weights_error or "No weights loaded."])
        try:
            self.deblurrer(options)
        except AppError as err:
            return Batch([], [str(err)])
        messages: list[str] = []
        ref = None
        if reference:
            try:
                ref = self.read(reference)
            except AppError as err:
                messages.append(f"reference {err} (no PSNR/SSIM)")
        results = []
        for i, path in enumerate(paths):
            name = _display_name(path)
            if progress is not None:
                progress(i, len(paths), name)
            try:
                result = self.deblur_path(path, options, reference=ref, name=name)
            except AppError as err:
                messages.append(str(err))
                continue
            except Exception as err:  # one line on the page; the traceback goes to the terminal
                log.exception("deblurring %s failed", name)
                messages.append(f"{name}: could not be deblurred ({type(err).__name__}: {_first_line(err)})")
                continue
            results.append(result)
            messages.append(result.summary())
        if progress is not None:
            progress(len(paths), len(paths), "")
        return Batch(results, messages)

    def _prune(self, max_age_s: float = 3 * 3600) -> None:
        """Removes results older than ``max_age_s`` (the page's cache keeps its own copies)."""
        now = time.time()
        for folder in self.workdir.iterdir():
            try:
                if folder.is_dir() and now - folder.stat().st_mtime > max_age_s:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                continue

    def close(self) -> None:
        """Removes the results folder if the app made it."""
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _metrics(before: np.ndarray, after: np.ndarray, sharp: np.ndarray) -> dict[str, float]:
    """PSNR (uint8 levels, peak 255) and SSIM (Gaussian, the evaluation's) of the input and
    output against the sharp reference."""
    from aspdc_jax.evaluation.metrics import psnr_numpy, ssim  # noqa: PLC0415 (only with a reference)

    unit = np.stack([before, after]).astype(np.float32) / 255.0
    ref = np.broadcast_to(sharp.astype(np.float32) / 255.0, unit.shape)
    psnr_in, psnr_out = (psnr_numpy(x, sharp, peak=255.0) for x in (before, after))
    if min(sharp.shape[:2]) >= 11:
        ssim_in, ssim_out = (float(v) for v in np.asarray(ssim(unit, ref)))
    else:
        ssim_in = ssim_out = float("nan")
    return {"psnr_in": psnr_in, "psnr_out": psnr_out, "ssim_in": ssim_in, "ssim_out": ssim_out}


def _previews(before: np.ndarray, after: np.ndarray, folder: Path) -> tuple[Path, Path]:
    """``before.png`` and ``after.png`` in ``folder``: the input and output RGB, downscaled
    (Lanczos) to at most `PREVIEW_SIDE` pixels a side."""
    h, w = before.shape[:2]
    scale = min(1.0, PREVIEW_SIDE / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    paths = []
    for tag, image in (("before", before), ("after", after)):
        im = Image.fromarray(image)
        if scale < 1.0:
            im = im.resize(size, Image.Resampling.LANCZOS)
        path = folder / f"{tag}.png"
        im.save(path)
        paths.append(path)
    return paths[0], paths[1]


def changed_most(before: np.ndarray, after: np.ndarray, side: int = ZOOM_SIDE) -> tuple[int, int, int]:
    """(x, y, s): the top-left corner and side of the s x s square (s = min(side, H, W))
    where ``after`` differs most from ``before`` (sum of absolute differences), on a grid
    of s/8 pixels.

    Args:
      before, after: uint8 (H, W, 3) images of the same size.
    """
    h, w = before.shape[:2]
    s = max(1, min(side, h, w))
    diff = np.zeros((h, w), np.int32)
    for c in range(before.shape[2]):
        diff += np.abs(after[..., c].astype(np.int16) - before[..., c].astype(np.int16))
    step = max(1, s // 8)
    hb, wb = h // step, w // step
    blocks = diff[: hb * step, : wb * step].reshape(hb, step, wb, step).sum(axis=(1, 3), dtype=np.int64)
    k = max(1, s // step)
    integral = np.pad(blocks.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = integral[k:, k:] - integral[:-k, k:] - integral[k:, :-k] + integral[:-k, :-k]
    by, bx = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return min(int(bx) * step, w - s), min(int(by) * step, h - s), s


def zoom_pair(before: np.ndarray, after: np.ndarray, box: tuple[int, int, int], shown: int = 256) -> np.ndarray:
    """The ``box`` (x, y, side) crop of ``before`` and ``after`` side by side, each enlarged
    (nearest neighbour, a whole factor) to about ``shown`` pixels, with a 4-pixel white gap:
    uint8 (H, W, 3)."""
    x, y, s = box
    factor = max(1, shown // s)
    crops = [np.repeat(np.repeat(im[y : y + s, x : x + s], factor, 0), factor, 1) for im in (before, after)]
    gap = np.full((crops[0].shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([crops[0], gap, crops[1]], axis=1)
