"""Per-phase Orbax checkpoints of ``train.py`` and loading a workdir for inference.

Layout of a workdir::

    WORKDIR/deblur/<step>/{params,opt_state,data,config,meta}     # phase 1
    WORKDIR/reblur/<step>/{params,opt_state,data,config,meta}     # phase 2
    WORKDIR/finetune/<step>/{params,opt_state,frozen,data,config,meta}  # phase 3
    WORKDIR/metrics.jsonl, WORKDIR/tensorboard/<phase>/

``params`` is the trained network's params (DeblurNet for deblur/finetune, ReblurNet for
reblur), ``opt_state`` its Adam state, ``frozen`` the ReblurNet params finetune used
(bit-identical to the reblur phase's), ``data`` the training iterator's state (JSON),
``config`` the full run config (JSON) and ``meta`` (JSON) the phase, step, total steps,
whether the phase finished, the model config and every parameter shape (checked before
any Orbax restore, so a config that disagrees with a checkpoint gets a clear message).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from aspdc_jax.checkpoint import CheckpointError, LoadedModels
from aspdc_jax.training.state import PHASES, param_shapes

__all__ = [
    "PhaseCheckpoints",
    "check_shapes",
    "decode_data_state",
    "encode_data_state",
    "load_workdir_for_inference",
    "phase_dir",
]

PyTree = Any


def phase_dir(workdir: str | Path, phase: str) -> Path:
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    return Path(workdir).expanduser().absolute() / phase


def encode_data_state(state: Any) -> Any:
    """Iterator state (bytes or JSON-able dict) -> JSON-able value."""
    if isinstance(state, (bytes, bytearray)):
        return {"__bytes_b64__": base64.b64encode(bytes(state)).decode("ascii")}
    return state


def decode_data_state(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"__bytes_b64__"}:
        return base64.b64decode(value["__bytes_b64__"])
    return value


def check_shapes(
    expected: dict[str, list[int]],
    found: dict[str, list[int]],
    *,
    what: str,
    checkpoint_model: dict | None,
    config_model: dict | None,
) -> None:
    """Raises CheckpointError listing the differences between two shape dicts."""
    found = {k: list(v) for k, v in found.items()}
    expected = {k: list(v) for k, v in expected.items()}
    if found == expected:
        return
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    differ = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
    lines = [f"{what}: the checkpoint's model does not match config.model."]
    if checkpoint_model is not None or config_model is not None:
        changed = {
            k: (checkpoint_model.get(k) if checkpoint_model else None, config_model.get(k))
            for k in sorted(set(checkpoint_model or {}) | set(config_model or {}))
            if (checkpoint_model or {}).get(k) != (config_model or {}).get(k)
        }
        if changed:
            lines.append(
                "  model settings (checkpoint vs config): "
                + ", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in changed.items())
            )
    for key in differ[:5]:
        lines.append(f"  {key}: checkpoint {tuple(found[key])} vs config {tuple(expected[key])}")
    if len(differ) > 5:
        lines.append(f"  ... and {len(differ) - 5} more parameters with other shapes")
    if missing:
        lines.append(f"  {len(missing)} parameters missing in the checkpoint, e.g. {missing[:3]}")
    if extra:
        lines.append(f"  {len(extra)} parameters only in the checkpoint, e.g. {extra[:3]}")
    lines.append(
        "  Use the config.model the checkpoint was trained with, or a fresh --workdir."
    )
    raise CheckpointError("\n".join(lines))


class PhaseCheckpoints:
    """An Orbax ``CheckpointManager`` for one phase folder (``WORKDIR/<phase>``).

    Saving is synchronous: the train step donates its state buffers right after a save.
    """

    def __init__(self, directory: str | Path, *, max_to_keep: int = 2, read_only: bool = False):
        self.directory = Path(directory).expanduser().absolute()
        self.read_only = read_only
        # read_only: never saves; opened without Orbax's read_only mode (which only logs
        # warnings) and without creating the folder.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else max_to_keep,
            create=not read_only,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=not read_only,
        )
        if read_only and not self.directory.is_dir():
            self._mngr = None
        else:
            self._mngr = ocp.CheckpointManager(self.directory, options=options)
            # Orbax removes leftover temporary folders in a background thread; finish that
            # now, or an error right after opening (exit 2) races it at interpreter shutdown.
            wait = getattr(self._mngr, "_maybe_await_cleanup_tmp_directory", None)
            if wait is not None:
                wait()

    def close(self) -> None:
        if self._mngr is not None:
            self._mngr.close()

    def __enter__(self) -> PhaseCheckpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def latest_step(self) -> int | None:
        return None if self._mngr is None else self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return [] if self._mngr is None else list(self._mngr.all_steps())

    def save(
        self,
        step: int,
        *,
        params: PyTree,
        opt_state: PyTree,
        meta: dict[str, Any],
        config_json: dict[str, Any],
        data_state: Any = None,
        frozen: PyTree | None = None,
    ) -> None:
        """Writes step ``step`` (replacing an existing one of the same number)."""
        items: dict[str, Any] = {
            "params": ocp.args.StandardSave(params),
            "opt_state": ocp.args.StandardSave(opt_state),
            "meta": ocp.args.JsonSave(meta),
            "config": ocp.args.JsonSave(config_json),
            "data": ocp.args.JsonSave({"state": encode_data_state(data_state)}),
        }
        if frozen is not None:
            items["frozen"] = ocp.args.StandardSave(frozen)
        self._mngr.save(step, args=ocp.args.Composite(**items), force=True)
        self._mngr.wait_until_finished()

    def meta(self, step: int | None = None) -> dict[str, Any] | None:
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        return self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"
        ]

    def saved_config(self, step: int | None = None) -> dict[str, Any] | None:
        """The config (as plain JSON) that ``step`` was trained with; None if not stored."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        try:
            restored = self._mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        except Exception:  # noqa: BLE001 (an older or hand-made checkpoint without the item)
            return None
        return restored["config"]

    def restore(
        self,
        step: int,
        *,
        params: PyTree | None = None,
        opt_state: PyTree | None = None,
        frozen: PyTree | None = None,
        items: tuple[str, ...] = ("params", "opt_state", "data", "meta"),
    ) -> dict[str, Any]:
        """Restores the named items of ``step``. Array items take an abstract/concrete
        target tree (shapes, dtypes, shardings) when given; without one they come back as
        numpy arrays in the saved structure."""
        targets = {"params": params, "opt_state": opt_state, "frozen": frozen}
        args = {}
        for name in items:
            if name in targets:
                target = targets[name]
                if target is not None:
                    target = jax.tree_util.tree_map(_abstract, target)
                args[name] = ocp.args.StandardRestore(target)
            else:
                args[name] = ocp.args.JsonRestore()
        restored = self._mngr.restore(step, args=ocp.args.Composite(**args))
        out = {name: restored[name] for name in items}
        if "data" in out and out["data"] is not None:
            out["data"] = decode_data_state(out["data"].get("state"))
        return out


