"""The training loop of ``train.py``: one generic loop over the phase table.

``train_and_evaluate(config, workdir)`` runs the phases named in ``config.phases`` in the
order of `aspdc_jax.training.phases.PHASE_TABLE`. Each phase resumes from its latest
checkpoint (params, Adam state, step, data-iterator state), is skipped when already
finished, and ends with a checkpoint and a small PSNR evaluation on the test pairs. What
differs between phases (network, loss, frozen network, hand-off, what is scored) is read
from the phase's `Phase` entry; nothing here branches on a phase's name.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from aspdc_jax.allocator import heap_in_use, wait_for_heap_release
from aspdc_jax.data import eval_pairs as data_eval_pairs
from aspdc_jax.data import make_train_loader
from aspdc_jax.data.settings import DataSettings
from aspdc_jax.images import to_model
from aspdc_jax.models import model_config_dict, model_from_config
from aspdc_jax.models.config import compute_dtype
from aspdc_jax.progress import show_progress
from aspdc_jax.training import checkpoints as ckpt_lib
from aspdc_jax.training.losses import get_loss
from aspdc_jax.training.phases import PHASES, Phase, get_phase
from aspdc_jax.training.schedules import PhaseSchedule, make_schedule, steps_per_epoch
from aspdc_jax.training.sharding import make_mesh, put_global_batch, replicate, replicated_sharding
from aspdc_jax.training.state import TrainState, init_params, make_optimizer, param_shapes
from aspdc_jax.training.steps import make_eval_fns, make_train_step
from aspdc_jax.training.summaries import MetricsWriter, image_grid
from aspdc_jax.training.validation import evaluate_pairs
from aspdc_jax.trees import flatten
from aspdc_jax.weights import CheckpointError, save_export

__all__ = [
    "NonFiniteLossError",
    "TrainingInterrupted",
    "compute_modules",
    "config_changes",
    "parse_phases",
    "run_phase",
    "train_and_evaluate",
]

PyTree = Any
LoaderFactory = Callable[..., Any]
EvalPairsFn = Callable[..., Iterable[Any]]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the last good checkpoint was kept."""


