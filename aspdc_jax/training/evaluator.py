"""The held-out evaluations of a phase: validation during it (keeping the best step as an
export in ``WORKDIR/<phase>/best/``) and the evaluation after it."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from aspdc_jax.checkpoint import BestRecord, save_export
from aspdc_jax.data.settings import DataSettings
from aspdc_jax.training.context import PhaseRun
from aspdc_jax.training.summaries import MetricsWriter
from aspdc_jax.training.validation import evaluate_pairs

__all__ = ["EvalPairsFn", "Evaluator", "make_evaluator", "process_0_decides"]

PyTree = Any
EvalPairsFn = Callable[..., Iterable[Any]]


def process_0_decides(flag: bool) -> bool:
    """Process 0's ``flag`` on every process, so that all take the same branch around a
    step where they must act together; ``flag`` itself with one process."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


class Evaluator:
    """``evaluator(params, step, final=False) -> result``.

    During the phase (``final=False``) it validates on ``config.val_split`` (a fixed part
    of the training data, not the test split unless asked), records event ``val`` and
    keeps the best step so far as an export in ``WORKDIR/<phase>/best/``. After the phase
    it scores ``config.eval_split`` (event ``eval``).
    """

    def __init__(
        self, run: PhaseRun, eval_fns: dict[str, Any], eval_pairs_fn: EvalPairsFn, writer: MetricsWriter, frozen: PyTree
    ):
        self.run, self.eval_fns, self.eval_pairs_fn, self.writer = run, eval_fns, eval_pairs_fn, writer
        self.best = _BestExport(run, frozen)
        self.data = DataSettings.from_config(run.config.data)

    def __call__(self, params: PyTree, step: int, final: bool = False) -> dict[str, Any]:
        config = self.run.config
        split = str(config.eval_split if final else config.val_split)
        pairs = self.eval_pairs_fn(self.data, split=split, limit=int(config.eval_limit))
        result = evaluate_pairs(self.run.phase.evaluates, pairs, params=params, eval_fns=self.eval_fns)
        self.writer.write(step, "eval" if final else "val", result)
        _print_eval(self.run, split, step, result)
        if not final:
            self.best.offer(params, step, result)
        return result


def make_evaluator(
    run: PhaseRun, eval_fns: dict[str, Any], eval_pairs_fn: EvalPairsFn | None, writer: MetricsWriter, frozen: PyTree
) -> Evaluator | None:
    """The phase's `Evaluator`, or None when there are no pairs or ``config.eval_limit``
    is 0 (no evaluation at all)."""
    if eval_pairs_fn is None or int(run.config.eval_limit) <= 0:
        return None
    return Evaluator(run, eval_fns, eval_pairs_fn, writer, frozen)


class _BestExport:
    """Keeps ``WORKDIR/<phase>/best/``: an export (`aspdc_jax.checkpoint.save_export`) of
    the validated step with the highest PSNR, with a `BestRecord` saying which step and
    score. Only for phases that train the DeblurNet (an export is a DeblurNet first)."""

    def __init__(self, run: PhaseRun, frozen: PyTree):
        self.run, self.frozen = run, frozen
        self.directory = run.ckpt.directory / "best"
        record = BestRecord.read(self.directory)
        self.score = record.psnr_output if record is not None else -math.inf

    def offer(self, params: PyTree, step: int, result: Mapping[str, Any]) -> None:
        """Exports ``params`` when ``result`` beats the best so far. Every process calls it
        (Orbax writes the export with all of them taking part); process 0's score decides,
        and process 0 alone moves the export into place and records it."""
        score = float(result.get("psnr_output", -math.inf))
        if self.run.phase.network != "deblur" or not process_0_decides(score > self.score):
            return
        primary, several = jax.process_index() == 0, jax.process_count() > 1
        tmp = self.directory.with_name("best.tmp")
        if primary:
            shutil.rmtree(tmp, ignore_errors=True)
        if several:  # tmp is gone before anyone writes to it ...
            multihost_utils.sync_global_devices(f"{tmp} cleared for step {step}")
        reblur = jax.device_get(self.frozen) if self.run.phase.frozen == "reblur" else None
        save_export(tmp, model_config=self.run.model_config, deblur_params=jax.device_get(params), reblur_params=reblur)
        if several:  # ... and complete (every process done writing) before it is moved
            multihost_utils.sync_global_devices(f"{tmp} written for step {step}")
        self.score = score
        if not primary:
            return
        BestRecord(step=step, psnr_output=score, split=str(self.run.config.val_split)).write(tmp)
        shutil.rmtree(self.directory, ignore_errors=True)
        os.replace(tmp, self.directory)
        print(f"[{self.run.name}] step {step}: best so far ({score:.2f} dB), exported to {self.directory}", flush=True)


def _print_eval(run: PhaseRun, split: str, step: int, result: Mapping[str, Any]) -> None:
    if "psnr_output" not in result:
        return
    reblur = run.phase.evaluates == "reblur"
    label, base = ("R(b,s) vs b", "s vs b") if reblur else ("D(b) vs s", "b vs s")
    print(
        f"[{run.name}] step {step}: {split} PSNR {label} {result['psnr_output']:.2f} dB, "
        f"{base} {result['psnr_input']:.2f} dB (gain {result['psnr_gain']:+.2f} dB, "
        f"{result['num_pairs']} pairs)",
        flush=True,
    )
    for band, r in result.get("per_band", {}).items():
        print(
            f"[{run.name}]   {band:>6}: {r['psnr_output']:.2f} dB vs {r['psnr_input']:.2f} dB "
            f"(gain {r['psnr_gain']:+.2f} dB, {r['num_pairs']} pairs)",
            flush=True,
        )
