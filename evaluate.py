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
    tune_malloc(reexec=True)  # tcmalloc, jemalloc or mimalloc preloaded (see aspdc_jax/allocator.py)

from absl import app, flags, logging

from aspdc_jax import cli, inference
from aspdc_jax.evaluation import protocol as evaluation
from aspdc_jax.weights import CheckpointError

FLAGS = flags.FLAGS
cli.define_flags(evaluation.EvalConfig)  # one flag per field: name, default and help are stated there
flags.adopt_module_key_flags(cli)  # they are defined in aspdc_jax.cli: --helpshort lists them as this script's
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
        cfg = cli.config_from_flags(evaluation.EvalConfig)
        result = evaluation.evaluate(cfg)
    print(f"scored: {result['source']}" + (" with the x8 self-ensemble" if result["self_ensemble"] else ""))
    print(evaluation.format_table(result))
    print(f"\nwrote {FLAGS.out}/metrics.json" + (" and per_image.csv" if result["num_images"] else ""))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_absl_flags)
