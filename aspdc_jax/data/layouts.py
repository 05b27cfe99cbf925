"""Finding the (blurred, sharp) pairs of each dataset layout on disk, with clear errors.

Every scanner returns a list of `PairFile` sorted by name and raises FileNotFoundError /
ValueError naming the offending folder or file: a missing folder, a blurred image whose
sharp twin is missing, a list-file entry pointing nowhere. Pixel-level checks (sizes
inside a pair, unreadable files) happen when the builders read the headers / decode.
"""

from __future__ import annotations

import dataclasses
import pathlib

from aspdc_jax.data.imageio import list_images

__all__ = [
    "EXPECTED_LAYOUT",
    "PairFile",
    "check_data_dir",
    "dataset_root",
    "find_root",
    "scan_gopro",
    "scan_hide",
    "scan_paired_folder",
    "scan_realblur",
    "scan_split",
    "scan_unpaired_folder",
    "paired_folder_splits",
]

BLUR_DIR_NAMES = ("blur", "blurred", "input")
SHARP_DIR_NAMES = ("sharp", "gt", "target")

#: Dataset folder names that ``data_dir`` may be or may hold (see `find_root`).
ROOT_NAMES = {"gopro": "GOPRO_Large", "hide": "HIDE_dataset"}

#: What ``data_dir`` must hold, per builder (for the error messages).
EXPECTED_LAYOUT = {
    "gopro": "GOPRO_Large/{train,test}/<scene>/{blur,blur_gamma,sharp}/*.png "
    "(give GOPRO_Large or the folder holding it)",
    "hide": "HIDE_dataset/GT/*.png + HIDE_dataset/test/{test-close-ups,test-long-shot}/*.png "
    "(give HIDE_dataset or the folder holding it)",
    "realblur": "RealBlur_{J,R}_{train,test}_list.txt next to RealBlur-{J,R}_ECC_IMCORR_centroid_itensity_ref/",
    "paired_folder": "blur/ + sharp/ with matching file names, or train/ and test/ each holding blur/ + sharp/",
    "unpaired_folder": "the blurred images, or a blur/ folder holding them",
}


@dataclasses.dataclass(frozen=True)
class PairFile:
    """One pair on disk: ``sharp`` is None for unpaired (blurred-only) data."""

    name: str
    blurred: pathlib.Path
    sharp: pathlib.Path | None
    meta: dict = dataclasses.field(default_factory=dict)


def _require_dir(path: pathlib.Path, what: str) -> pathlib.Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: folder {path} does not exist")
    return path


def find_root(manual_dir: str | pathlib.Path, name: str) -> pathlib.Path:
    """``manual_dir`` itself if it is the dataset folder ``name``, else ``manual_dir/name``."""
    manual_dir = pathlib.Path(manual_dir).expanduser()
    _require_dir(manual_dir, f"data_dir for {name}")
    if manual_dir.name == name or not (manual_dir / name).is_dir():
        return manual_dir
    return manual_dir / name


def dataset_root(builder_name: str, manual_dir: str | pathlib.Path) -> pathlib.Path:
    """The dataset folder that ``manual_dir`` stands for (resolved).

    GoPro and HIDE accept the dataset folder itself or its parent (``/data`` and
    ``/data/GOPRO_Large`` give the same root); other datasets are read from ``manual_dir``.
    """
    manual_dir = pathlib.Path(manual_dir).expanduser()
    if builder_name in ROOT_NAMES:
        manual_dir = find_root(manual_dir, ROOT_NAMES[builder_name])
    return manual_dir.resolve()


def _has_top_level(builder_name: str, root: pathlib.Path) -> bool:
    """Whether ``root`` (a `dataset_root`) holds the first level of the expected layout."""
    if builder_name == "gopro":
        return any((root / s).is_dir() for s in ("train", "test"))
    if builder_name == "hide":
        return (root / "GT").is_dir()
    if builder_name == "realblur":
        return any(root.glob("RealBlur_*_list.txt"))
    if builder_name == "paired_folder":
        return any(_find_sub(folder, BLUR_DIR_NAMES) for folder in (root, root / "train", root / "test"))
    return True  # unpaired_folder: scan_unpaired_folder names what is missing


def check_data_dir(builder_name: str, manual_dir: str | pathlib.Path) -> pathlib.Path:
    """``manual_dir`` resolved, after checking it exists, is not empty and has the layout's
    first level; the error names the layout expected (`EXPECTED_LAYOUT`).

    Deeper problems (a missing split, scene folder or sharp twin) are named by the scanners.
    """
    folder = pathlib.Path(manual_dir).expanduser().resolve()
    what = f"data_dir for {builder_name}"
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{what}: {folder} is a file, not a folder")
    _require_dir(folder, what)
    expected = EXPECTED_LAYOUT.get(builder_name, "the dataset")
    if not any(folder.iterdir()):
        raise FileNotFoundError(f"{what}: folder {folder} is empty; expected {expected}")
    if not _has_top_level(builder_name, dataset_root(builder_name, folder)):
        raise FileNotFoundError(f"{what}: {folder} does not hold the dataset; expected {expected}")
    return folder


