"""Building the networks from ``config.model`` and back.

``config.model`` (configs/default.py) has the keys of :data:`MODEL_CONFIG_KEYS`::

    deblur_width: 32        reblur_width: 16       num_groups: 6
    branches: ("static", "d1", "d2", "d4")         branch_repeat: 1
    fusion: "afim"          zero_init_offsets: False                remat: False
    reblur_residual: False
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from aspdc_jax.models.aspdc import validate_branches
from aspdc_jax.models.deblur_net import DeblurNet
from aspdc_jax.models.reblur_net import ReblurNet

__all__ = [
    "ABLATIONS",
    "COMPUTE_DTYPES",
    "MODEL_CONFIG_DEFAULTS",
    "MODEL_CONFIG_KEYS",
    "compute_dtype",
    "model_config_dict",
    "model_from_config",
]

#: The paper's networks; a model config may omit any of these keys.
MODEL_CONFIG_DEFAULTS: dict[str, Any] = {
    "deblur_width": 32,
    "reblur_width": 16,
    "num_groups": 6,
    "branches": ("static", "d1", "d2", "d4"),
    "branch_repeat": 1,
    "fusion": "afim",
    "zero_init_offsets": False,
    "remat": False,
    "reblur_residual": False,
}
MODEL_CONFIG_KEYS: tuple[str, ...] = tuple(MODEL_CONFIG_DEFAULTS)

#: ASPDC ablations (paper Table 5) as overrides of ``config.model``; everything else as in
#: the paper. Apply with e.g. ``config.model.update(ABLATIONS["d2_x3"])`` or on the command
#: line ``--config.model.branches='("d2",)' --config.model.branch_repeat=3``.
ABLATIONS: dict[str, dict[str, Any]] = {
    # One branch: softmax over one channel is constantly 1, so AFIM would be dead weight.
    "static": {"branches": ("static",), "fusion": "sum"},
    "d1": {"branches": ("d1",), "fusion": "sum"},
    "d2": {"branches": ("d2",), "fusion": "sum"},
    "d4": {"branches": ("d4",), "fusion": "sum"},
    "d1_x3": {"branches": ("d1",), "branch_repeat": 3},
    "d2_x3": {"branches": ("d2",), "branch_repeat": 3},
    "d4_x3": {"branches": ("d4",), "branch_repeat": 3},
    "d1_d2_d4": {"branches": ("d1", "d2", "d4")},
    "static_d1_d2_d4_sum": {"branches": ("static", "d1", "d2", "d4"), "fusion": "sum"},
    "full": {"branches": ("static", "d1", "d2", "d4"), "fusion": "afim"},  # the paper's model
}


#: Compute dtypes by name (``config.compute_dtype``, ``Deblurrer(dtype=...)``); parameters
#: stay float32 either way.
COMPUTE_DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str, field: str = "dtype") -> Any:
    """The JAX dtype named ``name``; ValueError naming ``field`` for an unknown name."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"{field} must be one of {sorted(COMPUTE_DTYPES)}, got {name!r}")
    return COMPUTE_DTYPES[name]


def _positive_int(cfg: Mapping[str, Any], key: str) -> int:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"model config {key!r} must be a positive int, got {value!r}")
    return value


def model_from_config(model_cfg: Mapping[str, Any] | Any) -> tuple[DeblurNet, ReblurNet]:
    """``config.model`` (a ConfigDict or dict) -> ``(DeblurNet, ReblurNet)``.

    Missing keys take the paper's values (:data:`MODEL_CONFIG_DEFAULTS`); keys that are not
    model hyper-parameters (e.g. ``has_reblur`` in an export's ``model_config.json``) are
    ignored. Raises ValueError on a bad value.
    """
    if hasattr(model_cfg, "to_dict"):
        model_cfg = model_cfg.to_dict()
    if not isinstance(model_cfg, Mapping):
        raise ValueError(f"model config must be a dict or ConfigDict, got {type(model_cfg).__name__}")
    cfg = {**MODEL_CONFIG_DEFAULTS, **{k: v for k, v in model_cfg.items() if k in MODEL_CONFIG_KEYS}}
    branches = cfg["branches"]
    if isinstance(branches, str):
        branches = tuple(b.strip() for b in branches.split(",") if b.strip())
    branches = tuple(branches)
    branch_repeat = _positive_int(cfg, "branch_repeat")
    validate_branches(branches, branch_repeat, cfg["fusion"])
    deblur = DeblurNet(
        width=_positive_int(cfg, "deblur_width"),
        num_groups=_positive_int(cfg, "num_groups"),
        branches=branches,
        branch_repeat=branch_repeat,
        fusion=cfg["fusion"],
        zero_init_offsets=bool(cfg["zero_init_offsets"]),
        remat=bool(cfg["remat"]),
    )
    reblur = ReblurNet(width=_positive_int(cfg, "reblur_width"), residual=bool(cfg["reblur_residual"]))
    return deblur, reblur


def model_config_dict(deblur: DeblurNet, reblur: ReblurNet | None = None) -> dict[str, Any]:
    """The inverse of :func:`model_from_config`: a plain JSON-able dict of the keys.

    Without ``reblur`` the default reblur width is recorded.
    """
    return {
        "deblur_width": int(deblur.width),
        "reblur_width": int(reblur.width if reblur is not None else MODEL_CONFIG_DEFAULTS["reblur_width"]),
        "num_groups": int(deblur.num_groups),
        "branches": list(deblur.branches),
        "branch_repeat": int(deblur.branch_repeat),
        "fusion": str(deblur.fusion),
        "zero_init_offsets": bool(deblur.zero_init_offsets),
        "remat": bool(deblur.remat),
        "reblur_residual": bool(reblur.residual if reblur is not None else False),
    }