class TrainingInterrupted(Exception):
    """SIGINT (Ctrl-C) or SIGTERM stopped a phase after a saved step; rerun to resume.

    ``signum`` is the signal; the conventional exit status is ``128 + signum``.
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class _StopRequests:
    """While active, SIGINT/SIGTERM only record a stop request; the loop then finishes its
    step, saves and raises TrainingInterrupted. A second Ctrl-C stops at once (losing the
    steps since the last checkpoint). Only installed in a single-process run's main thread:
    with several hosts a signal reaches one of them, and a save there alone would hang.
    """

    def __init__(self, phase: str):
        self.phase = phase
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(
            f"\n[{self.phase}] {signal.Signals(signum).name}: stopping after this step and "
            "saving a checkpoint (Ctrl-C again stops at once)",
            flush=True,
        )

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# Config fields that may change between a run and its resumption without a note: logging,
# checkpoint cadence, evaluation, phase selection and where data/stores live.
_RESUME_FREE_KEYS = frozenset(
    {
        "phases",
        "progress_bar",
        "log_every_steps",
        "checkpoint_every_steps",
        "image_every_steps",
        "eval_every_steps",
        "eval_limit",
        "eval_split",
        "max_checkpoints_to_keep",
        "data.num_workers",
        "data.tfds_dir",
    }
)


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any], phase: str) -> list[str]:
    """``"key: old -> new"`` for the fields that differ between the config a checkpoint of
    ``phase`` was trained with and the current one (both as plain JSON), leaving out the
    other phases' sections, ``phase.num_epochs`` (extending a run is normal) and
    ``_RESUME_FREE_KEYS``."""
    old, new = flatten(saved, sep="."), flatten(current, sep=".")
    other = tuple(f"{p}." for p in PHASES if p != phase)
    changes = []
    for key in sorted(set(old) | set(new)):
        if key in _RESUME_FREE_KEYS or key.startswith(other) or key == f"{phase}.num_epochs":
            continue
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            changes.append(f"{key}: {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}")
    return changes


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


def _note(message: str) -> None:
    """A warning the user should see on the console, also in the log."""
    logging.warning(message)
    print(message, flush=True)


# ----------------------------------------------------------------------------- one phase


@dataclasses.dataclass
class _Run:
    """Everything about one phase that is fixed before its first step."""

    phase: Phase
    config: ml_collections.ConfigDict
    workdir: Path
    mesh: Any
    nets: dict[str, Any]  # "deblur" / "reblur" -> module (float32)
    ckpt: ckpt_lib.PhaseCheckpoints
    loader: Any
    schedule: PhaseSchedule
    rng: jax.Array
    shapes: dict[str, dict[str, list[int]]]  # "params" (and "frozen") -> parameter shapes
    model_config: dict[str, Any]
    config_json: dict[str, Any]

    @property
    def name(self) -> str:
        return self.phase.name

    @property
    def total(self) -> int:
        return self.schedule.total_steps

    def abstract(self, network: str) -> PyTree:
        """Shapes and dtypes of a fresh ``network`` params tree (nothing is computed)."""
        return jax.eval_shape(lambda: init_params(self.nets[network], self.rng, which=network))


def _open_run(phase: Phase, config, workdir: Path, nets, mesh, loader_factory: LoaderFactory) -> _Run:
    loader = loader_factory(
        DataSettings.from_config(config.data),
        global_batch_size=int(config.batch_size),
        seed=int(config.seed) + 1000 * phase.index,
    )
    spe = steps_per_epoch(int(loader.num_examples), int(config.batch_size))
    rng = jax.random.fold_in(jax.random.key(int(config.seed)), phase.index)
    run = _Run(
        phase=phase,
        config=config,
        workdir=workdir,
        mesh=mesh,
        nets=nets,
        ckpt=ckpt_lib.PhaseCheckpoints(
            ckpt_lib.phase_dir(workdir, phase.name), max_to_keep=int(config.max_checkpoints_to_keep)
        ),
        loader=loader,
        schedule=make_schedule(config[phase.name], steps_per_epoch=spe),
        rng=rng,
        shapes={},
        model_config=model_config_dict(nets["deblur"], nets["reblur"]),
        config_json=ckpt_lib.config_to_json(config),
    )
    run.shapes["params"] = param_shapes(run.abstract(phase.network))
    if phase.frozen is not None:
        run.shapes["frozen"] = param_shapes(run.abstract(phase.frozen))
    return run


def _check_checkpoint(run: _Run, step: int) -> dict[str, Any]:
    """Shapes and config of ``run``'s checkpoint ``step`` against the current config:
    CheckpointError when the model differs, a note when other settings do. Returns its meta."""
    meta = run.ckpt.meta(step)
    what = f"checkpoint {run.ckpt.directory} (step {step})"
    saved_shapes = {"params": meta["param_shapes"], "frozen": meta.get("frozen_shapes")}
    for item, shapes in run.shapes.items():
        ckpt_lib.check_shapes(
            shapes,
            saved_shapes[item],
            what=what + (" (frozen network)" if item == "frozen" else ""),
            checkpoint_model=meta.get("model_config"),
            config_model=run.model_config,
        )
    spe = run.schedule.steps_per_epoch
    if meta.get("steps_per_epoch") not in (None, spe):
        _note(
            f"[{run.name}] note: {what} was written at {meta['steps_per_epoch']} steps per epoch, "
            f"this config gives {spe} (batch_size or epoch_size changed); its step {step} is "
            f"resumed as step {step} of the new {run.total}-step schedule"
        )
    saved_config = run.ckpt.saved_config(step)
    changes = config_changes(saved_config, run.config_json, run.name) if saved_config else []
    if changes:
        shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
        done = step >= run.total
        _note(
            f"[{run.name}] note: {what} {'finished' if done else 'is resumed, but was trained'} with "
            f"another config: {shown}. {'It is kept as it is; to' if done else 'To'} redo this phase "
            f"with the new config, delete {run.ckpt.directory} (or use a new --workdir for every phase)."
        )
    return meta


def _warn_if_handoff_moved(run: _Run, started_from: Mapping[str, int] | None) -> None:
    """The phase began from given steps of earlier phases; say so if those moved on since."""
    for source, step in (started_from or {}).items():
        directory = ckpt_lib.phase_dir(run.workdir, source)
        with ckpt_lib.PhaseCheckpoints(directory, read_only=True) as ckpt:
            now = ckpt.latest_step()
        if now is not None and now != step:
            _note(
                f"[{run.name}] note: started from {source} step {step}, but {directory} is now at "
                f"step {now}; delete {run.ckpt.directory} to start from the newer weights"
            )


def _load_handoff(run: _Run) -> tuple[dict[str, PyTree], dict[str, int]]:
    """The final params of the earlier phases this one starts from (``{"params" |
    "frozen": tree}``, replicated) and their steps; CheckpointError naming what is missing."""
    problems, found = [], {}
    for item, source in run.phase.hands_off_from.items():
        directory = ckpt_lib.phase_dir(run.workdir, source)
        ckpt = ckpt_lib.PhaseCheckpoints(directory, read_only=True)
        step = ckpt.latest_step()
        meta = ckpt.meta(step) if step is not None else None
        if step is None or meta is None:
            problems.append(f"phase '{source}': no checkpoint in {directory}")
        elif not meta.get("finished"):
            problems.append(f"phase '{source}': unfinished (step {step} of {meta.get('total_steps')}) in {directory}")
        else:
            found[item] = (source, ckpt, step, meta)
            continue
        ckpt.close()
    if problems:
        sources = ",".join(run.phase.hands_off_from.values())
        raise CheckpointError(
            f"{run.name} starts from the final checkpoints of phases "
            f"{', '.join(repr(s) for s in run.phase.hands_off_from.values())}, but:\n  "
            + "\n  ".join(problems)
            + f"\nRun them first with the same --workdir (e.g. --config.phases={sources}), or run all "
            "phases (the default)."
        )
    trees, steps = {}, {}
    for item, (source, ckpt, step, meta) in found.items():
        ckpt_lib.check_shapes(
            run.shapes[item],
            meta["param_shapes"],
            what=f"{run.name} hand-off from {ckpt.directory} (step {step})",
            checkpoint_model=meta.get("model_config"),
            config_model=run.model_config,
        )
        weights = "ema" if meta.get("ema") else "params"  # what the phase hands on
        network = run.phase.network if item == "params" else run.phase.frozen
        target = _abstract_replicated(run.abstract(str(network)), run.mesh)  # any writer's topology
        trees[item] = ckpt.restore(step, items=(weights,), **{weights: target})[weights]
        steps[source] = int(step)
        ckpt.close()
    return trees, steps


def _scale_tail(params: PyTree, scale: float) -> PyTree:
    """DeblurNet / ReblurNet params with ``tail_conv/kernel`` multiplied by ``scale``."""
    if "tail_conv" not in params:
        raise ValueError("init_residual_scale needs a network with a 'tail_conv' layer")
    tail = dict(params["tail_conv"], kernel=params["tail_conv"]["kernel"] * scale)
    return dict(params, tail_conv=tail)


def _fresh_params(run: _Run) -> PyTree:
    """A new init of the trained network; with ``config.init_residual_scale`` its last conv
    scaled down when its output is a residual (DeblurNet always; ReblurNet with
    ``model.reblur_residual``), so it starts near its input."""
    network = run.phase.network
    params = init_params(run.nets[network], run.rng, which=network)
    scale = float(run.config.init_residual_scale)
    residual = network == "deblur" or bool(run.config.model.reblur_residual)
    if residual and scale != 1.0:
        params = _scale_tail(params, scale)
    return replicate(params, run.mesh)


@dataclasses.dataclass
class _Start:
    """Where a phase begins: its state, frozen params, data-iterator state and origin."""

    state: TrainState
    step: int
    frozen: PyTree | None = None
    data_state: Any = None
    started_from: dict[str, int] | None = None


def _abstract_replicated(tree: PyTree, mesh) -> PyTree:
    sharding = replicated_sharding(mesh)
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _resume(run: _Run, step: int, tx, meta: Mapping[str, Any]) -> _Start:
    abstract = run.abstract(run.phase.network)
    frozen = run.phase.frozen
    has_ema = bool(meta.get("ema"))
    items = ("params", "opt_state", "data") + (("frozen",) if frozen else ()) + (("ema",) if has_ema else ())
    restored = run.ckpt.restore(
        step,
        params=_abstract_replicated(abstract, run.mesh),
        opt_state=_abstract_replicated(jax.eval_shape(tx.init, abstract), run.mesh),
        frozen=_abstract_replicated(run.abstract(frozen), run.mesh) if frozen else None,
        ema=_abstract_replicated(abstract, run.mesh) if has_ema else None,
        items=items,
    )
    ema = restored.get("ema")
    if _ema_on(run.config) and ema is None:  # EMA switched on for a run that had none
        ema = jax.tree_util.tree_map(jnp.copy, restored["params"])
    state = TrainState(
        step=replicate(np.int32(step), run.mesh),
        params=restored["params"],
        opt_state=restored["opt_state"],
        ema_params=ema if _ema_on(run.config) else None,
    )
    print(f"[{run.name}] resuming from step {step}/{run.total}", flush=True)
    return _Start(state, step, restored.get("frozen"), restored["data"], meta.get("started_from"))


def _begin(run: _Run, tx) -> _Start:
    started_from = None
    if run.phase.hands_off_from:
        trees, started_from = _load_handoff(run)
        origin = " and ".join(f"{p} step {s}" for p, s in started_from.items())
        print(f"[{run.name}] starting from {origin}", flush=True)
    else:
        trees = {}
    params = trees.get("params", None)
    if params is None:
        params = _fresh_params(run)
    ema = _ema_on(run.config)
    state = jax.jit(lambda p: TrainState.create(p, tx, ema=ema), out_shardings=replicated_sharding(run.mesh))(params)
    return _Start(state, 0, trees.get("frozen"), None, started_from)


def _ema_on(config: ml_collections.ConfigDict) -> bool:
    decay = float(config.ema_decay)
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"config.ema_decay must be in [0, 1) (0 turns the EMA off), got {decay}")
    return decay > 0


# ----------------------------------------------------------------------------- the step loop


class _Checkpointer:
    """Saves the phase's state with its meta; remembers the last saved step."""

    def __init__(self, run: _Run, start: _Start, last_saved: int | None):
        self.run, self.start, self.last_saved = run, start, last_saved

    def save(self, step: int, state: TrainState, iterator: Any) -> None:
        run = self.run
        meta = {
            "phase": run.name,
            "phase_index": run.phase.index,
            "network": run.phase.network,
            "frozen_network": run.phase.frozen,
            "step": step,
            "total_steps": run.total,
            "finished": step >= run.total,
            "steps_per_epoch": run.schedule.steps_per_epoch,
            "model_config": run.model_config,
            "param_shapes": run.shapes["params"],
            "ema": state.ema_params is not None,
        }
        if "frozen" in run.shapes:
            meta["frozen_shapes"] = run.shapes["frozen"]
        if self.start.started_from is not None:
            meta["started_from"] = self.start.started_from
        run.ckpt.save(
            step,
            params=state.params,
            opt_state=state.opt_state,
            frozen=self.start.frozen,
            ema=state.ema_params,
            meta=meta,
            config_json=run.config_json,
            data_state=iterator.get_state(),
        )
        self.last_saved = step


