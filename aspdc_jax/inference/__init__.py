"""Inference: the jit-compiled batch deblurrer (`Deblurrer`, `load`) and the deblur CLI.

    from aspdc_jax import inference
    deblurrer = inference.load("weights/demo")     # export or train.py workdir
    sharp = deblurrer.deblur(blurred_u8)           # uint8 HxWx3 -> uint8 HxWx3

Modules: :mod:`.deblurrer` (`Deblurrer`: all local devices, buckets, padding, tiling,
``deblur_stream``), :mod:`.functional` (`make_deblur_fn`: the forward as a pure function for
your own ``jax.jit`` / ``jax.vmap`` / ``jax.export``) and :mod:`.cli`
(``python -m aspdc_jax.deblur``: folders of photos in, PNGs out).
"""

from aspdc_jax.inference.deblurrer import (
    LOW_MEMORY_CPU_FLAG,
    Bucket,
    Deblurred,
    Deblurrer,
    bucket_size,
    geometric_ensemble,
    load,
    pad_to,
    tile_starts,
    use_low_memory_cpu_scheduler,
)
from aspdc_jax.inference.functional import make_deblur_fn

__all__ = [
    "LOW_MEMORY_CPU_FLAG",
    "Bucket",
    "Deblurred",
    "Deblurrer",
    "bucket_size",
    "geometric_ensemble",
    "load",
    "make_deblur_fn",
    "pad_to",
    "tile_starts",
    "use_low_memory_cpu_scheduler",
]
