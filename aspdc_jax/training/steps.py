"""Pure, jit-compiled train steps of the three phases and the evaluation forwards.

Each step is ``(state, batch[, reblur_params]) -> (state, metrics)``; ``batch`` is
``{"blurred": uint8 (B,H,W,3), "sharp": uint8 (B,H,W,3)}`` (global batch, sharded on the
mesh's ``data`` axis), converted to [-1, 1] inside the step. Params and optimizer state
are replicated and the incoming state's buffers are donated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from aspdc_jax.images import to_model
from aspdc_jax.training.losses import LossFn
from aspdc_jax.training.sharding import batch_sharding, replicated_sharding
from aspdc_jax.training.state import PHASES, TrainState

__all__ = ["make_eval_fns", "make_loss_fn", "make_train_step"]

PyTree = Any
Metrics = dict[str, jax.Array]


def make_loss_fn(
    phase: str,
    *,
    deblur: Any,
    reblur: Any,
    image_loss: LossFn,
    reblur_weight: float = 0.1,
) -> Callable[..., tuple[jax.Array, Metrics]]:
    """``loss_fn(params, batch, reblur_params=None) -> (loss, metrics)`` of a phase.

    - deblur: ``L(D(b), s)``
    - reblur: ``L(R(b, s), b)``
    - finetune: ``L(D(b), s) + reblur_weight * L(R(b, D(b)), b)``, R frozen.
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")

    def f32(x: jax.Array) -> jax.Array:  # losses in float32 whatever the compute dtype
        return x.astype(jnp.float32)

    def loss_fn(params, batch, reblur_params=None):
        blurred = to_model(batch["blurred"])
        sharp = to_model(batch["sharp"])
        if phase == "deblur":
            out = deblur.apply({"params": params}, blurred)
            loss = image_loss(f32(out.deblurred), sharp)
            return loss, {"loss": loss}
        if phase == "reblur":
            reblurred = reblur.apply({"params": params}, blurred, sharp)
            loss = image_loss(f32(reblurred), blurred)
            return loss, {"loss": loss}
        out = deblur.apply({"params": params}, blurred)
        deblur_loss = image_loss(f32(out.deblurred), sharp)
        frozen = jax.lax.stop_gradient(reblur_params)
        reblurred = reblur.apply({"params": frozen}, blurred, out.deblurred)
        reblur_loss = image_loss(f32(reblurred), blurred)
        loss = deblur_loss + reblur_weight * reblur_loss
        return loss, {"loss": loss, "deblur_loss": deblur_loss, "reblur_loss": reblur_loss}

    return loss_fn


def make_train_step(
    phase: str,
    *,
    deblur: Any,
    reblur: Any,
    tx: optax.GradientTransformation,
    image_loss: LossFn,
    mesh: Mesh,
    reblur_weight: float = 0.1,
    donate: bool = True,
) -> Callable[..., tuple[TrainState, Metrics]]:
    """The jitted step of ``phase`` over ``mesh``.

    deblur / reblur: ``step(state, batch)``; finetune: ``step(state, batch, reblur_params)``
    (ReblurNet params are an input only: never updated, never donated).
    Metrics: ``loss`` (+ ``deblur_loss``, ``reblur_loss`` for finetune), ``grad_norm``,
    ``param_norm`` (of the updated params), all replicated f32 scalars.
    """
    loss_fn = make_loss_fn(
        phase, deblur=deblur, reblur=reblur, image_loss=image_loss, reblur_weight=reblur_weight
    )
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch: dict[str, jax.Array], reblur_params=None):
        (_, metrics), grads = grad_fn(state.params, batch, reblur_params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # param_norm turns inf when an update blew the params up, so the NaN guard stops
        # before such params are checkpointed.
        metrics = dict(
            metrics, grad_norm=optax.global_norm(grads), param_norm=optax.global_norm(params)
        )
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    repl = replicated_sharding(mesh)
    data = batch_sharding(mesh)
    donate_argnums = (0,) if donate else ()
    if phase == "finetune":
        return jax.jit(
            step,
            in_shardings=(repl, data, repl),
            out_shardings=(repl, repl),
            donate_argnums=donate_argnums,
        )
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
