"""The meta record of a ``train.py`` checkpoint step: every key of the ``meta`` item.

This module is the one place the keys are defined: `PhaseMeta`'s fields. Adding a field
is one edit (a field with a default, which older checkpoints then read as that default);
`PhaseMeta.from_json` fills in what checkpoints written before a field existed lack.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Mapping
from typing import Any

__all__ = [
    "CheckpointError",
    "Item",
    "PhaseMeta",
    "check_shapes",
    "config_to_json",
    "decode_data_state",
    "encode_data_state",
]

Shapes = dict[str, list[int]]


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete or disagrees with the requested model."""


class Item:
    """The items of one checkpoint step (``WORKDIR/<phase>/<step>/<item>``)."""

    PARAMS = "params"  # the trained network's params
    OPT_STATE = "opt_state"  # its optimizer (Adam) state
    FROZEN = "frozen"  # the frozen network's params, when the phase holds one
    EMA = "ema"  # the moving average of params (config.ema_decay > 0)
    DATA = "data"  # the training iterator's state (JSON)
    CONFIG = "config"  # the full run config (JSON)
    META = "meta"  # a `PhaseMeta` (JSON)

    ARRAYS = (PARAMS, OPT_STATE, FROZEN, EMA)


# Checkpoints written before meta carried "network", "frozen_network" and "phase_index":
# the paper's three phases (their folder name is the phase).
_LEGACY_PHASES: dict[str, tuple[str, str | None, int]] = {
    "deblur": ("deblur", None, 0),
    "reblur": ("reblur", None, 1),
    "finetune": ("deblur", "reblur", 2),
}


@dataclasses.dataclass(frozen=True)
class PhaseMeta:
    """What a checkpoint step says about itself (the ``meta`` item, JSON).

    Attributes:
      phase: the phase's name (its folder).
      step: the step saved.
      total_steps: the phase's schedule length when it was saved.
      finished: the phase ended at this step: its schedule ran out, or its time budget
        (``stopped_by``). Only a finished phase hands its weights on to the next.
      model_config: the model settings (``aspdc_jax.models.model_config_dict``).
      param_shapes: ``{"path/to/leaf": shape}`` of ``params`` (checked before a restore).
      network: the network ``params`` holds: ``"deblur"`` or ``"reblur"``.
      frozen_network: the network ``frozen`` holds, or None.
      phase_index: the phase's position in the run (the last one that trains a network
        gives the inference weights).
      steps_per_epoch: the schedule's steps per epoch when it was saved.
      frozen_shapes: the shapes of ``frozen`` (with ``frozen_network``).
      ema: the step holds an ``ema`` item; it is then the weights the phase hands on
        (`weights_item`).
      started_from: ``{phase: step}`` of the earlier phases this one began from.
      stopped_by: why a phase ended before its schedule did (``"max_train_seconds"``), or
        None.
    """

    phase: str
    step: int
    total_steps: int
    finished: bool
    model_config: dict[str, Any]
    param_shapes: Shapes
    network: str = "deblur"
    frozen_network: str | None = None
    phase_index: int = 0
    steps_per_epoch: int | None = None
    frozen_shapes: Shapes | None = None
    ema: bool = False
    started_from: dict[str, int] | None = None
    stopped_by: str | None = None

    @property
    def weights_item(self) -> str:
        """The item holding this phase's result, the weights that are handed on to the next
        phase and used for inference: its EMA when it kept one, else its params."""
        return Item.EMA if self.ema else Item.PARAMS

    @property
    def weights_note(self) -> str:
        """``", EMA weights"`` when `weights_item` is the EMA (for messages), else ``""``."""
        return ", EMA weights" if self.ema else ""

    def shapes_of(self, item: str) -> Shapes:
        """The parameter shapes of an array item (``params``, ``ema`` or ``frozen``)."""
        shapes = self.frozen_shapes if item == Item.FROZEN else self.param_shapes
        if shapes is None:
            raise CheckpointError(f"phase {self.phase!r} step {self.step} holds no {item!r} item")
        return shapes

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: Mapping[str, Any], *, where: str = "checkpoint") -> PhaseMeta:
        """The record of a ``meta`` item, older formats filled in: the network, frozen
        network and phase index from the paper's phase table (by phase name), fields added
        since as their defaults. Keys this version does not know are ignored.

        Raises:
          CheckpointError: a required key is missing (``where`` names the checkpoint).
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in record.items() if k in fields}
        legacy = _LEGACY_PHASES.get(str(values.get("phase")), ("deblur", None, 0))
        for key, value in zip(("network", "frozen_network", "phase_index"), legacy):
            values.setdefault(key, value)
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [k for k in required if k not in values]
        if missing:
            raise CheckpointError(
                f"{where}: its meta lacks {', '.join(missing)}; it was not written by aspdc-jax's train.py "
                "or is damaged. Use another checkpoint or a fresh --workdir."
            )
        return cls(**values)


def encode_data_state(state: Any) -> Any:
    """Iterator state (bytes or a JSON-able value) -> JSON-able value."""
    if isinstance(state, (bytes, bytearray)):
        return {"__bytes_b64__": base64.b64encode(bytes(state)).decode("ascii")}
    return state


def decode_data_state(value: Any) -> Any:
    """The inverse of `encode_data_state`."""
    if isinstance(value, dict) and set(value) == {"__bytes_b64__"}:
        return base64.b64decode(value["__bytes_b64__"])
    return value


def config_to_json(config: Any) -> dict[str, Any]:
    """A ConfigDict (or dict) -> plain JSON-able dict (tuples become lists)."""
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(config, default=str))


def check_shapes(
    expected: Shapes,
    found: Shapes,
    *,
    what: str,
    checkpoint_model: Mapping[str, Any] | None,
    config_model: Mapping[str, Any] | None,
) -> None:
    """Raises CheckpointError listing the differences between two shape dicts (and the
    model settings that differ, which usually explain them)."""
    found = {k: list(v) for k, v in found.items()}
    expected = {k: list(v) for k, v in expected.items()}
    if found == expected:
        return
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    differ = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
    lines = [f"{what}: the checkpoint's model does not match config.model."]
    saved, current = dict(checkpoint_model or {}), dict(config_model or {})
    changed = {k: (saved.get(k), current.get(k)) for k in sorted(set(saved) | set(current))}
    changed = {k: pair for k, pair in changed.items() if pair[0] != pair[1]}
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
