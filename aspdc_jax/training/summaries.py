"""Where training reports go: a metrics JSONL and TensorBoard event files (tensorboardX,
no tensorflow). Only process 0 writes; other processes get a writer that does nothing."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from aspdc_jax.trees import flatten

__all__ = ["MetricsWriter", "image_grid"]


def _plain(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)) or hasattr(value, "dtype"):
        value = np.asarray(value)
        return value.item() if value.ndim == 0 else value.tolist()
    return value


def _drop_records_after(path: Path, phase: str, step: int) -> None:
    """Rewrites ``path`` (atomically) without ``phase``'s records after ``step`` and without
    a torn last line (a kill mid-write)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue  # torn by the crash
            kept.append(line)
            continue
        if isinstance(record, dict) and record.get("phase") == phase and int(record.get("step", 0)) > step:
            continue
        kept.append(line if line.endswith("\n") else line + "\n")
    if len(kept) != len(lines) or any(not line.endswith("\n") for line in lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)


class MetricsWriter:
    """Appends JSON records to ``WORKDIR/metrics.jsonl`` and scalars/images to
    ``WORKDIR/tensorboard/<phase>/``.

    Each JSONL line is ``{"phase", "step", "event", "time", ...metrics}`` where event is
    "train" (averages since the last record), "eval" (test-pair PSNR) or "phase_end".
    """

    def __init__(self, workdir: str | Path, phase: str, *, tensorboard: bool = True, resume_step: int | None = None):
        """``resume_step``: the step this phase resumes from (0: it starts afresh). This
        phase's records after it (written before a crash, or by a run whose checkpoints were
        deleted) are dropped from the JSONL, and TensorBoard is told to purge its events
        from that step on (``purge_step``), so no step appears twice."""
        self.phase = phase
        self.enabled = jax.process_index() == 0
        self._tb = None
        self._jsonl = None
        if not self.enabled:
            return
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            _drop_records_after(workdir / "metrics.jsonl", phase, resume_step)
        self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter  # noqa: PLC0415

            purge = None if resume_step is None else resume_step + (1 if resume_step else 0)
            self._tb = SummaryWriter(logdir=str(workdir / "tensorboard" / phase), purge_step=purge)

    def write(self, step: int, event: str, metrics: dict[str, Any]) -> None:
        if not self.enabled or self._jsonl is None:
            return
        record = {"phase": self.phase, "step": int(step), "event": event, "time": time.time()}
        record.update({k: _plain(v) for k, v in metrics.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in flatten(record).items():
                if key in ("phase", "step", "event", "time"):
                    continue
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{event}/{key}", value, int(step))
            self._tb.flush()

    def write_images(self, step: int, tag: str, grid: np.ndarray) -> None:
        """``grid``: (H, W, 3) float in [0, 1]."""
        if self._tb is not None:
            self._tb.add_image(tag, np.asarray(grid, np.float32), int(step), dataformats="HWC")
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def image_grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Tiles images (H, W, 3) float in [-1, 1] into one (H', W', 3) grid in [0, 1]:
    one row per example, columns e.g. blurred / output / sharp."""
    tiles = [[np.clip((np.asarray(im, np.float32) + 1.0) / 2.0, 0.0, 1.0) for im in row] for row in rows]
    h, w = tiles[0][0].shape[:2]
    ncol = max(len(r) for r in tiles)
    out = np.ones((len(tiles) * (h + pad) + pad, ncol * (w + pad) + pad, 3), np.float32)
    for i, row in enumerate(tiles):
        for j, im in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y : y + h, x : x + w] = im
    return out
