"""Training: the paper's three phases (deblur, reblur, finetune) as jit-compiled steps
sharded over a ``data`` mesh axis, with per-phase Orbax checkpoints.

Layout (after flax examples/imagenet): ``train.py`` parses flags and calls
:func:`train_and_evaluate`; :mod:`.steps` holds the pure steps, :mod:`.state` the train
state and optimizer, :mod:`.schedules` the epoch-based learning rates, :mod:`.losses` the
image losses, :mod:`.sharding` the mesh, :mod:`.checkpoints` the Orbax layout,
:mod:`.summaries` JSONL/TensorBoard, :mod:`.evaluation` the after-phase PSNR, and
:mod:`.trainer` the loop.
"""

from aspdc_jax.training.checkpoints import PhaseCheckpoints, load_workdir_for_inference
from aspdc_jax.training.losses import charbonnier, get_loss, imagenet_mse, mse
from aspdc_jax.training.schedules import make_schedule, steps_per_epoch
from aspdc_jax.training.sharding import make_mesh, maybe_initialize_distributed
from aspdc_jax.training.state import PHASES, TrainState, init_params, make_optimizer
from aspdc_jax.training.steps import make_eval_fns, make_loss_fn, make_train_step
from aspdc_jax.training.trainer import (
    NonFiniteLossError,
    TrainingInterrupted,
    parse_phases,
    run_phase,
    train_and_evaluate,
)

__all__ = [
    "PHASES",
    "NonFiniteLossError",
    "PhaseCheckpoints",
    "TrainState",
    "TrainingInterrupted",
    "charbonnier",
    "get_loss",
    "imagenet_mse",
    "init_params",
    "load_workdir_for_inference",
    "make_eval_fns",
    "make_loss_fn",
    "make_mesh",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "maybe_initialize_distributed",
    "mse",
    "parse_phases",
    "run_phase",
    "steps_per_epoch",
    "train_and_evaluate",
]
