"""Training: the paper's phases (deblur, reblur, finetune) as jit-compiled steps sharded
over a ``data`` mesh axis, with per-phase Orbax checkpoints.

Layout (after flax examples/imagenet): ``train.py`` parses flags and calls
:func:`train_and_evaluate`. :mod:`.loop` holds it and the step loop, read top to bottom;
:mod:`.phases` is the table of phases (what each trains, freezes, optimises and starts
from); :mod:`.context` what a phase run fixes before its first step; :mod:`.start` how a
phase starts (fresh, resumed, handed off or done); :mod:`.jobs` the periodic jobs after
each step (log, NaN guard, checkpoint, preview, validation, time budget, signals, CPU heap
settle); :mod:`.evaluator` the held-out evaluation and the best-step export;
:mod:`.steps` the pure jitted steps, :mod:`.state` the train state and optimizer,
:mod:`.schedules` the epoch-based learning rates, :mod:`.losses` the image losses,
:mod:`.sharding` the mesh placement and joining several hosts, :mod:`.failures` what a
process of a multi-process run does on failure, :mod:`.summaries` JSONL/TensorBoard and
:mod:`.validation` the PSNR of the evaluations. The checkpoint format is
:mod:`aspdc_jax.checkpoint`'s.
"""

from aspdc_jax.checkpoint import PhaseCheckpoints
from aspdc_jax.training.loop import (
    NonFiniteLossError,
    TrainingInterrupted,
    parse_phases,
    run_phase,
    train_and_evaluate,
)
from aspdc_jax.training.losses import charbonnier, get_loss, imagenet_mse, mse
from aspdc_jax.training.phases import PHASE_TABLE, PHASES, Phase, get_phase
from aspdc_jax.training.schedules import make_schedule, steps_per_epoch
from aspdc_jax.training.sharding import make_mesh, maybe_initialize_distributed
from aspdc_jax.training.state import TrainState, make_optimizer
from aspdc_jax.training.steps import make_eval_fns, make_loss_fn, make_train_step

__all__ = [
    "PHASES",
    "PHASE_TABLE",
    "NonFiniteLossError",
    "Phase",
    "PhaseCheckpoints",
    "TrainState",
    "TrainingInterrupted",
    "charbonnier",
    "get_loss",
    "get_phase",
    "imagenet_mse",
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
