"""Per-phase Orbax checkpoints of ``train.py``: saving, resuming and the phase hand-off.

Loading a workdir for inference is `aspdc_jax.weights.load_workdir`.

Layout of a workdir::

    WORKDIR/deblur/<step>/{params,opt_state,data,config,meta}     # phase 1
    WORKDIR/reblur/<step>/{params,opt_state,data,config,meta}     # phase 2
    WORKDIR/finetune/<step>/{params,opt_state,frozen,data,config,meta}  # phase 3
    WORKDIR/metrics.jsonl, WORKDIR/tensorboard/<phase>/

``params`` is the trained network's params (DeblurNet for deblur/finetune, ReblurNet for
reblur), ``opt_state`` its Adam state, ``frozen`` the ReblurNet params finetune used
(bit-identical to the reblur phase's), ``data`` the training iterator's state (JSON,
written by process 0: every process is at the same position of its own shard, so it
serves them all),
``ema`` (with ``config.ema_decay`` > 0) the moving average of ``params``, ``config`` the
full run config (JSON) and ``meta`` (JSON) the phase, step, total steps,
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

from aspdc_jax.training.phases import PHASES
from aspdc_jax.weights import CheckpointError, PhaseFolder

__all__ = [
    "PhaseCheckpoints",
    "check_shapes",
    "decode_data_state",
    "encode_data_state",
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
            k: ((checkpoint_model or {}).get(k), (config_model or {}).get(k))
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
    lines.append("  Use the config.model the checkpoint was trained with, or a fresh --workdir.")
    raise CheckpointError("\n".join(lines))


class PhaseCheckpoints(PhaseFolder):
    """An Orbax ``CheckpointManager`` for one phase folder (``WORKDIR/<phase>``) that also
    saves (the read side is `aspdc_jax.weights.PhaseFolder`).

    Saving is synchronous: the train step donates its state buffers right after a save.
    ``read_only=True`` never saves and never creates the folder.
    """

    def __init__(self, directory: str | Path, *, max_to_keep: int = 2, read_only: bool = False):
        self.max_to_keep, self.read_only = max_to_keep, read_only
        if not read_only:
            Path(directory).expanduser().mkdir(parents=True, exist_ok=True)
        super().__init__(directory)

    def _options(self) -> ocp.CheckpointManagerOptions:
        if self.read_only:
            return super()._options()
        return ocp.CheckpointManagerOptions(
            max_to_keep=self.max_to_keep,
            create=True,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
        )

    def __enter__(self) -> PhaseCheckpoints:
        return self

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
        ema: PyTree | None = None,
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
        if ema is not None:
            items["ema"] = ocp.args.StandardSave(ema)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        self.manager.wait_until_finished()

    def restore(
        self,
        step: int,
        *,
        params: PyTree | None = None,
        opt_state: PyTree | None = None,
        frozen: PyTree | None = None,
        ema: PyTree | None = None,
        items: tuple[str, ...] = ("params", "opt_state", "data", "meta"),
    ) -> dict[str, Any]:
        """Restores the named items of ``step``. Array items take an abstract/concrete
        target tree (shapes, dtypes, shardings) when given; without one they come back as
        numpy arrays in the saved structure."""
        targets = {"params": params, "opt_state": opt_state, "frozen": frozen, "ema": ema}
        args = {}
        for name in items:
            if name in targets:
                target = targets[name]
                if target is not None:
                    target = jax.tree_util.tree_map(_abstract, target)
                args[name] = ocp.args.StandardRestore(target)
            else:
                args[name] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        out = {name: restored[name] for name in items}
        if "data" in out and out["data"] is not None:
            out["data"] = decode_data_state(out["data"].get("state"))
        return out


def _abstract(x: Any) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype if sharding is None else x.dtype, sharding=sharding)


def config_to_json(config: Any) -> dict[str, Any]:
    """A ConfigDict -> plain JSON-able dict (tuples become lists)."""
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(config, default=str))
