"""The periodic jobs of the step loop, each a small `PeriodicJob`
(:mod:`aspdc_jax.training.periodic`) with its own ``every``, called once per step with a
`Tick`; `make_jobs` lists them in the order they run.

A new job is one class here (an ``apply(tick)``, its ``every``, the ``config_fields`` it reads)
and one line in `make_jobs`. ``config_fields`` are bookkeeping: a
run may be resumed with other values without a note
(`aspdc_jax.training.start.resume_free_fields`).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from aspdc_jax.allocator import heap_in_use, wait_for_heap_release
from aspdc_jax.checkpoint import PhaseMeta
from aspdc_jax.images import to_model
from aspdc_jax.progress import show_progress
from aspdc_jax.training.context import PhaseRun, Start
from aspdc_jax.training.evaluator import Evaluator, process_0_decides
from aspdc_jax.training.periodic import NonFiniteLossError, PeriodicJob, Tick, TimedIterator, TrainingInterrupted
from aspdc_jax.training.summaries import MetricsWriter, image_grid

__all__ = [
    "JOB_TYPES",
    "Checkpoint",
    "HeapSettle",
    "LogMetrics",
    "NanGuard",
    "Preview",
    "ProgressBar",
    "StopOnSignal",
    "TimeBudget",
    "Validate",
    "make_jobs",
]

#: With several processes the time budget is checked every this many steps (process 0's
#: clock decides, which takes a collective).
MULTIHOST_BUDGET_EVERY = 10


class HeapSettle(PeriodicJob):
    """On a CPU each step waits for XLA to hand its temporaries back to malloc before the
    next one is dispatched; else a step can get fresh memory and double peak RSS (see
    `aspdc_jax.allocator.wait_for_heap_release`). Accelerators keep asynchronous dispatch."""

    def __init__(self) -> None:
        super().__init__(1)
        self.before = heap_in_use()

    @staticmethod
    def wanted(run: PhaseRun) -> bool:
        return run.mesh.devices.flat[0].platform == "cpu" and heap_in_use() is not None

    def apply(self, tick: Tick) -> None:
        jax.block_until_ready(tick.state)
        wait_for_heap_release(self.before or 0)
        self.before = heap_in_use()


class TimeBudget(PeriodicJob):
    """Ends the phase at the first step after ``config.max_train_seconds`` of training: the
    jobs after it see that step as the last (a final checkpoint, marked finished), and the
    after-phase evaluation and the hand-off run as at the schedule's end."""

    config_fields = ("max_train_seconds",)
    REASON = "max_train_seconds"

    def __init__(self, run: PhaseRun):
        super().__init__(1 if jax.process_count() == 1 else MULTIHOST_BUDGET_EVERY, at_last=False)
        self.run, self.seconds, self.since = run, float(run.config.max_train_seconds), time.monotonic()

    def apply(self, tick: Tick) -> None:
        elapsed = time.monotonic() - self.since
        if tick.last or not process_0_decides(elapsed > self.seconds):
            return
        tick.last, tick.stopped_by = True, self.REASON
        print(
            f"[{self.run.name}] max_train_seconds={self.seconds:g} reached ({elapsed:.0f} s): the phase ends "
            f"at step {tick.step}/{self.run.total}",
            flush=True,
        )


class NanGuard(PeriodicJob):
    """Fetches each step's metrics one step behind (so dispatch stays asynchronous), checks
    them for NaN/inf and keeps their running sums; `flush` also checks the latest step
    (the log and the checkpoint flush first: a non-finite state is never saved)."""

    def __init__(self, run: PhaseRun, last_saved: int | None):
        super().__init__(1)
        self.run, self.last_saved = run, last_saved
        self.pending: tuple[int, Any] | None = None
        self.sums: dict[str, float] = {}
        self.count = 0

    def apply(self, tick: Tick) -> None:
        self.flush()
        self.pending = (tick.step, tick.metrics)

    def flush(self) -> None:
        if self.pending is None:
            return
        step, metrics = self.pending
        self.pending = None
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        bad = {k: v for k, v in host.items() if not math.isfinite(v)}
        if bad:
            keep = (
                f"the last good checkpoint (step {self.last_saved}) in {self.run.ckpt.directory} was kept"
                if self.last_saved is not None
                else "no checkpoint of this phase had been written yet"
            )
            raise NonFiniteLossError(
                f"[{self.run.name}] non-finite training metrics at step {step}: {bad}; stopping, "
                f"{keep}. Try a lower learning rate (config.{self.run.name}.lr) or gradient "
                f"clipping (config.grad_clip_norm)."
            )
        for k, v in host.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1

    def take_means(self) -> tuple[dict[str, float], int]:
        """The means of the checked metrics since the last call, and their count."""
        means = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        count, self.sums, self.count = self.count, {}, 0
        return means, count


