"""Progress bars for long library work (dataset preparation, training, evaluation, inference)."""

from __future__ import annotations

import sys

__all__ = ["show_progress"]


def show_progress(requested: bool = True) -> bool:
    """Whether to draw a progress bar: when asked for and stderr is a terminal, so logs of
    batch jobs (SLURM, nohup, CI) get no thousands of carriage returns."""
    return bool(requested) and sys.stderr.isatty()
