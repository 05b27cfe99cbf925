"""Training configs: ``default.py`` is the base (the paper) and the one source of every
default; the variants state only what differs. Shipped with ``aspdc_jax`` so that
`aspdc_jax.settings.base_config` finds the base in an installed copy too."""
