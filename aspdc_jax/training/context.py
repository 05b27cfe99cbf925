"""What one phase run knows before its first step: `PhaseRun` (built by `open_run`) and
the `Start` it begins from (found by `aspdc_jax.training.start.phase_start`)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections

from aspdc_jax.checkpoint import PhaseCheckpoints, config_to_json
from aspdc_jax.data.settings import DataSettings
from aspdc_jax.devices import replicated_sharding
from aspdc_jax.models import init_params, model_config_dict
from aspdc_jax.training.phases import PHASES, Phase
from aspdc_jax.training.schedules import PhaseSchedule, make_schedule, steps_per_epoch
from aspdc_jax.training.state import TrainState, param_shapes

__all__ = ["LoaderFactory", "PhaseRun", "Start", "note", "open_run", "phase_dir", "replicated_abstract"]

PyTree = Any
LoaderFactory = Callable[..., Any]


def note(message: str) -> None:
    """A warning the user should see on the console, also in the log."""
    logging.warning(message)
    print(message, flush=True)


def phase_dir(workdir: str | Path, phase: str) -> Path:
    """``WORKDIR/<phase>``, the phase's checkpoint folder."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    return Path(workdir).expanduser().absolute() / phase


@dataclasses.dataclass
class PhaseRun:
    """Everything about one phase that is fixed before its first step."""

    phase: Phase
    config: ml_collections.ConfigDict
    workdir: Path
    mesh: Any
    nets: dict[str, Any]  # "deblur" / "reblur" -> module (float32)
    ckpt: PhaseCheckpoints
    loader: Any
    schedule: PhaseSchedule
    rng: jax.Array
    shapes: dict[str, dict[str, list[int]]]  # "params" (and "frozen") -> parameter shapes
    model_config: dict[str, Any]
    config_json: dict[str, Any]

    @property
    def name(self) -> str:
        return self.phase.name

    @property
    def total(self) -> int:
        return self.schedule.total_steps

    def abstract(self, network: str) -> PyTree:
        """Shapes and dtypes of a fresh ``network`` params tree (nothing is computed)."""
        return jax.eval_shape(lambda: init_params(self.nets[network], self.rng))

    def abstract_replicated(self, network: str) -> PyTree:
        """`abstract` placed on every device of the mesh: a restore target whatever
        topology wrote the checkpoint."""
        return replicated_abstract(self.abstract(network), self.mesh)


def replicated_abstract(tree: PyTree, mesh: Any) -> PyTree:
    """``tree``'s shapes and dtypes, replicated over ``mesh`` (an Orbax restore target)."""
    sharding = replicated_sharding(mesh)
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def open_run(
    phase: Phase,
    config: ml_collections.ConfigDict,
    workdir: Path,
    nets: dict[str, Any],
    mesh: Any,
    loader_factory: LoaderFactory,
) -> PhaseRun:
    """The phase's loader, schedule, checkpoint folder, seed and parameter shapes."""
    loader = loader_factory(
        DataSettings.from_config(config.data),
        global_batch_size=int(config.batch_size),
        seed=int(config.seed) + 1000 * phase.index,
    )
    spe = steps_per_epoch(int(loader.num_examples), int(config.batch_size))
    run = PhaseRun(
        phase=phase,
        config=config,
        workdir=workdir,
        mesh=mesh,
        nets=nets,
        ckpt=PhaseCheckpoints(phase_dir(workdir, phase.name), max_to_keep=int(config.max_checkpoints_to_keep)),
        loader=loader,
        schedule=make_schedule(config[phase.name], steps_per_epoch=spe),
        rng=jax.random.fold_in(jax.random.key(int(config.seed)), phase.index),
        shapes={},
        model_config=model_config_dict(nets["deblur"], nets["reblur"]),
        config_json=config_to_json(config),
    )
    run.shapes["params"] = param_shapes(run.abstract(phase.network))
    if phase.frozen is not None:
        run.shapes["frozen"] = param_shapes(run.abstract(phase.frozen))
    return run


@dataclasses.dataclass(frozen=True)
class Start:
    """Where a phase begins.

    Attributes:
      how: ``"fresh"``, ``"handed_off"``, ``"resumed"`` or ``"done"`` (nothing to train).
      step: the step it begins after (0 unless resumed).
      state: the train state (None when done).
      frozen: the frozen network's params (replicated), if the phase holds one.
      data_state: the data iterator's saved state (resumed), or None.
      started_from: ``{phase: step}`` of the earlier phases its weights come from.
    """

    how: str
    step: int
    state: TrainState | None = None
    frozen: PyTree | None = None
    data_state: Any = None
    started_from: dict[str, int] | None = None
