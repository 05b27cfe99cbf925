"""The validation run during and after each phase: mean PSNR on held-out test pairs.

For deblur / finetune: PSNR(D(b), s) against PSNR(b, s) (the blurred input), both on
[0, 1] RGB (peak 1), per image, averaged. For reblur: PSNR(R(b, s), b). The full
protocol (SSIM, RealBlur alignment, ...) lives in ``evaluate.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax.numpy as jnp
import numpy as np

from aspdc_jax.evaluation.metrics import psnr_numpy as psnr
from aspdc_jax.images import to_model

__all__ = ["evaluate_pairs", "pad_to_multiple"]


def pad_to_multiple(x: jnp.ndarray, multiple: int) -> tuple[jnp.ndarray, tuple[int, int]]:
    """Reflect-pads (B,H,W,C) on the bottom/right to multiples of ``multiple``."""
    h, w = x.shape[1:3]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > max(ph, pw) else "edge")
    return x, (h, w)


def _unit(x: Any) -> np.ndarray:
    return np.clip((np.asarray(x, np.float32) + 1.0) / 2.0, 0.0, 1.0)


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
    R(b, s) vs b and input = s vs b.
    """
    out_psnrs, in_psnrs, bands = [], [], []
    for pair in pairs:
        if getattr(pair, "sharp", None) is None:
            continue
        blurred = to_model(np.asarray(pair.blurred)[None])
        sharp = to_model(np.asarray(pair.sharp)[None])
        bp, (h, w) = pad_to_multiple(blurred, 8)
        sp, _ = pad_to_multiple(sharp, 8)
        if scores == "reblur":
            pred = eval_fns["reblur"](params, bp, sp)[:, :h, :w]
            target, baseline = blurred, sharp
        else:
            pred = eval_fns["deblur"](params, bp)[:, :h, :w]
            target, baseline = sharp, blurred
        out_psnrs.append(psnr(_unit(pred[0]), _unit(target[0])))
        in_psnrs.append(psnr(_unit(baseline[0]), _unit(target[0])))
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