class LogMetrics(PeriodicJob):
    """Event ``train`` of metrics.jsonl / TensorBoard: the step metrics' means since the
    last record, the learning rate, steps/s, the epoch and ``data_wait_fraction`` (the
    share of the time spent waiting for the input pipeline)."""

    config_fields = ("log_every_steps",)

    def __init__(self, run: PhaseRun, writer: MetricsWriter, guard: NanGuard, data: TimedIterator):
        super().__init__(int(run.config.log_every_steps))
        self.run, self.writer, self.guard, self.data = run, writer, guard, data
        self.since = time.time()
        self.latest: tuple[int, dict[str, float]] | None = None

    def apply(self, tick: Tick) -> None:
        self.guard.flush()
        means, count = self.guard.take_means()
        now = time.time()
        elapsed = max(now - self.since, 1e-9)
        means["lr"] = float(self.run.schedule.fn(tick.step - 1))
        means["steps_per_s"] = count / elapsed
        means["epoch"] = tick.step / self.run.schedule.steps_per_epoch
        means["data_wait_fraction"] = min(1.0, self.data.take_waited() / elapsed)
        self.since = now
        self.writer.write(tick.step, "train", means)
        self.latest = (tick.step, means)


class ProgressBar(PeriodicJob):
    """A tqdm bar (process 0, ``config.progress_bar``), with the latest logged loss and lr."""

    config_fields = ("progress_bar",)

    def __init__(self, run: PhaseRun, initial: int, log: LogMetrics):
        super().__init__(1)
        self.log = log
        self.bar = tqdm(total=run.total, initial=initial, desc=run.name, unit="step", dynamic_ncols=True)

    @staticmethod
    def wanted(run: PhaseRun) -> bool:
        return show_progress(bool(run.config.progress_bar)) and jax.process_index() == 0

    def apply(self, tick: Tick) -> None:
        if self.log.latest is not None and self.log.latest[0] == tick.step:
            means = self.log.latest[1]
            self.bar.set_postfix(loss=f"{means['loss']:.4g}", lr=f"{means['lr']:.2g}")
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class Checkpoint(PeriodicJob):
    """Saves the phase's state, its meta record and the data iterator's position."""

    config_fields = ("checkpoint_every_steps", "max_checkpoints_to_keep")

    def __init__(self, run: PhaseRun, start: Start, data: TimedIterator, guard: NanGuard):
        super().__init__(int(run.config.checkpoint_every_steps))
        self.run, self.start, self.data, self.guard = run, start, data, guard
        self.last_saved: int | None = start.step or None

    def apply(self, tick: Tick) -> None:
        self.save(tick)

    def save(self, tick: Tick) -> None:
        self.guard.flush()  # never save a non-finite state
        run, state = self.run, tick.state
        meta = PhaseMeta(
            phase=run.name,
            step=tick.step,
            total_steps=run.total,
            finished=tick.last or tick.step >= run.total,
            model_config=run.model_config,
            param_shapes=run.shapes["params"],
            network=run.phase.network,
            frozen_network=run.phase.frozen,
            phase_index=run.phase.index,
            steps_per_epoch=run.schedule.steps_per_epoch,
            frozen_shapes=run.shapes.get("frozen"),
            ema=state.ema_params is not None,
            started_from=self.start.started_from,
            stopped_by=tick.stopped_by if tick.step < run.total else None,
        )
        run.ckpt.save(
            tick.step,
            params=state.params,
            opt_state=state.opt_state,
            frozen=self.start.frozen,
            ema=state.ema_params,
            meta=meta,
            config_json=run.config_json,
            data_state=self.data.get_state(),
        )
        self.last_saved = self.guard.last_saved = tick.step