def _abstract(x: Any) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype if sharding is None else x.dtype,
                                sharding=sharding)


def _restore_params(ckpt: PhaseCheckpoints, step: int, item: str) -> PyTree:
    tree = ckpt.restore(step, items=(item,))[item]
    return jax.tree_util.tree_map(np.asarray, tree)


def load_workdir_for_inference(directory: str | Path) -> LoadedModels:
    """Networks and params from a ``train.py`` workdir or one of its phase folders.

    The DeblurNet comes from ``finetune`` when it has a checkpoint, else ``deblur``; the
    ReblurNet from ``reblur`` (else the frozen copy in ``finetune``), each at its latest
    step. A phase folder alone gives that phase's networks (``reblur`` alone holds no
    DeblurNet and is refused), and a step folder (``WORKDIR/deblur/4000``) that step's.

    Raises:
      CheckpointError: nothing usable in the folder; the message says what was looked for.
    """
    from aspdc_jax.models import model_from_config  # noqa: PLC0415

    directory = Path(directory).expanduser().absolute()
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist")
    pinned: int | None = None  # a step folder (WORKDIR/<phase>/<step>): that step
    if directory.name.isdigit() and directory.parent.name in PHASES:
        pinned, directory = int(directory.name), directory.parent
    if directory.name in PHASES and not any((directory / p).is_dir() for p in PHASES):
        phase_dirs = {directory.name: directory}
    else:
        phase_dirs = {p: directory / p for p in PHASES if (directory / p).is_dir()}
    found: dict[str, tuple[PhaseCheckpoints, int]] = {}
    for phase, path in phase_dirs.items():
        ckpt = PhaseCheckpoints(path, read_only=True)
        step = ckpt.latest_step()
        if pinned is not None:
            if pinned not in ckpt.all_steps():
                raise CheckpointError(
                    f"{path / str(pinned)} is not a saved step of {path} (saved: "
                    f"{', '.join(map(str, ckpt.all_steps())) or 'none'})"
                )
            step = pinned
        if step is not None:
            found[phase] = (ckpt, step)
    if not found:
        raise CheckpointError(
            f"{directory} holds no train.py checkpoint: looked for "
            f"{', '.join(str(directory / p) for p in PHASES)} with at least one saved step"
        )
    deblur_phase = "finetune" if "finetune" in found else "deblur" if "deblur" in found else None
    if deblur_phase is None:
        raise CheckpointError(
            f"{directory} holds only a reblur-phase checkpoint (ReblurNet); a DeblurNet "
            f"needs a 'deblur' or 'finetune' phase checkpoint"
        )
    ckpt, step = found[deblur_phase]
    meta = ckpt.meta(step)
    model_config = dict(meta["model_config"])
    deblur_params = _restore_params(ckpt, step, "params")
    sources = [f"{deblur_phase} step {step}"]
    reblur_params = None
    if "reblur" in found:
        rckpt, rstep = found["reblur"]
        reblur_params = _restore_params(rckpt, rstep, "params")
        sources.append(f"reblur step {rstep}")
        rconfig = rckpt.meta(rstep)["model_config"]
        model_config["reblur_width"] = rconfig["reblur_width"]
        model_config["reblur_residual"] = bool(rconfig.get("reblur_residual", False))
    elif deblur_phase == "finetune":
        reblur_params = _restore_params(ckpt, step, "frozen")
        sources.append(f"reblur (frozen copy in finetune) step {step}")
    deblur, reblur = model_from_config(model_config)
    for c, _ in found.values():
        c.close()
    return LoadedModels(
        deblur=deblur,
        deblur_params=deblur_params,
        reblur=reblur if reblur_params is not None else None,
        reblur_params=reblur_params,
        model_config=model_config,
        source=f"train.py workdir {directory} ({', '.join(sources)})",
    )


def shapes_of(params: PyTree) -> dict[str, list[int]]:
    return param_shapes(params)


def config_to_json(config: Any) -> dict[str, Any]:
    """A ConfigDict -> plain JSON-able dict (tuples become lists)."""
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(config, default=str))
