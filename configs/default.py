"""The base config (the paper's recipe) at the path ``--config=configs/default.py`` takes.

It ships inside the package, so an installed copy has it too: every field is defined and
documented in ``aspdc_jax/configs/default.py``.
"""

from __future__ import annotations

from aspdc_jax.configs.default import get_config

__all__ = ["get_config"]
