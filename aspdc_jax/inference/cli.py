"""Deblur image files: ``python -m aspdc_jax.deblur --ckpt DIR INPUTS... --out OUTDIR``.

INPUTS are image files and/or folders (searched recursively for image files, following
links to sub-folders; a link back to a folder being searched is not followed again). Each
result is written to OUTDIR as a PNG named after its input (``photo.jpg`` -> ``photo.png``;
a folder's sub-folders are kept; with several inputs each folder's results go under its name
as given, a link's own name, made distinct as ``pics``, ``pics-2``, ...). Names that would
clash get the input's suffix (``photo.jpg.png``, then ``photo.jpg-2.png``).

OUTDIR keeps a manifest, ``.aspdc-deblur.json``, saying which input (absolute path, size and
modification time) each output was made from, so names stay the same from run to run and an
existing output is skipped only when it was made from the same, unchanged input (a changed
input is deblurred again; ``--overwrite`` redoes everything). An existing output the manifest
does not know is skipped unless ``--overwrite``, and is never credited to an input that only
shares its name: such an input gets a fresh name. An OUTDIR that would overwrite an input is
refused, and an OUTDIR inside an input folder is not searched. Inputs are read by
`aspdc_jax.images.read_image`:

* grayscale, palette and CMYK images are converted to RGB; 16-bit grayscale is scaled to
  8 bit by ``round(v / 257)`` (32-bit integer grayscale too, when its values lie in
  0..65535; other values are refused); 16-bit RGB(A) keeps the high byte (``v >> 8``, as
  Pillow decodes it; within 1 of ``round(v / 257)``); an alpha channel is set aside and put
  back on the output; EXIF orientation is applied;
* a file that is not an image or is truncated/corrupt is reported and skipped, and the run
  goes on. The exit status is 1 if any input was skipped, else 0.

Large images are processed in overlapping tiles (``--tile``) so memory stays bounded.
Also installed as the ``aspdc-deblur`` console script.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from aspdc_jax.allocator import tune_malloc
from aspdc_jax.cli import FlagParser, add_compute_flags, returning_user_errors, show_progress
from aspdc_jax.images import IMAGE_SUFFIXES, ImageReadError, read_image, write_image
from aspdc_jax.inference.ray_data import add_ray_flags, run_ray  # Ray itself is imported by --ray runs only

__all__ = [
    "MANIFEST_NAME",
    "OutputManifest",
    "Source",
    "find_inputs",
    "folder_names",
    "main",
    "plan_outputs",
]

MANIFEST_NAME = ".aspdc-deblur.json"  # in the output folder: which input made each output


def _input_key(path: str | Path) -> str:
    """How the manifest names an input: its absolute path, links not resolved."""
    return os.path.abspath(path)


@dataclasses.dataclass(frozen=True)
class Source:
    """The input an output was made from: absolute path, and its size and mtime then."""

    input: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | Path) -> Source | None:
        """The input as it is now; None if it cannot be stat'ed (it is then read and reported)."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        return cls(_input_key(path), st.st_size, st.st_mtime_ns)


