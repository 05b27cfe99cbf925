"""``python -m aspdc_jax.app``: the local web app (see :mod:`aspdc_jax.app`)."""

from aspdc_jax.app import main

if __name__ == "__main__":
    raise SystemExit(main())
