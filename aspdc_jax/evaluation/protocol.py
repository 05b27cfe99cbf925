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

from aspdc_jax.cli import show_progress
from aspdc_jax.evaluation import figures, metrics
from aspdc_jax.images import to_model, to_unit
from aspdc_jax.inference import Bucket, Deblurrer, bucket_size, pad_to

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


@dataclasses.dataclass
class EvalConfig:
    """What to evaluate and how (the flags of ``evaluate.py``)."""

    ckpt: str
    out: str
    dataset: str = "gopro"
    data_dir: str | None = None
    tfds_dir: str | None = None
    split: str = "test"
    limit: int | None = None
    gopro_variant: str = "blur"
    save_images: bool = False
    reblur: bool = False
    figures: bool = False
    num_figures: int = 4
    timing: bool = False
    timing_repeats: int = 3
    align: bool = False
    align_iterations: int = 100
    bucket: Bucket = "exact"
    tile: int | None = None
    overlap: int = 64
    dtype: str = "float32"
    progress: bool = True
    compare: bool = False
    crop_border: int = 0  # pixels dropped on each side for the Y-channel scores (BasicSR)
    self_ensemble: bool = False  # geometric x8 (flips and transposes, averaged)


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
    hb = bucket_size(height, "exact", deblurrer.multiple)
    wb = bucket_size(width, "exact", deblurrer.multiple)
    batch = pad_to(image, hb, wb)[None]
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


def _unit(u8: np.ndarray) -> np.ndarray:
    return np.asarray(u8, np.float32) / np.float32(255.0)


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
        r = result["reblur"]
        text += (
            "\n\n| Reblurring (Table 4) | PSNR | SSIM | mean abs diff | var abs diff |\n|---|---:|---:|---:|---:|\n"
            f"| ReblurNet (this checkpoint) | {r['psnr']:.2f} | {r['ssim']:.4f} | "
            f"{r['abs_diff_mean']:.3e} | {r['abs_diff_var']:.3e} |\n({PAPER_TABLE4}; |I_r - I_b| on [0,1])"
        )
    if "timing" in result:
        text += "\n\n" + _timing_table(result["timing"])
    return text


