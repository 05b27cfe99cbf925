"""Learning-rate schedules expressed in epochs.

The paper halves the learning rate every K epochs and stops when it would fall below a
floor: phases 1-2 start at 1e-4, K = 1000, floor 1e-6 (7 levels, 7000 epochs); phase 3
starts at 1e-5, K = 200 (4 levels, 800 epochs).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import ml_collections
import optax

__all__ = ["PhaseSchedule", "halving_levels", "make_schedule", "steps_per_epoch"]

SCHEDULES = ("halving", "constant", "cosine")


def steps_per_epoch(examples_per_epoch: int, global_batch_size: int) -> int:
    """Optimizer steps in one epoch: ``max(1, examples // batch)`` (last partial batch dropped)."""
    if examples_per_epoch <= 0 or global_batch_size <= 0:
        raise ValueError(
            f"examples_per_epoch and global_batch_size must be positive, got "
            f"{examples_per_epoch} and {global_batch_size}"
        )
    return max(1, examples_per_epoch // global_batch_size)


def halving_levels(lr: float, min_lr: float) -> int:
    """Number of learning-rate levels ``lr, lr/2, ...`` that stay >= ``min_lr``."""
    if lr <= 0 or min_lr <= 0:
        raise ValueError(f"lr and min_lr must be positive, got lr={lr}, min_lr={min_lr}")
    if lr < min_lr:
        raise ValueError(f"lr {lr} is already below the floor min_lr {min_lr}")
    # Small tolerance so that e.g. lr=4e-6, min_lr=1e-6 gives exactly 3 levels.
    return int(math.floor(math.log2(lr / min_lr) + 1e-9)) + 1


@dataclasses.dataclass(frozen=True)
class PhaseSchedule:
    """A phase's learning-rate schedule and length, resolved to steps."""

    fn: optax.Schedule
    total_steps: int
    steps_per_epoch: int
    num_epochs: float


def make_schedule(phase_cfg: ml_collections.ConfigDict, *, steps_per_epoch: int) -> PhaseSchedule:
    """Builds the schedule of one phase from its config block (``config.deblur`` etc.).

    Fields: ``schedule`` (halving|constant|cosine), ``lr``, ``min_lr``,
    ``halve_every_epochs``, ``num_epochs`` (None: for "halving", until the lr would drop
    below ``min_lr``; required otherwise), ``warmup_epochs``.
    """
    kind = phase_cfg.schedule
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
    lr = float(phase_cfg.lr)
    min_lr = float(phase_cfg.min_lr)
    if not lr > 0 or not min_lr >= 0:
        raise ValueError(f"lr must be > 0 and min_lr >= 0, got lr={lr}, min_lr={min_lr}")
    num_epochs = phase_cfg.num_epochs
    if kind == "halving":
        every = float(phase_cfg.halve_every_epochs)
        if every <= 0:
            raise ValueError(f"halve_every_epochs must be > 0, got {every}")
        if num_epochs is None:
            num_epochs = halving_levels(lr, min_lr) * every
    elif num_epochs is None:
        raise ValueError(f"schedule {kind!r} needs num_epochs (got None)")
    num_epochs = float(num_epochs)
    if num_epochs <= 0:
        raise ValueError(f"num_epochs must be > 0, got {num_epochs}")
    warmup_epochs = float(phase_cfg.warmup_epochs)
    if not 0 <= warmup_epochs <= num_epochs:
        raise ValueError(f"warmup_epochs must be in [0, num_epochs={num_epochs:g}], got {warmup_epochs:g}")
    total_steps = max(1, int(round(num_epochs * steps_per_epoch)))
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    warmup_steps = min(warmup_steps, total_steps - 1) if total_steps > 1 else 0

    if kind == "halving":
        every_steps = max(1, int(round(float(phase_cfg.halve_every_epochs) * steps_per_epoch)))
        floor_level = halving_levels(lr, min_lr) - 1

        def base(step):
            level = jnp.minimum(step // every_steps, floor_level)
            return lr * jnp.power(0.5, level.astype(jnp.float32))

    elif kind == "constant":

        def base(step):
            return jnp.full((), lr, jnp.float32) + 0.0 * step

    else:
        decay = optax.cosine_decay_schedule(lr, max(1, total_steps - warmup_steps), min_lr / lr)

        def base(step):
            return decay(jnp.maximum(step - warmup_steps, 0))

    if warmup_steps > 0:

        def fn(step):
            step = jnp.asarray(step)
            warm = lr * (step.astype(jnp.float32) + 1.0) / warmup_steps
            return jnp.where(step < warmup_steps, warm, base(step)).astype(jnp.float32)

    else:

        def fn(step):
            return jnp.asarray(base(jnp.asarray(step)), jnp.float32)

    return PhaseSchedule(fn=fn, total_steps=total_steps, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs)
