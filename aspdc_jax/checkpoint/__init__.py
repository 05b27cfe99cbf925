"""Weights on disk, one schema for training and inference: phase folders of a ``train.py``
workdir (written and read with Orbax), their `PhaseMeta` record, exports, and which
weights of a workdir are the inference weights.

* :mod:`.meta`: the `PhaseMeta` record (the only place its keys are defined), the item
  names (`Item`), the fill for older checkpoints and `CheckpointError`.
* :mod:`.folders`: `PhaseCheckpoints`, the Orbax manager of one phase folder (training
  saves and resumes with it; `PhaseFolder` is its read-only form).
* :mod:`.exports`: the portable export (`save_export`, `read_export`, ``SHA256SUMS``,
  the best-step `BestRecord`).
* :mod:`.workdir`: `read_workdir`, the inference weights of a workdir.

Neither training nor models are imported: inference loads through this package (and
`aspdc_jax.weights`, which builds the networks).
"""

from aspdc_jax.checkpoint.exports import (
    BEST_RECORD_FILE,
    MANIFEST_FILE,
    MODEL_CONFIG_FILE,
    PARAMS_DIR,
    BestRecord,
    ExportedWeights,
    is_export,
    read_export,
    save_export,
    verify_manifest,
    write_manifest,
)
from aspdc_jax.checkpoint.folders import PhaseCheckpoints, PhaseFolder, is_phase_folder, phase_folders
from aspdc_jax.checkpoint.meta import (
    CheckpointError,
    Item,
    PhaseMeta,
    check_shapes,
    config_to_json,
    decode_data_state,
    encode_data_state,
)
from aspdc_jax.checkpoint.workdir import WorkdirWeights, read_workdir

__all__ = [
    "BEST_RECORD_FILE",
    "MANIFEST_FILE",
    "MODEL_CONFIG_FILE",
    "PARAMS_DIR",
    "BestRecord",
    "CheckpointError",
    "ExportedWeights",
    "Item",
    "PhaseCheckpoints",
    "PhaseFolder",
    "PhaseMeta",
    "WorkdirWeights",
    "check_shapes",
    "config_to_json",
    "decode_data_state",
    "encode_data_state",
    "is_export",
    "is_phase_folder",
    "phase_folders",
    "read_export",
    "read_workdir",
    "save_export",
    "verify_manifest",
    "write_manifest",
]