class _MetricsAverager:
    """Host-side running means of the step metrics, checked for NaN/inf one step behind
    (so dispatch stays asynchronous) and at every boundary."""

    def __init__(self, run: _Run, checkpointer: _Checkpointer):
        self.run, self.checkpointer = run, checkpointer
        self.sums: dict[str, float] = {}
        self.count = 0
        self.pending: tuple[int, Any] | None = None
        self.since = time.time()

    def _check(self, step: int, metrics: Any) -> dict[str, float]:
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        bad = {k: v for k, v in host.items() if not math.isfinite(v)}
        if bad:
            last = self.checkpointer.last_saved
            keep = (
                f"the last good checkpoint (step {last}) in {self.run.ckpt.directory} was kept"
                if last is not None
                else "no checkpoint of this phase had been written yet"
            )
            raise NonFiniteLossError(
                f"[{self.run.name}] non-finite training metrics at step {step}: {bad}; stopping, "
                f"{keep}. Try a lower learning rate (config.{self.run.name}.lr) or gradient "
                f"clipping (config.grad_clip_norm)."
            )
        return host

    def flush_pending(self) -> None:
        if self.pending is not None:
            for k, v in self._check(*self.pending).items():
                self.sums[k] = self.sums.get(k, 0.0) + v
            self.count += 1
            self.pending = None

    def add(self, step: int, metrics: Any, boundary: bool) -> None:
        self.flush_pending()
        self.pending = (step, metrics)
        if boundary:
            self.flush_pending()

    def take_means(self, step: int) -> dict[str, float]:
        now = time.time()
        means = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        means["lr"] = float(self.run.schedule.fn(step - 1))
        means["steps_per_s"] = self.count / max(now - self.since, 1e-9)
        means["epoch"] = step / self.run.schedule.steps_per_epoch
        self.sums, self.count, self.since = {}, 0, now
        return means


