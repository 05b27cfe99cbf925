"""The three-phase training loop of ``train.py``.

``train_and_evaluate(config, workdir)`` runs the phases named in ``config.phases`` in the
order deblur, reblur, finetune. Each phase resumes from its latest checkpoint (params,
Adam state, step, data-iterator state), is skipped when already finished, and ends with
a checkpoint and a small PSNR evaluation on the test pairs.
"""

from __future__ import annotations

import logging
import math
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

from aspdc_jax.checkpoint import CheckpointError
from aspdc_jax.training import checkpoints as ckpt_lib
from aspdc_jax.training.evaluation import evaluate_pairs
from aspdc_jax.training.losses import get_loss
from aspdc_jax.training.schedules import make_schedule, steps_per_epoch
from aspdc_jax.training.sharding import make_mesh, put_global_batch, replicate, replicated_sharding
from aspdc_jax.training.state import PHASES, TrainState, init_params, make_optimizer, param_shapes
from aspdc_jax.training.steps import make_eval_fns, make_train_step
from aspdc_jax.training.summaries import MetricsWriter, image_grid

__all__ = ["NonFiniteLossError", "TrainingInterrupted", "parse_phases", "run_phase", "train_and_evaluate"]

PyTree = Any
LoaderFactory = Callable[..., Any]
EvalPairsFn = Callable[..., Iterable[Any]]

_PHASE_INDEX = {p: i for i, p in enumerate(PHASES)}


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the last good checkpoint was kept."""


class TrainingInterrupted(Exception):  # noqa: N818 (not an error: the user asked to stop)
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
_RESUME_FREE_KEYS = frozenset({
    "phases", "progress_bar", "log_every_steps", "checkpoint_every_steps", "image_every_steps",
    "eval_every_steps", "eval_limit", "eval_split", "max_checkpoints_to_keep",
    "data.num_workers", "data.tfds_dir",
})


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any], phase: str) -> list[str]:
    """``"key: old -> new"`` for the fields that differ between the config a checkpoint of
    ``phase`` was trained with and the current one (both as plain JSON), leaving out the
    other phases' sections, ``phase.num_epochs`` (extending a run is normal) and
    ``_RESUME_FREE_KEYS``."""
    old, new = _flatten(saved), _flatten(current)
    other = tuple(f"{p}." for p in PHASES if p != phase)
    changes = []
    for key in sorted(set(old) | set(new)):
        if key in _RESUME_FREE_KEYS or key.startswith(other) or key == f"{phase}.num_epochs":
            continue
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            changes.append(f"{key}: {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}")
    return changes


def parse_phases(phases: str | Iterable[str]) -> tuple[str, ...]:
    """"deblur,reblur" -> ("deblur", "reblur"), validated, in the paper's order."""
    if isinstance(phases, str):
        names = [p.strip() for p in phases.split(",") if p.strip()]
    else:
        names = [str(p).strip() for p in phases]
    bad = [p for p in names if p not in PHASES]
    if bad or not names:
        raise ValueError(
            f"config.phases must be a comma-separated subset of {','.join(PHASES)}, got "
            f"{phases!r}"
        )
    return tuple(p for p in PHASES if p in names)


def _default_loader_factory(data_cfg, *, global_batch_size: int, seed: int):
    from aspdc_jax.data import make_train_loader  # noqa: PLC0415

    return make_train_loader(data_cfg, global_batch_size=global_batch_size, seed=seed)


def _default_eval_pairs(data_cfg, split: str = "test", limit: int | None = None):
    from aspdc_jax.data import eval_pairs  # noqa: PLC0415

    return eval_pairs(data_cfg, split=split, limit=limit)


def _model_config(config: ml_collections.ConfigDict, deblur, reblur) -> dict[str, Any]:
    from aspdc_jax.models import model_config_dict  # noqa: PLC0415

    return model_config_dict(deblur, reblur)


def _abstract_replicated(tree: PyTree, mesh) -> PyTree:
    sharding = replicated_sharding(mesh)
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree
    )


