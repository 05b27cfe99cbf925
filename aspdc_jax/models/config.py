"""Building the networks from ``config.model`` and back.

``ModelSettings.from_config(config.model)`` is the one place a model config becomes typed,
frozen, checked settings (every field of configs/default.py's model section, which holds
the defaults and documents each field; an unknown field is an error with a did-you-mean).
``model_from_config`` builds ``(DeblurNet, ReblurNet)`` from them; a caller without a full
config starts from `model_defaults()`::

    deblur, reblur = model_defaults().replace(deblur_width=16, num_groups=2).networks()

Saved model configs (an export's ``model_config.json``, a checkpoint's meta) are read by
`networks_from_saved`: it builds only the networks a file holds and fills the keys that
were added to the format after its first version (`SAVED_FORMAT_FILL`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from aspdc_jax.models.aspdc import validate_branches
from aspdc_jax.models.deblur_net import DeblurNet
from aspdc_jax.models.reblur_net import ReblurNet
from aspdc_jax.settings import Check, base_config, check_bool, check_int, check_known, config_fields

__all__ = [
    "ABLATIONS",
    "COMPUTE_DTYPES",
    "MODEL_CONFIG_KEYS",
    "SAVED_FORMAT_FILL",
    "ModelSettings",
    "compute_dtype",
    "model_config_dict",
    "model_defaults",
    "model_from_config",
    "networks_from_saved",
]

#: The keys of each network (``config.model`` is the union, in configs/default.py's order).
DEBLUR_KEYS: tuple[str, ...] = (
    "deblur_width",
    "num_groups",
    "branches",
    "branch_repeat",
    "fusion",
    "zero_init_offsets",
    "remat",
)
REBLUR_KEYS: tuple[str, ...] = ("reblur_width", "reblur_residual")

#: Compatibility fill for saved model configs (``model_config.json``, checkpoint metas):
#: the keys added after the format's first version (which had every other key of
#: ``DEBLUR_KEYS`` / ``REBLUR_KEYS``), each with the only value a file written before the
#: key existed can mean. Not defaults: these never change with configs/default.py.
SAVED_FORMAT_FILL: dict[str, Any] = {
    "reblur_residual": False,  # added with the residual ReblurNet option; earlier ReblurNets had none
}


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


def _branches(label: str, value: Any) -> tuple[str, ...]:
    """A sequence of branch names, or a comma-separated string of them."""
    if isinstance(value, str):
        value = tuple(b.strip() for b in value.split(",") if b.strip())
    if not isinstance(value, (list, tuple)) or not all(isinstance(b, str) for b in value):
        raise ValueError(f"{label} must be a sequence of branch names, got {value!r}")
    return tuple(value)


def _fusion(label: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{label} must be a string, got {value!r}")
    return value  # validate_branches checks the name


_CHECKS: dict[str, Check] = {
    "deblur_width": check_int(1),
    "reblur_width": check_int(1),
    "num_groups": check_int(1),
    "branches": _branches,
    "branch_repeat": check_int(1),
    "fusion": _fusion,
    "zero_init_offsets": check_bool,
    "remat": check_bool,
    "reblur_residual": check_bool,
}


def _checked(values: Mapping[str, Any], label: str) -> dict[str, Any]:
    """``values`` (any of the model keys) checked and normalised; ValueError naming the field."""
    out = {k: _CHECKS[k](f"{label}.{k}", v) for k, v in values.items()}
    if "branches" in out:
        try:
            validate_branches(out["branches"], out["branch_repeat"], out["fusion"])
        except ValueError as err:
            raise ValueError(f"{label}: {err}") from err
    return out


def _deblur_net(v: Mapping[str, Any]) -> DeblurNet:
    return DeblurNet(
        width=v["deblur_width"],
        num_groups=v["num_groups"],
        branches=v["branches"],
        branch_repeat=v["branch_repeat"],
        fusion=v["fusion"],
        zero_init_offsets=v["zero_init_offsets"],
        remat=v["remat"],
    )


def _reblur_net(v: Mapping[str, Any]) -> ReblurNet:
    return ReblurNet(width=v["reblur_width"], residual=v["reblur_residual"])


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """``config.model``, typed and checked; configs/default.py documents every field.

    Construct with `from_config` (a config's model section) or `model_defaults` +
    `replace`; every construction checks the values (ValueError naming the field).
    """

    deblur_width: int
    reblur_width: int
    num_groups: int
    branches: tuple[str, ...]
    branch_repeat: int
    fusion: str
    zero_init_offsets: bool
    remat: bool
    reblur_residual: bool

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in _checked(values, "config.model").items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_config(cls, model: Any) -> ModelSettings:
        """``config.model`` (a ConfigDict or dict with every field, none other) -> settings."""
        return cls(**config_fields(model, MODEL_CONFIG_KEYS, "config.model"))

    def replace(self, **changes: Any) -> ModelSettings:
        """A copy with ``changes`` (checked like any construction; unknown names refused)."""
        check_known(changes, MODEL_CONFIG_KEYS, "config.model")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every field as a plain dict (the shape of ``config.model``)."""
        return dataclasses.asdict(self)

    def deblur_net(self) -> DeblurNet:
        return _deblur_net(self.to_dict())

    def reblur_net(self) -> ReblurNet:
        return _reblur_net(self.to_dict())

    def networks(self) -> tuple[DeblurNet, ReblurNet]:
        return self.deblur_net(), self.reblur_net()


#: The fields of ``config.model``, in configs/default.py's order.
MODEL_CONFIG_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ModelSettings))


