"""Phase folders of a ``train.py`` workdir: the Orbax manager that writes and reads them.

Layout of a workdir::

    WORKDIR/deblur/<step>/{params,opt_state,[ema,]data,config,meta}            # phase 1
    WORKDIR/reblur/<step>/{params,opt_state,[ema,]data,config,meta}            # phase 2
    WORKDIR/finetune/<step>/{params,opt_state,[ema,]frozen,data,config,meta}   # phase 3
    WORKDIR/<phase>/best/                    # an export of the best validated step
    WORKDIR/metrics.jsonl, WORKDIR/tensorboard/<phase>/

The items are `Item`'s; ``meta`` is a `PhaseMeta`. ``data`` (written by process 0: every
process is at the same position of its own shard, so it serves them all) is
``{"state": <iterator state>}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from aspdc_jax.checkpoint.meta import CheckpointError, Item, PhaseMeta, decode_data_state, encode_data_state

__all__ = ["PhaseCheckpoints", "PhaseFolder", "is_phase_folder", "phase_folders"]

PyTree = Any


class PhaseCheckpoints:
    """An Orbax ``CheckpointManager`` for one phase folder (``WORKDIR/<phase>``).

    Saving is synchronous: the train step donates its state buffers right after a save.
    ``read_only=True`` never saves and never creates the folder (nor removes Orbax's
    leftover temporary folders; ``max_to_keep`` is then unused).
    """

    def __init__(self, directory: str | Path, *, max_to_keep: int = 2, read_only: bool = False):
        self.directory = Path(directory).expanduser().absolute()
        self.max_to_keep, self.read_only = max_to_keep, read_only
        if not read_only:
            self.directory.mkdir(parents=True, exist_ok=True)
        # Not Orbax's read_only mode (which only logs warnings).
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else max_to_keep,
            create=not read_only,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=not read_only,
        )
        self._mngr = ocp.CheckpointManager(self.directory, options=options) if self.directory.is_dir() else None
        # Orbax removes leftover temporary folders in a background thread; finish that now,
        # or an error right after opening (exit 2) races it at interpreter shutdown.
        wait = getattr(self._mngr, "_maybe_await_cleanup_tmp_directory", None)
        if wait is not None:
            wait()

    def close(self) -> None:
        if self._mngr is not None:
            self._mngr.close()

    def __enter__(self) -> PhaseCheckpoints:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def manager(self) -> ocp.CheckpointManager:
        """The Orbax manager; CheckpointError when the folder does not exist."""
        if self._mngr is None:
            raise CheckpointError(f"checkpoint folder {self.directory} does not exist")
        return self._mngr

    def latest_step(self) -> int | None:
        return None if self._mngr is None else self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return [] if self._mngr is None else list(self._mngr.all_steps())

    # ------------------------------------------------------------------ writing

    def save(
        self,
        step: int,
        *,
        params: PyTree,
        opt_state: PyTree,
        meta: PhaseMeta,
        config_json: dict[str, Any],
        data_state: Any = None,
        frozen: PyTree | None = None,
        ema: PyTree | None = None,
    ) -> None:
        """Writes step ``step`` (replacing an existing one of the same number)."""
        if self.read_only:
            raise CheckpointError(f"{self.directory} was opened read-only; it cannot save step {step}")
        items: dict[str, Any] = {
            Item.PARAMS: ocp.args.StandardSave(params),
            Item.OPT_STATE: ocp.args.StandardSave(opt_state),
            Item.META: ocp.args.JsonSave(meta.to_json()),
            Item.CONFIG: ocp.args.JsonSave(config_json),
            Item.DATA: ocp.args.JsonSave({"state": encode_data_state(data_state)}),
        }
        if frozen is not None:
            items[Item.FROZEN] = ocp.args.StandardSave(frozen)
        if ema is not None:
            items[Item.EMA] = ocp.args.StandardSave(ema)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        self.manager.wait_until_finished()

    # ------------------------------------------------------------------ reading

    def restore(
        self,
        step: int,
        *,
        params: PyTree | None = None,
        opt_state: PyTree | None = None,
        frozen: PyTree | None = None,
        ema: PyTree | None = None,
        items: tuple[str, ...] = (Item.PARAMS, Item.OPT_STATE, Item.DATA, Item.META),
    ) -> dict[str, Any]:
        """Restores the named items of ``step``. Array items take an abstract/concrete
        target tree (shapes, dtypes, shardings) when given; without one they come back as
        numpy arrays in the saved structure. ``meta`` comes back as a `PhaseMeta`, ``data``
        as the iterator state, ``config`` as plain JSON."""
        targets = {Item.PARAMS: params, Item.OPT_STATE: opt_state, Item.FROZEN: frozen, Item.EMA: ema}
        args = {}
        for name in items:
            if name in Item.ARRAYS:
                target = targets[name]
                if target is not None:
                    target = jax.tree_util.tree_map(_abstract, target)
                args[name] = ocp.args.StandardRestore(target)
            else:
                args[name] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        out = {name: restored[name] for name in items}
        if out.get(Item.DATA) is not None:
            out[Item.DATA] = decode_data_state(out[Item.DATA].get("state"))
        if Item.META in out:
            out[Item.META] = PhaseMeta.from_json(out[Item.META], where=f"{self.directory / str(step)}")
        return out

    def meta(self, step: int) -> PhaseMeta:
        """The `PhaseMeta` of ``step`` (older formats filled in)."""
        return self.restore(step, items=(Item.META,))[Item.META]

    def saved_config(self, step: int | None = None) -> dict[str, Any] | None:
        """The config (as plain JSON) that ``step`` (default: the latest) was trained with;
        None if not stored."""
        step = self.latest_step() if step is None else step
        if step is None or self._mngr is None:
            return None
        try:
            return self.restore(step, items=(Item.CONFIG,))[Item.CONFIG]
        except Exception:
            return None

    def restore_numpy(self, step: int, item: str, meta: PhaseMeta | None = None) -> PyTree:
        """One array item of ``step`` (``params``, ``ema`` or ``frozen``) as numpy arrays,
        whatever device or host count wrote it: restored onto this process's first device
        (a float32 target built from the shapes in ``meta``, read unless given), then copied
        to the host."""
        meta = self.meta(step) if meta is None else meta
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target: dict[str, Any] = {}
        for path, shape in meta.shapes_of(item).items():
            *parents, leaf = path.split("/")
            node = target
            for name in parents:
                node = node.setdefault(name, {})
            node[leaf] = jax.ShapeDtypeStruct(tuple(shape), np.float32, sharding=sharding)
        tree = self.manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(target)}))[item]
        return jax.tree_util.tree_map(np.asarray, tree)


class PhaseFolder(PhaseCheckpoints):
    """Read-only view of one phase folder (``WORKDIR/<phase>``): what inference opens."""

    def __init__(self, directory: str | Path):
        super().__init__(directory, read_only=True)

    def __enter__(self) -> PhaseFolder:
        return self


def _abstract(x: Any) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype if sharding is None else x.dtype, sharding=sharding)


def is_phase_folder(path: Path) -> bool:
    """``path`` is a folder holding at least one step folder (``<digits>/``)."""
    return path.is_dir() and any(p.is_dir() and p.name.isdigit() for p in path.iterdir())


def phase_folders(workdir: str | Path) -> list[Path]:
    """The phase folders of a ``train.py`` workdir (sub-folders holding step folders)."""
    workdir = Path(workdir)
    return sorted(p for p in workdir.iterdir() if is_phase_folder(p)) if workdir.is_dir() else []