def _load_handoff(workdir: Path, deblur_shapes, reblur_shapes, model_config, mesh):
    """Final params of phases 1-2 for finetune; CheckpointError naming what is missing."""
    problems, found = [], {}
    for phase in ("deblur", "reblur"):
        directory = ckpt_lib.phase_dir(workdir, phase)
        ckpt = ckpt_lib.PhaseCheckpoints(directory, read_only=True)
        step = ckpt.latest_step()
        if step is None:
            problems.append(f"phase '{phase}': no checkpoint in {directory}")
            continue
        meta = ckpt.meta(step)
        if not meta.get("finished"):
            problems.append(
                f"phase '{phase}': unfinished (step {step} of {meta.get('total_steps')}) in "
                f"{directory}"
            )
            continue
        found[phase] = (ckpt, step, meta)
    if problems:
        raise CheckpointError(
            "finetune starts from the final checkpoints of phases 'deblur' and 'reblur', "
            "but:\n  " + "\n  ".join(problems) + "\nRun them first with the same --workdir "
            "(e.g. --config.phases=deblur,reblur), or run all phases (the default)."
        )
    out = {}
    for phase, expected in (("deblur", deblur_shapes), ("reblur", reblur_shapes)):
        ckpt, step, meta = found[phase]
        ckpt_lib.check_shapes(
            expected,
            meta["param_shapes"],
            what=f"finetune hand-off from {ckpt.directory} (step {step})",
            checkpoint_model=meta.get("model_config"),
            config_model=model_config,
        )
        params = ckpt.restore(step, items=("params",))["params"]
        out[phase] = (replicate(params, mesh), step)
        ckpt.close()
    return out["deblur"], out["reblur"]


def _scale_tail(params: PyTree, scale: float) -> PyTree:
    """DeblurNet / ReblurNet params with ``tail_conv/kernel`` multiplied by ``scale``."""
    if "tail_conv" not in params:
        raise ValueError("init_residual_scale needs a network with a 'tail_conv' layer")
    params = dict(params)
    tail = dict(params["tail_conv"])
    tail["kernel"] = tail["kernel"] * scale
    params["tail_conv"] = tail
    return params


def _image_preview(phase, eval_fns, params, frozen, batch, n=2):
    """Grid rows [blurred | output | sharp] (finetune adds R(b, D(b))) of n examples."""
    from aspdc_jax.images import to_model  # noqa: PLC0415

    b = to_model(np.asarray(batch["blurred"][:n]))
    s = to_model(np.asarray(batch["sharp"][:n]))
    if phase == "reblur":
        out = eval_fns["reblur"](params, b, s)
        rows = [[b[i], out[i], s[i]] for i in range(b.shape[0])]
    else:
        out = eval_fns["deblur"](params, b)
        rows = [[b[i], out[i], s[i]] for i in range(b.shape[0])]
        if phase == "finetune":
            re = eval_fns["reblur"](frozen, b, out)
            rows = [row + [re[i]] for i, row in enumerate(rows)]
    return image_grid(jax.device_get(rows))


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_modules(config: Mapping[str, Any], deblur: Any, reblur: Any) -> tuple[Any, Any]:
    """The networks the train steps run: ``config.compute_dtype`` ("float32" or "bfloat16";
    a ConfigDict or dict) as the modules' compute dtype. Parameters stay float32 either way."""
    name = str(config.get("compute_dtype", "float32"))
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"config.compute_dtype must be one of {sorted(COMPUTE_DTYPES)}, got {name!r}")
    dtype = COMPUTE_DTYPES[name]
    return deblur.clone(dtype=dtype), reblur.clone(dtype=dtype)


def _note(message: str) -> None:
    """A warning the user should see on the console, also in the log."""
    logging.warning(message)
    print(message, flush=True)


