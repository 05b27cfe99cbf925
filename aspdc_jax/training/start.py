"""How a phase starts: `phase_start` returns one `Start` (defined in
:mod:`aspdc_jax.training.context`, which the periodic jobs read too).

* **done**: its latest checkpoint is at (or past) the end of the schedule: skipped;
* **resumed**: from its latest checkpoint (params, optimizer state, EMA, frozen params and
  the data iterator's position), checked against the current config first;
* **handed off**: from the final weights of the earlier phases it starts from
  (`Phase.hands_off_from`: the EMA when they kept one);
* **fresh**: a new init of the trained network.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from aspdc_jax.checkpoint import CheckpointError, Item, PhaseCheckpoints, PhaseMeta, check_shapes
from aspdc_jax.devices import replicated_sharding
from aspdc_jax.models import init_params
from aspdc_jax.training.context import PhaseRun, Start, note, phase_dir, replicated_abstract
from aspdc_jax.training.jobs import JOB_TYPES
from aspdc_jax.training.phases import PHASES
from aspdc_jax.training.sharding import replicate
from aspdc_jax.training.state import TrainState
from aspdc_jax.trees import flatten

__all__ = ["RUN_SETTINGS", "Start", "config_changes", "ema_on", "phase_start", "resume_free_fields"]

PyTree = Any

#: Config fields that say how a run is carried out, not what it trains: they may change
#: between a run and its resumption without a note. The bookkeeping fields each periodic
#: job reads (`PeriodicJob.config_fields`) join them (`resume_free_fields`).
RUN_SETTINGS = ("phases", "data.num_workers", "data.tfds_dir")


def resume_free_fields() -> frozenset[str]:
    """`RUN_SETTINGS` plus every periodic job's `config_fields`."""
    return frozenset(RUN_SETTINGS).union(*(job.config_fields for job in JOB_TYPES))


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any], phase: str) -> list[str]:
    """``"key: old -> new"`` for the fields that differ between the config a checkpoint of
    ``phase`` was trained with and the current one (both as plain JSON), leaving out the
    other phases' sections, ``<phase>.num_epochs`` (extending a run is normal) and
    `resume_free_fields`."""
    old, new = flatten(saved, sep="."), flatten(current, sep=".")
    other = tuple(f"{p}." for p in PHASES if p != phase)
    free = resume_free_fields()
    changes = []
    for key in sorted(set(old) | set(new)):
        if key in free or key.startswith(other) or key == f"{phase}.num_epochs":
            continue
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            changes.append(f"{key}: {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}")
    return changes


def ema_on(config: ml_collections.ConfigDict) -> bool:
    """``config.ema_decay`` > 0 (ValueError outside [0, 1))."""
    decay = float(config.ema_decay)
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"config.ema_decay must be in [0, 1) (0 turns the EMA off), got {decay}")
    return decay > 0


def phase_start(run: PhaseRun, tx: Any) -> Start:
    """How ``run`` begins; the console says so (resuming, starting from, skipped)."""
    latest = run.ckpt.latest_step()
    if latest is None:
        return _begin(run, tx)
    meta = _check_checkpoint(run, latest)
    _warn_if_handoff_moved(run, meta.started_from)
    if latest >= run.total:
        print(f"[{run.name}] finished earlier (step {latest}/{run.total}): skipped", flush=True)
        return Start("done", latest)
    return _resume(run, latest, tx, meta)


def _check_checkpoint(run: PhaseRun, step: int) -> PhaseMeta:
    """Shapes and config of ``run``'s checkpoint ``step`` against the current config:
    CheckpointError when the model differs, a note when other settings do."""
    meta = run.ckpt.meta(step)
    what = f"checkpoint {run.ckpt.directory} (step {step})"
    saved_shapes = {Item.PARAMS: meta.param_shapes, Item.FROZEN: meta.frozen_shapes}
    for item, shapes in run.shapes.items():
        check_shapes(
            shapes,
            saved_shapes[item] or {},
            what=what + (" (frozen network)" if item == Item.FROZEN else ""),
            checkpoint_model=meta.model_config,
            config_model=run.model_config,
        )
    spe = run.schedule.steps_per_epoch
    if meta.steps_per_epoch not in (None, spe):
        note(
            f"[{run.name}] note: {what} was written at {meta.steps_per_epoch} steps per epoch, "
            f"this config gives {spe} (batch_size or epoch_size changed); its step {step} is "
            f"resumed as step {step} of the new {run.total}-step schedule"
        )
    saved_config = run.ckpt.saved_config(step)
    changes = config_changes(saved_config, run.config_json, run.name) if saved_config else []
    if changes:
        shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
        done = step >= run.total
        note(
            f"[{run.name}] note: {what} {'finished' if done else 'is resumed, but was trained'} with "
            f"another config: {shown}. {'It is kept as it is; to' if done else 'To'} redo this phase "
            f"with the new config, delete {run.ckpt.directory} (or use a new --workdir for every phase)."
        )
    return meta


def _warn_if_handoff_moved(run: PhaseRun, started_from: Mapping[str, int] | None) -> None:
    """The phase began from given steps of earlier phases; say so if those moved on since."""
    for source, step in (started_from or {}).items():
        directory = phase_dir(run.workdir, source)
        with PhaseCheckpoints(directory, read_only=True) as ckpt:
            now = ckpt.latest_step()
        if now is not None and now != step:
            note(
                f"[{run.name}] note: started from {source} step {step}, but {directory} is now at "
                f"step {now}; delete {run.ckpt.directory} to start from the newer weights"
            )


