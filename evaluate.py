r"""Evaluate an ASPDC checkpoint: the paper's tables (PSNR / SSIM, reblurring, timing) and figures.

Usage:
  python evaluate.py --ckpt DIR --dataset gopro --data_dir ~/data --out eval/gopro
  python evaluate.py --ckpt DIR --dataset realblur_j --data_dir ~/data --align --out eval/rbj
  python evaluate.py --ckpt DIR --dataset synthetic --reblur --figures --timing --out eval/syn

--ckpt is an export (python -m aspdc_jax.convert) or a train.py workdir / phase folder; a
ReblurNet-only export is scored with --reblur alone (Table 4). --limit N reads only the
first N pairs (no store is prepared).
Writes OUT/per_image.csv, OUT/metrics.json (psnr, psnr_uint8, ssim, ssim_official,
psnr_blurred, ssim_blurred, num_images, ...), OUT/table.md, and prints the table.

Metric protocols: PSNR per image on [0,1] RGB (peak 1), averaged over images; psnr_uint8
scores the quantised PNG. SSIM "gaussian" is Wang et al. (11x11 Gaussian, sigma 1.5,
BasicSR / skimage gaussian_weights); "ssim_official" is what the ASPDC release reports
(skimage 7x7 uniform window, data_range 2 on [0,1] images: higher by up to ~0.01).
RealBlur's protocol aligns the prediction to the ground truth (ECC homography) before
scoring: --align. Images are scored at their native size (reflect-padded to a multiple of
4 for the network and cropped back).
"""

from __future__ import annotations

from aspdc_jax.allocator import tune_malloc

if __name__ == "__main__":  # before the heavy imports: this may re-execute the process with
    tune_malloc(reexec=True)  # tcmalloc, else tunes glibc malloc (see aspdc_jax/allocator.py)

from absl import app, flags, logging

from aspdc_jax import cli, inference
from aspdc_jax.evaluation import protocol as evaluation
from aspdc_jax.weights import CheckpointError

FLAGS = flags.FLAGS
flags.DEFINE_string("ckpt", None, "Export folder or train.py workdir / phase folder.", required=True)
flags.DEFINE_enum("dataset", "gopro", list(evaluation.DATASETS), "Dataset to score on.")
flags.DEFINE_string(
    "data_dir",
    None,
    "Folder holding the dataset (e.g. the parent of GOPRO_Large, or the paired folder). "
    "synthetic: optional folder of photos (default: the bundled photos).",
)
flags.DEFINE_string("tfds_dir", None, "Where prepared stores go (default ~/tensorflow_datasets).")
flags.DEFINE_string("out", None, "Output folder for per_image.csv, metrics.json, images, figures.", required=True)
flags.DEFINE_string("split", "test", "Dataset split.")
flags.DEFINE_integer(
    "limit",
    None,
    "Score only the first N images (sorted names; 0: none, e.g. with --timing). Only those N are "
    "read: their files directly, no store is prepared (synthetic: only N pairs are made).",
)
flags.DEFINE_enum("gopro_variant", "blur", ["blur", "blur_gamma"], "GoPro blurred-image variant.")
flags.DEFINE_bool("save_images", False, "Write the deblurred PNGs to OUT/images/.")
flags.DEFINE_bool(
    "compare",
    False,
    "Write OUT/compare/<name>.png per image: blurred | deblurred | sharp, each titled with its "
    "PSNR, and a 2x zoom of the window where the output changed most.",
)
flags.DEFINE_bool(
    "reblur",
    False,
    "Also score the reblurring network (paper Table 4): ReblurNet(blurred, sharp) against the "
    "blurred input: PSNR, SSIM, mean and variance of |I_r - I_b|. A ReblurNet-only export "
    "(convert --reblur alone) is scored with this flag only.",
)
flags.DEFINE_bool(
    "figures",
    False,
    "Write OUT/figures/: the last ASPDC module's attention maps, one panel per branch (Fig. 8), "
    "its offset fields as flow colours, and with --reblur the difference maps (Fig. 7); each "
    "titled, with a colour bar (or wheel) and a .json of its value ranges.",
)
flags.DEFINE_bool(
    "self_ensemble",
    False,
    "Geometric x8 self-ensemble (BasicSR / MAXIM): average the outputs of the 8 flips and "
    "transposes, in one compiled function per shape; the table labels the row x8.",
)
flags.DEFINE_integer(
    "crop_border",
    0,
    "Pixels dropped on each side before the Y-channel scores psnr_y / ssim_y (BasicSR's crop_border).",
)
flags.DEFINE_integer("num_figures", 4, "How many images get figures.")
flags.DEFINE_bool(
    "timing",
    False,
    "Paper Table 3: mean seconds per 1280x720 image after compilation and peak memory "
    "(device memory on GPU, process RSS on CPU), with the device name.",
)
flags.DEFINE_integer("timing_repeats", 3, "Timed forward passes after the compiling one.")
flags.DEFINE_bool("align", False, "RealBlur protocol: ECC-align the prediction to the ground truth first.")
flags.DEFINE_integer("align_iterations", 100, "ECC iterations (the RealBlur script uses 100).")
flags.DEFINE_string("bucket", "exact", "Padding policy: exact (multiple of 4), geometric, or an int.")
flags.DEFINE_integer("tile", None, "Tile images with a side larger than this (bounds memory).")
flags.DEFINE_integer("overlap", 64, "Tile overlap in pixels.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype (bfloat16: GPU/TPU).")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_bool(
    "low_memory_schedule",
    True,
    "Use XLA's memory-minimising CPU scheduler (about half the peak memory of the default "
    "concurrency-optimised one; no effect on GPU).",
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # JAX's backend probing and Orbax log at INFO
    if FLAGS.low_memory_schedule:
        inference.use_low_memory_cpu_scheduler()  # before the first JAX computation
    # A missing checkpoint or dataset folder, or a bad flag value, ends in one line (exit 2).
    with cli.reporting_user_errors(CheckpointError, traceback=FLAGS.verbosity > 0):
        bucket = int(FLAGS.bucket) if FLAGS.bucket.isdigit() else FLAGS.bucket
        cfg = evaluation.EvalConfig(
            ckpt=FLAGS.ckpt,
            out=FLAGS.out,
            dataset=FLAGS.dataset,
            data_dir=FLAGS.data_dir,
            tfds_dir=FLAGS.tfds_dir,
            split=FLAGS.split,
            limit=FLAGS.limit,
            gopro_variant=FLAGS.gopro_variant,
            save_images=FLAGS.save_images,
            reblur=FLAGS.reblur,
            figures=FLAGS.figures,
            num_figures=FLAGS.num_figures,
            timing=FLAGS.timing,
            timing_repeats=FLAGS.timing_repeats,
            align=FLAGS.align,
            align_iterations=FLAGS.align_iterations,
            bucket=bucket,
            tile=FLAGS.tile,
            overlap=FLAGS.overlap,
            dtype=FLAGS.dtype,
            progress=FLAGS.progress,
            compare=FLAGS.compare,
            crop_border=FLAGS.crop_border,
            self_ensemble=FLAGS.self_ensemble,
        )
        result = evaluation.evaluate(cfg)
    print(f"scored: {result['source']}" + (" with the x8 self-ensemble" if result["self_ensemble"] else ""))
    print(evaluation.format_table(result))
    print(f"\nwrote {FLAGS.out}/metrics.json" + (" and per_image.csv" if result["num_images"] else ""))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_absl_flags)