def _warn_if_handoff_moved(workdir: Path, started_from: Mapping[str, int] | None) -> None:
    """Finetune began from given deblur/reblur steps; say so if those phases moved on since."""
    if not started_from:
        return
    for phase, step in started_from.items():
        directory = ckpt_lib.phase_dir(workdir, phase)
        with ckpt_lib.PhaseCheckpoints(directory, read_only=True) as ckpt:
            now = ckpt.latest_step()
        if now is not None and now != step:
            _note(
                f"[finetune] note: fine-tuned from {phase} step {step}, but {directory} is now at "
                f"step {now}; delete {ckpt_lib.phase_dir(workdir, 'finetune')} to fine-tune the newer weights"
            )


def run_phase(
    phase: str,
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    deblur: Any,
    reblur: Any,
    mesh,
    loader_factory: LoaderFactory = _default_loader_factory,
    eval_pairs_fn: EvalPairsFn | None = _default_eval_pairs,
) -> dict[str, Any]:
    """Trains one phase to the end of its schedule (resuming / skipping as needed).

    Returns a summary dict: ``{"phase", "skipped", "start_step", "final_step",
    "total_steps", "seconds", "eval": {...}}``.
    """
    workdir = Path(workdir).expanduser().absolute()
    t_start = time.time()
    phase_cfg = config[phase]
    eval_pairs_fn = _evaluation_enabled(config, eval_pairs_fn)
    config_json = ckpt_lib.config_to_json(config)
    model_config = _model_config(config, deblur, reblur)
    ckpt = ckpt_lib.PhaseCheckpoints(
        ckpt_lib.phase_dir(workdir, phase), max_to_keep=int(config.max_checkpoints_to_keep)
    )
    loader = loader_factory(
        config.data,
        global_batch_size=int(config.batch_size),
        seed=int(config.seed) + 1000 * _PHASE_INDEX[phase],
    )
    spe = steps_per_epoch(int(loader.num_examples), int(config.batch_size))
    schedule = make_schedule(phase_cfg, steps_per_epoch=spe)
    total = schedule.total_steps
    summary: dict[str, Any] = {"phase": phase, "total_steps": total, "steps_per_epoch": spe}
    latest = ckpt.latest_step()

    trained = deblur if phase in ("deblur", "finetune") else reblur
    which = "reblur" if phase == "reblur" else "deblur"
    rng = jax.random.fold_in(jax.random.key(int(config.seed)), _PHASE_INDEX[phase])
    abstract_params = jax.eval_shape(lambda: init_params(trained, rng, which=which))
    shapes = param_shapes(abstract_params)
    reblur_shapes = None
    if phase == "finetune":
        reblur_shapes = param_shapes(
            jax.eval_shape(lambda: init_params(reblur, rng, which="reblur"))
        )

    started_from: dict[str, int] | None = None  # finetune: the deblur/reblur steps it began from
    if latest is not None:
        meta = ckpt.meta(latest)
        what = f"checkpoint {ckpt.directory} (step {latest})"
        ckpt_lib.check_shapes(
            shapes, meta["param_shapes"], what=what,
            checkpoint_model=meta.get("model_config"), config_model=model_config,
        )
        if reblur_shapes is not None:
            ckpt_lib.check_shapes(
                reblur_shapes, meta["frozen_shapes"], what=what + " (frozen ReblurNet)",
                checkpoint_model=meta.get("model_config"), config_model=model_config,
            )
        if meta.get("steps_per_epoch") not in (None, spe):
            _note(
                f"[{phase}] note: {what} was written at {meta['steps_per_epoch']} steps per epoch, "
                f"this config gives {spe} (batch_size or epoch_size changed); its step {latest} is "
                f"resumed as step {latest} of the new {total}-step schedule"
            )
        saved_config = ckpt.saved_config(latest)
        changes = config_changes(saved_config, config_json, phase) if saved_config else []
        if changes:
            shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
            done = latest >= total
            _note(
                f"[{phase}] note: {what} {'finished' if done else 'is resumed, but was trained'} with "
                f"another config: {shown}. {'It is kept as it is; to' if done else 'To'} redo this phase "
                f"with the new config, delete {ckpt.directory} (or use a new --workdir for every phase)."
            )
        started_from = meta.get("started_from")
        if phase == "finetune":
            _warn_if_handoff_moved(workdir, started_from)
        if latest >= total:
            logging.info("phase %s already finished (step %d of %d): skipped", phase, latest, total)
            print(f"[{phase}] finished earlier (step {latest}/{total}): skipped", flush=True)
            ckpt.close()
            return dict(summary, skipped=True, start_step=latest, final_step=latest)

    tx = make_optimizer(config, schedule.fn)
    frozen = None
    data_state = None
    if latest is not None:
        abstract_p = _abstract_replicated(abstract_params, mesh)
        abstract_o = _abstract_replicated(jax.eval_shape(tx.init, abstract_params), mesh)
        items = ("params", "opt_state", "data") + (("frozen",) if phase == "finetune" else ())
        abstract_f = None
        if phase == "finetune":
            abstract_f = _abstract_replicated(
                jax.eval_shape(lambda: init_params(reblur, rng, which="reblur")), mesh
            )
        restored = ckpt.restore(
            latest, params=abstract_p, opt_state=abstract_o, frozen=abstract_f, items=items
        )
        state = TrainState(
            step=replicate(np.int32(latest), mesh),
            params=restored["params"],
            opt_state=restored["opt_state"],
        )
        frozen = restored.get("frozen")
        data_state = restored["data"]
        start = latest
        print(f"[{phase}] resuming from step {latest}/{total}", flush=True)
    else:
        if phase == "finetune":
            (params, dstep), (frozen, rstep) = _load_handoff(
                workdir, shapes, reblur_shapes, model_config, mesh
            )
            print(f"[finetune] starting from deblur step {dstep} and reblur step {rstep}", flush=True)
            started_from = {"deblur": int(dstep), "reblur": int(rstep)}
        else:
            params = init_params(trained, rng, which=which)
            scale = float(config.get("init_residual_scale", 1.0))
            residual = phase == "deblur" or bool(config.model.get("reblur_residual", False))
            if residual and scale != 1.0:
                params = _scale_tail(params, scale)
            params = replicate(params, mesh)
        state = jax.jit(
            lambda p: TrainState.create(p, tx), out_shardings=replicated_sharding(mesh)
        )(params)
        start = 0

    step_deblur, step_reblur = compute_modules(config, deblur, reblur)
    step_fn = make_train_step(
        phase,
        deblur=step_deblur,
        reblur=step_reblur,
        tx=tx,
        image_loss=get_loss(config.loss),
        mesh=mesh,
        reblur_weight=float(config.finetune.get("reblur_weight", 0.1)),
    )
    eval_fns = make_eval_fns(deblur, reblur)
    writer = MetricsWriter(workdir, phase, resume_step=latest or 0)
    frozen_shapes = reblur_shapes

    iterator = iter(loader)
    if data_state is not None:
        iterator.set_state(data_state)

    last_saved = latest

    def save(step: int) -> None:
        nonlocal last_saved
        meta = {
            "phase": phase,
            "step": step,
            "total_steps": total,
            "finished": step >= total,
            "steps_per_epoch": spe,
            "model_config": model_config,
            "param_shapes": shapes,
        }
        if frozen_shapes is not None:
            meta["frozen_shapes"] = frozen_shapes
        if started_from is not None:
            meta["started_from"] = started_from
        ckpt.save(
            step,
            params=state.params,
            opt_state=state.opt_state,
            frozen=frozen,
            meta=meta,
            config_json=config_json,
            data_state=iterator.get_state(),
        )
        last_saved = step

    def check(step: int, metrics: dict[str, Any]) -> dict[str, float]:
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not all(math.isfinite(v) for v in host.values()):
            bad = {k: v for k, v in host.items() if not math.isfinite(v)}
            keep = (
                f"the last good checkpoint (step {last_saved}) in {ckpt.directory} was kept"
                if last_saved is not None
                else "no checkpoint of this phase had been written yet"
            )
            raise NonFiniteLossError(
                f"[{phase}] non-finite training metrics at step {step}: {bad}; stopping, "
                f"{keep}. Try a lower learning rate (config.{phase}.lr) or gradient "
                f"clipping (config.grad_clip_norm)."
            )
        return host

    log_every = max(1, int(config.log_every_steps))
    ckpt_every = int(config.checkpoint_every_steps)
    ckpt_every = ckpt_every if ckpt_every > 0 else max(1, total)  # <= 0: only at the phase's end
    image_every = int(config.get("image_every_steps", 0) or 0)
    eval_every = int(config.get("eval_every_steps", 0) or 0)
    pbar = None
    if bool(config.get("progress_bar", True)) and jax.process_index() == 0:
        from tqdm import tqdm  # noqa: PLC0415

        pbar = tqdm(total=total, initial=start, desc=phase, unit="step", dynamic_ncols=True)

    acc: dict[str, float] = {}
    acc_n = 0
    pending = None
    t_log = time.time()
    step = start
    with _StopRequests(phase) as stop:
        try:
            while step < total:
                batch = next(iterator)
                global_batch = put_global_batch(batch, mesh)
                if phase == "finetune":
                    state, metrics = step_fn(state, global_batch, frozen)
                else:
                    state, metrics = step_fn(state, global_batch)
                step += 1
                # Check the previous step's metrics (one step behind, so dispatch stays async).
                if pending is not None:
                    for k, v in check(*pending).items():
                        acc[k] = acc.get(k, 0.0) + v
                    acc_n += 1
                pending = (step, metrics)
                boundary = step % log_every == 0 or step % ckpt_every == 0 or step == total
                if boundary:
                    for k, v in check(*pending).items():
                        acc[k] = acc.get(k, 0.0) + v
                    acc_n += 1
                    pending = None
                if step % log_every == 0 or step == total:
                    now = time.time()
                    means = {k: v / max(acc_n, 1) for k, v in acc.items()}
                    means["lr"] = float(schedule.fn(step - 1))
                    means["steps_per_s"] = acc_n / max(now - t_log, 1e-9)
                    means["epoch"] = step / spe
                    writer.write(step, "train", means)
                    if pbar is not None:
                        pbar.set_postfix(loss=f"{means['loss']:.4g}", lr=f"{means['lr']:.2g}")
                    acc, acc_n, t_log = {}, 0, now
                if pbar is not None:
                    pbar.update(1)
                if step % ckpt_every == 0 or step == total:
                    save(step)
                if image_every and (step % image_every == 0 or step == total) and writer.enabled:
                    writer.write_images(
                        step, f"{phase}/blurred_output_sharp",
                        _image_preview(phase, eval_fns, state.params, frozen, batch),
                    )
                if eval_every and step % eval_every == 0 and step != total and eval_pairs_fn:
                    _run_eval(phase, config, state.params, eval_fns, eval_pairs_fn, writer, step)
                if stop.signum is not None:
                    if pending is not None:
                        check(*pending)  # never save a non-finite state
                    if last_saved != step:
                        save(step)
                    ckpt.close()
                    raise TrainingInterrupted(
                        f"[{phase}] stopped by {signal.Signals(stop.signum).name} at step {step}/{total}; "
                        f"saved in {ckpt.directory}. Rerun the same command to resume.",
                        stop.signum,
                    )
        finally:
            if pbar is not None:
                pbar.close()
    ckpt.close()
    seconds = time.time() - t_start
    summary.update(skipped=False, start_step=start, final_step=step, seconds=seconds)
    if eval_pairs_fn is not None:
        summary["eval"] = _run_eval(phase, config, state.params, eval_fns, eval_pairs_fn, writer, step)
    print(f"[{phase}] finished: step {step}/{total} in {seconds:.0f} s, saved in {ckpt.directory}", flush=True)
    writer.write(step, "phase_end", {"seconds": seconds, "start_step": start})
    writer.close()
    return summary


