"""Evaluation of a checkpoint on a dataset: the paper's Tables 1-4 and Figs. 7-8.

:func:`evaluate` is the library behind ``evaluate.py``. It writes to ``out``:

* ``per_image.csv``: one row per image (name, ``file``: its PNG under ``images/`` and the
  prefix of its ``figures/``, size, every score, seconds);
* ``metrics.json``: means over the images of ``psnr``, ``psnr_uint8``, ``ssim``,
  ``ssim_official``, the blurred input's own ``psnr_blurred``, ``ssim_blurred``,
  ``ssim_official_blurred``, ``num_images``, and the protocol used; with ``reblur`` a
  ``reblur`` block (Table 4), with ``timing`` a ``timing`` block (Table 3), with
  ``align`` the RealBlur-protocol ``psnr_aligned`` / ``ssim_aligned``;
* ``images/`` (``save_images``), ``figures/`` (``figures``).

``limit`` (``--limit N``) scores the first N pairs in the store's (sorted-name) order
and reads only those: for the folder datasets their files directly (no store is
prepared, no other image is opened), for ``synthetic`` only the first N pairs are made.

A ReblurNet-only export (``python -m aspdc_jax.convert --reblur ...``) is scored with
``reblur`` alone: the Table 4 block, without the deblurring scores.

Protocols (see :mod:`aspdc_jax.evaluation.metrics`): scores are per image on [0, 1] RGB and averaged
over images. ``psnr`` / ``ssim`` / ``ssim_official`` use the network output before uint8
quantisation (clipped to [0, 1]); ``psnr_uint8`` scores the saved uint8 image. Images are
reflect-padded to a multiple of 4 and cropped back (``bucket="exact"``), i.e. scored at
their native size.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from aspdc_jax.evaluation import figures, metrics
from aspdc_jax.images import quantize, reflect_pad, to_model, to_unit, uint8_to_unit
from aspdc_jax.inference import Bucket, Deblurrer
from aspdc_jax.progress import show_progress

__all__ = ["DATASETS", "EvalConfig", "PAPER_RESULTS", "evaluate", "format_table", "measure_timing"]

DATASETS = ("synthetic", "gopro", "hide", "realblur_j", "realblur_r", "paired_folder")

#: The paper's numbers (RTX 2080 Ti), for the printed table.
PAPER_RESULTS = {
    "gopro": {"ASPDC (paper, no fine-tuning)": (31.97, 0.957), "ASPDC (paper, fine-tuned)": (32.09, 0.959)},
    "hide": {"ASPDC (paper, no fine-tuning)": (29.98, 0.944), "ASPDC (paper, fine-tuned)": (30.04, 0.945)},
}
PAPER_TABLE3 = "paper (RTX 2080 Ti): 0.28 s, 2.25 GB per 1280x720 image"
PAPER_TABLE4 = "paper: reblurring PSNR 55.71, SSIM 0.9997"
DATASET_TITLES = {
    "synthetic": "Synthetic",
    "gopro": "GoPro",
    "hide": "HIDE",
    "realblur_j": "RealBlur-J",
    "realblur_r": "RealBlur-R",
    "paired_folder": "Folder",
}


def _option(default: Any = dataclasses.MISSING, *, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """An `EvalConfig` field with its command-line help (``metadata["help"]``) and allowed
    values (``metadata["choices"]``): ``evaluate.py`` makes one flag of each field."""
    metadata = {"help": help} if choices is None else {"help": help, "choices": choices}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class EvalConfig:
    """What to evaluate and how. Each field is a flag of ``evaluate.py`` (same name, default
    and help: `aspdc_jax.cli.define_flags`); a field without a default is a required flag."""

    ckpt: str = _option(help="Export folder or train.py workdir / phase folder.")
    out: str = _option(help="Output folder for per_image.csv, metrics.json, images, figures.")
    dataset: str = _option("gopro", help="Dataset to score on.", choices=DATASETS)
    data_dir: str | None = _option(
        None,
        help="Folder holding the dataset (e.g. the parent of GOPRO_Large, or the paired folder). "
        "synthetic: optional folder of photos (default: the bundled photos).",
    )
    tfds_dir: str | None = _option(None, help="Where prepared stores go (default ~/tensorflow_datasets).")
    split: str = _option("test", help="Dataset split.")
    limit: int | None = _option(
        None,
        help="Score only the first N images (sorted names; 0: none, e.g. with --timing). Only those N are "
        "read: their files directly, no store is prepared (synthetic: only N pairs are made).",
    )
    gopro_variant: str = _option("blur", help="GoPro blurred-image variant.", choices=("blur", "blur_gamma"))
    save_images: bool = _option(False, help="Write the deblurred PNGs to OUT/images/.")
    reblur: bool = _option(
        False,
        help="Also score the reblurring network (paper Table 4): ReblurNet(blurred, sharp) against the "
        "blurred input: PSNR, SSIM, mean and variance of |I_r - I_b|. A ReblurNet-only export "
        "(convert --reblur alone) is scored with this flag only.",
    )
    figures: bool = _option(
        False,
        help="Write OUT/figures/: the last ASPDC module's attention maps, one panel per branch (Fig. 8), "
        "its offset fields as flow colours, and with --reblur the difference maps (Fig. 7); each "
        "titled, with a colour bar (or wheel) and a .json of its value ranges.",
    )
    num_figures: int = _option(4, help="How many images get figures.")
    timing: bool = _option(
        False,
        help="Paper Table 3: mean seconds per 1280x720 image after compilation and peak memory "
        "(device memory on GPU, process RSS on CPU), with the device name.",
    )
    timing_repeats: int = _option(3, help="Timed forward passes after the compiling one.")
    align: bool = _option(False, help="RealBlur protocol: ECC-align the prediction to the ground truth first.")
    align_iterations: int = _option(100, help="ECC iterations (the RealBlur script uses 100).")
    bucket: Bucket = _option(
        "exact", help="Padding policy: exact (multiple of 4), geometric, or an int (digits: an int)."
    )
    tile: int | None = _option(None, help="Tile images with a side larger than this (bounds memory).")
    overlap: int = _option(64, help="Tile overlap in pixels.")
    dtype: str = _option("float32", help="Compute dtype (bfloat16: GPU/TPU).", choices=("float32", "bfloat16"))
    progress: bool = _option(True, help="Show a progress bar.")
    compare: bool = _option(
        False,
        help="Write OUT/compare/<name>.png per image: blurred | deblurred | sharp, each titled with its "
        "PSNR, and a 2x zoom of the window where the output changed most.",
    )
    crop_border: int = _option(
        0,
        help="Pixels dropped on each side before the Y-channel scores psnr_y / ssim_y (BasicSR's crop_border).",
    )
    self_ensemble: bool = _option(
        False,
        help="Geometric x8 self-ensemble (BasicSR / MAXIM): average the outputs of the 8 flips and "
        "transposes, in one compiled function per shape; the table labels the row x8.",
    )

    def __post_init__(self) -> None:
        if isinstance(self.bucket, str) and self.bucket.isdigit():  # "--bucket 16"
            self.bucket = int(self.bucket)


def peak_memory(device: Any | None = None) -> tuple[float, str]:
    """(peak bytes, what was measured): device memory on accelerators, else process RSS."""
    device = device or jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            return float(stats["peak_bytes_in_use"]), f"peak device memory ({device.platform})"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # KiB on Linux
    return rss, "peak process RSS (CPU)"


def measure_timing(deblurrer: Deblurrer, *, height: int = 720, width: int = 1280, repeats: int = 3) -> dict[str, Any]:
    """Table 3: mean seconds per ``height x width`` image after compilation, peak memory.

    The image is padded only to a multiple of 4 (720 and 1280 already are), so this is the
    network's forward at exactly that size, plus the uint8 transfer in and out.
    """
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    batch = reflect_pad(image, deblurrer.multiple)[None]
    start = time.perf_counter()
    deblurrer.forward_padded(batch)  # compile + first run
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        deblurrer.forward_padded(batch)
        times.append(time.perf_counter() - start)
    peak, kind = peak_memory()
    device = jax.devices()[0]
    return {
        "height": height,
        "width": width,
        "seconds_mean": float(np.mean(times)),
        "seconds_all": [float(t) for t in times],
        "first_call_seconds": compile_s,
        "peak_memory_gib": peak / 2**30,
        "peak_memory_kind": kind,
        "device": f"{device.platform}: {device.device_kind}",
        "dtype": deblurrer.dtype,
    }


def _reblur_fn(module: Any):
    @jax.jit
    def run(params: Any, blurred: jax.Array, sharp: jax.Array) -> jax.Array:
        out = module.apply({"params": params}, to_model(blurred), to_model(sharp))
        return to_unit(out.astype(jnp.float32))

    return run


def _scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """pred, truth: float32 (H, W, 3) in [0, 1]."""
    return {
        "psnr": float(metrics.psnr(pred, truth)),
        "ssim": float(metrics.ssim(pred, truth, variant="gaussian")),
        "ssim_official": float(metrics.ssim(pred, truth, variant="official")),
    }


def _y_scores(pred: np.ndarray, truth: np.ndarray, border: int) -> dict[str, float]:
    """BasicSR's ``test_y_channel`` protocol on the saved uint8 output: PSNR and SSIM
    (Gaussian) of the BT.601 luma, after dropping ``border`` pixels per side."""
    y_pred = metrics.crop_border(metrics.rgb_to_y(pred), border)
    y_true = metrics.crop_border(metrics.rgb_to_y(truth), border)
    return {"psnr_y": float(metrics.psnr(y_pred, y_true)), "ssim_y": float(metrics.ssim(y_pred, y_true))}


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _output_name(name: str, taken: set[str]) -> Path:
    """Relative PNG path for the pair ``name``, never one already in ``taken`` (updated).

    Only a real image extension is replaced (``shot.v1`` -> ``shot.v1.png``, ``a.jpg`` ->
    ``a.png``); a name that would reuse a path (compared case-insensitively, as some file
    systems do) gets ``_2``, ``_3``, ... in the order the pairs come (sorted names), so
    every pair keeps its own image and figures.
    """
    from aspdc_jax.data.imageio import IMAGE_EXTENSIONS  # noqa: PLC0415

    path = Path(name)
    stem = str(path.with_suffix("")) if path.suffix.lower() in IMAGE_EXTENSIONS else name
    candidate, k = f"{stem}.png", 1
    while candidate.casefold() in taken:
        k += 1
        candidate = f"{stem}_{k}.png"
    taken.add(candidate.casefold())
    return Path(candidate)


def _out_folder(out: str) -> Path:
    """``out`` as a folder path; NotADirectoryError if it, or a folder above it, is a file."""
    path = Path(out).expanduser()
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                what = f"--out {out} is a file" if existing == path else f"--out {out}: {existing} is a file"
                raise NotADirectoryError(f"{what}; give a folder")
            break
    return path


def format_table(result: dict[str, Any], label: str = "ASPDC (this checkpoint)") -> str:
    """The paper's layout: one row per method, PSNR / SSIM columns per dataset."""
    title = DATASET_TITLES.get(result["dataset"], result["dataset"])
    head = f"| Method | {title} PSNR | {title} SSIM | SSIM (official protocol) |"
    lines = [head, "|---|---:|---:|---:|"]

    def row(name: str, p: float, s: float, so: float | None) -> str:
        so_text = f"{so:.4f}" if so is not None and not math.isnan(so) else ""
        return f"| {name} | {p:.2f} | {s:.4f} | {so_text} |"

    if not result["num_images"] and "timing" in result:  # --limit 0 --timing: timing only
        return _timing_table(result["timing"])
    if "psnr" not in result and "reblur" in result:  # a ReblurNet-only export
        count = result["num_images"]
        return _reblur_table(result["reblur"]) + f"\n({count} image{'' if count == 1 else 's'}; ReblurNet only)"
    if result["num_images"]:
        lines.append(
            row("Blurred input", result["psnr_blurred"], result["ssim_blurred"], result["ssim_official_blurred"])
        )
        name = f"{label} x8" if result.get("self_ensemble") else label
        lines.append(row(name, result["psnr"], result["ssim"], result["ssim_official"]))
    for name, (p, s) in PAPER_RESULTS.get(result["dataset"], {}).items():
        lines.append(row(name, p, s, None))
    text = "\n".join(lines)
    count = result["num_images"]
    text += f"\n({count} image{'' if count == 1 else 's'};"
    text += " PSNR on [0,1] RGB, SSIM gaussian 11x11 sigma 1.5;"
    text += " official SSIM: skimage 7x7 uniform, data_range 2)"
    if "per_band" in result:
        text += "\n\n| Band | Blurred PSNR | Output PSNR | Gain | Images |\n|---|---:|---:|---:|---:|"
        for band, b in result["per_band"].items():
            text += f"\n| {band} | {b['psnr_blurred']:.2f} | {b['psnr']:.2f} | {b['psnr'] - b['psnr_blurred']:+.2f} | {b['num_images']} |"
    if "psnr_aligned" in result:
        text += (
            f"\nRealBlur protocol (ECC-aligned, masked): PSNR {result['psnr_aligned']:.2f}, "
            f"SSIM {result['ssim_aligned']:.4f}"
        )
    if "reblur" in result:
        text += "\n\n" + _reblur_table(result["reblur"])
    if "timing" in result:
        text += "\n\n" + _timing_table(result["timing"])
    return text


