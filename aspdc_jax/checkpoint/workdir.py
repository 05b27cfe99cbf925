"""Which weights of a ``train.py`` workdir are its inference weights, decided once.

The DeblurNet comes from the last phase (by ``phase_index``) whose ``params`` are a
DeblurNet (``finetune`` before ``deblur``), the ReblurNet from the last phase that trained
one, else from a frozen copy; of each phase its `PhaseMeta.weights_item` (the EMA when the
run kept one, else params). A phase folder alone gives that phase's networks, and a step
folder (``WORKDIR/deblur/4000``) that step's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from aspdc_jax.checkpoint.folders import PhaseFolder, is_phase_folder, phase_folders
from aspdc_jax.checkpoint.meta import CheckpointError, Item

__all__ = ["WorkdirWeights", "read_workdir"]

PyTree = Any


@dataclasses.dataclass(frozen=True)
class WorkdirWeights:
    """The inference weights of a workdir: numpy params trees, the model config they were
    trained with, and ``source``, which says where each came from."""

    model_config: dict[str, Any]
    deblur_params: PyTree
    reblur_params: PyTree | None
    source: str


def _open_phases(directory: Path) -> tuple[Path, dict[str, tuple[PhaseFolder, int]]]:
    """(workdir, {phase: (folder, step)}) for a workdir, a phase folder or a step folder."""
    pinned: int | None = None  # a step folder (WORKDIR/<phase>/<step>): that step
    if directory.name.isdigit() and is_phase_folder(directory.parent):
        pinned, directory = int(directory.name), directory.parent
    subfolders = phase_folders(directory)
    phase_dirs = {p.name: p for p in subfolders} if subfolders else {directory.name: directory}
    found: dict[str, tuple[PhaseFolder, int]] = {}
    for phase, path in phase_dirs.items():
        folder = PhaseFolder(path)
        step = folder.latest_step()
        if pinned is not None:
            if pinned not in folder.all_steps():
                folder.close()
                raise CheckpointError(
                    f"{path / str(pinned)} is not a saved step of {path} (saved: "
                    f"{', '.join(map(str, folder.all_steps())) or 'none'})"
                )
            step = pinned
        if step is not None:
            found[phase] = (folder, step)
        else:
            folder.close()
    if not found:
        raise CheckpointError(
            f"{directory} holds no train.py checkpoint: looked for phase folders "
            f"(WORKDIR/<phase>/<step>) with at least one saved step"
        )
    return directory, found


def read_workdir(directory: str | Path) -> WorkdirWeights:
    """The inference weights of a ``train.py`` workdir, phase folder or step folder.

    Raises:
      CheckpointError: nothing usable in the folder (or only ReblurNet phases); the message
        says what was looked for.
    """
    directory = Path(directory).expanduser().absolute()
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist")
    directory, found = _open_phases(directory)
    try:
        metas = {phase: folder.meta(step) for phase, (folder, step) in found.items()}
        order = sorted(found, key=lambda p: metas[p].phase_index, reverse=True)
        deblur_phase = next((p for p in order if metas[p].network == "deblur"), None)
        if deblur_phase is None:
            raise CheckpointError(
                f"{directory} holds only ReblurNet checkpoints ({', '.join(found)}); a DeblurNet "
                f"needs a phase that trains it, e.g. 'deblur' or 'finetune'"
            )
        folder, step = found[deblur_phase]
        meta = metas[deblur_phase]
        model_config = dict(meta.model_config)
        deblur_params = folder.restore_numpy(step, meta.weights_item, meta)
        sources = [f"{deblur_phase} step {step}{meta.weights_note}"]
        reblur_params = None
        reblur_phase = next((p for p in order if metas[p].network == "reblur"), None)
        if reblur_phase is not None:
            rfolder, rstep = found[reblur_phase]
            rmeta = metas[reblur_phase]
            reblur_params = rfolder.restore_numpy(rstep, rmeta.weights_item, rmeta)
            sources.append(f"{reblur_phase} step {rstep}{rmeta.weights_note}")
            model_config["reblur_width"] = rmeta.model_config["reblur_width"]
            model_config["reblur_residual"] = bool(rmeta.model_config.get("reblur_residual", False))
        elif meta.frozen_network == "reblur":
            reblur_params = folder.restore_numpy(step, Item.FROZEN, meta)
            sources.append(f"reblur (frozen copy in {deblur_phase}) step {step}")
    finally:
        for f, _ in found.values():
            f.close()
    return WorkdirWeights(
        model_config=model_config,
        deblur_params=deblur_params,
        reblur_params=reblur_params,
        source=f"train.py workdir {directory} ({', '.join(sources)})",
    )