def _evaluation_enabled(config: ml_collections.ConfigDict, eval_pairs_fn: EvalPairsFn | None) -> EvalPairsFn | None:
    """``eval_pairs_fn``, or None when ``config.eval_limit`` is 0 (no evaluation at all:
    neither the in-phase ``eval_every_steps`` ones nor the one after each phase)."""
    return eval_pairs_fn if int(config.get("eval_limit", 0) or 0) > 0 else None


def _run_eval(phase, config, params, eval_fns, eval_pairs_fn, writer, step) -> dict[str, float]:
    limit = int(config.get("eval_limit", 0) or 0)
    pairs = eval_pairs_fn(config.data, split=str(config.get("eval_split", "test")), limit=limit)
    result = evaluate_pairs(phase, pairs, params=params, eval_fns=eval_fns)
    writer.write(step, "eval", result)
    if "psnr_output" in result:
        label = "R(b,s) vs b" if phase == "reblur" else "D(b) vs s"
        base = "s vs b" if phase == "reblur" else "b vs s"
        print(
            f"[{phase}] step {step}: {config.get('eval_split', 'test')} PSNR {label} {result['psnr_output']:.2f} dB, "
            f"{base} {result['psnr_input']:.2f} dB (gain {result['psnr_gain']:+.2f} dB, "
            f"{result['num_pairs']} pairs)",
            flush=True,
        )
        for band, r in result.get("per_band", {}).items():
            print(
                f"[{phase}]   {band:>6}: {r['psnr_output']:.2f} dB vs {r['psnr_input']:.2f} dB "
                f"(gain {r['psnr_gain']:+.2f} dB, {r['num_pairs']} pairs)",
                flush=True,
            )
    return result