def _every(config, field: str, total: int) -> int:
    """A cadence in steps from ``config.<field>``; <= 0 means only at the phase's end."""
    value = int(config[field])
    return value if value > 0 else max(1, total)


def _preview(run: _Run, eval_fns, params, frozen, batch, n: int = 2) -> np.ndarray:
    """Grid rows [blurred | output | sharp] of n examples; a frozen ReblurNet adds R(b, D(b)).

    Only process 0 draws previews; with several processes it runs the networks on a local
    copy of the (replicated) params, a computation no other process takes part in."""
    if jax.process_count() > 1:
        params, frozen = jax.device_get((params, frozen))
    b, s = to_model(np.asarray(batch["blurred"][:n])), to_model(np.asarray(batch["sharp"][:n]))
    if run.phase.evaluates == "reblur":
        out = eval_fns["reblur"](params, b, s)
    else:
        out = eval_fns["deblur"](params, b)
    rows = [[b[i], out[i], s[i]] for i in range(b.shape[0])]
    if run.phase.frozen == "reblur":
        re = eval_fns["reblur"](frozen, b, out)
        rows = [row + [re[i]] for i, row in enumerate(rows)]
    return image_grid(jax.device_get(rows))


def _train_steps(run: _Run, start: _Start, tx, eval_fns, writer: MetricsWriter, evaluate) -> tuple[TrainState, int]:
    """Runs steps ``start.step + 1 .. total``: logging, checkpoints, previews, validation,
    and a clean stop on SIGINT/SIGTERM. Returns the final state and step."""
    config = run.config
    deblur, reblur = compute_modules(config, run.nets["deblur"], run.nets["reblur"])
    step_fn = make_train_step(
        run.phase,
        deblur=deblur,
        reblur=reblur,
        tx=tx,
        image_loss=get_loss(config.loss),
        mesh=run.mesh,
        phase_config=config[run.name],
        grad_accum_steps=int(config.grad_accum_steps),
        ema_decay=float(config.ema_decay),
    )
    frozen_args = (start.frozen,) if run.phase.frozen is not None else ()
    iterator = iter(run.loader)
    if start.data_state is not None:
        iterator.set_state(start.data_state)
    saver = _Checkpointer(run, start, start.step if start.step else None)
    averager = _MetricsAverager(run, saver)
    total = run.total
    log_every, ckpt_every = _every(config, "log_every_steps", total), _every(config, "checkpoint_every_steps", total)
    image_every, eval_every = int(config.image_every_steps), int(config.eval_every_steps)
    show = show_progress(bool(config.progress_bar)) and jax.process_index() == 0
    pbar = tqdm(total=total, initial=start.step, desc=run.name, unit="step", dynamic_ncols=True) if show else None
    state, step = start.state, start.step
    # On a CPU each step waits for XLA to hand its temporaries back to malloc before the
    # next one is dispatched; else a step can get fresh memory and double peak RSS (see
    # aspdc_jax.allocator.wait_for_heap_release). Accelerators keep asynchronous dispatch.
    settle = run.mesh.devices.flat[0].platform == "cpu" and heap_in_use() is not None
    with _StopRequests(run.name) as stop:
        try:
            while step < total:
                batch = next(iterator)
                before = heap_in_use() if settle else None
                state, metrics = step_fn(state, put_global_batch(batch, run.mesh), *frozen_args)
                if before is not None:
                    jax.block_until_ready(state)
                    wait_for_heap_release(before)
                step += 1
                at_end = step == total
                averager.add(step, metrics, boundary=step % log_every == 0 or step % ckpt_every == 0 or at_end)
                if step % log_every == 0 or at_end:
                    means = averager.take_means(step)
                    writer.write(step, "train", means)
                    if pbar is not None:
                        pbar.set_postfix(loss=f"{means['loss']:.4g}", lr=f"{means['lr']:.2g}")
                if pbar is not None:
                    pbar.update(1)
                if step % ckpt_every == 0 or at_end:
                    saver.save(step, state, iterator)
                if image_every and (step % image_every == 0 or at_end) and writer.enabled:
                    grid = _preview(run, eval_fns, state.eval_params, start.frozen, batch)
                    writer.write_images(step, f"{run.name}/blurred_output_sharp", grid)
                if eval_every and (step % eval_every == 0 or at_end) and evaluate is not None:
                    evaluate(state.eval_params, step)
                if stop.signum is not None:
                    _stop(run, stop.signum, step, state, iterator, averager, saver)
        finally:
            if pbar is not None:
                pbar.close()
    return state, step