def _timing_table(t: dict[str, Any]) -> str:
    """Table 3: seconds and peak memory of one untiled forward."""
    return (
        f"| Device | s / {t['width']}x{t['height']} (untiled) | {t['peak_memory_kind']} |\n|---|---:|---:|\n"
        f"| {t['device']} ({t['dtype']}) | {t['seconds_mean']:.3f} | {t['peak_memory_gib']:.2f} GiB |\n"
        f"({PAPER_TABLE3})"
    )


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Runs the evaluation described by ``cfg``; returns what ``metrics.json`` holds."""
    from aspdc_jax.data import eval_pairs  # noqa: PLC0415
    from aspdc_jax.weights import load_for_inference  # noqa: PLC0415

    if cfg.dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {cfg.dataset!r}")
    out = _out_folder(cfg.out)
    loaded = load_for_inference(cfg.ckpt)
    if cfg.reblur and loaded.reblur is None:
        raise ValueError(
            f"--reblur needs a ReblurNet, but {cfg.ckpt} holds only the deblurring network "
            "(export with reblur params, or point at a train.py workdir with a reblur phase)"
        )
    deblurrer = Deblurrer.from_loaded(
        loaded, bucket=cfg.bucket, dtype=cfg.dtype, tile=cfg.tile, overlap=cfg.overlap, self_ensemble=cfg.self_ensemble
    )
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "dataset": cfg.dataset,
        "checkpoint": str(cfg.ckpt),
        "source": loaded.source,
        "self_ensemble": cfg.self_ensemble,
    }
    if cfg.timing:  # first, so the peak-memory reading is this measurement's
        result["timing"] = measure_timing(deblurrer, repeats=cfg.timing_repeats)
    data_cfg = {
        "dataset": cfg.dataset,
        "data_dir": cfg.data_dir,
        "tfds_dir": cfg.tfds_dir,
        "gopro_variant": cfg.gopro_variant,
    }
    pairs = eval_pairs(data_cfg, split=cfg.split, limit=cfg.limit)
    rows = _score_pairs(cfg, pairs, loaded, deblurrer, out)
    if not rows and cfg.limit == 0:  # e.g. --timing alone
        result["num_images"] = 0
        _write_results(out, result)
        return result
    if not rows:
        raise ValueError(f"dataset {cfg.dataset} gave no images (data_dir={cfg.data_dir!r}, split={cfg.split!r})")
    return _summarise(cfg, rows, result, out)


def _score_pairs(cfg: EvalConfig, pairs: Any, loaded: Any, deblurrer: Deblurrer, out: Path) -> list[dict[str, Any]]:
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
        if cfg.save_images:
            figures.save_png(out / "images" / rel, pred_u8)
        if cfg.compare:
            figures.save_png(out / "compare" / rel, figures.comparison(pair.blurred, pred_u8, pair.sharp))
        if with_figures:
            _write_figures(out / "figures", rel, loaded, pair, reblurred)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return rows


def _score_pair(cfg: EvalConfig, pair: Any, loaded: Any, deblurrer: Deblurrer, reblur_run: Any):
    """(row, uint8 output, reblurred image or None) of one pair."""
    h, w = pair.blurred.shape[:2]
    compilations = deblurrer.num_compilations
    start = time.perf_counter()
    pred = deblurrer.deblur_float(pair.blurred)
    seconds = time.perf_counter() - start
    pred_u8 = np.round(pred * 255.0).astype(np.uint8)
    sharp, blurred = _unit(pair.sharp), _unit(pair.blurred)
    row: dict[str, Any] = {"name": pair.name, "file": "", "height": h, "width": w}
    if "band" in pair.meta:
        row["band"] = pair.meta["band"]
    try:
        row.update(_scores(pred, sharp))
    except ValueError as err:  # e.g. an image smaller than the SSIM window
        raise ValueError(f"{pair.name} ({h}x{w}): {err}") from err
    row["psnr_uint8"] = float(metrics.psnr(_unit(pred_u8), sharp))
    row.update(_y_scores(_unit(pred_u8), sharp, cfg.crop_border))
    row.update({f"{k}_blurred": v for k, v in _scores(blurred, sharp).items()})
    if cfg.align:
        from aspdc_jax.evaluation.alignment import realblur_scores  # noqa: PLC0415

        aligned = realblur_scores(pred, sharp, iterations=cfg.align_iterations)
        row["psnr_aligned"], row["ssim_aligned"] = aligned["psnr"], aligned["ssim"]
    reblurred = None
    if reblur_run is not None:
        hb, wb = bucket_size(h, "exact", 8), bucket_size(w, "exact", 8)
        reblurred = np.asarray(
            reblur_run(loaded.reblur_params, pad_to(pair.blurred, hb, wb)[None], pad_to(pair.sharp, hb, wb)[None])
        )[0, :h, :w]
        mean, var = metrics.mean_abs_diff_stats(reblurred, blurred)
        row["reblur_psnr"] = float(metrics.psnr(reblurred, blurred))
        row["reblur_ssim"] = float(metrics.ssim(reblurred, blurred))
        row["reblur_abs_diff_mean"] = float(mean)
        row["reblur_abs_diff_var"] = float(var)
    row["seconds"] = seconds
    row["compiled"] = deblurrer.num_compilations > compilations  # its time includes compiling
    return row, pred_u8, reblurred


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
    if cfg.reblur:
        result["reblur"] = {
            "psnr": means["reblur_psnr"],
            "ssim": means["reblur_ssim"],
            "abs_diff_mean": means["reblur_abs_diff_mean"],
            "abs_diff_var": means["reblur_abs_diff_var"],
            "note": "ReblurNet(blurred, sharp ground truth) scored against the blurred input; "
            "|I_r - I_b| statistics per image on [0, 1], averaged over images",
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
    _write_results(out, result)
    return result


def _write_figures(folder: Path, rel: Path, loaded: Any, pair: Any, reblurred: np.ndarray | None) -> None:
    """Fig. 8 (last ASPDC attention), offsets as flow colours, Fig. 7 difference maps."""
    stem = rel.with_suffix("")
    h, w = pair.blurred.shape[:2]
    maps = figures.model_maps(loaded.deblur, loaded.deblur_params, pair.blurred)
    factor = maps["factor"]
    figures.save_png(folder / f"{stem}_input.png", pair.blurred)
    if loaded.model_config.get("fusion", "afim") == "afim":  # "sum" ablations have no attention
        figures.save_png(
            folder / f"{stem}_attention.png",
            figures.attention_strip(maps["attention"], factor=factor, height=h, width=w),
        )
    if maps["offsets"] is not None:
        from aspdc_jax.models.aspdc import BRANCH_DILATIONS  # noqa: PLC0415

        names = [b for b in loaded.model_config.get("branches", BRANCH_DILATIONS) if BRANCH_DILATIONS.get(b, 1)]
        repeat = int(loaded.model_config.get("branch_repeat", 1))
        names = [f"{n}_{k + 1}" if repeat > 1 else n for n in names for k in range(repeat)]
        flows = figures.offset_flow_images(maps["offsets"], factor=factor, height=h, width=w)
        for i, img in enumerate(flows):
            name = names[i] if i < len(names) else str(i)
            figures.save_png(folder / f"{stem}_offsets_{name}.png", img)
    if reblurred is not None:
        blurred, sharp = _unit(pair.blurred), _unit(pair.sharp)
        figures.save_png(folder / f"{stem}_diff_sharp_vs_blurred.png", figures.diff_map(sharp, blurred))
        figures.save_png(folder / f"{stem}_diff_reblurred_vs_blurred.png", figures.diff_map(reblurred, blurred))
        figures.save_png(folder / f"{stem}_reblurred.png", np.round(reblurred * 255).astype(np.uint8))