def _resume(run: PhaseRun, step: int, tx: Any, meta: PhaseMeta) -> Start:
    abstract = run.abstract(run.phase.network)
    frozen = run.phase.frozen
    items = (Item.PARAMS, Item.OPT_STATE, Item.DATA) + ((Item.FROZEN,) if frozen else ())
    restored = run.ckpt.restore(
        step,
        params=replicated_abstract(abstract, run.mesh),
        opt_state=replicated_abstract(jax.eval_shape(tx.init, abstract), run.mesh),
        frozen=run.abstract_replicated(frozen) if frozen else None,
        ema=replicated_abstract(abstract, run.mesh) if meta.ema else None,
        items=items + ((Item.EMA,) if meta.ema else ()),
    )
    ema = restored.get(Item.EMA)
    if ema_on(run.config) and ema is None:  # EMA switched on for a run that had none
        ema = jax.tree_util.tree_map(jnp.copy, restored[Item.PARAMS])
    state = TrainState(
        step=replicate(np.int32(step), run.mesh),
        params=restored[Item.PARAMS],
        opt_state=restored[Item.OPT_STATE],
        ema_params=ema if ema_on(run.config) else None,
    )
    print(f"[{run.name}] resuming from step {step}/{run.total}", flush=True)
    return Start("resumed", step, state, restored.get(Item.FROZEN), restored[Item.DATA], meta.started_from)


def _begin(run: PhaseRun, tx: Any) -> Start:
    trees: dict[str, PyTree] = {}
    started_from = None
    if run.phase.hands_off_from:
        trees, started_from = _load_handoff(run)
        origin = " and ".join(f"{p} step {s}" for p, s in started_from.items())
        print(f"[{run.name}] starting from {origin}", flush=True)
    params = trees.get(Item.PARAMS)
    if params is None:
        params = _fresh_params(run)
    ema = ema_on(run.config)
    state = jax.jit(lambda p: TrainState.create(p, tx, ema=ema), out_shardings=replicated_sharding(run.mesh))(params)
    how = "handed_off" if started_from else "fresh"
    return Start(how, 0, state, trees.get(Item.FROZEN), None, started_from)


def _load_handoff(run: PhaseRun) -> tuple[dict[str, PyTree], dict[str, int]]:
    """The final weights of the earlier phases this one starts from (``{"params" |
    "frozen": tree}``, replicated) and their steps; CheckpointError naming what is missing."""
    problems, found = [], {}
    for item, source in run.phase.hands_off_from.items():
        directory = phase_dir(run.workdir, source)
        ckpt = PhaseCheckpoints(directory, read_only=True)
        step = ckpt.latest_step()
        meta = ckpt.meta(step) if step is not None else None
        if step is None or meta is None:
            problems.append(f"phase '{source}': no checkpoint in {directory}")
        elif not meta.finished:
            problems.append(f"phase '{source}': unfinished (step {step} of {meta.total_steps}) in {directory}")
        else:
            found[item] = (source, ckpt, step, meta)
            continue
        ckpt.close()
    if problems:
        _close(entry[1] for entry in found.values())
        sources = ",".join(run.phase.hands_off_from.values())
        raise CheckpointError(
            f"{run.name} starts from the final checkpoints of phases "
            f"{', '.join(repr(s) for s in run.phase.hands_off_from.values())}, but:\n  "
            + "\n  ".join(problems)
            + f"\nRun them first with the same --workdir (e.g. --config.phases={sources}), or run all "
            "phases (the default)."
        )
    trees, steps = {}, {}
    try:
        for item, (source, ckpt, step, meta) in found.items():
            check_shapes(
                run.shapes[item],
                meta.param_shapes,
                what=f"{run.name} hand-off from {ckpt.directory} (step {step})",
                checkpoint_model=meta.model_config,
                config_model=run.model_config,
            )
            network = run.phase.network if item == Item.PARAMS else run.phase.frozen
            target = run.abstract_replicated(str(network))  # any writer's topology
            trees[item] = ckpt.restore(step, items=(meta.weights_item,), **{meta.weights_item: target})[
                meta.weights_item
            ]
            steps[source] = int(step)
    finally:
        _close(entry[1] for entry in found.values())
    return trees, steps


def _close(folders: Iterable[PhaseCheckpoints]) -> None:
    for folder in folders:
        folder.close()


def _scale_tail(params: PyTree, scale: float) -> PyTree:
    """DeblurNet / ReblurNet params with ``tail_conv/kernel`` multiplied by ``scale``."""
    if "tail_conv" not in params:
        raise ValueError("init_residual_scale needs a network with a 'tail_conv' layer")
    tail = dict(params["tail_conv"], kernel=params["tail_conv"]["kernel"] * scale)
    return dict(params, tail_conv=tail)


def _fresh_params(run: PhaseRun) -> PyTree:
    """A new init of the trained network; with ``config.init_residual_scale`` its last conv
    scaled down when its output is a residual (DeblurNet always; ReblurNet with
    ``model.reblur_residual``), so it starts near its input."""
    network = run.phase.network
    params = init_params(run.nets[network], run.rng)
    scale = float(run.config.init_residual_scale)
    residual = network == "deblur" or bool(run.config.model.reblur_residual)
    if residual and scale != 1.0:
        params = _scale_tail(params, scale)
    return replicate(params, run.mesh)