def _stop(run: _Run, signum: int, step: int, state, iterator, averager: _MetricsAverager, saver: _Checkpointer):
    averager.flush_pending()  # never save a non-finite state
    if saver.last_saved != step:
        saver.save(step, state, iterator)
    run.ckpt.close()
    raise TrainingInterrupted(
        f"[{run.name}] stopped by {signal.Signals(signum).name} at step {step}/{run.total}; "
        f"saved in {run.ckpt.directory}. Rerun the same command to resume.",
        signum,
    )


# ----------------------------------------------------------------------------- evaluation


def _evaluator(run: _Run, eval_fns, eval_pairs_fn: EvalPairsFn | None, writer: MetricsWriter, frozen: PyTree):
    """``evaluate(params, step, final=False) -> result``, or None when ``config.eval_limit``
    is 0 (no evaluation at all).

    During the phase (``final=False``) it validates on ``config.val_split`` (a fixed part
    of the training data, not the test split unless asked), records event ``val`` and
    keeps the best step so far as an export in ``WORKDIR/<phase>/best/``. After the phase
    it scores ``config.eval_split`` (event ``eval``).
    """
    config = run.config
    if eval_pairs_fn is None or int(config.eval_limit) <= 0:
        return None
    best = _BestExport(run, frozen)
    data = DataSettings.from_config(config.data)

    def evaluate(params: PyTree, step: int, final: bool = False) -> dict[str, Any]:
        split = str(config.eval_split if final else config.val_split)
        pairs = eval_pairs_fn(data, split=split, limit=int(config.eval_limit))
        result = evaluate_pairs(run.phase.evaluates, pairs, params=params, eval_fns=eval_fns)
        writer.write(step, "eval" if final else "val", result)
        _print_eval(run, split, step, result)
        if not final:
            best.offer(params, step, result)
        return result

    return evaluate


