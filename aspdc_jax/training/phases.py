"""The training phases as data: one `Phase` entry per phase, in the order they run.

The paper trains in three phases:

1. ``deblur``: DeblurNet D alone, ``L(D(b), s)``;
2. ``reblur``: ReblurNet R alone, ``L(R(b, s), b)`` (R re-blurs a sharp image the way
   b is blurred);
3. ``finetune``: D again, from phase 1's weights, with R frozen at phase 2's:
   ``L(D(b), s) + lambda * L(R(b, D(b)), b)`` (the reblurring consistency loss).

Each entry says what the phase trains, what it holds frozen, its loss, where its weights
start and what its evaluation scores; the loop in :mod:`.loop` has no phase-specific
branches. A new phase is one more entry here (plus its loss function) and a section of the
same name in the config (``config.<name>``: schedule, learning rate, loss weights).

Losses are ``loss(nets, params, frozen, blurred, sharp, image_loss, phase_config) ->
(loss, metrics)`` on float images in [-1, 1] (NHWC); ``nets`` maps ``"deblur"`` and
``"reblur"`` to the modules, ``params`` are the trained network's, ``frozen`` the held
network's (or None), and the metrics always include ``loss``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["PHASES", "PHASE_TABLE", "Phase", "get_phase"]

PyTree = Any
Metrics = dict[str, jax.Array]
ImageLoss = Callable[[jax.Array, jax.Array], jax.Array]
PhaseLoss = Callable[..., tuple[jax.Array, Metrics]]


def _f32(x: jax.Array) -> jax.Array:
    """Losses in at least float32 whatever the compute dtype (bfloat16 -> float32)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def deblur_loss(nets, params, frozen, blurred, sharp, image_loss, phase_config) -> tuple[jax.Array, Metrics]:
    """``L(D(b), s)``."""
    loss = image_loss(_f32(nets["deblur"].apply({"params": params}, blurred).deblurred), sharp)
    return loss, {"loss": loss}


def reblur_loss(nets, params, frozen, blurred, sharp, image_loss, phase_config) -> tuple[jax.Array, Metrics]:
    """``L(R(b, s), b)``."""
    loss = image_loss(_f32(nets["reblur"].apply({"params": params}, blurred, sharp)), blurred)
    return loss, {"loss": loss}


def consistency_loss(nets, params, frozen, blurred, sharp, image_loss, phase_config) -> tuple[jax.Array, Metrics]:
    """``L(D(b), s) + reblur_weight * L(R(b, D(b)), b)`` with R frozen
    (``phase_config.reblur_weight``, the paper's lambda, Table 6)."""
    deblurred = nets["deblur"].apply({"params": params}, blurred).deblurred
    deblur_term = image_loss(_f32(deblurred), sharp)
    reblurred = nets["reblur"].apply({"params": jax.lax.stop_gradient(frozen)}, blurred, deblurred)
    reblur_term = image_loss(_f32(reblurred), blurred)
    loss = deblur_term + float(phase_config["reblur_weight"]) * reblur_term
    return loss, {"loss": loss, "deblur_loss": deblur_term, "reblur_loss": reblur_term}


@dataclasses.dataclass(frozen=True)
class Phase:
    """One training phase.

    Attributes:
      name: the phase's name: its config section, checkpoint folder and log prefix.
      network: the network whose params are trained (``"deblur"`` or ``"reblur"``).
      loss: the phase's loss function (see the module docstring).
      frozen: the network held fixed and given to the loss, or None.
      init_from: the phase whose final params the trained network starts from (that
        phase must have finished in the same workdir), or None for a fresh init.
      frozen_from: the phase whose final params the frozen network takes.
      evaluates: what the after-phase evaluation scores: ``"deblur"`` (D(b) vs s) or
        ``"reblur"`` (R(b, s) vs b).
    """

    name: str
    network: str
    loss: PhaseLoss
    frozen: str | None = None
    init_from: str | None = None
    frozen_from: str | None = None
    evaluates: str = "deblur"

    @property
    def index(self) -> int:
        """Position in the run (seeds and the order of a workdir's phases derive from it)."""
        return [p.name for p in PHASE_TABLE].index(self.name)

    @property
    def hands_off_from(self) -> dict[str, str]:
        """``{"params" | "frozen": phase}``: the earlier phases this one starts from."""
        pairs = (("params", self.init_from), ("frozen", self.frozen_from))
        return {item: phase for item, phase in pairs if phase is not None}


PHASE_TABLE: tuple[Phase, ...] = (
    Phase("deblur", network="deblur", loss=deblur_loss),
    Phase("reblur", network="reblur", loss=reblur_loss, evaluates="reblur"),
    Phase(
        "finetune",
        network="deblur",
        loss=consistency_loss,
        frozen="reblur",
        init_from="deblur",
        frozen_from="reblur",
    ),
)

#: The phase names, in the order they run.
PHASES: tuple[str, ...] = tuple(p.name for p in PHASE_TABLE)


def get_phase(phase: str | Phase) -> Phase:
    """The `Phase` named ``phase`` (a `Phase` is returned as it is); ValueError otherwise."""
    if isinstance(phase, Phase):
        return phase
    by_name: Mapping[str, Phase] = {p.name: p for p in PHASE_TABLE}
    if phase not in by_name:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    return by_name[phase]
