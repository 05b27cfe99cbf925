"""Batch deblurring on a Ray cluster with Ray Data (optional: ``pip install -e '.[ray]'``).

    import ray
    from aspdc_jax.inference.ray_data import DeblurBatch, deblur_dataset

    ds = ray.data.read_binary_files("s3://bucket/photos/", include_paths=True)
    ds = deblur_dataset(ds, "/shared/weights/aspdc_ft", actors=8, gpus_per_actor=1, batch_size=8)
    for row in ds.iter_rows():                 # {"path", "png", "error", "notes"}
        ...

`DeblurBatch` is the callable class for ``Dataset.map_batches``: each actor loads the
weights once (a checkpoint folder, or a file written by ``python -m aspdc_jax.export``) into
a :class:`aspdc_jax.inference.Deblurrer`, so mixed photo sizes are padded to the
Deblurrer's shape buckets (a handful of compiled shapes per actor, not one per size) and
large images are tiled. It takes the ``bytes`` of image files (``read_binary_files``) and
decodes them with :func:`aspdc_jax.images.read_image`'s conversions (16-bit, grayscale,
CMYK, alpha, EXIF orientation), or already decoded uint8 ``image`` arrays
(``read_images``), and returns, per row, the row's key, the deblurred image (PNG ``bytes``,
alpha restored, or a uint8 ``image`` array), the conversion notes and the read error ('' if
none). A file that fails to decode is a row with an error, not a failed job.

`run_ray` is ``python -m aspdc_jax.deblur --ckpt DIR INPUTS --out OUT --ray``: the local
CLI's inputs, output names and manifest (so a rerun skips what is done, and the PNGs equal
the local CLI's bit for bit), with the deblurring done by `DeblurBatch` actors. The driver
writes every output file, each once, through a temporary file in the output folder and an
``os.replace``; a row that arrives twice (Ray retrying a task whose actor died) is dropped.
It connects to ``RAY_ADDRESS`` when set, else starts a local Ray on 127.0.0.1.

Importing this module does not import Ray (nor does ``import aspdc_jax.inference``).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aspdc_jax.errors import UserError

__all__ = [
    "REPORT_NAME",
    "DeblurBatch",
    "add_ray_flags",
    "connect",
    "deblur_dataset",
    "encode_png",
    "load_deblurrer",
    "read_bytes",
    "run_ray",
]

#: In the output folder: what the last ``--ray`` run wrote and skipped (JSON).
REPORT_NAME = ".aspdc-deblur-ray-report.json"
_INSTALL_HINT = "Ray is not installed; install the extra: pip install -e '.[ray]' (or pip install 'ray[data]')"


# ---------------------------------------------------------------------------- actor side
class _NamedBytes(io.BytesIO):
    """File bytes that print as their file name (so read errors name the file)."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self._display = name

    def __str__(self) -> str:
        return self._display


def read_bytes(data: bytes, name: str) -> Any:
    """Decodes an image file's bytes as `aspdc_jax.images.read_image` decodes the file.

    Returns its `LoadedImage` (uint8 (H, W, 3) ``rgb``, optional alpha, conversion notes).

    Raises:
      ImageReadError: not an image, truncated or unsupported; the message names ``name``.
    """
    from aspdc_jax.images import read_image  # noqa: PLC0415 (the driver needs no JAX)

    return read_image(_NamedBytes(bytes(data), name))  # type: ignore[arg-type]  # Pillow reads file objects


def encode_png(rgb: np.ndarray, alpha: np.ndarray | None = None) -> bytes:
    """uint8 (H, W, 3) (+ (H, W) alpha) as PNG bytes, encoded as `aspdc_jax.images.write_image` does."""
    from PIL import Image  # noqa: PLC0415 (kept with its only use)

    image = Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA") if alpha is not None else Image.fromarray(rgb)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _exported_deblurrer(exported: Any, **kwargs: Any) -> Any:
    """A `Deblurrer` whose compiled function is a ``jax.export`` artifact (uint8 [b, h, w, 3]
    -> uint8): the Deblurrer's buckets, padding, batching and tiling around the artifact's
    own ``call``, run as exported (its weights, dtype and self-ensemble are baked in)."""
    import jax  # noqa: PLC0415 (the driver needs no JAX)

    from aspdc_jax.inference import Deblurrer  # noqa: PLC0415 (the driver needs no JAX)

    class ExportedDeblurrer(Deblurrer):
        def __init__(self) -> None:
            # The module is never traced: forward_padded below replaces the jitted forward.
            super().__init__(lambda *a: None, {}, **kwargs)
            self._call = jax.jit(exported.call)

        def forward_padded(self, batch: Any) -> Any:
            """uint8 (B, H, W, 3) -> float32 (B, H, W, 3) in [0, 255] (the artifact's uint8 values)."""
            return np.asarray(self._call(batch)).astype(np.float32)

    return ExportedDeblurrer()


