"""Flattening nested trees to ``{"a/b/c": leaf}``: the one flattener of the package
(parameter paths, metrics records, config diffs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

__all__ = ["flatten", "key_path"]


def key_path(path: tuple[Any, ...], sep: str = "/") -> str:
    """A JAX key path (``DictKey``, ``SequenceKey``, ...) or a tuple of names -> ``"a/b/0"``."""
    names = (getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
    return sep.join(str(n) for n in names)


def flatten(tree: Any, sep: str = "/") -> dict[str, Any]:
    """Every leaf of a pytree (nested dicts, lists, flax structs, ...) keyed by its path,
    e.g. ``{"head_conv/kernel": array}``, in JAX's leaf order (mapping keys sorted). Inside
    mappings, None and other non-array values are leaves too (config values)."""
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key in sorted(tree, key=str):
            value = tree[key]
            if isinstance(value, Mapping):
                out.update({f"{key}{sep}{k}": v for k, v in flatten(value, sep).items()})
            else:
                out[str(key)] = value
        return out
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {key_path(path, sep): leaf for path, leaf in flat}
