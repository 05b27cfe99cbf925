"""Publishing trained weights: a small, self-checking export of a ``train.py`` workdir.

    python -m aspdc_jax.publish --ckpt runs/demo --out weights/demo \\
        --command "python train.py --config=configs/demo.py --workdir=runs/demo"

writes an export (``model_config.json`` + ``params/``, loadable by every ``--ckpt``),
``training.json`` (the training command, the full config of the deblurring phase, and the
held-out evaluations from ``metrics.jsonl``) and ``SHA256SUMS``, which
:func:`aspdc_jax.weights.load_export` checks before it reads anything: a modified or
damaged weight file is refused and named.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aspdc_jax.cli import FlagParser, returning_user_errors
from aspdc_jax.weights import (
    CheckpointError,
    PhaseFolder,
    load_for_inference,
    phase_folders,
    save_export,
    write_manifest,
)

__all__ = ["main", "publish"]


def _evaluations(workdir: Path) -> list[dict[str, Any]]:
    """The ``eval`` records of ``WORKDIR/metrics.jsonl`` (held-out PSNR, per band)."""
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("event") == "eval":
            records.append(record)
    return records


def _phase_configs(workdir: Path) -> dict[str, dict[str, Any]]:
    """``{phase: the config saved with its latest checkpoint}`` of a workdir."""
    configs = {}
    for folder in phase_folders(workdir):
        with PhaseFolder(folder) as phase:
            config = phase.saved_config()
        if config is not None:
            configs[folder.name] = config
    return configs


def publish(ckpt: str | Path, out: str | Path, *, command: str = "", include_reblur: bool = True) -> Path:
    """Exports ``ckpt`` (a workdir) to ``out`` with ``training.json`` and ``SHA256SUMS``.

    ``out`` must be new or empty. Returns the export folder.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} exists and is not an empty folder; choose a new folder")
    loaded = load_for_inference(ckpt)
    try:
        save_export(
            out,
            model_config=loaded.model_config,
            deblur_params=loaded.deblur_params,
            reblur_params=loaded.reblur_params if include_reblur else None,
        )
        workdir = Path(ckpt)
        info = {
            "source": loaded.source,
            "command": command,
            "config": _phase_configs(workdir),
            "evaluations": _evaluations(workdir),
        }
        (out / "training.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
        write_manifest(out)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = FlagParser(
        prog="python -m aspdc_jax.publish",
        description="Export a train.py workdir as small, checksummed weights (model_config.json, params/, "
        "training.json, SHA256SUMS) that every --ckpt accepts.",
    )
    parser.add_argument("--ckpt", required=True, help="train.py workdir (or phase / step folder)")
    parser.add_argument("--out", required=True, help="new or empty output folder, e.g. weights/demo")
    parser.add_argument("--command", default="", help="the training command, recorded in training.json")
    parser.add_argument("--no_reblur", action="store_true", help="leave the ReblurNet out")
    args = parser.parse_args(argv)

    def run() -> int:
        out = publish(args.ckpt, args.out, command=args.command, include_reblur=not args.no_reblur)
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        print(f"wrote {out} ({size / 2**20:.2f} MiB)")
        return 0

    return returning_user_errors(run, CheckpointError, traceback=args.verbosity > 0)


if __name__ == "__main__":
    sys.exit(main())
