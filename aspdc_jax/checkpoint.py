"""Checkpoint formats shared by conversion, training, evaluation and inference.

Two layouts are understood by :func:`load_for_inference`:

* an *export* (written by ``python -m aspdc_jax.convert`` or :func:`save_export`)::

      DIR/model_config.json   # the model_config dict (see aspdc_jax.models.model_config_dict)
      DIR/params/             # Orbax checkpoint of {"deblur": params, "reblur": params | None}
      DIR/SHA256SUMS          # optional: sha256 of every other file (`write_manifest`),
                              # checked by `load_export` before anything is read

* a ``train.py`` workdir or one of its phase folders (``deblur``, ``reblur``, ``finetune``),
  handled by :mod:`aspdc_jax.training.checkpoints`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = [
    "MANIFEST_FILE",
    "CheckpointError",
    "LoadedModels",
    "is_export",
    "load_export",
    "load_for_inference",
    "save_export",
    "verify_manifest",
    "write_manifest",
]

PyTree = Any
MODEL_CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
MANIFEST_FILE = "SHA256SUMS"


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete or disagrees with the requested model."""


@dataclasses.dataclass(frozen=True)
class LoadedModels:
    """Networks and parameters restored from a checkpoint folder."""

    deblur: Any  # aspdc_jax.models.DeblurNet
    deblur_params: PyTree
    reblur: Any | None  # aspdc_jax.models.ReblurNet
    reblur_params: PyTree | None
    model_config: dict[str, Any]
    source: str


def _to_numpy(tree: PyTree) -> PyTree:
    return jax.tree_util.tree_map(np.asarray, tree)


def save_export(
    directory: str | Path,
    *,
    model_config: dict[str, Any],
    deblur_params: PyTree,
    reblur_params: PyTree | None = None,
) -> Path:
    """Writes an inference export: Orbax params plus ``model_config.json``.

    Args:
      directory: target folder; created if needed. An existing export there is replaced.
      model_config: JSON-able dict of model hyper-parameters (``model_config_dict``).
      deblur_params: DeblurNet ``params`` collection (the tree under ``"params"``).
      reblur_params: ReblurNet ``params`` collection, or None.

    Returns:
      The absolute export folder.
    """
    directory = Path(directory).expanduser().absolute()
    directory.mkdir(parents=True, exist_ok=True)
    tree = {"deblur": _to_numpy(deblur_params)}
    if reblur_params is not None:
        tree["reblur"] = _to_numpy(reblur_params)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / PARAMS_DIR, tree, force=True)
    config = dict(model_config)
    config["has_reblur"] = reblur_params is not None
    (directory / MODEL_CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory


def is_export(directory: str | Path) -> bool:
    directory = Path(directory)
    return (directory / MODEL_CONFIG_FILE).is_file() and (directory / PARAMS_DIR).is_dir()


def _sha256(path: Path) -> str:
    import hashlib  # noqa: PLC0415

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: str | Path) -> Path:
    """Writes ``DIR/SHA256SUMS`` (``sha256sum`` format) over every file in the export."""
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    lines = [f"{_sha256(p)}  {p.relative_to(directory).as_posix()}" for p in files]
    (directory / MANIFEST_FILE).write_text("\n".join(lines) + "\n")
    return directory / MANIFEST_FILE


def verify_manifest(directory: str | Path) -> None:
    """Checks every file listed in ``DIR/SHA256SUMS`` (a no-op without the file).

    Raises:
      CheckpointError: naming the first file that is missing or whose sha256 differs.
    """
    directory = Path(directory)
    manifest = directory / MANIFEST_FILE
    if not manifest.is_file():
        return
    for line in manifest.read_text().splitlines():
        if not line.strip():
            continue
        expected, _, name = line.partition("  ")
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path} is listed in {manifest} but missing; the export is incomplete")
        if _sha256(path) != expected:
            raise CheckpointError(
                f"{path} does not match its sha256 in {manifest}: the weights were modified or damaged; "
                "restore the file (e.g. git checkout) or re-export"
            )


def load_export(directory: str | Path) -> LoadedModels:
    """Restores an export written by :func:`save_export` (its manifest checked first)."""
    from aspdc_jax.models import model_from_config  # noqa: PLC0415 (avoid import cycle)

    directory = Path(directory).expanduser().absolute()
    if not is_export(directory):
        raise CheckpointError(
            f"{directory} is not an aspdc-jax export: expected {MODEL_CONFIG_FILE} and "
            f"{PARAMS_DIR}/ inside it"
        )
    verify_manifest(directory)
    model_config = json.loads((directory / MODEL_CONFIG_FILE).read_text())
    with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.restore(directory / PARAMS_DIR)
    tree = _to_numpy(tree)
    deblur, reblur = model_from_config(model_config)
    reblur_params = tree.get("reblur")
    return LoadedModels(
        deblur=deblur,
        deblur_params=tree["deblur"],
        reblur=reblur if reblur_params is not None else None,
        reblur_params=reblur_params,
        model_config=model_config,
        source=f"export {directory}",
    )


def load_for_inference(directory: str | Path) -> LoadedModels:
    """Loads networks and params from an export or a ``train.py`` workdir / phase folder.

    Raises:
      CheckpointError: the folder does not exist or holds no usable checkpoint; the
        message says what was looked for.
    """
    directory = Path(directory).expanduser().absolute()
    if directory.is_file():
        raise CheckpointError(
            f"{directory} is a file; expected a checkpoint folder (an export from aspdc_jax.convert "
            "or a train.py workdir). Official .pth files are converted first: python -m aspdc_jax.convert"
        )
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist")
    if is_export(directory):
        return load_export(directory)
    try:
        from aspdc_jax.training import checkpoints as training_checkpoints  # noqa: PLC0415
    except ImportError:
        training_checkpoints = None
    if training_checkpoints is not None and hasattr(
        training_checkpoints, "load_workdir_for_inference"
    ):
        return training_checkpoints.load_workdir_for_inference(directory)
    raise CheckpointError(
        f"{directory} holds no aspdc-jax checkpoint: expected an export "
        f"({MODEL_CONFIG_FILE} + {PARAMS_DIR}/) or a train.py workdir"
    )