def _twin(blurred: pathlib.Path, sharp_dir: pathlib.Path) -> pathlib.Path:
    """Sharp file with the same name (or same stem, any image extension)."""
    same = sharp_dir / blurred.name
    if same.is_file():
        return same
    for cand in list_images(sharp_dir) if sharp_dir.is_dir() else []:
        if cand.stem == blurred.stem:
            return cand
    raise FileNotFoundError(f"blurred image {blurred} has no sharp twin: expected {same}")


def scan_gopro(manual_dir: str | pathlib.Path, split: str, variant: str = "blur") -> list[PairFile]:
    """GOPRO_Large/{train,test}/GOPRxxxx_xx_xx/{blur,blur_gamma,sharp}/NNNNNN.png."""
    if variant not in ("blur", "blur_gamma"):
        raise ValueError(f"GoPro variant must be 'blur' or 'blur_gamma', got {variant!r}")
    root = find_root(manual_dir, "GOPRO_Large")
    split_dir = _require_dir(root / split, f"GoPro {split} split (expected GOPRO_Large/{split})")
    scenes = sorted(p for p in split_dir.iterdir() if p.is_dir())
    if not scenes:
        raise FileNotFoundError(f"GoPro: no scene folders (GOPRxxxx_xx_xx) in {split_dir}")
    pairs = []
    for scene in scenes:
        blur_dir = _require_dir(scene / variant, f"GoPro scene {scene.name}")
        sharp_dir = _require_dir(scene / "sharp", f"GoPro scene {scene.name}")
        for b in list_images(blur_dir):
            pairs.append(PairFile(f"{scene.name}/{b.stem}", b, _twin(b, sharp_dir), {"scene": scene.name}))
    if not pairs:
        raise FileNotFoundError(f"GoPro: no images found under {split_dir}/*/{variant}")
    return pairs


HIDE_SUBSETS = {"test-close-ups": "close-up", "test-long-shot": "long-shot"}


def scan_hide(manual_dir: str | pathlib.Path, split: str = "test") -> list[PairFile]:
    """HIDE_dataset/test/{test-close-ups,test-long-shot}/*.png with HIDE_dataset/GT/<name>.

    ``split="train"`` reads HIDE_dataset/train/*.png (same GT folder).
    """
    root = find_root(manual_dir, "HIDE_dataset")
    gt = _require_dir(root / "GT", "HIDE ground truth (expected HIDE_dataset/GT)")
    pairs = []
    if split == "test":
        test = _require_dir(root / "test", "HIDE test split (expected HIDE_dataset/test)")
        for sub, label in HIDE_SUBSETS.items():
            for b in list_images(_require_dir(test / sub, f"HIDE subset {label}")):
                pairs.append(PairFile(f"{sub}/{b.stem}", b, _twin(b, gt), {"subset": label}))
    elif split == "train":
        for b in list_images(_require_dir(root / "train", "HIDE train split")):
            pairs.append(PairFile(f"train/{b.stem}", b, _twin(b, gt), {"subset": "train"}))
    else:
        raise ValueError(f"HIDE split must be 'train' or 'test', got {split!r}")
    if not pairs:
        raise FileNotFoundError(f"HIDE: no images found for split {split} under {root}")
    return pairs


def scan_realblur(manual_dir: str | pathlib.Path, split: str, variant: str = "J") -> list[PairFile]:
    """RealBlur pairs from the official list file ``RealBlur_{J,R}_{split}_list.txt``.

    Each line is ``gt_path blur_path`` relative to the folder holding the list file (which
    also holds ``RealBlur-J_ECC_IMCORR_centroid_itensity_ref/``). Names are
    ``sceneNNN/blur_M``.
    """
    if variant not in ("J", "R"):
        raise ValueError(f"RealBlur variant must be 'J' or 'R', got {variant!r}")
    root = pathlib.Path(manual_dir).expanduser()
    _require_dir(root, "data_dir for RealBlur")
    list_name = f"RealBlur_{variant}_{split}_list.txt"
    list_file = root / list_name
    if not list_file.is_file():
        raise FileNotFoundError(f"RealBlur-{variant}: list file {list_file} does not exist")
    pairs = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise ValueError(f"{list_file}:{lineno}: expected 'gt_path blur_path', got {line!r}")
        gt, blur = root / parts[0], root / parts[1]
        if not blur.is_file():
            raise FileNotFoundError(f"{list_file}:{lineno}: blurred image {blur} does not exist")
        if not gt.is_file():
            raise FileNotFoundError(
                f"{list_file}:{lineno}: blurred image {blur} has no sharp twin: {gt} does not exist"
            )
        scene = blur.parent.parent.name
        pairs.append(PairFile(f"{scene}/{blur.stem}", blur, gt, {"scene": scene}))
    if not pairs:
        raise ValueError(f"RealBlur-{variant}: list file {list_file} lists no pairs")
    return sorted(pairs, key=lambda p: p.name)


