"""``config.data`` as typed, frozen, checked settings: what the data code takes.

``DataSettings.from_config(config.data)`` is the one place a data config becomes
settings: every field of configs/default.py's data section, no other (an unknown field
is an error with a did-you-mean), each value checked, with one-line ValueErrors that
name the field. The defaults live only in the base config, aspdc_jax/configs/default.py
(``configs/default.py`` in a checkout), which documents every field; a caller without a
full config starts from them::

    data = defaults().replace(dataset="synthetic", crop_size=64)

This module imports nothing heavy (no grain, JAX or TFDS).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence
from typing import Any

from aspdc_jax.settings import (
    Check,
    base_config,
    check_bool,
    check_choice,
    check_int,
    check_known,
    check_number,
    check_path,
    config_fields,
)

__all__ = ["DATASETS", "GOPRO_VARIANTS", "DataSettings", "defaults"]

DATASETS = ("synthetic", "gopro", "hide", "realblur_j", "realblur_r", "paired_folder", "unpaired_folder")
GOPRO_VARIANTS = ("blur", "blur_gamma")


def _photo_scales(label: str, value: Any) -> tuple[float, ...]:
    """A non-empty sequence of numbers in (0, 8] (`synthetic.photo_scales` de-duplicates)."""
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0
    if ok:
        ok = all(not isinstance(s, bool) and isinstance(s, numbers.Real) and 0 < float(s) <= 8 for s in value)
    if not ok:
        raise ValueError(f"{label} must be a non-empty list of numbers in (0, 8], got {value!r}")
    return tuple(float(s) for s in value)


_PROBABILITY = check_number(0.0, 1.0)

#: The check of every field (configs/default.py says what each does).
_CHECKS: dict[str, Check] = {
    "dataset": check_choice(DATASETS),
    "data_dir": check_path,
    "tfds_dir": check_path,
    "crop_size": check_int(1),
    "num_workers": check_int(0),
    "gopro_variant": check_choice(GOPRO_VARIANTS),
    "epoch_size": check_int(1),
    "augment": check_bool,
    "read_threads": check_int(0),
    "synthetic_strength": check_number(0.0),
    "synthetic_max_blur": check_number(1.0),
    "synthetic_sharp_probability": _PROBABILITY,
    "synthetic_object_probability": _PROBABILITY,
    "synthetic_noise_sigma": check_number(0.0),
    "synthetic_gamma": check_number(0.0, low_open=True),
    "synthetic_saturation_probability": _PROBABILITY,
    "synthetic_jpeg_probability": _PROBABILITY,
    "synthetic_scene_probability": _PROBABILITY,
    "synthetic_photo_scales": _photo_scales,
    "synthetic_test_crops_per_photo": check_int(0),  # 0: no synthetic test pairs
    "synthetic_test_crop_size": check_int(1),
    "synthetic_test_seed": check_int(0),
}


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """``config.data``, typed and checked; configs/default.py documents every field.

    Construct with `from_config` (a config's data section) or `defaults` + `replace`;
    every construction checks the values (ValueError naming the field).
    """

    dataset: str
    data_dir: str | None
    tfds_dir: str | None
    crop_size: int
    num_workers: int
    gopro_variant: str
    epoch_size: int
    augment: bool
    read_threads: int
    synthetic_strength: float
    synthetic_max_blur: float
    synthetic_sharp_probability: float
    synthetic_object_probability: float
    synthetic_noise_sigma: float
    synthetic_gamma: float
    synthetic_saturation_probability: float
    synthetic_jpeg_probability: float
    synthetic_scene_probability: float
    synthetic_photo_scales: tuple[float, ...]
    synthetic_test_crops_per_photo: int
    synthetic_test_crop_size: int
    synthetic_test_seed: int

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = _CHECKS[field.name](f"config.data.{field.name}", getattr(self, field.name))
            object.__setattr__(self, field.name, value)

    @classmethod
    def from_config(cls, data: Any) -> DataSettings:
        """``config.data`` (a ConfigDict or dict with every field, none other) -> settings."""
        return cls(**config_fields(data, FIELDS, "config.data"))

    def replace(self, **changes: Any) -> DataSettings:
        """A copy with ``changes`` (checked like any construction; unknown names refused)."""
        check_known(changes, FIELDS, "config.data")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every field as a plain dict (the shape of ``config.data``)."""
        return dataclasses.asdict(self)


#: The field names, in configs/default.py's order.
FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(DataSettings))


def defaults() -> DataSettings:
    """configs/default.py's data section as settings (the base of every config)."""
    return DataSettings.from_config(base_config().data)
