"""The validation run during and after each phase: mean PSNR on held-out test pairs.

For deblur / finetune: PSNR(D(b), s) against PSNR(b, s) (the blurred input), per image,
averaged, where D is the package's one deblurring forward
(`aspdc_jax.inference.functional.deblur_forward`: the ``Deblurrer``'s and
``make_deblur_fn``'s), scored before rounding. For reblur: PSNR(R(b, s), b). PSNR on RGB
with peak 255 (the same dB as on [0, 1] with peak 1). The full protocol (SSIM, RealBlur
alignment, ...) lives in ``evaluate.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from aspdc_jax.images import psnr_numpy

__all__ = ["evaluate_pairs"]


def _psnr(a: Any, b: Any) -> float:
    """PSNR of two images in [0, 255] (uint8, or float pixels)."""
    return psnr_numpy(a, b, peak=255.0)


def evaluate_pairs(
    scores: str,
    pairs: Iterable[Any],
    *,
    params: Any,
    eval_fns: dict[str, Callable[..., Any]],
) -> dict[str, float]:
    """Mean PSNRs of the network ``scores`` names (``"deblur"`` or ``"reblur"``, a phase's
    ``evaluates``) over ``pairs`` (EvalPair-like: ``.blurred`` and
    ``.sharp`` uint8 HxWx3; pairs without ``sharp`` are skipped).

    Returns ``{"psnr_output", "psnr_input", "psnr_gain", "num_pairs"}`` (plus ``per_band``:
    the same keys per ``pair.meta["band"]``, for the synthetic test's strength bands) where for
    "deblur" output = D(b) vs sharp and input = b vs sharp; for "reblur" output =
    R(b, s) vs b and input = s vs b. ``eval_fns`` are `aspdc_jax.training.steps.make_eval_fns`'
    (``deblur_pixels`` / ``reblur_pixels``: uint8 batches in, float pixels out).
    """
    out_psnrs, in_psnrs, bands = [], [], []
    for pair in pairs:
        if getattr(pair, "sharp", None) is None:
            continue
        blurred, sharp = np.asarray(pair.blurred)[None], np.asarray(pair.sharp)[None]
        if scores == "reblur":
            pred = eval_fns["reblur_pixels"](params, blurred, sharp)
            target, baseline = blurred, sharp
        else:
            pred = eval_fns["deblur_pixels"](params, blurred)
            target, baseline = sharp, blurred
        out_psnrs.append(_psnr(pred[0], target[0]))
        in_psnrs.append(_psnr(baseline[0], target[0]))
        bands.append((getattr(pair, "meta", None) or {}).get("band"))
    if not out_psnrs:
        return {"num_pairs": 0}
    result: dict[str, Any] = _means(out_psnrs, in_psnrs)
    if any(b is not None for b in bands):
        result["per_band"] = {
            band: _means(
                [o for o, b in zip(out_psnrs, bands) if b == band], [i for i, b in zip(in_psnrs, bands) if b == band]
            )
            for band in dict.fromkeys(b for b in bands if b is not None)
        }
    return result


def _means(out_psnrs: list[float], in_psnrs: list[float]) -> dict[str, float]:
    po, pi = float(np.mean(out_psnrs)), float(np.mean(in_psnrs))
    return {"psnr_output": po, "psnr_input": pi, "psnr_gain": po - pi, "num_pairs": len(out_psnrs)}