class OutputManifest:
    """The output folder's record (``MANIFEST_NAME``) of the input each output came from.

    ``outputs`` maps each output (POSIX path relative to the folder) to its `Source`;
    ``folders`` maps each per-folder sub-folder name (several inputs) to the input folder
    (absolute path) whose results it holds. Entries whose output file is gone are dropped
    on load, and so are sub-folder names no recorded output lies in. `record` saves the
    file atomically (temporary file + rename) after each output, so a crash loses no entry
    for an output already written.
    """

    def __init__(self, out_dir: str | Path) -> None:
        """Loads ``out_dir``'s manifest (empty if there is none).

        Raises:
          ValueError: the manifest is not valid JSON of the expected layout.
        """
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / MANIFEST_NAME
        self.outputs: dict[str, Source] = {}
        self.folders: dict[str, str] = {}
        if not self.path.is_file():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            outputs = {
                str(k): Source(str(v["input"]), int(v["size"]), int(v["mtime_ns"])) for k, v in data["outputs"].items()
            }
            folders = {str(k): str(v) for k, v in data.get("folders", {}).items()}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
            raise ValueError(
                f"{self.path} is not a valid deblur manifest ({err!r}); delete it to start a new "
                "one (existing outputs are then kept, and skipped unless --overwrite)"
            ) from err
        self.outputs = {k: v for k, v in outputs.items() if (self.out_dir / k).is_file()}
        self.folders = {k: v for k, v in folders.items() if k in self._top_names()}

    def _top_names(self) -> set[str]:
        return {name.split("/", 1)[0] for name in self.outputs}

    def _key(self, target: Path) -> str:
        return Path(target).relative_to(self.out_dir).as_posix()

    def source(self, target: Path) -> Source | None:
        """The recorded source of the output file ``target`` (a path under the folder), or None."""
        return self.outputs.get(self._key(target))

    def targets_by_input(self) -> dict[str, list[Path]]:
        """The recorded outputs of each input (absolute path), in name order."""
        index: dict[str, list[Path]] = {}
        for name, src in sorted(self.outputs.items()):
            index.setdefault(src.input, []).append(self.out_dir / name)
        return index

    def record(self, target: Path, source: Source) -> None:
        """Records that ``target`` was made from ``source`` and saves the manifest."""
        self.outputs[self._key(target)] = source
        self.save()

    def save(self) -> None:
        """Writes the manifest atomically; sub-folder names with no recorded output are left out."""
        tops = self._top_names()
        data = {
            "version": 1,
            "outputs": {k: dataclasses.asdict(v) for k, v in sorted(self.outputs.items())},
            "folders": {k: v for k, v in sorted(self.folders.items()) if k in tops},
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.out_dir, prefix=f"{MANIFEST_NAME}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            Path(tmp).unlink(missing_ok=True)


def _link_name(folder: Path) -> str:
    """A folder's name as given (a symlink's own name, not its target's)."""
    return Path(os.path.abspath(folder)).name or folder.resolve().name or "root"


def folder_names(inputs: Sequence[str | Path], known: Mapping[str, str] | None = None) -> dict[str, str]:
    """The output sub-folder of each input folder when several inputs are given.

    A folder keeps the name ``known`` (sub-folder -> input folder, from the manifest) gives it;
    a new one gets its name as given (a link's own name), made distinct from the names
    already used by appending ``-2``, ``-3``, ...: ``a/pics b/pics`` -> ``pics``, ``pics-2``.
    With a single input there are no sub-folders: returns {}. Keys are absolute paths.
    """
    if len(inputs) < 2:
        return {}
    known = dict(known or {})
    by_folder = {folder: name for name, folder in known.items()}
    used = set(known)
    names: dict[str, str] = {}
    for entry in map(Path, inputs):
        key = _input_key(entry)
        if not entry.is_dir() or key in names:
            continue
        name = by_folder.get(key)
        if name is None:
            base = name = _link_name(entry)
            k = 1
            while name in used:
                k += 1
                name = f"{base}-{k}"
            used.add(name)
        names[key] = name
    return names


def _walk_images(folder: Path, skip: Path | None, rejected: list[Path] | None = None) -> list[Path]:
    """Image files under ``folder``, following links to sub-folders, sorted by relative path.
    Other files (not hidden) are appended to ``rejected``.

    A link to a folder that is already being searched above it (a cycle) is reported on
    stderr and not followed. Folders under ``skip`` (the resolved output folder) are not
    searched, unless ``folder`` itself lies in it (``--out`` is a parent of the input).
    """
    if skip is not None and Path(os.path.realpath(folder)).is_relative_to(skip):
        skip = None
    found: list[Path] = []
    chains: dict[str, frozenset[str]] = {str(folder): frozenset({os.path.realpath(folder)})}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        chain = chains.pop(dirpath)
        keep = []
        for name in sorted(dirnames):
            sub = os.path.join(dirpath, name)
            real = os.path.realpath(sub)
            if real in chain:
                print(f"note: {sub} links back to {real}, which is being searched; not followed again", file=sys.stderr)
            elif skip is None or not Path(real).is_relative_to(skip):
                chains[sub] = chain | {real}
                keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            f = Path(dirpath, name)
            if not f.is_file() or (skip is not None and Path(os.path.realpath(f)).is_relative_to(skip)):
                continue
            if f.suffix.lower() in IMAGE_SUFFIXES:
                found.append(f)
            elif rejected is not None and not name.startswith("."):
                rejected.append(f)
    return sorted(found, key=lambda f: f.relative_to(folder))


def find_inputs(
    inputs: Sequence[str | Path],
    exclude: str | Path | None = None,
    names: Mapping[str, str] | None = None,
    rejected: list[Path] | None = None,
) -> Iterator[tuple[Path, Path]]:
    """Yields ``(file, output relative path)`` for files and folders (recursive).

    A file given directly yields ``name.png``; a file found under a folder keeps its path
    relative to that folder, under the folder's sub-folder name when several inputs are
    given (``deblur in1 in2`` -> ``in1/a.png``, ``in2/a.png``). The sub-folder names are
    ``names`` (absolute folder path -> name), by default `folder_names` of the inputs.
    Links to sub-folders are followed (see `_walk_images`). Files in folders are filtered
    by image suffix; files named directly are always tried. Files under ``exclude`` (the
    output folder, if it lies inside an input folder) are not searched. Files in folders
    without an image suffix (not hidden ones) are appended to ``rejected``.

    Raises:
      FileNotFoundError: an input does not exist.
    """
    skip = Path(exclude).resolve() if exclude is not None else None
    names = folder_names(inputs) if names is None else names
    for entry in map(Path, inputs):
        if entry.is_dir():
            prefix = Path(names.get(_input_key(entry), _link_name(entry))) if len(inputs) > 1 else Path()
            for f in _walk_images(entry, skip, rejected):
                yield f, prefix / f.relative_to(entry).with_suffix(".png")
        elif entry.is_file():
            yield entry, Path(entry.name).with_suffix(".png")
        else:
            raise FileNotFoundError(f"input {entry} does not exist")


def _candidates(default: Path, input_name: str) -> Iterator[Path]:
    """``a.png``, then ``a.jpg.png``, ``a.jpg-2.png``, ``a.jpg-3.png``, ... for input ``a.jpg``."""
    yield default
    yield default.with_name(input_name + ".png")
    k = 2
    while True:
        yield default.with_name(f"{input_name}-{k}.png")
        k += 1


def _free_for(
    candidate: Path,
    key: str,
    taken: set[Path],
    manifest: OutputManifest,
    claimants: Mapping[Path, set[str]],
    overwrite: bool,
) -> bool:
    """Whether output ``candidate`` may be given to the input ``key`` (see `plan_outputs`)."""
    resolved = candidate.resolve()
    if resolved in taken:
        return False
    source = manifest.source(candidate)
    if source is not None:
        return source.input == key
    if overwrite or not candidate.exists():
        return True
    return claimants.get(resolved, set()) <= {key}  # an unknown file: no other input claims it


def plan_outputs(
    files: Sequence[tuple[Path, Path]],
    out_dir: str | Path,
    manifest: OutputManifest | None = None,
    overwrite: bool = False,
) -> list[tuple[Path, Path]]:
    """``(input, output file)`` for every input: distinct outputs, none of them an input.

    An input keeps the output the manifest (default: ``out_dir``'s) recorded for it in the
    same sub-folder. Other inputs take the first free name of ``a.png``, ``a.jpg.png``,
    ``a.jpg-2.png``, ... (in input order). A name is not free if it is already planned, if
    the manifest records it for another input, or (without ``overwrite``) if it is an
    existing file the manifest does not know and another input of this run would also be
    named so by default: the file cannot be credited to either, so both get fresh names.

    Raises:
      ValueError: an output would replace one of the input files (``--out`` is an input
        folder holding PNGs).
    """
    out_dir = Path(out_dir)
    manifest = OutputManifest(out_dir) if manifest is None else manifest
    inputs = {path.resolve() for path, _ in files}
    claimants: dict[Path, set[str]] = {}  # default output -> the inputs named so by default
    for path, rel in files:
        claimants.setdefault((out_dir / rel).resolve(), set()).add(_input_key(path))
    recorded = manifest.targets_by_input()
    taken: set[Path] = set()
    plan = []
    for path, rel in files:
        key = _input_key(path)
        default = out_dir / rel
        known = [t for t in recorded.get(key, []) if t.parent == default.parent and t.resolve() not in taken]
        target = (
            known[0]
            if known
            else next(
                c for c in _candidates(default, path.name) if _free_for(c, key, taken, manifest, claimants, overwrite)
            )
        )
        if target.resolve() in inputs:
            raise ValueError(
                f"the output for {path} would replace the input file {target}; choose an --out "
                "folder that holds none of the inputs"
            )
        taken.add(target.resolve())
        plan.append((path, target))
    return plan


def _parse_bucket(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(
        prog="python -m aspdc_jax.deblur",
        description=(
            "Deblur images with an ASPDC checkpoint. INPUTS are image files and/or folders "
            "(searched recursively); results are written to --out as PNGs named after the "
            "inputs. Unreadable inputs are reported and skipped (exit status 1)."
        ),
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUTS", help="image files or folders")
    parser.add_argument(
        "--ckpt",
        required=True,
        help="export folder (python -m aspdc_jax.convert) or train.py workdir / phase folder",
    )
    parser.add_argument("--out", required=True, help="output folder (created if needed)")
    parser.add_argument(
        "--tile",
        type=int,
        default=1280,
        help="images with a side larger than this are deblurred in overlapping tiles of this "
        "size (multiple of 4; bounds memory); 0 disables tiling (default: %(default)s)",
    )
    parser.add_argument("--overlap", type=int, default=64, help="tile overlap in pixels (default: %(default)s)")
    parser.add_argument(
        "--bucket",
        type=_parse_bucket,
        default="geometric",
        help="shape-bucket policy: 'geometric', 'exact' or an int multiple (default: %(default)s)",
    )
    add_compute_flags(parser)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="deblur every input again, replacing existing outputs (default: skip an output made "
        "from the same, unchanged input, and any existing file the output folder's manifest "
        "does not know)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--concurrent_schedule",
        action="store_true",
        help="keep XLA's default concurrency-optimised CPU schedule (about 2x the peak memory); "
        "by default the memory-minimising one is selected",
    )
    add_ray_flags(parser)  # --ray, --actors, --gpus_per_actor, --batch_size (inference/ray_data.py)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 all done, 1 some inputs skipped,
    2 bad input: one ``error:`` line)."""
    from aspdc_jax.weights import CheckpointError  # noqa: PLC0415 (--help without JAX)

    args = build_parser().parse_args(argv)
    return returning_user_errors(lambda: _run(args), CheckpointError, traceback=args.verbosity > 0)


def _check_out_dir(args: argparse.Namespace) -> Path:
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"--out {out_dir} exists and is not a folder")
    if any(Path(i).is_dir() and Path(i).resolve() == out_dir.resolve() for i in args.inputs):
        raise ValueError(f"--out {out_dir} is one of the input folders; choose another folder")
    return out_dir


def _run(args: argparse.Namespace) -> int:
    if args.ray:  # the same inputs, names and manifest, deblurred by Ray Data actors
        return run_ray(args)
    from aspdc_jax import inference  # noqa: PLC0415 (--help without JAX)

    tune_malloc()
    if not args.concurrent_schedule:
        inference.use_low_memory_cpu_scheduler()
    out_dir = _check_out_dir(args)
    manifest = OutputManifest(out_dir)
    names = folder_names(args.inputs, manifest.folders)
    rejected: list[Path] = []
    files = list(find_inputs(args.inputs, exclude=out_dir, names=names, rejected=rejected))
    plan = plan_outputs(files, out_dir, manifest, overwrite=args.overwrite)
    not_images = [f"{f}: not an image (suffix {f.suffix or 'none'})" for f in rejected]
    if not plan:
        raise FileNotFoundError("no image files found in the inputs" + "".join(f"; {m}" for m in not_images))
    manifest.folders.update({name: folder for folder, name in names.items()})
    deblurrer = inference.load(
        args.ckpt,
        bucket=args.bucket,
        dtype=args.dtype,
        tile=args.tile or None,
        overlap=args.overlap,
        self_ensemble=args.self_ensemble,
    )
    written, skipped = _deblur_plan(plan, deblurrer, manifest, args)
    skipped = not_images + skipped
    print(f"wrote {written} image(s) to {out_dir}; skipped {len(skipped)}", file=sys.stderr)
    for message in skipped:
        print(f"  skipped: {message}", file=sys.stderr)
    return 1 if skipped else 0


def _todo(
    plan: Sequence[tuple[Path, Path]], manifest: OutputManifest, overwrite: bool
) -> list[tuple[Path, Path, Source | None]]:
    """The (input, output, input's `Source` now) of ``plan`` to deblur: all with
    ``overwrite``, else those without an output or whose output was made from a different
    or changed input."""
    todo = []
    for path, target in plan:
        source, recorded = Source.of(path), manifest.source(target)
        if target.exists() and not overwrite:
            if recorded is None:
                print(f"exists, skipped (use --overwrite): {target}", file=sys.stderr)
                continue
            if recorded == source:
                message = f"exists, made from this unchanged input, skipped (use --overwrite to redo): {target}"
                print(message, file=sys.stderr)
                continue
            print(f"{path}: changed since {target} was made from it; deblurring it again", file=sys.stderr)
        todo.append((path, target, source))
    return todo


def _deblur_plan(plan, deblurrer, manifest: OutputManifest, args: argparse.Namespace) -> tuple[int, list[str]]:
    """Deblurs every (input, output) of ``plan`` that needs it; (written, skip reasons).

    Three stages overlap: `Deblurrer.deblur_stream` reads and decodes ahead in threads while
    the device runs, and PNG encoding and writing run in a writer thread. The manifest
    records each output, in order, once its file is written."""
    from tqdm import tqdm  # noqa: PLC0415 (--help without it)

    todo = _todo(plan, manifest, args.overwrite)
    skipped: list[str] = []
    written: collections.deque[tuple[Future[None], Path, Source | None]] = collections.deque()
    count = 0
    stream = deblurrer.deblur_stream(todo, read=lambda pair: read_image(pair[0]))
    bar = tqdm(
        stream, total=len(todo), unit="img", desc="deblur", disable=not show_progress(not args.quiet), file=sys.stderr
    )
    with ThreadPoolExecutor(1, thread_name_prefix="aspdc-write") as writer:
        for result in bar:
            (path, target, source), error = result.item, result.error
            if error is not None:
                if not isinstance(error, ImageReadError):
                    raise error
                skipped.append(str(error))
                tqdm.write(f"skipped: {error}", file=sys.stderr)
                continue
            for note in result.image.notes:
                tqdm.write(f"{path}: {note}", file=sys.stderr)
            written.append((writer.submit(write_image, target, result.output, result.image.alpha), target, source))
            while written and (written[0][0].done() or len(written) > 2):
                count += _record(written.popleft(), manifest)
        while written:
            count += _record(written.popleft(), manifest)
    return count, skipped


def _record(entry: tuple[Future[None], Path, Source | None], manifest: OutputManifest) -> int:
    """Waits for one output's write (re-raising its error) and records it in the manifest."""
    future, target, source = entry
    future.result()
    if source is not None:
        manifest.record(target, source)
    return 1


if __name__ == "__main__":
    sys.exit(main())
