"""The deblurring forward as one pure function: `deblur_forward`, and `make_deblur_fn` for
your own jitted pipeline.

    from aspdc_jax.inference import make_deblur_fn
    from aspdc_jax.weights import load_for_inference

    loaded = load_for_inference("weights/demo")        # export or train.py workdir
    deblur_fn = jax.jit(make_deblur_fn(loaded))
    sharp = deblur_fn(loaded.deblur_params, blurred)   # uint8 (B, H, W, 3) -> same

`deblur_forward` is the one forward of the package: uint8 images in, float [0, 255] out
(reflect-pad at the bottom/right to the network's multiple of 4, the compute dtype, the
optional x8 self-ensemble, crop back). :class:`aspdc_jax.inference.Deblurrer` jits it once
per bucket shape over its devices, `make_deblur_fn` rounds its output to uint8, and the
validation during training (`aspdc_jax.training.validation`) scores it.

`make_deblur_fn` returns ``fn(params, images_u8)``: uint8 NHWC images in [0, 255] of any
height and width in, uint8 images of the same shape out, exactly what
:class:`aspdc_jax.inference.Deblurrer` returns with ``bucket="exact"``. Unlike the
``Deblurrer`` it does no host work (no buckets, no tiling, no NumPy): it traces
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

from aspdc_jax.images import quantize, reflect_pad, to_model, to_pixels
from aspdc_jax.models.config import compute_dtype

__all__ = ["DeblurFn", "deblur_forward", "deblurred_of", "geometric_ensemble", "in_compute_dtype", "make_deblur_fn"]

PyTree = Any
#: ``fn(params, images_u8) -> images_u8``: the DeblurNet ``params`` collection and uint8
#: (B, H, W, 3) NHWC images in [0, 255] -> uint8 (B, H, W, 3) deblurred images.
DeblurFn = Callable[[PyTree, jax.Array], jax.Array]


def deblurred_of(out: Any) -> jax.Array:
    """The deblurred image of a module's output: ``.deblurred``, a tuple's first item, or
    the bare array (what `deblur_forward` accepts from a module)."""
    if hasattr(out, "deblurred"):
        return out.deblurred
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def _flips(x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (4, B, H, W, C): as is, flipped up-down, left-right, and both."""
    return jnp.stack([x, x[:, ::-1], x[:, :, ::-1], x[:, ::-1, ::-1]])


def _flips_undone(y: jax.Array) -> jax.Array:
    """The sum over the 4 outputs of `_flips`, each flipped back."""
    return y[0] + y[1][:, ::-1] + y[2][:, :, ::-1] + y[3][:, ::-1, ::-1]


def geometric_ensemble(run: Any, x: jax.Array) -> jax.Array:
    """The x8 self-ensemble (BasicSR, MAXIM): ``run`` on the 8 flips and transposes of ``x``
    (B, H, W, C), each output mapped back, averaged. The 4 flips of each orientation run
    one after another in a ``lax.map`` (the memory of one forward), all in one program."""
    upright = _flips_undone(jax.lax.map(run, _flips(x)))
    transposed = _flips_undone(jax.lax.map(run, _flips(jnp.swapaxes(x, 1, 2))))
    return (upright + jnp.swapaxes(transposed, 1, 2)) / 8.0


def in_compute_dtype(module: Any, params: PyTree, dtype: str) -> tuple[Any, PyTree]:
    """``module`` computing in ``dtype`` (``"float32"`` or ``"bfloat16"``; a flax module is
    cloned with it, any other object is kept) and ``params`` with their float leaves cast to
    it (no-op for leaves already in it)."""
    compute = compute_dtype(dtype)
    if hasattr(module, "dtype") and hasattr(module, "clone"):
        module = module.clone(dtype=compute)
    if compute != jnp.float32:
        params = jax.tree_util.tree_map(
            lambda p: p.astype(compute) if jnp.issubdtype(p.dtype, jnp.floating) else p, params
        )
    return module, params


def deblur_forward(
    module: Any,
    params: PyTree,
    images_u8: jax.Array,
    *,
    dtype: str = "float32",
    self_ensemble: bool = False,
    multiple: int = 4,
) -> jax.Array:
    """The deblurring forward, pure and traceable: uint8 images -> float pixels.

    Args:
      module: a flax DeblurNet, or any object whose ``apply({"params": p}, x)`` maps
        (B, H, W, 3) float in [-1, 1] to an output in [-1, 1]: ``.deblurred``, a tuple whose
        first item is the image, or the bare array.
      params: the module's ``params`` collection (float32 as loaded; cast to ``dtype``).
      images_u8: uint8 (B, H, W, 3) NHWC in [0, 255], any H, W >= 1 (static or symbolic).
      dtype: ``"float32"`` or ``"bfloat16"`` compute (the module is cloned with it).
      self_ensemble: the geometric x8 self-ensemble (`geometric_ensemble`, 8 forwards).
      multiple: the module's size requirement (4 for DeblurNet): the images are
        reflect-padded to it at the bottom/right and the output is cropped back.

    Returns:
      float32 (B, H, W, 3) in [0, 255], not rounded: `aspdc_jax.images.to_pixels` of the
      network output (`aspdc_jax.images.quantize` rounds it to uint8).
    """
    module, params = in_compute_dtype(module, params, dtype)
    height, width = images_u8.shape[1:3]
    x = to_model(reflect_pad(images_u8, multiple), compute_dtype(dtype))

    def run(z: jax.Array) -> jax.Array:
        return deblurred_of(module.apply({"params": params}, z)).astype(jnp.float32)

    y = geometric_ensemble(run, x) if self_ensemble else run(x)
    return to_pixels(y)[:, :height, :width]


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
      models: a flax DeblurNet (or any module with `deblur_forward`'s contract), or the
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
      symbolic). Returns uint8 (B, H, W, 3): ``quantize(deblur_forward(...))``, rounded
      half to even, bit for bit what ``Deblurrer(..., bucket="exact").deblur`` returns.
    """
    module = _module_of(models)
    compute_dtype(dtype)  # validates the name now, not at the first trace
    ensemble = bool(self_ensemble)

    def deblur_fn(params: PyTree, images_u8: jax.Array) -> jax.Array:
        _check_images(images_u8)
        pixels = deblur_forward(module, params, images_u8, dtype=dtype, self_ensemble=ensemble, multiple=multiple)
        return quantize(pixels)

    return deblur_fn
