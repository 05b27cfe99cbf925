"""Evaluation: the benchmark protocol of ``evaluate.py`` and its parts.

Modules: :mod:`.metrics` (PSNR, SSIM), :mod:`.alignment` (RealBlur's ECC alignment),
:mod:`.figures` (attention, offsets, reblur and comparison pictures) and :mod:`.protocol`
(datasets, timing, tables, ``metrics.json``). Import the module you need; this package
imports none of them. Evaluation reads the datasets (`aspdc_jax.data`) and runs the
inference forward (`aspdc_jax.inference`); neither imports evaluation.
"""
