"""What a periodic job of the step loop is (in the spirit of big_vision's ``u.itstime``
and ``clu.periodic_actions``): a `PeriodicJob` has its own ``every`` and is called once
after each step with that step's `Tick`; the jobs themselves are
:mod:`aspdc_jax.training.jobs`'. Also the two ways a phase stops early with an error.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any, ClassVar

__all__ = ["NonFiniteLossError", "PeriodicJob", "Tick", "TimedIterator", "TrainingInterrupted"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the last good checkpoint was kept."""


class TrainingInterrupted(Exception):
    """SIGINT (Ctrl-C) or SIGTERM stopped a phase after a saved step; rerun to resume.

    ``signum`` is the signal; the conventional exit status is ``128 + signum``.
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@dataclasses.dataclass
class Tick:
    """One finished step, as the jobs see it. ``last``: the phase ends at this step (its
    schedule ran out, or a job ended it early, saying why in ``stopped_by``)."""

    step: int
    state: Any  # TrainState after the step
    metrics: Any  # the step's metrics, still on the device
    batch: Any  # the step's (process-local, uint8) batch
    last: bool
    stopped_by: str | None = None


class PeriodicJob:
    """Runs ``apply(tick)`` at every ``every``-th step (0: never) and, with ``at_last``, at
    the phase's last step."""

    config_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, every: int, *, at_last: bool = True):
        self.every, self.at_last = max(0, int(every)), at_last

    def due(self, tick: Tick) -> bool:
        return (self.every > 0 and tick.step % self.every == 0) or (self.at_last and tick.last)

    def __call__(self, tick: Tick) -> None:
        if self.due(tick):
            self.apply(tick)

    def apply(self, tick: Tick) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Called once after the last step (or on an exception)."""


class TimedIterator:
    """The data iterator, timing how long ``next`` waits (`take_waited`)."""

    def __init__(self, iterator: Iterator[Any], state: Any = None):
        self.iterator, self.waited = iterator, 0.0
        if state is not None:
            self.iterator.set_state(state)  # type: ignore[attr-defined]

    def __iter__(self) -> TimedIterator:
        return self

    def __next__(self) -> Any:
        start = time.perf_counter()
        try:
            return next(self.iterator)
        finally:
            self.waited += time.perf_counter() - start

    def get_state(self) -> Any:
        return self.iterator.get_state()  # type: ignore[attr-defined]

    def take_waited(self) -> float:
        """Seconds spent in ``next`` since the last call."""
        waited, self.waited = self.waited, 0.0
        return waited
