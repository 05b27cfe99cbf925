"""Weights on disk: the portable export format and every way of loading for inference.

Training imports this module (for the workdir layout and `CheckpointError`), never the
reverse. Two layouts are understood by :func:`load_for_inference`:

* an *export* (written by ``python -m aspdc_jax.convert`` or :func:`save_export`)::

      DIR/model_config.json   # the model_config dict (see aspdc_jax.models.model_config_dict)
      DIR/params/             # Orbax checkpoint of {"deblur": params, "reblur": params}
                              # (either may be absent: a one-network export)
      DIR/SHA256SUMS          # optional: sha256 of every other file (`write_manifest`),
                              # checked by `load_export` before anything is read

* a ``train.py`` workdir, one of its phase folders or one step folder of a phase::

      WORKDIR/<phase>/<step>/{params, opt_state, [frozen,] data, config, meta}

  written by :mod:`aspdc_jax.training.checkpoints`. ``meta`` (JSON) names the phase, its
  position in the run (``phase_index``), which network ``params`` holds (``network``:
  ``"deblur"`` or ``"reblur"``) and which one ``frozen`` holds, if any; the model config;
  and every parameter shape. The DeblurNet comes from the last phase that trains it, the
  ReblurNet from the last that trains or freezes one.
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

from aspdc_jax.models import networks_from_saved

__all__ = [
    "MANIFEST_FILE",
    "CheckpointError",
    "LoadedModels",
    "is_export",
    "load_export",
    "load_for_inference",
    "PhaseFolder",
    "load_workdir",
    "phase_folders",
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


def load_export(directory: str | Path) -> LoadedModels:
    """Restores an export written by :func:`save_export` (its manifest checked first)."""
    directory = Path(directory).expanduser().absolute()
    if not is_export(directory):
        raise CheckpointError(
            f"{directory} is not an aspdc-jax export: expected {MODEL_CONFIG_FILE} and {PARAMS_DIR}/ inside it"
        )
    verify_manifest(directory)
    model_config = json.loads((directory / MODEL_CONFIG_FILE).read_text())
    with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.restore(directory / PARAMS_DIR)
    tree = _to_numpy(tree)
    deblur_params, reblur_params = tree.get("deblur"), tree.get("reblur")
    # A one-network export records only that network's keys (aspdc_jax.convert).
    deblur, reblur = networks_from_saved(
        model_config, deblur=deblur_params is not None, reblur=reblur_params is not None
    )
    return LoadedModels(
        deblur=deblur,
        deblur_params=deblur_params,
        reblur=reblur,
        reblur_params=reblur_params,
        model_config=model_config,
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


# Checkpoints written before meta carried "network" and "phase_index": the paper's phases.
_LEGACY_PHASES = {"deblur": ("deblur", None, 0), "reblur": ("reblur", None, 1), "finetune": ("deblur", "reblur", 2)}


class PhaseFolder:
    """Read-only view of one phase folder (``WORKDIR/<phase>``) of a ``train.py`` run."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory).expanduser().absolute()
        self._mngr = ocp.CheckpointManager(self.directory, options=self._options()) if self.directory.is_dir() else None
        # Orbax removes leftover temporary folders in a background thread; finish that now,
        # or an error right after opening (exit 2) races it at interpreter shutdown.
        wait = getattr(self._mngr, "_maybe_await_cleanup_tmp_directory", None)
        if wait is not None:
            wait()

    def _options(self) -> ocp.CheckpointManagerOptions:
        # Not Orbax's read_only mode (which only logs warnings); never creates the folder.
        return ocp.CheckpointManagerOptions(
            max_to_keep=None, create=False, enable_async_checkpointing=False, cleanup_tmp_directories=False
        )

    def close(self) -> None:
        if self._mngr is not None:
            self._mngr.close()

    def __enter__(self) -> PhaseFolder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def latest_step(self) -> int | None:
        return None if self._mngr is None else self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return [] if self._mngr is None else list(self._mngr.all_steps())

    @property
    def manager(self) -> ocp.CheckpointManager:
        """The Orbax manager; CheckpointError when the folder does not exist."""
        if self._mngr is None:
            raise CheckpointError(f"checkpoint folder {self.directory} does not exist")
        return self._mngr

    def meta(self, step: int) -> dict[str, Any]:
        """The ``meta`` item of ``step``, with ``network``, ``frozen_network`` and
        ``phase_index`` filled in for older checkpoints."""
        meta = dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
        legacy = _LEGACY_PHASES.get(str(meta.get("phase")), ("deblur", None, 0))
        meta.setdefault("network", legacy[0])
        meta.setdefault("frozen_network", legacy[1])
        meta.setdefault("phase_index", legacy[2])
        return meta

    def saved_config(self, step: int | None = None) -> dict[str, Any] | None:
        """The config (as plain JSON) that ``step`` was trained with; None if not stored."""
        step = self.latest_step() if step is None else step
        if step is None or self._mngr is None:
            return None
        try:
            restored = self._mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        except Exception:
            return None
        return restored["config"]

    def restore_numpy(self, step: int, item: str, meta: dict[str, Any] | None = None) -> PyTree:
        """One array item of ``step`` (``params``, ``ema`` or ``frozen``) as numpy arrays,
        whatever device or host count wrote it: restored onto this process's first device
        (a float32 target built from the shapes in ``meta``, read unless given), then copied
        to the host."""
        meta = self.meta(step) if meta is None else meta
        shapes = meta["frozen_shapes"] if item == "frozen" else meta["param_shapes"]
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target: dict[str, Any] = {}
        for path, shape in shapes.items():
            *parents, leaf = path.split("/")
            node = target
            for name in parents:
                node = node.setdefault(name, {})
            node[leaf] = jax.ShapeDtypeStruct(tuple(shape), np.float32, sharding=sharding)
        tree = self.manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(target)}))[item]
        return _to_numpy(tree)


