"""The training loop of ``train.py``: one generic loop over the phase table.

``train_and_evaluate(config, workdir)`` runs the phases named in ``config.phases`` in the
order of `aspdc_jax.training.phases.PHASE_TABLE`. Each phase, in `run_phase`:

1. opens its run (`aspdc_jax.training.context.open_run`: loader, schedule, checkpoint
   folder) and finds how it starts (`aspdc_jax.training.start.phase_start`: fresh,
   resumed, handed off from the earlier phases, or already done and skipped);
2. runs its steps (`_train_steps`): after each one, the periodic jobs of
   `aspdc_jax.training.jobs` (log, NaN guard, checkpoint, preview, validation, time
   budget, signals, CPU heap settle) get a `Tick`;
3. ends with a checkpoint (the last step's job) and the held-out evaluation.

What differs between phases (network, loss, frozen network, hand-off, what is scored) is
read from the phase's `Phase` entry; nothing here branches on a phase's name.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections

from aspdc_jax.data import eval_pairs as data_eval_pairs
from aspdc_jax.data import make_train_loader
from aspdc_jax.data.settings import DataSettings
from aspdc_jax.models import model_from_config
from aspdc_jax.models.config import compute_dtype
from aspdc_jax.training.context import LoaderFactory, PhaseRun, Start, open_run
from aspdc_jax.training.evaluator import EvalPairsFn, Evaluator, make_evaluator
from aspdc_jax.training.jobs import make_jobs
from aspdc_jax.training.losses import get_loss
from aspdc_jax.training.periodic import NonFiniteLossError, Tick, TimedIterator, TrainingInterrupted
from aspdc_jax.training.phases import PHASES, Phase, get_phase
from aspdc_jax.training.schedules import make_schedule
from aspdc_jax.training.sharding import make_mesh, put_global_batch
from aspdc_jax.training.start import config_changes, phase_start
from aspdc_jax.training.state import TrainState, make_optimizer
from aspdc_jax.training.steps import make_eval_fns, make_train_step
from aspdc_jax.training.summaries import MetricsWriter

__all__ = [
    "NonFiniteLossError",
    "TrainingInterrupted",
    "compute_modules",
    "config_changes",
    "parse_phases",
    "run_phase",
    "train_and_evaluate",
]


def parse_phases(phases: str | Iterable[str]) -> tuple[str, ...]:
    """ "deblur,reblur" -> ("deblur", "reblur"), validated, in the phase table's order."""
    if isinstance(phases, str):
        names = [p.strip() for p in phases.split(",") if p.strip()]
    else:
        names = [str(p).strip() for p in phases]
    bad = [p for p in names if p not in PHASES]
    if bad or not names:
        raise ValueError(f"config.phases must be a comma-separated subset of {','.join(PHASES)}, got {phases!r}")
    return tuple(p for p in PHASES if p in names)


def compute_modules(config: Mapping[str, Any], deblur: Any, reblur: Any) -> tuple[Any, Any]:
    """The networks the train steps run: ``config.compute_dtype`` ("float32" or "bfloat16";
    a ConfigDict or dict) as the modules' compute dtype. Parameters stay float32 either way."""
    dtype = compute_dtype(str(config["compute_dtype"]), field="config.compute_dtype")
    return deblur.clone(dtype=dtype), reblur.clone(dtype=dtype)


def run_phase(
    phase: str | Phase,
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    deblur: Any,
    reblur: Any,
    mesh: Any,
    loader_factory: LoaderFactory = make_train_loader,
    eval_pairs_fn: EvalPairsFn | None = data_eval_pairs,
) -> dict[str, Any]:
    """Trains one phase to the end of its schedule or time budget (resuming / skipping as
    needed).

    Returns a summary dict: ``{"phase", "skipped", "start_step", "final_step",
    "total_steps", "steps_per_epoch", "seconds", "stopped_by", "eval": {...}}``
    (``stopped_by``: ``"max_train_seconds"`` when the time budget ended it, else None).
    """
    t_start = time.time()
    workdir = Path(workdir).expanduser().absolute()
    run = open_run(get_phase(phase), config, workdir, {"deblur": deblur, "reblur": reblur}, mesh, loader_factory)
    summary: dict[str, Any] = {
        "phase": run.name,
        "total_steps": run.total,
        "steps_per_epoch": run.schedule.steps_per_epoch,
    }
    tx = make_optimizer(config, run.schedule.fn)
    start = phase_start(run, tx)
    if start.how == "done":
        logging.info("phase %s already finished (step %d of %d): skipped", run.name, start.step, run.total)
        run.ckpt.close()
        return dict(summary, skipped=True, start_step=start.step, final_step=start.step)

    eval_fns = make_eval_fns(deblur, reblur)
    writer = MetricsWriter(workdir, run.name, resume_step=start.step)
    evaluator = make_evaluator(run, eval_fns, eval_pairs_fn, writer, start.frozen)
    state, step, stopped_by = _train_steps(run, start, tx, eval_fns, writer, evaluator)
    run.ckpt.close()

    seconds = time.time() - t_start
    summary.update(skipped=False, start_step=start.step, final_step=step, seconds=seconds, stopped_by=stopped_by)
    if evaluator is not None:
        summary["eval"] = evaluator(state.eval_params, step, final=True)
    print(
        f"[{run.name}] finished: step {step}/{run.total} in {seconds:.0f} s, saved in {run.ckpt.directory}", flush=True
    )
    end = {"seconds": seconds, "start_step": start.step}
    writer.write(step, "phase_end", end if stopped_by is None else dict(end, stopped_by=stopped_by))
    writer.close()
    return summary


