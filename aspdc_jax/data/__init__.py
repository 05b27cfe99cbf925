"""Datasets and input pipeline.

Data API: `make_train_loader`, `eval_pairs`, `EvalPair`, `TrainLoader`. The first two take
`DataSettings`: ``config.data`` typed and checked (`settings.defaults()`: configs/default.py's).
Stores are TFDS array_record builders (`builders`), the built-in default is synthetic
motion blur of bundled photos (`synthetic`), the stream is a grain pipeline (`pipeline`).
The names below are imported on first use, so ``python -m aspdc_jax.data.synthetic`` runs
without importing the pipeline first.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DATASETS", "DataSettings", "EvalPair", "TrainLoader", "eval_pairs", "make_train_loader"]


def __getattr__(name: str) -> Any:
    if name in ("DATASETS", "DataSettings"):
        from aspdc_jax.data import settings  # noqa: PLC0415

        return getattr(settings, name)
    if name in __all__:
        from aspdc_jax.data import pipeline  # noqa: PLC0415

        return getattr(pipeline, name)
    raise AttributeError(f"module 'aspdc_jax.data' has no attribute {name!r}")