def _check_config(config: ml_collections.ConfigDict, phases: tuple[str, ...]) -> None:
    """Values that would otherwise fail mid-run (or quietly do the wrong thing); ValueError."""
    get_loss(str(config.loss))
    if int(config.batch_size) < 1:
        raise ValueError(f"config.batch_size must be >= 1, got {config.batch_size}")
    if str(config.data.dataset) == "synthetic" and int(config.data.epoch_size) < 1:
        raise ValueError(f"config.data.epoch_size must be >= 1, got {config.data.epoch_size}")
    if int(config.max_checkpoints_to_keep) < 1:
        raise ValueError(f"config.max_checkpoints_to_keep must be >= 1, got {config.max_checkpoints_to_keep}")
    if int(config.get("eval_limit", 0) or 0) < 0:
        raise ValueError(f"config.eval_limit must be >= 0 (0 disables the evaluation), got {config.eval_limit}")
    crop = int(config.data.crop_size)
    # DeblurNet downsamples twice (multiples of 4); ReblurNet three times (multiples of 8).
    multiple = 8 if {"reblur", "finetune"} & set(phases) else 4
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
    eval_pairs_fn: EvalPairsFn | None = _default_eval_pairs,
) -> dict[str, dict[str, Any]]:
    """Runs ``config.phases`` into ``workdir``; returns each phase's summary."""
    from aspdc_jax.models import model_from_config  # noqa: PLC0415

    phases = parse_phases(config.phases)
    workdir = Path(workdir).expanduser().absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh()
    if int(config.batch_size) % mesh.devices.size:
        raise ValueError(
            f"config.batch_size {config.batch_size} must be a multiple of the device count "
            f"{mesh.devices.size}"
        )
    _check_config(config, phases)
    n = mesh.devices.size
    print(
        f"[train] {n} {jax.devices()[0].platform} device{'s' if n > 1 else ''} on "
        f"{jax.process_count()} host{'s' if jax.process_count() > 1 else ''}; global batch "
        f"{config.batch_size} ({int(config.batch_size) // n} per device)",
        flush=True,
    )
    deblur, reblur = model_from_config(config.model)
    compute_modules(config, deblur, reblur)  # a bad config.compute_dtype fails here, not mid-run
    if _evaluation_enabled(config, eval_pairs_fn) is not None:
        # The held-out pairs, checked (and a store prepared) before anything trains.
        eval_pairs_fn(config.data, split=str(config.get("eval_split", "test")), limit=int(config.eval_limit))
    results = {}
    for phase in phases:
        results[phase] = run_phase(
            phase,
            config,
            workdir,
            deblur=deblur,
            reblur=reblur,
            mesh=mesh,
            loader_factory=loader_factory or _default_loader_factory,
            eval_pairs_fn=eval_pairs_fn,
        )
    return results
