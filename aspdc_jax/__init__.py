"""aspdc-jax: ASPDC blind non-uniform motion deblurring in JAX/Flax.

Images inside the models are NHWC float32 RGB in [-1, 1] (``x = u8 / 127.5 - 1``).
"""

__version__ = "0.1.0"