def load_deblurrer(weights: str | Path, **kwargs: Any) -> Any:
    """A `Deblurrer` from a checkpoint folder (export or train.py workdir) or from a
    ``jax.export`` file (``python -m aspdc_jax.export``; ``dtype``/``self_ensemble`` are
    then those it was exported with). ``kwargs`` go to the Deblurrer (bucket, tile, ...).

    Raises:
      CheckpointError: no checkpoint there; ValueError: a file that is not an export.
    """
    from aspdc_jax import inference  # noqa: PLC0415 (the driver needs no JAX)

    path = Path(weights).expanduser()
    if not path.is_file():
        return inference.load(path, **kwargs)
    import jax  # noqa: PLC0415 (the driver needs no JAX)

    try:
        exported = jax.export.deserialize(bytearray(path.read_bytes()))
    except Exception as err:  # flatbuffers raises assorted errors on a foreign file
        raise ValueError(
            f"{path} is a file but not a jax.export artifact ({err!r}); give a checkpoint folder "
            "or a file written by python -m aspdc_jax.export"
        ) from err
    kwargs = {k: v for k, v in kwargs.items() if k not in ("dtype", "self_ensemble")}
    return _exported_deblurrer(exported, **kwargs)


def _configure_jax_for_actor() -> None:
    """Before the actor's first JAX computation: no GPU given to it -> JAX on the CPU (it
    would otherwise take every GPU of the node); a fraction of a GPU -> JAX preallocates
    only that fraction of its memory (several actors share it)."""
    import jax  # noqa: PLC0415 (the driver needs no JAX)

    try:
        import ray  # noqa: PLC0415 (optional dependency)
    except ModuleNotFoundError:
        return
    if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return  # not inside a Ray worker (a direct call, a test): JAX as configured
    gpus = float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
    if gpus <= 0 and "JAX_PLATFORMS" not in os.environ:
        jax.config.update("jax_platforms", "cpu")
    elif 0 < gpus < 1 and "XLA_PYTHON_CLIENT_MEM_FRACTION" not in os.environ:
        os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 * gpus:.3f}"


