"""Loading weights for inference: networks and params from an export or a workdir.

Two layouts are understood by :func:`load_for_inference`: an *export* (written by
``python -m aspdc_jax.convert`` or :func:`save_export`) and a ``train.py`` workdir, one of
its phase folders or one step folder of a phase. Their format (the `PhaseMeta` record of a
checkpoint, the export's files, which weights of a workdir are the inference weights) is
:mod:`aspdc_jax.checkpoint`'s; this module builds the networks around what it reads, and
re-exports its names that the entry points use. Training never imports this module.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from aspdc_jax.checkpoint import (
    MANIFEST_FILE,
    CheckpointError,
    PhaseFolder,
    is_export,
    phase_folders,
    read_export,
    read_workdir,
    save_export,
    verify_manifest,
    write_manifest,
)
from aspdc_jax.models import networks_from_saved

__all__ = [
    "MANIFEST_FILE",
    "CheckpointError",
    "LoadedModels",
    "PhaseFolder",
    "is_export",
    "load_export",
    "load_for_inference",
    "load_workdir",
    "phase_folders",
    "save_export",
    "verify_manifest",
    "write_manifest",
]

PyTree = Any


@dataclasses.dataclass(frozen=True)
class LoadedModels:
    """Networks and parameters restored from a checkpoint folder.

    ``deblur`` / ``deblur_params`` are None only for a ReblurNet-only export loaded with
    ``load_for_inference(..., require_deblur=False)``.
    """

    deblur: Any  # aspdc_jax.models.DeblurNet
    deblur_params: PyTree
    reblur: Any | None  # aspdc_jax.models.ReblurNet
    reblur_params: PyTree | None
    model_config: dict[str, Any]
    source: str


def load_export(directory: str | Path) -> LoadedModels:
    """Restores an export written by :func:`save_export` (its manifest checked first)."""
    directory = Path(directory).expanduser().absolute()
    exported = read_export(directory)
    # A one-network export records only that network's keys (aspdc_jax.convert).
    deblur, reblur = networks_from_saved(
        exported.model_config,
        deblur=exported.deblur_params is not None,
        reblur=exported.reblur_params is not None,
    )
    return LoadedModels(
        deblur=deblur,
        deblur_params=exported.deblur_params,
        reblur=reblur,
        reblur_params=exported.reblur_params,
        model_config=exported.model_config,
        source=f"export {directory}",
    )


def load_for_inference(directory: str | Path, *, require_deblur: bool = True) -> LoadedModels:
    """Loads networks and params from an export or a ``train.py`` workdir / phase folder.

    ``require_deblur=False`` also accepts a ReblurNet-only export (``deblur`` is then None):
    what ``evaluate.py --reblur`` scores.

    Raises:
      CheckpointError: the folder does not exist or holds no usable checkpoint, or (with
        ``require_deblur``) no DeblurNet; the message says what was looked for.
    """
    directory = Path(directory).expanduser().absolute()
    if directory.is_file():
        raise CheckpointError(
            f"{directory} is a file; expected a checkpoint folder (an export from aspdc_jax.convert "
            "or a train.py workdir). Official .pth files are converted first: python -m aspdc_jax.convert"
        )
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist")
    if not is_export(directory):
        return load_workdir(directory)
    loaded = load_export(directory)
    if require_deblur and loaded.deblur is None:
        raise CheckpointError(
            f"{directory} holds only a ReblurNet (an export converted from ReBlurringNet.pth alone); "
            "deblurring needs the DeblurNet: python -m aspdc_jax.convert --deblur DeblurringNet_FT.pth "
            "[--reblur ReBlurringNet.pth] --out DIR (evaluate.py --reblur scores this export as it is)"
        )
    return loaded


def load_workdir(directory: str | Path) -> LoadedModels:
    """Networks and params from a ``train.py`` workdir, phase folder or step folder: the
    weights `aspdc_jax.checkpoint.read_workdir` chooses (the last phase that trains each
    network; its EMA when the run kept one, and ``source`` then says "EMA weights").

    Raises:
      CheckpointError: nothing usable in the folder; the message says what was looked for.
    """
    weights = read_workdir(directory)
    deblur, reblur = networks_from_saved(weights.model_config, reblur=weights.reblur_params is not None)
    return LoadedModels(
        deblur=deblur,
        deblur_params=weights.deblur_params,
        reblur=reblur,
        reblur_params=weights.reblur_params,
        model_config=weights.model_config,
        source=weights.source,
    )