def _find_sub(folder: pathlib.Path, names: tuple[str, ...]) -> pathlib.Path | None:
    for n in names:
        if (folder / n).is_dir():
            return folder / n
    return None


def paired_folder_splits(root: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """Splits of a paired folder: ``root/{train,test}/{blur,sharp}`` or one ``root/{blur,sharp}``.

    A single folder becomes the split "data" (used for both training and evaluation).
    """
    root = _require_dir(pathlib.Path(root).expanduser(), "paired_folder data_dir")
    splits = {s: root / s for s in ("train", "test") if _find_sub(root / s, BLUR_DIR_NAMES)}
    if splits:
        return splits
    if _find_sub(root, BLUR_DIR_NAMES) is None:
        raise FileNotFoundError(
            f"paired_folder: {root} has no blur/ folder (expected {root}/blur + {root}/sharp, "
            f"or {root}/train/blur + {root}/train/sharp)"
        )
    return {"data": root}


def scan_paired_folder(folder: str | pathlib.Path) -> list[PairFile]:
    """``folder/blur/*`` paired by file name (or stem) with ``folder/sharp/*``.

    Accepted folder names: blur|blurred|input and sharp|gt|target.
    """
    folder = pathlib.Path(folder)
    blur_dir = _find_sub(folder, BLUR_DIR_NAMES)
    if blur_dir is None:
        raise FileNotFoundError(f"paired_folder: folder {folder}/blur does not exist")
    sharp_dir = _find_sub(folder, SHARP_DIR_NAMES)
    if sharp_dir is None:
        raise FileNotFoundError(f"paired_folder: folder {folder}/sharp does not exist (needed next to {blur_dir})")
    files = list_images(blur_dir)
    if not files:
        nested = " (sub-folders are not searched)" if any(p.is_dir() for p in blur_dir.iterdir()) else ""
        raise FileNotFoundError(f"paired_folder: no images in {blur_dir}{nested}")
    return _unique_names([PairFile(b.stem, b, _twin(b, sharp_dir), {"file": b.name}) for b in files])


def _unique_names(pairs: list[PairFile]) -> list[PairFile]:
    """``pairs`` unchanged; ValueError if two share a name (``a.jpg`` and ``a.png``)."""
    seen: dict[str, pathlib.Path] = {}
    for p in pairs:
        if p.name in seen:
            raise ValueError(
                f"{seen[p.name]} and {p.blurred} would both be the pair {p.name!r} (same file name "
                "up to the suffix); rename or remove one"
            )
        seen[p.name] = p.blurred
    return pairs


def scan_unpaired_folder(folder: str | pathlib.Path) -> list[PairFile]:
    """Blurred images only: ``folder/*`` (or ``folder/blur/*``), no ground truth."""
    folder = _require_dir(pathlib.Path(folder).expanduser(), "unpaired_folder data_dir")
    sub = _find_sub(folder, BLUR_DIR_NAMES)
    files = list_images(sub if sub is not None and not list_images(folder) else folder)
    if not files:
        raise FileNotFoundError(f"unpaired_folder: no images (.png/.jpg/...) in {folder}")
    return _unique_names([PairFile(b.stem, b, None, {"file": b.name}) for b in files])


def scan_split(
    dataset: str, data_dir: str | pathlib.Path | None, split: str, gopro_variant: str = "blur"
) -> list[PairFile]:
    """The pairs of one split of ``dataset`` (``gopro``, ``hide``, ``realblur_j``,
    ``realblur_r``, ``paired_folder``, ``unpaired_folder``) in the order its store holds them
    (the store of that split is written in this order), without reading any image.

    ``data_dir`` is checked as `check_data_dir` does; a single paired folder (no train/ and
    test/) serves every split. Raises FileNotFoundError / ValueError naming what is missing.
    """
    builder = "realblur" if dataset.startswith("realblur") else dataset
    if builder not in EXPECTED_LAYOUT:
        raise ValueError(f"scan_split: no folder layout for dataset {dataset!r}")
    if data_dir is None:
        raise ValueError(f"dataset {dataset} needs the folder holding it (evaluate.py: --data_dir); got none")
    root = check_data_dir(builder, data_dir)
    if dataset == "gopro":
        return scan_gopro(root, split, gopro_variant)
    if dataset == "hide":
        if split != "test":
            raise ValueError(f"hide: no split {split!r} (it has ['test'])")
        return scan_hide(root, "test")
    if builder == "realblur":
        return scan_realblur(root, split, dataset[-1].upper())
    if dataset == "unpaired_folder":
        return scan_unpaired_folder(root)
    splits = paired_folder_splits(root)
    folder = splits.get(split, splits.get("data"))
    if folder is None:
        raise ValueError(f"paired_folder: no split {split!r} in {root} (it has {sorted(splits)})")
    return scan_paired_folder(folder)
