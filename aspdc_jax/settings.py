"""Typed settings from the config: the shared pieces.

The base config, ``aspdc_jax/configs/default.py`` (``configs/default.py`` in a checkout), is
the one source of every default and documents every field; the variants (``configs/*.py``)
state only what differs. Library code takes typed, frozen
settings built from a config section in one place (`aspdc_jax.data.DataSettings`,
`aspdc_jax.models.ModelSettings`), never a config with fallbacks. A caller without a
full config (``evaluate.py``'s flags, benchmarks, tests) starts from the base config's
section: `aspdc_jax.data.settings.defaults()`, `aspdc_jax.models.config.model_defaults()`,
both reading `base_config()`.

This module holds the pieces both use: `base_config`, `config_fields` (unknown and
missing fields, with a did-you-mean) and the value checks (one-line ValueErrors that name
the field).
"""

from __future__ import annotations

import difflib
import numbers
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ml_collections

from aspdc_jax.configs import default

__all__ = [
    "base_config",
    "check_bool",
    "check_choice",
    "check_int",
    "check_known",
    "check_number",
    "check_path",
    "config_fields",
]

#: A value check: ``(label, value) -> normalised value``; raises a one-line ValueError.
Check = Callable[[str, Any], Any]


def base_config() -> ml_collections.ConfigDict:
    """A fresh copy of the base config's ``get_config()`` (`aspdc_jax.configs.default`,
    shipped with the package; ``configs/default.py`` in a checkout): the base of every config."""
    return default.get_config()


def config_fields(section: Any, names: Sequence[str], label: str) -> dict[str, Any]:
    """A config section (ConfigDict or mapping) as a plain dict with exactly ``names``.

    An unknown field is a ValueError with a did-you-mean, a missing one a ValueError
    pointing at configs/default.py (the base that has every field).
    """
    if hasattr(section, "to_dict"):
        section = section.to_dict()
    if not isinstance(section, Mapping):
        raise ValueError(f"{label} must be a ConfigDict or a dict, got {type(section).__name__}")
    check_known(section, names, label)
    missing = [name for name in names if name not in section]
    if missing:
        raise ValueError(
            f"{label} lacks the field(s) {', '.join(missing)}; start from configs/default.py's section "
            "(it has every field) and change what differs"
        )
    return {name: section[name] for name in names}


def check_known(keys: Iterable[Any], names: Sequence[str], label: str) -> None:
    """ValueError with a did-you-mean for the first of ``keys`` not in ``names``."""
    for key in keys:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{label} has no field {key!r}{hint}; configs/default.py lists every field")


def check_int(minimum: int) -> Check:
    """An int >= ``minimum`` (bools refused)."""
    wanted = "a positive int" if minimum == 1 else f"an int >= {minimum}"

    def check(label: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise ValueError(f"{label} must be {wanted}, got {value!r}")
        return int(value)

    return check


def check_number(low: float, high: float | None = None, *, low_open: bool = False) -> Check:
    """A real number (int or float, bools refused) in [low, high], or (low, high] with
    ``low_open``; returned as a float."""
    bound = (
        f"in {'(' if low_open else '['}{low:g}, {high:g}]"
        if high is not None
        else f"{'>' if low_open else '>='} {low:g}"
    )

    def check(label: str, value: Any) -> float:
        ok = not isinstance(value, bool) and isinstance(value, numbers.Real)
        if ok:
            v = float(value)
            ok = (v > low if low_open else v >= low) and (high is None or v <= high)
        if not ok:
            raise ValueError(f"{label} must be a number {bound}, got {value!r}")
        return float(value)

    return check


def check_bool(label: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{label} must be True or False, got {value!r}")
    return value


def check_choice(choices: Sequence[str]) -> Check:
    """One of ``choices`` (strings)."""

    def check(label: str, value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"{label} must be one of {tuple(choices)}, got {value!r}")
        return value

    return check


def check_path(label: str, value: Any) -> str | None:
    """A folder path (str or os.PathLike, returned as str) or None."""
    if value is None or isinstance(value, str):
        return value
    path = os.fspath(value) if isinstance(value, os.PathLike) else None
    if isinstance(path, str):
        return path
    raise ValueError(f"{label} must be a folder path (str) or None, got {value!r}")
