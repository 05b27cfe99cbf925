"""Train state and optimizer of one phase."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from aspdc_jax.trees import flatten

__all__ = ["TrainState", "ema_decay_at", "make_optimizer", "param_shapes"]

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """What one phase's step updates: the trained network's params and Adam state.

    For ``finetune`` ``params`` is DeblurNet only; the frozen ReblurNet params are passed
    to the step separately and never get optimizer state.
    """

    step: jax.Array  # int32 scalar: optimizer steps taken in this phase
    params: PyTree
    opt_state: PyTree
    ema_params: PyTree = None  # exponential moving average of params (config.ema_decay > 0)

    @classmethod
    def create(cls, params: PyTree, tx: optax.GradientTransformation, *, ema: bool = False) -> TrainState:
        """Step 0; with ``ema`` the average starts as a copy of ``params``."""
        ema_params = jax.tree_util.tree_map(jnp.copy, params) if ema else None
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), ema_params=ema_params)

    @property
    def eval_params(self) -> PyTree:
        """The weights to evaluate, hand on and export: the EMA when kept, else params."""
        return self.params if self.ema_params is None else self.ema_params


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
    """The EMA decay used at optimizer step ``step`` (0-based): ``min(decay, (1 + t) / (10 + t))``.

    The warm-up (as in TensorFlow's ``ExponentialMovingAverage(num_updates=...)`` and timm)
    keeps the first steps' weights, still close to the init, from being frozen into the
    average: 0.1 at step 0, 0.5 at step 8, 0.9 at step 80, 0.99 at step 890.
    """
    t = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + t) / (10.0 + t))


#: Layers whose outputs steer the deformable sampling (offsets and modulation masks);
#: `make_optimizer` scales their updates by ``config.offset_lr_multiplier``.
SAMPLING_LAYERS = ("offset_conv", "mask_conv")


def _is_sampling_leaf(path: tuple[Any, ...]) -> bool:
    return any(str(getattr(k, "key", k)) in SAMPLING_LAYERS for k in path)


def make_optimizer(
    config: ml_collections.ConfigDict, learning_rate: optax.ScalarOrSchedule
) -> optax.GradientTransformation:
    """Adam(b1, b2, eps) of the paper with the phase's schedule.

    Optional: global-norm gradient clipping (``config.grad_clip_norm`` > 0) and a smaller
    step for the offset and mask predictors of the deformable convolutions
    (``config.offset_lr_multiplier`` < 1, as DCN-based restoration models train them,
    e.g. BasicSR's EDVR at 0.1-0.25): Adam moves every weight by ~lr per step whatever its
    gradient, and an offset predictor that moves as fast as the rest sends the sampling
    points off by pixels in a few hundred steps.
    """
    adam = optax.adam(
        learning_rate,
        b1=float(config.adam_b1),
        b2=float(config.adam_b2),
        eps=float(config.adam_eps),
    )
    parts: list[optax.GradientTransformation] = []
    clip = float(config.grad_clip_norm)
    if clip > 0:
        parts.append(optax.clip_by_global_norm(clip))
    parts.append(adam)
    mult = float(config.offset_lr_multiplier)
    if mult != 1.0:
        scale_sampling = optax.masked(
            optax.scale(mult),
            lambda params: jax.tree_util.tree_map_with_path(lambda p, _: _is_sampling_leaf(p), params),
        )
        parts.append(scale_sampling)
    return parts[0] if len(parts) == 1 else optax.chain(*parts)


def param_shapes(params: PyTree) -> dict[str, list[int]]:
    """``{"path/to/leaf": shape}`` of a params tree (JSON-able; used for shape checks)."""
    return {key: [int(d) for d in jnp.shape(leaf)] for key, leaf in flatten(params).items()}
