"""Training configs of a checkout, for ``python train.py --config=configs/<name>.py``.

The base (the paper, every field documented) ships with the package as
``aspdc_jax/configs/default.py``; ``configs/default.py`` is that base at its usual path.
The variants start from it (or from each other) and state only what differs. This folder
is not installed: only ``aspdc_jax`` is.
"""
