"""``python -m aspdc_jax.deblur``: the deblur CLI (see :mod:`aspdc_jax.inference.cli`)."""

from aspdc_jax.inference.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