class Preview(PeriodicJob):
    """A TensorBoard image grid, rows [blurred | output | sharp] of two examples of the
    step's batch (a frozen ReblurNet adds R(b, D(b))). Process 0 only; with several
    processes it runs the networks on a local copy of the (replicated) params."""

    config_fields = ("image_every_steps",)

    def __init__(self, run: PhaseRun, writer: MetricsWriter, eval_fns: dict[str, Any], frozen: Any):
        every = int(run.config.image_every_steps)
        super().__init__(every, at_last=every > 0)
        self.run, self.writer, self.eval_fns, self.frozen = run, writer, eval_fns, frozen

    def apply(self, tick: Tick, n: int = 2) -> None:
        if not self.writer.enabled:
            return
        params, frozen = tick.state.eval_params, self.frozen
        if jax.process_count() > 1:
            params, frozen = jax.device_get((params, frozen))
        b, s = to_model(np.asarray(tick.batch["blurred"][:n])), to_model(np.asarray(tick.batch["sharp"][:n]))
        if self.run.phase.evaluates == "reblur":
            out = self.eval_fns["reblur"](params, b, s)
        else:
            out = self.eval_fns["deblur"](params, b)
        rows = [[b[i], out[i], s[i]] for i in range(b.shape[0])]
        if self.run.phase.frozen == "reblur":
            re = self.eval_fns["reblur"](frozen, b, out)
            rows = [row + [re[i]] for i, row in enumerate(rows)]
        self.writer.write_images(tick.step, f"{self.run.name}/blurred_output_sharp", image_grid(jax.device_get(rows)))


class Validate(PeriodicJob):
    """Event ``val``: the held-out PSNR during the phase; the best step is kept as an
    export (`aspdc_jax.training.evaluator.Evaluator`)."""

    config_fields = ("eval_every_steps", "eval_limit", "eval_split")

    def __init__(self, run: PhaseRun, evaluator: Evaluator):
        every = int(run.config.eval_every_steps)
        super().__init__(every, at_last=every > 0)
        self.evaluator = evaluator

    def apply(self, tick: Tick) -> None:
        self.evaluator(tick.state.eval_params, tick.step)


class StopOnSignal(PeriodicJob):
    """While the phase runs, SIGINT/SIGTERM only record a stop request; at the end of that
    step the state is saved and TrainingInterrupted raised. A second Ctrl-C stops at once
    (losing the steps since the last checkpoint). Only in a single-process run's main
    thread: with several hosts a signal reaches one of them, and a save there alone hangs."""

    def __init__(self, run: PhaseRun, saver: Checkpoint):
        super().__init__(1)
        self.run, self.saver = run, saver
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(
            f"\n[{self.run.name}] {signal.Signals(signum).name}: stopping after this step and "
            "saving a checkpoint (Ctrl-C again stops at once)",
            flush=True,
        )

    def apply(self, tick: Tick) -> None:
        if self.signum is None:
            return
        if self.saver.last_saved != tick.step:
            self.saver.save(tick)
        self.run.ckpt.close()
        raise TrainingInterrupted(
            f"[{self.run.name}] stopped by {signal.Signals(self.signum).name} at step {tick.step}/"
            f"{self.run.total}; saved in {self.run.ckpt.directory}. Rerun the same command to resume.",
            self.signum,
        )

    def close(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


#: Every job class of this module (their ``config_fields`` are the resume-free bookkeeping
#: fields): a class defined here is listed without further ado.
JOB_TYPES: tuple[type[PeriodicJob], ...] = tuple(c for c in PeriodicJob.__subclasses__() if c.__module__ == __name__)


def make_jobs(
    run: PhaseRun,
    start: Start,
    data: TimedIterator,
    writer: MetricsWriter,
    eval_fns: dict[str, Any],
    evaluator: Evaluator | None,
) -> list[PeriodicJob]:
    """The phase's jobs, in the order they run after each step: settle the heap, decide
    whether this step is the last, check and log the metrics, save, preview, validate, and
    stop on a signal (after the save, so a stop costs no step)."""
    jobs: list[PeriodicJob] = [HeapSettle()] if HeapSettle.wanted(run) else []
    if float(run.config.max_train_seconds) > 0:
        jobs.append(TimeBudget(run))
    guard = NanGuard(run, last_saved=start.step or None)
    log = LogMetrics(run, writer, guard, data)
    jobs += [guard, log]
    if ProgressBar.wanted(run):
        jobs.append(ProgressBar(run, start.step, log))
    saver = Checkpoint(run, start, data, guard)
    jobs += [saver, Preview(run, writer, eval_fns, start.frozen)]
    if evaluator is not None:
        jobs.append(Validate(run, evaluator))
    jobs.append(StopOnSignal(run, saver))
    return jobs
