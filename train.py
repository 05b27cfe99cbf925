"""Trains ASPDC: ``python train.py --config=configs/deblur.py --workdir=runs/gopro``.

Runs the phases in ``config.phases`` (deblur, reblur, finetune) into ``--workdir``;
rerunning the same command resumes, finished phases are skipped. Override any config
field on the command line, e.g. ``--config.phases=finetune`` or
``--config.finetune.reblur_weight=0.5``. Every field is listed, with what it does, in
configs/default.py. Bad input ends in one ``error:`` line and exit status 2. Ctrl-C (or
SIGTERM) finishes the current step, saves a checkpoint and exits; rerun to resume.
"""

from __future__ import annotations

from aspdc_jax.allocator import tune_malloc

if __name__ == "__main__":  # before the heavy imports: this may re-execute the process with
    tune_malloc(reexec=True)  # tcmalloc, jemalloc or mimalloc preloaded (see aspdc_jax/allocator.py)

import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from aspdc_jax.cli import parse_absl_flags, reporting_bad_overrides, reporting_user_errors
from aspdc_jax.training import NonFiniteLossError, TrainingInterrupted, train_and_evaluate
from aspdc_jax.training.failures import ending_promptly_on_failure, reporting_runtime_errors
from aspdc_jax.training.sharding import maybe_initialize_distributed
from aspdc_jax.weights import CheckpointError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics.jsonl and TensorBoard.")
with reporting_bad_overrides(sys.argv):  # ml_collections applies the overrides right here
    config_flags.DEFINE_config_file(
        "config",
        str(Path(__file__).resolve().parent / "configs" / "default.py"),
        "Training config (a configs/*.py file); override any field with --config.<field>=<value>.",
        lock_config=True,
    )
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Before any JAX computation: joins the other hosts when a multi-host env is set.
    with reporting_user_errors(traceback=FLAGS.verbosity > 0):  # e.g. a bad ASPDC_*_TIMEOUT
        maybe_initialize_distributed()
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    # A bad config value, data folder or checkpoint ends in one line (exit 2). With several
    # processes, one that fails ends at once, so the others stop instead of waiting for it.
    verbose = FLAGS.verbosity > 0
    with ending_promptly_on_failure():
        try:
            with reporting_user_errors(CheckpointError, NonFiniteLossError, traceback=verbose):
                with reporting_runtime_errors(show_traceback=verbose):
                    train_and_evaluate(FLAGS.config, FLAGS.workdir)
        except TrainingInterrupted as stop:  # Ctrl-C / SIGTERM in a step loop: saved, resumable
            print(stop, file=sys.stderr, flush=True)
            sys.exit(128 + stop.signum)
        except KeyboardInterrupt:  # elsewhere (data preparation, evaluation): nothing to save
            print("interrupted; the checkpoints written so far are kept, rerun to resume", file=sys.stderr)
            sys.exit(130)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_absl_flags)