class DeblurBatch:
    """Callable class for ``Dataset.map_batches``: deblurs a batch of images per call.

    Args:
      weights: a checkpoint folder (export or train.py workdir) or a ``jax.export`` file,
        on a path every actor can read (a shared filesystem); loaded once per actor.
      bucket, dtype, tile, overlap, self_ensemble: as for :class:`aspdc_jax.inference.Deblurrer`
        (``tile=None``: never tile).
      output: ``"png"`` (column ``png``: PNG bytes, alpha restored) or ``"image"`` (column
        ``image``: uint8 (H, W, 3) arrays; ``alpha``: (H, W) arrays, (0, 0) when none).
      key_column: the column that names each row (``path`` with ``include_paths=True``);
        returned unchanged.
      low_memory: XLA's memory-minimising CPU schedule, as the deblur CLI selects it.

    Input batches (numpy format) carry ``key_column`` and either ``bytes`` (encoded image
    files) or ``image`` (uint8 (H, W, 3) arrays). Output batches: ``key_column``, the image
    column, ``notes`` (conversions applied, one per line) and ``error`` ('' when the row
    was deblurred; else why it could not be read, and the image column is empty).
    """

    def __init__(
        self,
        weights: str,
        *,
        bucket: int | str = "geometric",
        dtype: str = "float32",
        tile: int | None = 1280,
        overlap: int = 64,
        self_ensemble: bool = False,
        output: str = "png",
        key_column: str = "path",
        low_memory: bool = True,
    ) -> None:
        if output not in ("png", "image"):
            raise ValueError(f"DeblurBatch: output must be 'png' or 'image', got {output!r}")
        from aspdc_jax.allocator import tune_malloc  # noqa: PLC0415 (the driver needs no JAX)
        from aspdc_jax.inference import use_low_memory_cpu_scheduler  # noqa: PLC0415 (the driver needs no JAX)

        tune_malloc()
        if low_memory:
            use_low_memory_cpu_scheduler()
        _configure_jax_for_actor()
        self.output = output
        self.key_column = key_column
        self.deblurrer = load_deblurrer(
            weights, bucket=bucket, dtype=dtype, tile=tile, overlap=overlap, self_ensemble=self_ensemble
        )

    def _read(self, batch: dict[str, Any], i: int, key: str) -> Any:
        from aspdc_jax.images import LoadedImage  # noqa: PLC0415 (the driver needs no JAX)

        if "bytes" in batch:
            return read_bytes(batch["bytes"][i], key)
        image = np.asarray(batch["image"][i])
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
            raise ValueError(f"{key}: expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        return LoadedImage(image, None, [])

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Deblurs one numpy-format batch (see the class doc for the columns)."""
        if self.key_column not in batch or not ({"bytes", "image"} & set(batch)):
            raise ValueError(
                f"DeblurBatch needs the columns {self.key_column!r} and 'bytes' or 'image', got {sorted(batch)}; "
                "read with ray.data.read_binary_files(..., include_paths=True)"
            )
        keys = [str(k) for k in batch[self.key_column]]
        loaded: list[Any] = []
        errors: list[str] = []
        for i, key in enumerate(keys):
            try:
                loaded.append(self._read(batch, i, key))
                errors.append("")
            except ValueError as err:  # ImageReadError is one: reported per row
                loaded.append(None)
                errors.append(str(err))
        ok = [i for i, image in enumerate(loaded) if image is not None]
        outputs = dict(zip(ok, self.deblurrer.deblur([loaded[i].rgb for i in ok]) if ok else []))
        result: dict[str, Any] = {
            self.key_column: np.asarray(batch[self.key_column]),
            "error": np.array(errors, dtype=object),
            "notes": np.array(["\n".join(im.notes) if im is not None else "" for im in loaded], dtype=object),
        }
        if self.output == "png":
            pngs = [encode_png(outputs[i], loaded[i].alpha) if i in outputs else b"" for i in range(len(keys))]
            result["png"] = np.array(pngs, dtype=object)
        else:
            empty = np.zeros((0, 0, 3), np.uint8)
            result["image"] = [outputs.get(i, empty) for i in range(len(keys))]
            result["alpha"] = [
                loaded[i].alpha if i in outputs and loaded[i].alpha is not None else np.zeros((0, 0), np.uint8)
                for i in range(len(keys))
            ]
        return result


def deblur_dataset(
    ds: Any,
    weights: str | Path,
    *,
    actors: int | tuple[int, int] = 1,
    gpus_per_actor: float = 0.0,
    cpus_per_actor: float = 1.0,
    batch_size: int = 4,
    udf: type[DeblurBatch] = DeblurBatch,
    max_restarts: int = -1,
    max_task_retries: int = -1,
    **kwargs: Any,
) -> Any:
    """``ds.map_batches`` with a pool of `DeblurBatch` actors.

    Args:
      ds: a Ray Dataset with a ``path`` column (or ``key_column=``) and ``bytes`` or ``image``.
      weights: checkpoint folder or ``jax.export`` file, readable by every actor.
      actors: pool size, or (min, max) to autoscale.
      gpus_per_actor: GPUs each actor holds (0: CPU actors; 0.5: two actors per GPU).
      cpus_per_actor: CPUs each actor reserves.
      batch_size: rows per call (images of one bucket within it run together).
      udf: the callable class (a subclass of `DeblurBatch`).
      max_restarts, max_task_retries: Ray's actor fault tolerance (-1: unlimited): an actor
        that dies is restarted and its unfinished batches run again.
      kwargs: go to `DeblurBatch` (bucket, dtype, tile, overlap, self_ensemble, output, ...).

    Returns:
      The lazy Dataset of `DeblurBatch` output rows.
    """
    import ray  # noqa: PLC0415 (optional dependency)

    pool = (
        ray.data.ActorPoolStrategy(min_size=actors[0], max_size=actors[1])
        if isinstance(actors, tuple)
        else ray.data.ActorPoolStrategy(size=actors)
    )
    # Ray Data's actor pools restart dead actors and retry their tasks without limit by
    # default; only other values are passed (as Ray remote args).
    retries = {k: v for k, v in (("max_restarts", max_restarts), ("max_task_retries", max_task_retries)) if v != -1}
    return ds.map_batches(
        udf,
        fn_constructor_args=(str(weights),),
        fn_constructor_kwargs=kwargs,
        batch_size=batch_size,
        batch_format="numpy",
        compute=pool,
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor if gpus_per_actor > 0 else None,
        **retries,
    )


# ---------------------------------------------------------------------------- driver side
def add_ray_flags(parser: argparse.ArgumentParser) -> None:
    """The deblur CLI's ``--ray`` flags."""
    group = parser.add_argument_group("Ray (pip install -e '.[ray]')")
    group.add_argument(
        "--ray",
        action="store_true",
        help="deblur on a Ray cluster (RAY_ADDRESS, else a local Ray on 127.0.0.1) with Ray Data actors; "
        "same outputs and manifest as without it; inputs may also be URIs Ray reads (s3://, gs://, ...)",
    )
    group.add_argument(
        "--actors",
        type=int,
        default=None,
        help="deblurring actors (default: the cluster's GPUs / --gpus_per_actor, or one per 2 CPUs)",
    )
    group.add_argument(
        "--gpus_per_actor",
        type=float,
        default=0.0,
        help="GPUs per actor: 1 = one actor per GPU, 0.5 = two per GPU, 0 = CPU actors (default: %(default)s)",
    )
    group.add_argument(
        "--batch_size", type=int, default=4, help="images handed to an actor per call (default: %(default)s)"
    )


def connect(num_cpus: int | None = None) -> Any:
    """Connects to ``RAY_ADDRESS`` (or a Ray already initialised in this process), else
    starts a local Ray bound to 127.0.0.1 without the dashboard. Returns the ``ray`` module.

    Raises:
      UserError: Ray is not installed (the message says how to install it).
    """
    try:
        import ray  # noqa: PLC0415 (optional dependency)
    except ModuleNotFoundError as err:
        raise UserError(_INSTALL_HINT) from err
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(
                num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=logging.WARNING
            )
    return ray


@dataclasses.dataclass
class _Job:
    """An input of the run: where it is, what it is called in messages, its outputs."""

    display: str
    targets: list[tuple[Path, Any]]  # (output file, Source of the input now, or None)


def _is_uri(path: str) -> bool:
    return "://" in path


def _plan_local(args: argparse.Namespace, out_dir: Path, manifest: Any) -> tuple[list[Any], list[str]]:
    """The local CLI's plan: (input, output, Source) to deblur, and the non-image files."""
    from aspdc_jax.inference import cli  # noqa: PLC0415 (cli imports this module's flags)

    names = cli.folder_names(args.inputs, manifest.folders)
    rejected: list[Path] = []
    files = list(cli.find_inputs(args.inputs, exclude=out_dir, names=names, rejected=rejected))
    plan = cli.plan_outputs(files, out_dir, manifest, overwrite=args.overwrite)
    not_images = [f"{f}: not an image (suffix {f.suffix or 'none'})" for f in rejected]
    if not plan:
        raise FileNotFoundError("no image files found in the inputs" + "".join(f"; {m}" for m in not_images))
    manifest.folders.update({name: folder for folder, name in names.items()})
    return cli._todo(plan, manifest, args.overwrite), not_images


def _plan_uris(args: argparse.Namespace, out_dir: Path, manifest: Any) -> tuple[Any, list[tuple[str, Path, Any]]]:
    """For URI inputs (s3://, gs://, file://, ...): (filesystem, [(path in it, output, Source)]).

    Files are listed with pyarrow (recursively, image suffixes only); an output keeps the
    file's path under the URI (``s3://b/pics/x/a.jpg`` -> ``x/a.png``; with several inputs
    under the last part of each URI); the manifest records the URI, size and mtime, so a
    rerun skips unchanged files. All URIs must be on one filesystem.
    """
    from pyarrow import fs as pafs  # noqa: PLC0415 (comes with Ray Data)

    from aspdc_jax.images import IMAGE_SUFFIXES  # noqa: PLC0415 (kept with its use)
    from aspdc_jax.inference.cli import Source, _candidates  # noqa: PLC0415 (cli imports this module's flags)

    filesystem = None
    todo: list[tuple[str, Path, Any]] = []
    taken: set[Path] = set()
    recorded = manifest.targets_by_input()
    for uri in args.inputs:
        fs, root = pafs.FileSystem.from_uri(uri)
        filesystem = filesystem or fs
        if fs.type_name != filesystem.type_name:
            raise ValueError(f"input {uri} is on another filesystem than {args.inputs[0]}; run them separately")
        scheme = uri.split("://", 1)[0]
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"input {uri} does not exist")
        if info.type == pafs.FileType.Directory:
            entries = fs.get_file_info(pafs.FileSelector(root, recursive=True))
            found = [
                e for e in entries if e.type == pafs.FileType.File and Path(e.path).suffix.lower() in IMAGE_SUFFIXES
            ]
        else:
            found = [info]
        prefix = Path(Path(root).name) if len(args.inputs) > 1 and info.type == pafs.FileType.Directory else Path()
        for entry in sorted(found, key=lambda e: e.path):
            rel = Path(entry.path).relative_to(root) if info.type == pafs.FileType.Directory else Path(entry.base_name)
            source = Source(f"{scheme}://{entry.path}", int(entry.size or 0), int(entry.mtime_ns or 0))
            default = out_dir / prefix / rel.with_suffix(".png")
            known = [t for t in recorded.get(source.input, []) if t.parent == default.parent and t not in taken]
            target = (
                known[0]
                if known
                else next(
                    c for c in _candidates(default, rel.name) if _free(c, source, taken, manifest, args.overwrite)
                )
            )
            taken.add(target)
            if target.exists() and not args.overwrite and manifest.source(target) == source:
                print(
                    f"exists, made from this unchanged input, skipped (use --overwrite to redo): {target}",
                    file=sys.stderr,
                )
                continue
            todo.append((entry.path, target, source))
    if not todo and not taken:
        raise FileNotFoundError(f"no image files found in {', '.join(args.inputs)}")
    return filesystem, todo