def _train_steps(
    run: PhaseRun, start: Start, tx: Any, eval_fns: dict[str, Any], writer: MetricsWriter, evaluator: Evaluator | None
) -> tuple[TrainState, int, str | None]:
    """Runs steps ``start.step + 1 ..`` until the phase's last step; after each one, every
    periodic job gets the step's `Tick`. Returns the final state, step and why the phase
    ended early (None: its schedule ran out)."""
    deblur, reblur = compute_modules(run.config, run.nets["deblur"], run.nets["reblur"])
    step_fn = make_train_step(
        run.phase,
        deblur=deblur,
        reblur=reblur,
        tx=tx,
        image_loss=get_loss(run.config.loss),
        mesh=run.mesh,
        phase_config=run.config[run.name],
        grad_accum_steps=int(run.config.grad_accum_steps),
        ema_decay=float(run.config.ema_decay),
    )
    frozen = (start.frozen,) if run.phase.frozen is not None else ()
    data = TimedIterator(iter(run.loader), start.data_state)
    jobs = make_jobs(run, start, data, writer, eval_fns, evaluator)
    if start.state is None:
        raise ValueError(f"[{run.name}] nothing to train: the phase is {start.how}")
    state, step, last = start.state, start.step, False
    stopped_by: str | None = None
    try:
        while not last:
            batch = next(data)
            state, metrics = step_fn(state, put_global_batch(batch, run.mesh), *frozen)
            step += 1
            tick = Tick(step, state, metrics, batch, last=step >= run.total)
            for job in jobs:
                job(tick)
            last, stopped_by = tick.last, tick.stopped_by
    finally:
        for job in jobs:
            job.close()
    return state, step, stopped_by


def _check_config(config: ml_collections.ConfigDict, phases: tuple[str, ...]) -> None:
    """Values that would otherwise fail mid-run (or quietly do the wrong thing); ValueError."""
    get_loss(str(config.loss))
    if int(config.batch_size) < 1:
        raise ValueError(f"config.batch_size must be >= 1, got {config.batch_size}")
    if int(config.max_checkpoints_to_keep) < 1:
        raise ValueError(f"config.max_checkpoints_to_keep must be >= 1, got {config.max_checkpoints_to_keep}")
    if int(config.eval_limit) < 0:
        raise ValueError(f"config.eval_limit must be >= 0 (0 disables the evaluation), got {config.eval_limit}")
    if not float(config.max_train_seconds) >= 0:
        raise ValueError(f"config.max_train_seconds must be >= 0 (0: no limit), got {config.max_train_seconds}")
    crop = DataSettings.from_config(config.data).crop_size  # every data field checked here
    # DeblurNet downsamples twice (multiples of 4); ReblurNet three times (multiples of 8).
    uses_reblur = any("reblur" in (get_phase(p).network, get_phase(p).frozen) for p in phases)
    multiple = 8 if uses_reblur else 4
    if crop % multiple or crop < 2 * multiple:
        raise ValueError(
            f"config.data.crop_size must be a multiple of {multiple} and >= {2 * multiple} for the "
            f"phases {','.join(phases)}, got {crop}"
        )
    for phase in phases:
        try:  # the schedule's own checks (lr, min_lr, num_epochs, warmup), before any data
            make_schedule(config[phase], steps_per_epoch=1)
        except ValueError as err:
            raise ValueError(f"config.{phase}: {err}") from err


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    loader_factory: LoaderFactory | None = None,
    eval_pairs_fn: EvalPairsFn | None = data_eval_pairs,
) -> dict[str, dict[str, Any]]:
    """Runs ``config.phases`` into ``workdir``; returns each phase's summary."""
    phases = parse_phases(config.phases)
    workdir = Path(workdir).expanduser().absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh()
    n = mesh.devices.size
    if int(config.batch_size) % n:
        raise ValueError(f"config.batch_size {config.batch_size} must be a multiple of the device count {n}")
    _check_config(config, phases)
    pc = jax.process_count()
    print(
        f"[train] {n} {jax.devices()[0].platform} device{'s' if n > 1 else ''} on "
        f"{pc} host{'s' if pc > 1 else ''}; global batch "
        f"{config.batch_size} ({int(config.batch_size) // n} per device)"
        + (f"; process {jax.process_index()} loads {int(config.batch_size) // pc} per step" if pc > 1 else ""),
        flush=True,
    )
    deblur, reblur = model_from_config(config.model)
    compute_modules(config, deblur, reblur)  # a bad config.compute_dtype fails here, not mid-run
    if eval_pairs_fn is not None and int(config.eval_limit) > 0:
        # The held-out pairs, checked (and a store prepared) before anything trains.
        eval_pairs_fn(DataSettings.from_config(config.data), split=str(config.eval_split), limit=int(config.eval_limit))
    return {
        phase: run_phase(
            phase,
            config,
            workdir,
            deblur=deblur,
            reblur=reblur,
            mesh=mesh,
            loader_factory=loader_factory or make_train_loader,
            eval_pairs_fn=eval_pairs_fn,
        )
        for phase in phases
    }
