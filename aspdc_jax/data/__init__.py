"""Datasets and input pipeline (DESIGN.md section 7).

Data API (notes/INTERFACES.md): `make_train_loader`, `eval_pairs`, `EvalPair`, `TrainLoader`.
Stores are TFDS array_record builders (`builders`), the built-in default is synthetic
motion blur of bundled photos (`synthetic`), the stream is a grain pipeline (`pipeline`).
"""

from aspdc_jax.data.pipeline import DATASETS, EvalPair, TrainLoader, eval_pairs, make_train_loader

__all__ = ["DATASETS", "EvalPair", "TrainLoader", "eval_pairs", "make_train_loader"]
