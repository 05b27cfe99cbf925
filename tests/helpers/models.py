"""Shared helpers for the evaluation / inference tests (tiny networks, tiny checkpoints)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from aspdc_jax.models import model_config_dict, model_defaults
from aspdc_jax.weights import save_export

TINY_MODEL = model_defaults().replace(deblur_width=4, reblur_width=4, num_groups=1)


def random_params(module, *inputs, seed: int = 0):
    """Random ``params`` with the module's shapes, filled by numpy (no XLA compile).

    ``jax.jit(module.init)`` takes 40+ s to compile on 2 busy cores for these nets, so the
    tests fill ``jax.eval_shape(module.init)`` the way the models initialise: conv kernels
    Xavier-normal (a leading axis of 5-D kernels is the stacked groups), biases zero.
    """
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *inputs)["params"]
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = getattr(path[-1], "key", str(path[-1]))
        if name != "kernel":
            return np.zeros(leaf.shape, np.float32)
        shape = leaf.shape[1:] if len(leaf.shape) == 5 else leaf.shape
        receptive = int(np.prod(shape[:-2]))
        std = np.sqrt(2.0 / (receptive * (shape[-2] + shape[-1])))
        return (std * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def tiny_models(seed: int = 0):
    """(deblur, deblur_params, reblur, reblur_params) at width 4, one ASPDC group."""
    deblur, reblur = TINY_MODEL.networks()
    x = jnp.zeros((1, 16, 16, 3))
    dparams = random_params(deblur, x, seed=seed)
    rparams = random_params(reblur, x, x, seed=seed + 1)
    return deblur, dparams, reblur, rparams


def tiny_export(directory: Path, seed: int = 0, with_reblur: bool = True) -> Path:
    deblur, dparams, reblur, rparams = tiny_models(seed)
    return save_export(
        directory,
        model_config=model_config_dict(deblur, reblur),
        deblur_params=dparams,
        reblur_params=rparams if with_reblur else None,
    )


def smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A uint8 (h, w, 3) image with some structure (blurry noise), not pure noise."""
    from scipy.ndimage import gaussian_filter

    img = rng.integers(0, 256, (h, w, 3)).astype(np.float32)
    img = gaussian_filter(img, (2, 2, 0)) * 1.5 - 64
    return np.clip(img, 0, 255).astype(np.uint8)
