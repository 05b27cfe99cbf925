"""TFDS builders (array_record, read with `as_data_source`; no tensorflow, no tfds.load).

Builders: `gopro` (configs blur / blur_gamma), `hide`, `realblur` (configs J / R),
`paired_folder`, `unpaired_folder`, `synthetic_blur`. Every example holds

- ``blurred_tiles`` / ``sharp_tiles``: the images as row-major PNG tiles (`imageio.TILE`
  px; ``sharp_tiles`` is empty for unpaired data) so random crops decode only what they
  need; `decode_example` turns them back into uint8 (H, W, 3);
- ``height``, ``width``, ``tile`` (int32), ``name`` (text), ``meta`` (JSON text: scene,
  HIDE subset, source files, synthetic parameters ...); HIDE also has ``subset``.

Files are read with Pillow (converted to 8-bit RGB, see `imageio.read_rgb8`) and the PNG
tiles are encoded with Pillow, never with tensorflow. Each builder's DatasetInfo metadata
records the dataset root (`layouts.dataset_root`) and every example's size (``metadata["sizes"][split]`` =
[[name, height, width, blurred file], ...]) so the loader can check crops up front.
Preparing again reuses the written files (TFDS's normal behaviour) unless the folder's
files changed since (names, sizes and modification times are fingerprinted), in which case
the store is prepared again; `prepare` checks the folder first and refuses a store that was
prepared from a different dataset root. GoPro and RealBlur have configs per split
(``blur_test``, ``J_train``, ...: what training and evaluation use, so scoring the test set
never encodes the training set) and per variant (``blur``, ``J``: every split present on
disk).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import pathlib
import shutil
import sys
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from aspdc_jax.data import imageio, layouts, synthetic
from aspdc_jax.progress import show_progress

__all__ = [
    "GoPro",
    "Hide",
    "PairedFolder",
    "RealBlur",
    "SyntheticBlur",
    "SyntheticBlurStoreConfig",
    "UnpairedFolder",
    "decode_example",
    "default_tfds_dir",
    "prepare",
]

_VERSION = tfds.core.Version("1.0.0")


def _quiet_tfds_unless_terminal() -> None:
    """TFDS's preparation bars only on a terminal (see `aspdc_jax.progress.show_progress`)."""
    if not show_progress():
        tfds.disable_progress_bar()


def default_tfds_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def _features(extra: dict | None = None) -> tfds.features.FeaturesDict:
    feats = {
        "blurred_tiles": tfds.features.Tensor(shape=(None,), dtype=np.object_),
        "sharp_tiles": tfds.features.Tensor(shape=(None,), dtype=np.object_),
        "height": tfds.features.Scalar(dtype=np.int32),
        "width": tfds.features.Scalar(dtype=np.int32),
        "tile": tfds.features.Scalar(dtype=np.int32),
        "name": tfds.features.Text(),
        "meta": tfds.features.Text(),
    }
    feats.update(extra or {})
    return tfds.features.FeaturesDict(feats)