def _reblur_table(r: dict[str, Any]) -> str:
    """Table 4: the reblurring network's scores against the blurred input."""
    return (
        "| Reblurring (Table 4) | PSNR | SSIM | mean abs diff | var abs diff |\n|---|---:|---:|---:|---:|\n"
        f"| ReblurNet (this checkpoint) | {r['psnr']:.2f} | {r['ssim']:.4f} | "
        f"{r['abs_diff_mean']:.3e} | {r['abs_diff_var']:.3e} |\n({PAPER_TABLE4}; |I_r - I_b| on [0,1])"
    )


def _timing_table(t: dict[str, Any]) -> str:
    """Table 3: seconds and peak memory of one untiled forward."""
    return (
        f"| Device | s / {t['width']}x{t['height']} (untiled) | {t['peak_memory_kind']} |\n|---|---:|---:|\n"
        f"| {t['device']} ({t['dtype']}) | {t['seconds_mean']:.3f} | {t['peak_memory_gib']:.2f} GiB |\n"
        f"({PAPER_TABLE3})"
    )


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Runs the evaluation described by ``cfg``; returns what ``metrics.json`` holds."""
    from aspdc_jax.weights import load_for_inference  # noqa: PLC0415

    if cfg.dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {cfg.dataset!r}")
    out = _out_folder(cfg.out)
    loaded = load_for_inference(cfg.ckpt, require_deblur=not cfg.reblur)
    if cfg.reblur and loaded.reblur is None:
        raise ValueError(
            f"--reblur needs a ReblurNet, but {cfg.ckpt} holds only the deblurring network "
            "(export with reblur params, or point at a train.py workdir with a reblur phase)"
        )
    deblurrer = None
    if loaded.deblur is not None:
        deblurrer = Deblurrer.from_loaded(
            loaded,
            bucket=cfg.bucket,
            dtype=cfg.dtype,
            tile=cfg.tile,
            overlap=cfg.overlap,
            self_ensemble=cfg.self_ensemble,
        )
    else:
        _check_reblur_only(cfg)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "dataset": cfg.dataset,
        "checkpoint": str(cfg.ckpt),
        "source": loaded.source,
        "self_ensemble": cfg.self_ensemble,
        "networks": ["deblur"] * (loaded.deblur is not None) + ["reblur"] * cfg.reblur,
    }
    if cfg.timing and deblurrer is not None:  # first, so the peak-memory reading is this measurement's
        result["timing"] = measure_timing(deblurrer, repeats=cfg.timing_repeats)
    pairs = _eval_pairs(cfg)
    rows = _score_pairs(cfg, pairs, loaded, deblurrer, out)
    if not rows and cfg.limit == 0:  # e.g. --timing alone
        result["num_images"] = 0
        _write_results(out, result)
        return result
    if not rows:
        raise ValueError(f"dataset {cfg.dataset} gave no images (data_dir={cfg.data_dir!r}, split={cfg.split!r})")
    return _summarise(cfg, rows, result, out)


def _check_reblur_only(cfg: EvalConfig) -> None:
    """ValueError naming the first flag that needs the DeblurNet (a ReblurNet-only export)."""
    needs = {
        "--timing": cfg.timing,
        "--save_images": cfg.save_images,
        "--compare": cfg.compare,
        "--align": cfg.align,
        "--self_ensemble": cfg.self_ensemble,
    }
    for flag, given in needs.items():
        if given:
            raise ValueError(
                f"{flag} needs the DeblurNet, but {cfg.ckpt} holds only a ReblurNet (a ReblurNet-only "
                "export scores --reblur alone); leave out the flag or give a checkpoint with the DeblurNet"
            )


def _eval_pairs(cfg: EvalConfig) -> Any:
    """The pairs to score (an `aspdc_jax.data.EvalPairs`), in the store's order.

    With ``limit`` only the first ``limit`` pairs are read: the folder datasets' files
    directly (`_first_pairs`: no store is prepared, nothing after them is opened), and for
    ``synthetic`` only as many crops per photo as the prefix needs are made (each pair
    depends only on its seed, photo, band and crop index, so they are the same pairs).
    """
    from aspdc_jax.data import pipeline, settings  # noqa: PLC0415

    # The flags set where the data is; every other field is configs/default.py's.
    data = settings.defaults().replace(
        dataset=cfg.dataset, data_dir=cfg.data_dir, tfds_dir=cfg.tfds_dir, gopro_variant=cfg.gopro_variant
    )
    if cfg.limit is None or cfg.split == pipeline.VAL_SPLIT:  # val: a random sample of the train split
        return pipeline.eval_pairs(data, split=cfg.split, limit=cfg.limit)
    if cfg.limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {cfg.limit}")
    if cfg.dataset != "synthetic":
        return _first_pairs(cfg)
    from aspdc_jax.data import synthetic  # noqa: PLC0415

    per_crop = len(synthetic.photo_source(cfg.data_dir, cfg.split)) * len(synthetic.BANDS)
    crops = min(data.synthetic_test_crops_per_photo, -(-cfg.limit // max(per_crop, 1)))
    return pipeline.eval_pairs(data.replace(synthetic_test_crops_per_photo=crops), split=cfg.split, limit=cfg.limit)


def _first_pairs(cfg: EvalConfig) -> Any:
    """The first ``cfg.limit`` pairs of a folder dataset's split, read from their files
    (uint8 (H, W, 3), the pixels the store would hold); the split is listed, not read."""
    from aspdc_jax.data import imageio, layouts, pipeline  # noqa: PLC0415

    files = layouts.scan_split(cfg.dataset, cfg.data_dir, cfg.split, cfg.gopro_variant)[: cfg.limit]

    def read(pair: Any) -> Any:
        blurred = imageio.read_rgb8(pair.blurred)
        sharp = imageio.read_rgb8(pair.sharp) if pair.sharp is not None else None
        if sharp is not None and sharp.shape != blurred.shape:
            raise ValueError(
                f"pair {pair.name}: blurred {pair.blurred} is {blurred.shape[0]}x{blurred.shape[1]} but sharp "
                f"{pair.sharp} is {sharp.shape[0]}x{sharp.shape[1]} (HxW); the two images of a pair must have "
                "the same size"
            )
        return pipeline.EvalPair(pair.name, blurred, sharp, dict(pair.meta, dataset=cfg.dataset))

    return pipeline.EvalPairs(len(files), (read(p) for p in files))


def _score_pairs(
    cfg: EvalConfig, pairs: Any, loaded: Any, deblurrer: Deblurrer | None, out: Path
) -> list[dict[str, Any]]:
    """One row of scores per pair (and the images and figures asked for)."""
    reblur_run = _reblur_fn(loaded.reblur) if cfg.reblur else None
    rows: list[dict[str, Any]] = []
    taken: set[str] = set()  # output names given so far (casefolded)
    bar = None
    if show_progress(cfg.progress):
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=len(pairs), unit="img", desc=f"evaluate {cfg.dataset}", file=sys.stderr)
    for index, pair in enumerate(pairs):
        if pair.sharp is None:
            raise ValueError(f"{pair.name}: no ground truth; evaluation needs paired data")
        rel = _output_name(pair.name, taken)
        with_figures = cfg.figures and index < cfg.num_figures
        row, pred_u8, reblurred = _score_pair(cfg, pair, loaded, deblurrer, reblur_run)
        # "file": the saved PNG (--save_images), else the figures' name prefix (--figures).
        row["file"] = rel.as_posix() if cfg.save_images else rel.with_suffix("").as_posix() if with_figures else ""
        rows.append(row)
        if cfg.save_images and pred_u8 is not None:
            figures.save_png(out / "images" / rel, pred_u8)
        if cfg.compare and pred_u8 is not None:
            figures.save_png(out / "compare" / rel, figures.comparison(pair.blurred, pred_u8, pair.sharp))
        if with_figures:
            _write_figures(out / "figures", rel, loaded, pair, reblurred)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return rows


def _score_pair(cfg: EvalConfig, pair: Any, loaded: Any, deblurrer: Deblurrer | None, reblur_run: Any):
    """(row, uint8 output or None, reblurred image or None) of one pair; without a
    ``deblurrer`` (a ReblurNet-only export) the row holds the reblurring scores only."""
    h, w = pair.blurred.shape[:2]
    row: dict[str, Any] = {"name": pair.name, "file": "", "height": h, "width": w}
    if "band" in pair.meta:
        row["band"] = pair.meta["band"]
    pred_u8 = None
    if deblurrer is not None:
        pred_u8 = _score_deblurring(cfg, pair, deblurrer, row)
    reblurred = None
    if reblur_run is not None:
        reblurred = _score_reblurring(pair, loaded, reblur_run, row)
    return row, pred_u8, reblurred


def _score_deblurring(cfg: EvalConfig, pair: Any, deblurrer: Deblurrer, row: dict[str, Any]) -> np.ndarray:
    """Adds the deblurring scores of ``pair`` to ``row``; returns the uint8 (H, W, 3) output."""
    h, w = pair.blurred.shape[:2]
    compilations = deblurrer.num_compilations
    start = time.perf_counter()
    pred = deblurrer.deblur_float(pair.blurred)
    seconds = time.perf_counter() - start
    pred_u8 = quantize(pred * 255.0)
    sharp, blurred = uint8_to_unit(pair.sharp), uint8_to_unit(pair.blurred)
    try:
        row.update(_scores(pred, sharp))
    except ValueError as err:  # e.g. an image smaller than the SSIM window
        raise ValueError(f"{pair.name} ({h}x{w}): {err}") from err
    row["psnr_uint8"] = float(metrics.psnr(uint8_to_unit(pred_u8), sharp))
    row.update(_y_scores(uint8_to_unit(pred_u8), sharp, cfg.crop_border))
    row.update({f"{k}_blurred": v for k, v in _scores(blurred, sharp).items()})
    if cfg.align:
        from aspdc_jax.evaluation.alignment import realblur_scores  # noqa: PLC0415

        aligned = realblur_scores(pred, sharp, iterations=cfg.align_iterations)
        row["psnr_aligned"], row["ssim_aligned"] = aligned["psnr"], aligned["ssim"]
    row["seconds"] = seconds
    row["compiled"] = deblurrer.num_compilations > compilations  # its time includes compiling
    return pred_u8


def _score_reblurring(pair: Any, loaded: Any, reblur_run: Any, row: dict[str, Any]) -> np.ndarray:
    """Adds Table 4's scores of ReblurNet(blurred, sharp) against the blurred input to
    ``row``; returns the reblurred image, float32 (H, W, 3) in [0, 1]."""
    h, w = pair.blurred.shape[:2]
    padded = (reflect_pad(pair.blurred, 8)[None], reflect_pad(pair.sharp, 8)[None])  # ReblurNet's multiple
    reblurred = np.asarray(reblur_run(loaded.reblur_params, *padded))[0, :h, :w]
    blurred = uint8_to_unit(pair.blurred)
    mean, var = metrics.mean_abs_diff_stats(reblurred, blurred)
    row["reblur_psnr"] = float(metrics.psnr(reblurred, blurred))
    row["reblur_ssim"] = float(metrics.ssim(reblurred, blurred))
    row["reblur_abs_diff_mean"] = float(mean)
    row["reblur_abs_diff_var"] = float(var)
    return reblurred


def _write_results(out: Path, result: dict[str, Any]) -> None:
    (out / "metrics.json").write_text(json.dumps(result, indent=2, sort_keys=True, default=str))
    (out / "table.md").write_text(format_table(result) + "\n")


def _summarise(cfg: EvalConfig, rows: list[dict[str, Any]], result: dict[str, Any], out: Path) -> dict[str, Any]:
    """Writes per_image.csv, metrics.json and table.md from the rows; returns the result."""
    keys = [k for k in rows[0] if k not in ("name", "file", "height", "width", "compiled", "band")]
    with open(out / "per_image.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    means = {k: _mean([r[k] for r in rows]) for k in keys}
    result["num_images"] = len(rows)
    if "psnr" in rows[0]:  # not for a ReblurNet-only export
        _summarise_deblurring(cfg, rows, means, result)
    if cfg.reblur:
        result["reblur"] = {
            "psnr": means["reblur_psnr"],
            "ssim": means["reblur_ssim"],
            "abs_diff_mean": means["reblur_abs_diff_mean"],
            "abs_diff_var": means["reblur_abs_diff_var"],
            "note": "ReblurNet(blurred, sharp ground truth) scored against the blurred input; "
            "|I_r - I_b| statistics per image on [0, 1], averaged over images",
        }
    _write_results(out, result)
    return result


def _summarise_deblurring(
    cfg: EvalConfig, rows: list[dict[str, Any]], means: dict[str, float], result: dict[str, Any]
) -> None:
    """Adds the deblurring means, per-band scores, seconds and protocol to ``result``."""
    for k in (
        "psnr",
        "psnr_uint8",
        "ssim",
        "ssim_official",
        "psnr_y",
        "ssim_y",
        "psnr_blurred",
        "ssim_blurred",
        "ssim_official_blurred",
    ):
        result[k] = means[k]
    result["crop_border"] = cfg.crop_border
    if cfg.align:
        result["psnr_aligned"], result["ssim_aligned"] = means["psnr_aligned"], means["ssim_aligned"]
    if any("band" in r for r in rows):  # the synthetic test's strength bands
        result["per_band"] = {
            band: {
                "psnr": _mean([r["psnr"] for r in rows if r.get("band") == band]),
                "psnr_blurred": _mean([r["psnr_blurred"] for r in rows if r.get("band") == band]),
                "num_images": sum(r.get("band") == band for r in rows),
            }
            for band in dict.fromkeys(r["band"] for r in rows if "band" in r)
        }
    # Seconds per image, leaving out the images whose shape had to be compiled first.
    warm = [r["seconds"] for r in rows if not r["compiled"]]
    result["seconds_per_image_mean"] = _mean(warm) if warm else means["seconds"]
    result["seconds_per_image_includes_compilation"] = not warm
    result["protocol"] = {
        "psnr": "per image on [0,1] RGB (peak 1), float output clipped; averaged over images",
        "psnr_uint8": "PSNR of the uint8-quantised output",
        "psnr_y": "BasicSR test_y_channel: PSNR of the BT.601 luma Y = (16 + 65.481 R + 128.553 G + "
        "24.966 B) / 255 of the uint8 output, after crop_border pixels per side",
        "ssim_y": "gaussian SSIM of that luma, same crop",
        "ssim": "gaussian: 11x11 sigma 1.5, K1 0.01, K2 0.03, per channel, data_range 1",
        "ssim_official": "ASPDC release: skimage 7x7 uniform, sample covariance, data_range 2",
        "padding": f"reflect to bucket={cfg.bucket!r} (multiple of 4) and crop back",
        "tile": cfg.tile,
        "dtype": cfg.dtype,
        "aligned": "RealBlur ECC homography + masked scores" if cfg.align else None,
    }


def _write_figures(folder: Path, rel: Path, loaded: Any, pair: Any, reblurred: np.ndarray | None) -> None:
    """Per pair: the input; Fig. 8 (the last ASPDC module's attention, one panel per branch)
    and its offsets as flow colours when there is a DeblurNet; Fig. 7 (the reblurring
    differences) and the reblurred image with ``reblurred``. Each figure is a titled PNG
    with a colour bar or wheel, and a .json next to it with the value ranges."""
    stem = rel.with_suffix("")
    figures.save_png(folder / f"{stem}_input.png", pair.blurred)
    if loaded.deblur is not None:
        _write_model_figures(folder, stem, loaded, pair)
    if reblurred is not None:
        image, info = figures.reblur_diff_figure(
            uint8_to_unit(pair.sharp),
            reblurred,
            uint8_to_unit(pair.blurred),
            title=f"{pair.name}: reblurring differences (Fig. 7), mean over RGB on [0, 1]",
        )
        figures.save_figure(folder / f"{stem}_reblur_diff.png", image, info)
        figures.save_png(folder / f"{stem}_reblurred.png", quantize(reblurred * 255.0))


def _write_model_figures(folder: Path, stem: Path, loaded: Any, pair: Any) -> None:
    """The attention (AFIM only: a "sum" ablation has none) and offset figures of one pair."""
    h, w = pair.blurred.shape[:2]
    net = loaded.deblur
    maps = figures.model_maps(net, loaded.deblur_params, pair.blurred)
    size = dict(factor=maps["factor"], height=h, width=w)
    labels = figures.branch_labels(tuple(net.branches), int(net.branch_repeat))
    if net.fusion == "afim":
        image, info = figures.attention_figure(
            maps["attention"],
            labels,
            title=f"{pair.name}: attention of the last ASPDC module per branch (Fig. 8; softmax, sums to 1)",
            **size,
        )
        figures.save_figure(folder / f"{stem}_attention.png", image, info)
    if maps["offsets"] is not None:
        deformable = [label for label in labels if not label.split(":")[0].startswith("static")]
        image, info = figures.offsets_figure(
            maps["offsets"],
            deformable,
            title=f"{pair.name}: mean offset of each deformable branch of the last ASPDC module, "
            "in quarter-resolution pixels",
            **size,
        )
        figures.save_figure(folder / f"{stem}_offsets.png", image, info)