def _is_phase_folder(path: Path) -> bool:
    return path.is_dir() and any(p.is_dir() and p.name.isdigit() for p in path.iterdir())


def phase_folders(workdir: str | Path) -> list[Path]:
    """The phase folders of a ``train.py`` workdir (sub-folders holding step folders)."""
    workdir = Path(workdir)
    return sorted(p for p in workdir.iterdir() if _is_phase_folder(p)) if workdir.is_dir() else []


def _open_phases(directory: Path) -> tuple[Path, dict[str, tuple[PhaseFolder, int]]]:
    """(workdir, {phase: (folder, step)}) for a workdir, a phase folder or a step folder."""
    pinned: int | None = None  # a step folder (WORKDIR/<phase>/<step>): that step
    if directory.name.isdigit() and _is_phase_folder(directory.parent):
        pinned, directory = int(directory.name), directory.parent
    subfolders = phase_folders(directory)
    phase_dirs = {p.name: p for p in subfolders} if subfolders else {directory.name: directory}
    found: dict[str, tuple[PhaseFolder, int]] = {}
    for phase, path in phase_dirs.items():
        folder = PhaseFolder(path)
        step = folder.latest_step()
        if pinned is not None:
            if pinned not in folder.all_steps():
                raise CheckpointError(
                    f"{path / str(pinned)} is not a saved step of {path} (saved: "
                    f"{', '.join(map(str, folder.all_steps())) or 'none'})"
                )
            step = pinned
        if step is not None:
            found[phase] = (folder, step)
    if not found:
        raise CheckpointError(
            f"{directory} holds no train.py checkpoint: looked for phase folders "
            f"(WORKDIR/<phase>/<step>) with at least one saved step"
        )
    return directory, found


def _weights_item(meta: dict[str, Any]) -> str:
    """The item a phase hands on: its EMA when it kept one, else its params."""
    return "ema" if meta.get("ema") else "params"


def _weights_note(meta: dict[str, Any]) -> str:
    return ", EMA weights" if meta.get("ema") else ""


def load_workdir(directory: str | Path) -> LoadedModels:
    """Networks and params from a ``train.py`` workdir, phase folder or step folder.

    The DeblurNet comes from the last phase (by ``phase_index``) whose ``params`` are a
    DeblurNet (``finetune`` before ``deblur``), as its EMA when the run kept one
    (``config.ema_decay`` > 0; ``source`` then says "EMA weights"); the ReblurNet from the last phase that
    trained one, else a frozen copy. A phase folder alone gives that phase's networks (a
    ReblurNet-only phase is refused), and a step folder (``WORKDIR/deblur/4000``) that step's.

    Raises:
      CheckpointError: nothing usable in the folder; the message says what was looked for.
    """
    directory = Path(directory).expanduser().absolute()
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist")
    directory, found = _open_phases(directory)
    try:
        metas = {phase: folder.meta(step) for phase, (folder, step) in found.items()}
        order = sorted(found, key=lambda p: metas[p]["phase_index"], reverse=True)
        deblur_phase = next((p for p in order if metas[p]["network"] == "deblur"), None)
        if deblur_phase is None:
            raise CheckpointError(
                f"{directory} holds only ReblurNet checkpoints ({', '.join(found)}); a DeblurNet "
                f"needs a phase that trains it, e.g. 'deblur' or 'finetune'"
            )
        folder, step = found[deblur_phase]
        model_config = dict(metas[deblur_phase]["model_config"])
        deblur_params = folder.restore_numpy(step, _weights_item(metas[deblur_phase]), metas[deblur_phase])
        sources = [f"{deblur_phase} step {step}{_weights_note(metas[deblur_phase])}"]
        reblur_params = None
        reblur_phase = next((p for p in order if metas[p]["network"] == "reblur"), None)
        if reblur_phase is not None:
            rfolder, rstep = found[reblur_phase]
            reblur_params = rfolder.restore_numpy(rstep, _weights_item(metas[reblur_phase]), metas[reblur_phase])
            sources.append(f"{reblur_phase} step {rstep}{_weights_note(metas[reblur_phase])}")
            rconfig = metas[reblur_phase]["model_config"]
            model_config["reblur_width"] = rconfig["reblur_width"]
            model_config["reblur_residual"] = bool(rconfig.get("reblur_residual", False))
        elif metas[deblur_phase]["frozen_network"] == "reblur":
            reblur_params = folder.restore_numpy(step, "frozen", metas[deblur_phase])
            sources.append(f"reblur (frozen copy in {deblur_phase}) step {step}")
    finally:
        for f, _ in found.values():
            f.close()
    deblur, reblur = networks_from_saved(model_config, reblur=reblur_params is not None)
    return LoadedModels(
        deblur=deblur,
        deblur_params=deblur_params,
        reblur=reblur,
        reblur_params=reblur_params,
        model_config=model_config,
        source=f"train.py workdir {directory} ({', '.join(sources)})",
    )