class _BestExport:
    """Keeps ``WORKDIR/<phase>/best/``: an export (`aspdc_jax.weights.save_export`) of the
    validated step with the highest PSNR, with ``best.json`` saying which step and score.
    Only for phases that train the DeblurNet (an export is a DeblurNet first)."""

    def __init__(self, run: _Run, frozen: PyTree):
        self.run, self.frozen = run, frozen
        self.directory = run.ckpt.directory / "best"
        self.record = self.directory / "best.json"
        self.score = json.loads(self.record.read_text())["psnr_output"] if self.record.is_file() else -math.inf

    def offer(self, params: PyTree, step: int, result: Mapping[str, Any]) -> None:
        """Exports ``params`` when ``result`` beats the best so far. Every process calls it
        (Orbax writes the export with all of them taking part); process 0's score decides,
        and process 0 alone moves the export into place and records it."""
        score = float(result.get("psnr_output", -math.inf))
        if self.run.phase.network != "deblur" or not _process_0_decides(score > self.score):
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
        (tmp / "best.json").write_text(
            json.dumps({"step": step, "psnr_output": score, "split": self.run.config.val_split})
        )
        shutil.rmtree(self.directory, ignore_errors=True)
        os.replace(tmp, self.directory)
        print(f"[{self.run.name}] step {step}: best so far ({score:.2f} dB), exported to {self.directory}", flush=True)