def _image_size(path: pathlib.Path) -> tuple[int, int]:
    """(height, width) from the header; ValueError naming the file if unreadable."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    return h, w


def _check_pairs(pairs: list[layouts.PairFile]) -> list[list]:
    sizes = []
    for p in pairs:
        hb = _image_size(p.blurred)
        if p.sharp is not None:
            hs = _image_size(p.sharp)
            if hs != hb:
                raise ValueError(
                    f"pair {p.name}: blurred {p.blurred} is {hb[0]}x{hb[1]} but sharp {p.sharp} is "
                    f"{hs[0]}x{hs[1]} (HxW); the two images of a pair must have the same size"
                )
        sizes.append([p.name, hb[0], hb[1], str(p.blurred)])
    return sizes


def _fingerprint(splits: dict[str, list[layouts.PairFile]]) -> str:
    """Hash of every pair's names, paths, sizes and modification times (detects edits)."""
    h = hashlib.sha1()
    for split in sorted(splits):
        for p in splits[split]:
            for f in (p.blurred, p.sharp):
                st = f.stat() if f is not None else None
                h.update(f"{split}|{p.name}|{f}|{st and st.st_size}|{st and st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _existing_splits(scan, splits: tuple[str, ...]) -> dict[str, list[layouts.PairFile]]:
    """``{split: scan(split)}`` for the splits present on disk; the last error if none is.

    So a download holding only the test split can be evaluated (and one holding only the
    train split trained on); asking for the missing split names it (`pipeline._split_of`).
    """
    found, missing = {}, None
    for split in splits:
        try:
            found[split] = scan(split)
        except FileNotFoundError as err:
            missing = err
    if not found and missing is not None:
        raise missing
    return found


def _split_configs(variants: dict[str, str]) -> list[tfds.core.BuilderConfig]:
    """Per variant: ``<variant>`` (every split on disk), ``<variant>_train``, ``<variant>_test``."""
    configs = []
    for variant, description in variants.items():
        configs.append(tfds.core.BuilderConfig(name=variant, description=description))
        for split in ("train", "test"):
            configs.append(
                tfds.core.BuilderConfig(name=f"{variant}_{split}", description=f"{description}, {split} split only")
            )
    return configs


def _variant_and_splits(config_name: str) -> tuple[str, tuple[str, ...]]:
    """``"blur_gamma_test"`` -> ``("blur_gamma", ("test",))``; ``"J"`` -> ``("J", ("train", "test"))``."""
    for split in ("train", "test"):
        if config_name.endswith("_" + split):
            return config_name[: -len(split) - 1], (split,)
    return config_name, ("train", "test")


def _encode_pair(name: str, blurred: np.ndarray, sharp: np.ndarray | None, meta: dict, where: str) -> dict:
    if sharp is not None and sharp.shape != blurred.shape:
        raise ValueError(
            f"pair {name}: blurred is {blurred.shape[0]}x{blurred.shape[1]} but sharp is "
            f"{sharp.shape[0]}x{sharp.shape[1]} ({where})"
        )
    return {
        "blurred_tiles": np.array(imageio.encode_tiles(blurred), dtype=object),
        "sharp_tiles": np.array(imageio.encode_tiles(sharp) if sharp is not None else [], dtype=object),
        "height": blurred.shape[0],
        "width": blurred.shape[1],
        "tile": imageio.TILE,
        "name": name,
        "meta": json.dumps(meta, sort_keys=True),
    }


def decode_example(example: dict, which: str = "blurred") -> np.ndarray | None:
    """Full uint8 (H, W, 3) image ``which`` ('blurred' | 'sharp') of a stored example."""
    tiles = example[f"{which}_tiles"]
    if len(tiles) == 0:
        return None
    return imageio.decode_tiles(list(tiles), int(example["height"]), int(example["width"]), int(example["tile"]))


class _PairStore(tfds.core.GeneratorBasedBuilder):
    """Common machinery: scan a layout, check headers, write tiled PNG pairs."""

    VERSION = _VERSION
    RELEASE_NOTES = {"1.0.0": "Tiled PNG pairs for aspdc-jax."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the dataset folder as manual_dir (config.data.data_dir)."
    EXTRA_FEATURES: dict = {}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=self.__doc__,
            features=_features(self.EXTRA_FEATURES),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # examples stay in sorted-name order (deterministic eval)
        )

    @abc.abstractmethod
    def _scan(self, manual_dir: pathlib.Path) -> dict[str, list[layouts.PairFile]]:
        """split -> pairs."""

    def _split_generators(self, dl_manager):
        manual_dir = pathlib.Path(dl_manager.manual_dir)
        splits = self._scan(manual_dir)
        self.info.metadata["source"] = str(layouts.dataset_root(self.name, manual_dir))
        self.info.metadata["fingerprint"] = _fingerprint(splits)
        self.info.metadata["sizes"] = {s: _check_pairs(p) for s, p in splits.items()}
        return {s: self._generate_examples(p) for s, p in splits.items()}

    def _generate_examples(self, pairs: list[layouts.PairFile]) -> Iterator[tuple[str, dict]]:
        for p in pairs:
            blurred = imageio.read_rgb8(p.blurred)
            sharp = imageio.read_rgb8(p.sharp) if p.sharp is not None else None
            ex = _encode_pair(p.name, blurred, sharp, p.meta, f"{p.blurred} vs {p.sharp}")
            for k in self.EXTRA_FEATURES:
                ex[k] = p.meta[k]
            yield p.name, ex


class GoPro(_PairStore):
    """GoPro (Nah et al. 2017): GOPRO_Large/{train,test}/<scene>/{blur,blur_gamma,sharp}."""

    name = "gopro"
    BUILDER_CONFIGS = _split_configs(
        {"blur": "linear-averaged blur (the standard input)", "blur_gamma": "gamma-averaged blur"}
    )

    def _scan(self, manual_dir):
        variant, splits = _variant_and_splits(self.builder_config.name)
        return _existing_splits(lambda s: layouts.scan_gopro(manual_dir, s, variant), splits)


class Hide(_PairStore):
    """HIDE (Shen et al. 2019) test set, with the close-up / long-shot subset per example."""

    name = "hide"
    EXTRA_FEATURES = {"subset": tfds.features.Text()}

    def _scan(self, manual_dir):
        return {"test": layouts.scan_hide(manual_dir, "test")}


class RealBlur(_PairStore):
    """RealBlur (Rim et al. 2020), pairs from the official RealBlur_{J,R}_{train,test}_list.txt."""

    name = "realblur"
    BUILDER_CONFIGS = _split_configs({"J": "camera JPEG images", "R": "raw images (BM3D-denoised)"})

    def _scan(self, manual_dir):
        variant, splits = _variant_and_splits(self.builder_config.name)
        return _existing_splits(lambda s: layouts.scan_realblur(manual_dir, s, variant), splits)


class PairedFolder(_PairStore):
    """Any blur/ + sharp/ folders with matching file names (optionally under train/ and test/)."""

    name = "paired_folder"

    def _scan(self, manual_dir):
        return {s: layouts.scan_paired_folder(f) for s, f in layouts.paired_folder_splits(manual_dir).items()}


class UnpairedFolder(_PairStore):
    """Blurred images only (e.g. RWBI), for qualitative runs; split 'test'."""

    name = "unpaired_folder"

    def _scan(self, manual_dir):
        return {"test": layouts.scan_unpaired_folder(manual_dir)}


@dataclasses.dataclass(eq=False)
class SyntheticBlurStoreConfig(tfds.core.BuilderConfig):
    """Fixed, seeded synthetic pairs; ``photo_dir`` None = the built-in photos."""

    photo_dir: str | None = None
    crop_size: int = 256
    test_crops_per_photo: int = 3
    train_crops_per_photo: int = 0
    seed: int = 0
    strength: float = 1.0
    object_probability: float = 0.3
    noise_sigma: float = 0.01
    gamma: float = 2.2

    def blur_config(self) -> synthetic.SyntheticBlurConfig:
        return synthetic.SyntheticBlurConfig(
            strength=self.strength,
            object_probability=self.object_probability,
            noise_sigma=self.noise_sigma,
            gamma=self.gamma,
        )

    @staticmethod
    def make(**kwargs) -> SyntheticBlurStoreConfig:
        """A config whose name encodes every knob (so different knobs never share files)."""
        key = json.dumps(kwargs, sort_keys=True, default=str)
        return SyntheticBlurStoreConfig(name="s" + hashlib.sha1(key.encode()).hexdigest()[:12], **kwargs)


class SyntheticBlur(tfds.core.GeneratorBasedBuilder):
    """Synthetic camera-shake + object-motion blur of sharp photos (fixed, seeded pairs).

    Split 'test' holds ``test_crops_per_photo`` crops of each held-out photo; 'train' (only
    when ``train_crops_per_photo`` > 0) a fixed pool from the training photos. Training
    itself uses fresh blur per example (see pipeline.py), not this pool.
    """

    name = "synthetic_blur"
    VERSION = _VERSION
    BUILDER_CONFIGS = [SyntheticBlurStoreConfig(name="default")]

    def _info(self):
        return self.dataset_info_from_configs(
            description=self.__doc__, features=_features(), metadata=tfds.core.MetadataDict(), disable_shuffling=True
        )

    def _split_generators(self, dl_manager):
        cfg: SyntheticBlurStoreConfig = self.builder_config
        splits = {"test": cfg.test_crops_per_photo, "train": cfg.train_crops_per_photo}
        self.info.metadata["source"] = str(cfg.photo_dir or "builtin")
        return {s: self._generate_examples(s, n) for s, n in splits.items() if n > 0}

    def _generate_examples(self, split: str, crops: int):
        cfg: SyntheticBlurStoreConfig = self.builder_config
        photos = synthetic.photo_source(cfg.photo_dir, split)
        pairs = synthetic.synthetic_test_pairs(
            photos, crops_per_photo=crops, crop_size=cfg.crop_size, seed=cfg.seed, config=cfg.blur_config()
        )
        for name, blurred, sharp, info in pairs:
            yield name, _encode_pair(name, blurred, sharp, info, name)


_NAMED = {"gopro": GoPro, "hide": Hide, "realblur": RealBlur}
_FOLDERS = {"paired_folder": PairedFolder, "unpaired_folder": UnpairedFolder}


def _source_root(builder_name: str, source: str) -> pathlib.Path:
    """The dataset root a store's recorded ``source`` stands for (the path itself if gone).

    Stores prepared before the root was recorded hold the folder passed in (e.g. the parent
    of GOPRO_Large); this maps both spellings to the same root.
    """
    try:
        return layouts.dataset_root(builder_name, source)
    except FileNotFoundError:
        return pathlib.Path(source)


def _check_same_source(builder: tfds.core.GeneratorBasedBuilder, root: pathlib.Path) -> None:
    """ValueError if the prepared store ``builder`` was prepared from another dataset root."""
    source = builder.info.metadata.get("source")
    if source is not None and _source_root(builder.name, source) != root:
        raise ValueError(
            f"{builder.data_dir} was prepared from {source}, not from data_dir {root}; delete that "
            "folder or give another store folder (train.py: config.data.tfds_dir; evaluate.py: --tfds_dir)"
        )


def _announce(builder: tfds.core.GeneratorBasedBuilder, where: str) -> None:
    """Says that ``builder`` is about to be prepared (TFDS's own "Downloading and preparing"
    is silenced: nothing is downloaded, the files are read)."""
    if not builder.is_prepared():
        print(f"preparing the {builder.name} store {where} (once)", file=sys.stderr, flush=True)


def prepare(
    builder_name: str,
    *,
    manual_dir: str | os.PathLike | None,
    tfds_dir: str | os.PathLike | None = None,
    config: str | tfds.core.BuilderConfig | None = None,
) -> tfds.core.GeneratorBasedBuilder:
    """Prepare (or reuse) one store and return its builder (array_record files).

    gopro/hide/realblur live in ``tfds_dir/<name>/<config>/1.0.0`` (tfds_dir None ->
    $TFDS_DATA_DIR or ~/tensorflow_datasets); paired/unpaired folders in
    ``tfds_dir/folders/<name>-<hash of the folder path>`` so several folders can coexist.

    ``manual_dir`` is checked (exists, not empty, the expected layout, every pair found)
    before anything is prepared or reused. A store remembers its dataset root
    (`layouts.dataset_root`: the parent of GOPRO_Large and GOPRO_Large itself are the
    same dataset) and refuses another one.
    """
    root = pathlib.Path(tfds_dir).expanduser() if tfds_dir else default_tfds_dir()
    if builder_name == "synthetic_blur":
        builder = SyntheticBlur(config=config, data_dir=str(root), file_format="array_record")
        _announce(builder, f"in {builder.data_dir}")
        _quiet_tfds_unless_terminal()
        with contextlib.redirect_stdout(io.StringIO()):
            builder.download_and_prepare()
        return builder
    if builder_name in _FOLDERS:
        cls = _FOLDERS[builder_name]
    elif builder_name in _NAMED:
        cls = _NAMED[builder_name]
    else:
        raise ValueError(f"unknown builder {builder_name!r}")
    if manual_dir is None:
        raise ValueError(
            f"dataset {builder_name} needs the folder holding it (train.py: config.data.data_dir; "
            "evaluate.py: --data_dir); got none"
        )
    manual = layouts.check_data_dir(builder_name, str(manual_dir))
    if builder_name in _FOLDERS:
        root = root / "folders" / f"{builder_name}-{hashlib.sha1(str(manual).encode()).hexdigest()[:10]}"
    builder = cls(config=config, data_dir=str(root), file_format="array_record")
    fingerprint = _fingerprint(builder._scan(manual))  # a missing split / scene / twin is named here
    if builder.is_prepared():
        _check_same_source(builder, layouts.dataset_root(builder_name, manual))
        if builder.info.metadata.get("fingerprint") != fingerprint:  # files added, removed or edited
            logging.getLogger(__name__).warning(
                "%s changed since %s was prepared from it; preparing it again", manual, builder.data_dir
            )
            shutil.rmtree(builder.data_dir)
            builder = cls(config=config, data_dir=str(root), file_format="array_record")
    _announce(builder, f"from {manual} in {builder.data_dir}")
    _quiet_tfds_unless_terminal()
    with contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    return builder
