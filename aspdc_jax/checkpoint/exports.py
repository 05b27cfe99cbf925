"""The portable export format: what ``python -m aspdc_jax.convert``, ``publish`` and the
best-step export of training write, and every ``--ckpt`` reads::

    DIR/model_config.json   # the model_config dict (aspdc_jax.models.model_config_dict)
                            # plus has_deblur / has_reblur
    DIR/params/             # Orbax checkpoint of {"deblur": params, "reblur": params}
                            # (either may be absent: a one-network export)
    DIR/SHA256SUMS          # optional: sha256 of every other file (`write_manifest`),
                            # checked by `read_export` before anything is read
    DIR/best.json           # only in WORKDIR/<phase>/best/: a `BestRecord`
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from aspdc_jax.checkpoint.meta import CheckpointError

__all__ = [
    "BEST_RECORD_FILE",
    "MANIFEST_FILE",
    "MODEL_CONFIG_FILE",
    "PARAMS_DIR",
    "BestRecord",
    "ExportedWeights",
    "is_export",
    "read_export",
    "save_export",
    "verify_manifest",
    "write_manifest",
]

PyTree = Any
MODEL_CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
MANIFEST_FILE = "SHA256SUMS"
BEST_RECORD_FILE = "best.json"


@dataclasses.dataclass(frozen=True)
class BestRecord:
    """``best.json`` of ``WORKDIR/<phase>/best/``: which validated step the export holds."""

    step: int
    psnr_output: float
    split: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def read(cls, directory: str | Path) -> BestRecord | None:
        """The record in ``directory`` (an export), or None when there is none."""
        path = Path(directory) / BEST_RECORD_FILE
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in fields})

    def write(self, directory: str | Path) -> None:
        (Path(directory) / BEST_RECORD_FILE).write_text(json.dumps(self.to_json()))


@dataclasses.dataclass(frozen=True)
class ExportedWeights:
    """The content of an export: numpy params trees and the model config."""

    model_config: dict[str, Any]
    deblur_params: PyTree | None
    reblur_params: PyTree | None


def _to_numpy(tree: PyTree) -> PyTree:
    return jax.tree_util.tree_map(np.asarray, tree)


def save_export(
    directory: str | Path,
    *,
    model_config: dict[str, Any],
    deblur_params: PyTree | None,
    reblur_params: PyTree | None = None,
) -> Path:
    """Writes an inference export: Orbax params plus ``model_config.json``.

    Args:
      directory: target folder; created if needed. An existing export there is replaced.
      model_config: JSON-able dict of model hyper-parameters (``model_config_dict``).
      deblur_params: DeblurNet ``params`` collection (the tree under ``"params"``), or
        None for a ReblurNet-only export (``evaluate.py --reblur`` only).
      reblur_params: ReblurNet ``params`` collection, or None.

    Returns:
      The absolute export folder.
    """
    if deblur_params is None and reblur_params is None:
        raise ValueError("save_export: no parameters; give deblur_params, reblur_params or both")
    directory = Path(directory).expanduser().absolute()
    directory.mkdir(parents=True, exist_ok=True)
    tree: dict[str, Any] = {}
    if deblur_params is not None:
        tree["deblur"] = _to_numpy(deblur_params)
    if reblur_params is not None:
        tree["reblur"] = _to_numpy(reblur_params)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / PARAMS_DIR, tree, force=True)
    config = dict(model_config)
    config["has_deblur"] = deblur_params is not None
    config["has_reblur"] = reblur_params is not None
    (directory / MODEL_CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory


def is_export(directory: str | Path) -> bool:
    directory = Path(directory)
    return (directory / MODEL_CONFIG_FILE).is_file() and (directory / PARAMS_DIR).is_dir()


def read_export(directory: str | Path) -> ExportedWeights:
    """The params and model config of an export written by `save_export` (its manifest
    checked first); CheckpointError when ``directory`` is not one."""
    directory = Path(directory).expanduser().absolute()
    if not is_export(directory):
        raise CheckpointError(
            f"{directory} is not an aspdc-jax export: expected {MODEL_CONFIG_FILE} and {PARAMS_DIR}/ inside it"
        )
    verify_manifest(directory)
    model_config = json.loads((directory / MODEL_CONFIG_FILE).read_text())
    with ocp.StandardCheckpointer() as checkpointer:
        tree = _to_numpy(checkpointer.restore(directory / PARAMS_DIR))
    return ExportedWeights(model_config, tree.get("deblur"), tree.get("reblur"))


def _sha256(path: Path) -> str:
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