def _process_0_decides(flag: bool) -> bool:
    """Process 0's ``flag`` on every process, so that all take the same branch around a
    step where they must act together; ``flag`` itself with one process."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def _print_eval(run: _Run, split: str, step: int, result: Mapping[str, Any]) -> None:
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


# ----------------------------------------------------------------------------- phases


def run_phase(
    phase: str | Phase,
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    deblur: Any,
    reblur: Any,
    mesh,
    loader_factory: LoaderFactory = make_train_loader,
    eval_pairs_fn: EvalPairsFn | None = data_eval_pairs,
) -> dict[str, Any]:
    """Trains one phase to the end of its schedule (resuming / skipping as needed).

    Returns a summary dict: ``{"phase", "skipped", "start_step", "final_step",
    "total_steps", "steps_per_epoch", "seconds", "eval": {...}}``.
    """
    t_start = time.time()
    workdir = Path(workdir).expanduser().absolute()
    run = _open_run(get_phase(phase), config, workdir, {"deblur": deblur, "reblur": reblur}, mesh, loader_factory)
    summary: dict[str, Any] = {
        "phase": run.name,
        "total_steps": run.total,
        "steps_per_epoch": run.schedule.steps_per_epoch,
    }
    latest = run.ckpt.latest_step()
    tx = make_optimizer(config, run.schedule.fn)
    if latest is not None:
        meta = _check_checkpoint(run, latest)
        _warn_if_handoff_moved(run, meta.get("started_from"))
        if latest >= run.total:
            logging.info("phase %s already finished (step %d of %d): skipped", run.name, latest, run.total)
            print(f"[{run.name}] finished earlier (step {latest}/{run.total}): skipped", flush=True)
            run.ckpt.close()
            return dict(summary, skipped=True, start_step=latest, final_step=latest)
        start = _resume(run, latest, tx, meta)
    else:
        start = _begin(run, tx)
    eval_fns = make_eval_fns(deblur, reblur)
    writer = MetricsWriter(workdir, run.name, resume_step=latest or 0)
    evaluate = _evaluator(run, eval_fns, eval_pairs_fn, writer, start.frozen)
    state, step = _train_steps(run, start, tx, eval_fns, writer, evaluate)
    run.ckpt.close()
    seconds = time.time() - t_start
    summary.update(skipped=False, start_step=start.step, final_step=step, seconds=seconds)
    if evaluate is not None:
        summary["eval"] = evaluate(state.eval_params, step, final=True)
    print(
        f"[{run.name}] finished: step {step}/{run.total} in {seconds:.0f} s, saved in {run.ckpt.directory}", flush=True
    )
    writer.write(step, "phase_end", {"seconds": seconds, "start_step": start.step})
    writer.close()
    return summary


def _check_config(config: ml_collections.ConfigDict, phases: tuple[str, ...]) -> None:
    """Values that would otherwise fail mid-run (or quietly do the wrong thing); ValueError."""
    get_loss(str(config.loss))
    if int(config.batch_size) < 1:
        raise ValueError(f"config.batch_size must be >= 1, got {config.batch_size}")
    if int(config.max_checkpoints_to_keep) < 1:
        raise ValueError(f"config.max_checkpoints_to_keep must be >= 1, got {config.max_checkpoints_to_keep}")
    if int(config.eval_limit) < 0:
        raise ValueError(f"config.eval_limit must be >= 0 (0 disables the evaluation), got {config.eval_limit}")
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
