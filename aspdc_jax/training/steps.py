"""Pure, jit-compiled train steps of the phases (`aspdc_jax.training.phases`) and the
evaluation forwards.

Each step is ``(state, batch[, frozen]) -> (state, metrics)``; ``batch`` is
``{"blurred": uint8 (B,H,W,3), "sharp": uint8 (B,H,W,3)}`` (global batch, sharded on the
mesh's `aspdc_jax.devices.DATA_AXIS`), converted to [-1, 1] inside the step. Params and optimizer state
are replicated and the incoming state's buffers are donated.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from aspdc_jax.devices import batch_sharding, replicated_sharding
from aspdc_jax.images import reflect_pad, to_model, to_pixels
from aspdc_jax.inference.functional import deblur_forward
from aspdc_jax.training.losses import LossFn
from aspdc_jax.training.phases import Phase, get_phase
from aspdc_jax.training.state import TrainState, ema_decay_at

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
    grad_accum_steps: int = 1,
    ema_decay: float = 0.0,
    donate: bool = True,
) -> Callable[..., tuple[TrainState, Metrics]]:
    """The jitted step of ``phase`` over ``mesh``.

    ``step(state, batch)``, or ``step(state, batch, frozen)`` for a phase with a frozen
    network (finetune: the ReblurNet params, an input only: never updated, never donated).
    Metrics: the loss's (``loss``; finetune adds ``deblur_loss``, ``reblur_loss``),
    ``grad_norm`` and ``param_norm`` (of the updated params), all replicated f32 scalars.

    ``grad_accum_steps`` k > 1 splits the batch into k micro-batches (every k-th example
    each, so each device keeps its own rows) and sums their gradients in a ``lax.scan``
    before the one update: the update of the whole batch, with the activations of a k-th
    of it. ``ema_decay`` > 0 also updates ``state.ema_params`` (see `ema_decay_at`).
    """
    phase = get_phase(phase)
    if grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
    loss_fn = make_loss_fn(phase, deblur=deblur, reblur=reblur, image_loss=image_loss, phase_config=phase_config)
    grad_fn = _accumulated(jax.value_and_grad(loss_fn, has_aux=True), grad_accum_steps)

    def step(state: TrainState, batch: dict[str, jax.Array], frozen=None):
        metrics, grads = grad_fn(state.params, batch, frozen)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if ema_decay > 0:
            d = ema_decay_at(state.step, ema_decay)
            ema = jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
        # param_norm turns inf when an update blew the params up, so the NaN guard stops
        # before such params are checkpointed.
        metrics = dict(metrics, grad_norm=optax.global_norm(grads), param_norm=optax.global_norm(params))
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
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


def _accumulated(grad_fn: Callable[..., Any], k: int) -> Callable[..., tuple[Metrics, PyTree]]:
    """``(params, batch, frozen) -> (metrics, grads)``: the mean over k micro-batches."""
    if k == 1:

        def whole(params, batch, frozen):
            (_, metrics), grads = grad_fn(params, batch, frozen)
            return metrics, grads

        return whole

    def split(x: jax.Array) -> jax.Array:
        if x.shape[0] % k:
            raise ValueError(f"the batch of {x.shape[0]} does not split into grad_accum_steps={k} micro-batches")
        return jnp.moveaxis(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 1, 0)

    def accumulate(params, batch, frozen):
        micro = jax.tree_util.tree_map(split, batch)
        first = jax.tree_util.tree_map(lambda x: x[0], micro)
        (_, metrics0), grads0 = grad_fn(params, first, frozen)

        def body(carry, mb):
            (_, metrics), grads = grad_fn(params, mb, frozen)
            return jax.tree_util.tree_map(jnp.add, carry, (metrics, grads)), None

        rest = jax.tree_util.tree_map(lambda x: x[1:], micro)
        total, _ = jax.lax.scan(body, (metrics0, grads0), rest)
        return jax.tree_util.tree_map(lambda x: x / k, total)

    return accumulate


def make_eval_fns(deblur: Any, reblur: Any) -> dict[str, Callable[..., jax.Array]]:
    """Jitted forwards of the two networks (float32), for validation and previews.

    On uint8 images (B, H, W, 3) of any size, returning float32 pixels in [0, 255], not
    rounded (what `aspdc_jax.training.validation.evaluate_pairs` scores):

    * ``deblur_pixels(params, blurred) -> deblurred``: the package's one forward,
      `aspdc_jax.inference.functional.deblur_forward`, as the ``Deblurrer`` and
      ``make_deblur_fn`` run it;
    * ``reblur_pixels(params, blurred, sharp) -> reblurred``: ReblurNet with the same
      reflect-padding (to its multiple of 8) and conversions.

    On model-range images in [-1, 1] whose sizes the networks accept (previews):

    * ``deblur(params, blurred) -> deblurred`` and ``reblur(params, blurred, sharp) -> reblurred``.
    """

    def reblur_pixels(params: PyTree, blurred: jax.Array, sharp: jax.Array) -> jax.Array:
        h, w = blurred.shape[1:3]
        b, s = to_model(reflect_pad(blurred, 8)), to_model(reflect_pad(sharp, 8))
        return to_pixels(reblur.apply({"params": params}, b, s))[:, :h, :w]

    return {
        "deblur_pixels": jax.jit(functools.partial(deblur_forward, deblur)),
        "reblur_pixels": jax.jit(reblur_pixels),
        "deblur": jax.jit(lambda p, b: deblur.apply({"params": p}, b).deblurred),
        "reblur": jax.jit(lambda p, b, s: reblur.apply({"params": p}, b, s)),
    }