def model_defaults() -> ModelSettings:
    """configs/default.py's model section as settings (the paper's networks)."""
    return ModelSettings.from_config(base_config().model)


def model_from_config(model: ModelSettings | Mapping[str, Any] | Any) -> tuple[DeblurNet, ReblurNet]:
    """``ModelSettings`` or ``config.model`` (ConfigDict / dict with every field) ->
    ``(DeblurNet, ReblurNet)``. Raises ValueError on a bad, unknown or missing field."""
    settings = model if isinstance(model, ModelSettings) else ModelSettings.from_config(model)
    return settings.networks()


def networks_from_saved(
    saved: Mapping[str, Any], *, deblur: bool = True, reblur: bool = True
) -> tuple[DeblurNet | None, ReblurNet | None]:
    """The networks of a saved model config (``model_config.json``, a checkpoint's
    ``model_config``): the DeblurNet if ``deblur``, the ReblurNet if ``reblur`` (a
    one-network export records only that network's keys). Keys added after the format's
    first version are filled (`SAVED_FORMAT_FILL`); other keys (``has_reblur``, ...) are
    ignored. Raises ValueError on a missing or bad value."""
    if not isinstance(saved, Mapping):
        raise ValueError(f"saved model config must be a dict, got {type(saved).__name__}")
    wanted = DEBLUR_KEYS * deblur + REBLUR_KEYS * reblur
    fields = {**SAVED_FORMAT_FILL, **saved}
    missing = [k for k in wanted if k not in fields]
    if missing:
        raise ValueError(f"saved model config lacks {', '.join(missing)} (it has {sorted(saved)})")
    values = _checked({k: fields[k] for k in wanted}, "saved model config")
    return (_deblur_net(values) if deblur else None), (_reblur_net(values) if reblur else None)


def model_config_dict(deblur: DeblurNet | None, reblur: ReblurNet | None = None) -> dict[str, Any]:
    """The inverse of `networks_from_saved`: a plain JSON-able dict of the keys of the
    networks given (both: every field of ``config.model``)."""
    out: dict[str, Any] = {}
    if deblur is not None:
        out.update(
            deblur_width=int(deblur.width),
            num_groups=int(deblur.num_groups),
            branches=list(deblur.branches),
            branch_repeat=int(deblur.branch_repeat),
            fusion=str(deblur.fusion),
            zero_init_offsets=bool(deblur.zero_init_offsets),
            remat=bool(deblur.remat),
        )
    if reblur is not None:
        out.update(reblur_width=int(reblur.width), reblur_residual=bool(reblur.residual))
    return out