def _free(candidate: Path, source: Any, taken: set[Path], manifest: Any, overwrite: bool) -> bool:
    """Whether a URI input may take output ``candidate`` (not planned, not another input's)."""
    if candidate in taken:
        return False
    recorded = manifest.source(candidate)
    if recorded is not None:
        return bool(recorded.input == source.input)
    return overwrite or not candidate.exists()


def _write_once(target: Path, data: bytes) -> None:
    """Writes ``data`` to a temporary file in ``target``'s folder and renames it over ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _default_actors(ray: Any, gpus_per_actor: float) -> int:
    resources = ray.cluster_resources()
    if gpus_per_actor > 0:
        gpus = float(resources.get("GPU", 0))
        if gpus < gpus_per_actor:
            raise ValueError(
                f"--gpus_per_actor {gpus_per_actor}: the Ray cluster has {gpus:g} GPU(s); "
                "use --gpus_per_actor 0 for CPU actors"
            )
        return max(1, int(gpus / gpus_per_actor + 1e-9))
    return max(1, int(resources.get("CPU", 1)) // 2)


def _row_batches(ds: Any) -> Iterator[list[dict[str, Any]]]:
    """The output rows of ``ds``, a list per block as it arrives."""
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        columns = ("path", "png", "error", "notes")
        yield [{k: batch[k][i] for k in columns} for i in range(len(batch["path"]))]


def run_ray(args: argparse.Namespace, udf: type[DeblurBatch] | None = None) -> int:
    """``python -m aspdc_jax.deblur ... --ray``: the CLI's run with Ray Data actors.

    ``udf``: the actor class (default `DeblurBatch`, looked up when called). Returns 0
    when every input was written (or was already done), 1 when some were skipped (listed
    on stderr and in ``REPORT_NAME`` in the output folder).
    """
    from tqdm import tqdm  # noqa: PLC0415 (kept with its use)

    from aspdc_jax.inference import cli  # noqa: PLC0415 (cli imports this module's flags)
    from aspdc_jax.progress import show_progress  # noqa: PLC0415 (kept with its use)

    if args.actors is not None and args.actors < 1:
        raise ValueError(f"--actors must be >= 1, got {args.actors}")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.gpus_per_actor < 0:
        raise ValueError(f"--gpus_per_actor must be >= 0, got {args.gpus_per_actor}")
    if not Path(args.ckpt).expanduser().exists():
        raise FileNotFoundError(f"--ckpt {args.ckpt} does not exist (a checkpoint folder or a jax.export file)")
    uris = [_is_uri(i) for i in args.inputs]
    if any(uris) and not all(uris):
        raise ValueError("give either local paths or URIs (s3://...) as inputs, not both")
    out_dir = cli._check_out_dir(args) if not any(uris) else Path(args.out)
    manifest = cli.OutputManifest(out_dir)
    filesystem = None
    not_images: list[str] = []
    if any(uris):
        filesystem, todo = _plan_uris(args, out_dir, manifest)
        jobs: dict[str, _Job] = {}
        for fs_path, target, source in todo:
            jobs.setdefault(fs_path, _Job(source.input, [])).targets.append((target, source))
    else:
        local, not_images = _plan_local(args, out_dir, manifest)
        jobs = {}
        for path, target, source in local:
            jobs.setdefault(os.path.abspath(path), _Job(str(path), [])).targets.append((target, source))
    written, skipped, duplicates, seconds = 0, list(not_images), 0, 0.0
    if jobs:
        ray = connect()
        ray.data.DataContext.get_current().enable_progress_bars = show_progress(not args.quiet)
        actors = args.actors or _default_actors(ray, args.gpus_per_actor)
        # Reading takes no CPU slot: the actors may hold all of them (2 CPU actors on 2 CPUs).
        ds = ray.data.read_binary_files(sorted(jobs), include_paths=True, filesystem=filesystem, num_cpus=0)
        ds = deblur_dataset(
            ds,
            str(Path(args.ckpt).expanduser().absolute()),
            actors=actors,
            gpus_per_actor=args.gpus_per_actor,
            batch_size=args.batch_size,
            udf=udf or DeblurBatch,
            bucket=args.bucket,
            dtype=args.dtype,
            tile=args.tile or None,
            overlap=args.overlap,
            self_ensemble=args.self_ensemble,
            low_memory=not args.concurrent_schedule,
        )
        start = time.perf_counter()
        done: set[str] = set()
        bar = tqdm(
            total=len(jobs), unit="img", desc="deblur (ray)", disable=not show_progress(not args.quiet), file=sys.stderr
        )
        for rows in _row_batches(ds):
            recorded = False
            for row in rows:
                key = _key_of(str(row["path"]), jobs)
                if key is None:  # reported below as an input with no result
                    tqdm.write(f"note: a result for {row['path']}, which is no input of this run", file=sys.stderr)
                    continue
                if key in done:
                    duplicates += 1  # a retried task's row: its outputs are already written
                    continue
                done.add(key)
                job = jobs[key]
                bar.update(1)
                if row["error"]:
                    skipped.append(str(row["error"]))
                    tqdm.write(f"skipped: {row['error']}", file=sys.stderr)
                    continue
                for note in filter(None, str(row["notes"]).split("\n")):
                    tqdm.write(f"{job.display}: {note}", file=sys.stderr)
                for target, source in job.targets:
                    _write_once(target, bytes(row["png"]))
                    written += 1
                    if source is not None:
                        manifest.outputs[target.relative_to(out_dir).as_posix()] = source
                        recorded = True
            if recorded:  # once per block: the outputs above are on disk, then recorded
                manifest.save()
        bar.close()
        seconds = time.perf_counter() - start
        missing = sorted(set(jobs) - done)
        skipped += [f"{jobs[k].display}: no result came back from the Ray job" for k in missing]
    _write_report(out_dir, written, skipped, duplicates, seconds)
    print(f"wrote {written} image(s) to {out_dir}; skipped {len(skipped)}", file=sys.stderr)
    for message in skipped:
        print(f"  skipped: {message}", file=sys.stderr)
    return 1 if skipped else 0


def _key_of(path: str, jobs: dict[str, _Job]) -> str | None:
    """The job key of a row's ``path`` as Ray reports it (a URI without its scheme), or None."""
    if path in jobs:
        return path
    for candidate in (os.path.abspath(path), "/" + path.lstrip("/")):
        if candidate in jobs:
            return candidate
    return None


def _write_report(out_dir: Path, written: int, skipped: Sequence[str], duplicates: int, seconds: float) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "written": written,
        "skipped": list(skipped),
        "duplicate_rows_dropped": duplicates,
        "seconds": round(seconds, 3),
    }
    _write_once(out_dir / REPORT_NAME, json.dumps(report, indent=1).encode())
