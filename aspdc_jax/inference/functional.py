"""The deblurring forward as one pure function, for your own jitted pipeline.

    from aspdc_jax.inference import make_deblur_fn
    from aspdc_jax.weights import load_for_inference

    loaded = load_for_inference("weights/demo")        # export or train.py workdir
    deblur_fn = jax.jit(make_deblur_fn(loaded))
    sharp = deblur_fn(loaded.deblur_params, blurred)   # uint8 (B, H, W, 3) -> same

`make_deblur_fn` returns ``fn(params, images_u8)``: uint8 NHWC images in [0, 255] of any
height and width in, uint8 images of the same shape out, computed exactly as
:class:`aspdc_jax.inference.Deblurrer` computes them with ``bucket="exact"`` (reflect-pad
at the bottom/right to the network's multiple of 4, run, crop back, round half to even).
Unlike the ``Deblurrer`` it does no host work (no buckets, no tiling, no NumPy): it traces
under ``jax.jit`` (with any in/out shardings, e.g. the batch split over a mesh),
``jax.vmap`` (params unmapped), ``jax.export`` with symbolic shapes (see
:mod:`aspdc_jax.export`), and runs per batch inside a ``tf.data`` / ``grain`` loop. Every
distinct input shape compiles once under ``jax.jit``: feed fixed-size batches (or pad them
yourself) to avoid recompilation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from aspdc_jax.images import to_model
from aspdc_jax.inference.deblurrer import deblurred_of, geometric_ensemble
from aspdc_jax.models.config import compute_dtype

__all__ = ["DeblurFn", "make_deblur_fn", "reflect_pad"]

PyTree = Any
#: ``fn(params, images_u8) -> images_u8``: the DeblurNet ``params`` collection and uint8
#: (B, H, W, 3) NHWC images in [0, 255] -> uint8 (B, H, W, 3) deblurred images.
DeblurFn = Callable[[PyTree, jax.Array], jax.Array]


def _reflect_index(target: Any, size: Any) -> jax.Array:
    """Indices ``0..target-1`` into an axis of ``size`` that reproduce ``np.pad(mode="reflect")``
    (mirror without repeating the edge, again and again when the pad exceeds ``size - 1``;
    a 1-pixel side repeats). ``target`` and ``size`` may be symbolic (``jax.export``)."""
    period = 2 * (size - 1)
    i = jnp.arange(target) % jnp.maximum(period, 1)
    return jnp.where(i < size, i, period - i)


def reflect_pad(images: jax.Array, multiple: int = 4) -> jax.Array:
    """Reflect-pads (B, H, W, C) NHWC images at the bottom/right to the next multiple of
    ``multiple`` in H and W, as ``np.pad(..., mode="reflect")`` does; any dtype and range
    (the values are only copied). H and W may be symbolic dimensions (``jax.export``).

    Returns:
      (B, ceil(H/multiple)*multiple, ceil(W/multiple)*multiple, C), same dtype.
    """
    for axis in (1, 2):
        size = images.shape[axis]
        target = (size + multiple - 1) // multiple * multiple
        if target == size:  # False when it cannot be proven for symbolic sizes: pad anyway
            continue
        images = jnp.take(images, _reflect_index(target, size), axis=axis, mode="clip")
    return images


def _module_of(models: Any) -> Any:
    """A flax module from a module or :class:`aspdc_jax.weights.LoadedModels` (``.deblur``)."""
    module = getattr(models, "deblur", models)
    if not hasattr(module, "apply"):
        raise ValueError(
            "make_deblur_fn needs a flax DeblurNet module or the LoadedModels of "
            f"aspdc_jax.weights.load_for_inference, got {type(models).__name__}"
        )
    return module


def _check_images(images: jax.Array) -> None:
    """Trace-time check: uint8 (B, H, W, 3)."""
    shape, dtype = tuple(getattr(images, "shape", ())), getattr(images, "dtype", None)
    if dtype != jnp.uint8:
        raise ValueError(
            f"deblur_fn expects uint8 images in [0, 255], got dtype {dtype}; convert with "
            "np.clip(np.round(x * 255), 0, 255).astype(np.uint8) for x in [0, 1]"
        )
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"deblur_fn expects a uint8 (B, H, W, 3) NHWC batch, got shape {shape}")


def make_deblur_fn(
    models: Any,
    *,
    dtype: str = "float32",
    self_ensemble: bool = False,
    multiple: int = 4,
) -> DeblurFn:
    """The deblurring forward as a pure function of ``(params, images_u8)``.

    Args:
      models: a flax DeblurNet (or any module whose ``apply({"params": p}, x)`` maps
        (B, H, W, 3) float in [-1, 1] to an output with ``.deblurred`` in [-1, 1]), or the
        :class:`aspdc_jax.weights.LoadedModels` of ``load_for_inference`` (its ``.deblur``).
      dtype: ``"float32"`` or ``"bfloat16"`` compute; with bfloat16 the module is cloned
        with that dtype and the float params are cast inside the function (pass the
        float32 params as loaded), as :class:`aspdc_jax.inference.Deblurrer` does.
      self_ensemble: the geometric x8 self-ensemble (`geometric_ensemble`, 8 forwards).
      multiple: the module's size requirement (4 for DeblurNet); inputs are reflect-padded
        to it at the bottom/right and the output is cropped back.

    Returns:
      ``fn(params, images_u8)``: ``params`` the module's ``params`` collection, and
      ``images_u8`` uint8 (B, H, W, 3) NHWC in [0, 255], any H, W >= 1 (static or
      symbolic). Returns uint8 (B, H, W, 3): ``round(clip((y + 1) * 127.5, 0, 255))``
      (half to even) of the network output ``y``, bit for bit what
      ``Deblurrer(..., bucket="exact").deblur`` returns.
    """
    module = _module_of(models)
    compute = compute_dtype(dtype)
    if hasattr(module, "dtype") and hasattr(module, "clone"):
        module = module.clone(dtype=compute)
    ensemble = bool(self_ensemble)

    def deblur_fn(params: PyTree, images_u8: jax.Array) -> jax.Array:
        _check_images(images_u8)
        height, width = images_u8.shape[1:3]
        if compute != jnp.float32:
            params = jax.tree_util.tree_map(
                lambda p: p.astype(compute) if jnp.issubdtype(p.dtype, jnp.floating) else p, params
            )
        x = to_model(reflect_pad(images_u8, multiple), compute)

        def run(z: jax.Array) -> jax.Array:
            return deblurred_of(module.apply({"params": params}, z)).astype(jnp.float32)

        y = geometric_ensemble(run, x) if ensemble else run(x)
        y = jnp.clip((y + 1.0) * 127.5, 0.0, 255.0)[:, :height, :width]
        return jnp.round(y).astype(jnp.uint8)

    return deblur_fn
