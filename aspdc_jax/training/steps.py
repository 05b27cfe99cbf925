"""Pure, jit-compiled train steps of the phases (`aspdc_jax.training.phases`) and the
evaluation forwards.

Each step is ``(state, batch[, frozen]) -> (state, metrics)``; ``batch`` is
``{"blurred": uint8 (B,H,W,3), "sharp": uint8 (B,H,W,3)}`` (global batch, sharded on the
mesh's ``data`` axis), converted to [-1, 1] inside the step. Params and optimizer state
are replicated and the incoming state's buffers are donated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax
from jax.sharding import Mesh

from aspdc_jax.images import to_model
from aspdc_jax.training.losses import LossFn
from aspdc_jax.training.phases import Phase, get_phase
from aspdc_jax.training.sharding import batch_sharding, replicated_sharding
from aspdc_jax.training.state import TrainState

__all__ = ["make_eval_fns", "make_loss_fn", "make_train_step"]

PyTree = Any
Metrics = dict[str, jax.Array]


def make_loss_fn(
    phase: str | Phase,
    *,
    deblur: Any,
    reblur: Any,
    image_loss: LossFn,
    phase_config: Mapping[str, Any] | None = None,
) -> Callable[..., tuple[jax.Array, Metrics]]:
    """``loss_fn(params, batch, frozen=None) -> (loss, metrics)`` of a phase: its entry in
    `aspdc_jax.training.phases.PHASE_TABLE` on a uint8 batch. ``phase_config`` is
    ``config.<phase>`` (e.g. finetune's ``reblur_weight``)."""
    phase = get_phase(phase)
    nets = {"deblur": deblur, "reblur": reblur}
    settings = dict(phase_config or {})

    def loss_fn(params, batch, frozen=None):
        blurred, sharp = to_model(batch["blurred"]), to_model(batch["sharp"])
        return phase.loss(nets, params, frozen, blurred, sharp, image_loss, settings)

    return loss_fn


def make_train_step(
    phase: str | Phase,
    *,
    deblur: Any,
    reblur: Any,
    tx: optax.GradientTransformation,
    image_loss: LossFn,
    mesh: Mesh,
    phase_config: Mapping[str, Any] | None = None,
    donate: bool = True,
) -> Callable[..., tuple[TrainState, Metrics]]:
    """The jitted step of ``phase`` over ``mesh``.

    ``step(state, batch)``, or ``step(state, batch, frozen)`` for a phase with a frozen
    network (finetune: the ReblurNet params, an input only: never updated, never donated).
    Metrics: the loss's (``loss``; finetune adds ``deblur_loss``, ``reblur_loss``),
    ``grad_norm`` and ``param_norm`` (of the updated params), all replicated f32 scalars.
    """
    phase = get_phase(phase)
    loss_fn = make_loss_fn(phase, deblur=deblur, reblur=reblur, image_loss=image_loss, phase_config=phase_config)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch: dict[str, jax.Array], frozen=None):
        (_, metrics), grads = grad_fn(state.params, batch, frozen)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # param_norm turns inf when an update blew the params up, so the NaN guard stops
        # before such params are checkpointed.
        metrics = dict(metrics, grad_norm=optax.global_norm(grads), param_norm=optax.global_norm(params))
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    repl = replicated_sharding(mesh)
    data = batch_sharding(mesh)
    donate_argnums = (0,) if donate else ()
    if phase.frozen is not None:
        return jax.jit(step, in_shardings=(repl, data, repl), out_shardings=(repl, repl), donate_argnums=donate_argnums)
    return jax.jit(
        lambda state, batch: step(state, batch),
        in_shardings=(repl, data),
        out_shardings=(repl, repl),
        donate_argnums=donate_argnums,
    )


def make_eval_fns(deblur: Any, reblur: Any) -> dict[str, Callable[..., jax.Array]]:
    """Jitted forwards on float images in [-1, 1] (NHWC, sizes already padded):

    ``deblur(params, blurred) -> deblurred`` and
    ``reblur(params, blurred, sharp) -> reblurred``.
    """
    return {
        "deblur": jax.jit(lambda p, b: deblur.apply({"params": p}, b).deblurred),
        "reblur": jax.jit(lambda p, b, s: reblur.apply({"params": p}, b, s)),
    }
