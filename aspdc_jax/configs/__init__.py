"""The base config, shipped with the package: :mod:`.default` (the paper's recipe) is the
one source of every default and documents every field; `aspdc_jax.settings.base_config`
reads it. The training variants of a checkout (``configs/*.py``: quickstart, demo, ...)
start from it and state only what differs."""
