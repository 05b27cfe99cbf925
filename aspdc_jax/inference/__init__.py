"""Inference: the jit-compiled batch deblurrer (`Deblurrer`, `load`) and the deblur CLI.

    from aspdc_jax import inference
    deblurrer = inference.load("weights/demo")     # export or train.py workdir
    sharp = deblurrer.deblur(blurred_u8)           # uint8 HxWx3 -> uint8 HxWx3

Modules: :mod:`.functional` (`deblur_forward`: the one forward, uint8 in, pixels out, that
the `Deblurrer`, `make_deblur_fn` and the validation during training run; `make_deblur_fn`:
it as a pure function for your own ``jax.jit`` / ``jax.vmap`` / ``jax.export``),
:mod:`.deblurrer` (`Deblurrer`: all local devices, buckets, padding, tiling,
``deblur_stream``) and :mod:`.cli`
(``python -m aspdc_jax.deblur``: folders of photos in, PNGs out).
"""

from aspdc_jax.inference.deblurrer import (
    LOW_MEMORY_CPU_FLAG,
    Bucket,
    Deblurred,
    Deblurrer,
    bucket_size,
    load,
    tile_starts,
    use_low_memory_cpu_scheduler,
)
from aspdc_jax.inference.functional import deblur_forward, geometric_ensemble, make_deblur_fn

__all__ = [
    "LOW_MEMORY_CPU_FLAG",
    "Bucket",
    "Deblurred",
    "Deblurrer",
    "bucket_size",
    "deblur_forward",
    "geometric_ensemble",
    "load",
    "make_deblur_fn",
    "tile_starts",
    "use_low_memory_cpu_scheduler",
]
