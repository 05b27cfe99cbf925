"""grain input pipeline and evaluation pairs.

Training stream (`make_train_loader`)::

    range(n) -> shuffle(seed, reshuffled every epoch) -> repeat forever
      -> tag with the global position i -> shard [process_index::process_count]
      -> map(example i)  -> batch(global_batch // process_count) -> worker processes

- synthetic: example i is a fresh blur (new trajectory, objects, noise) of a random crop
  (plus random flip/transpose) of a random training photo, all drawn from
  ``default_rng([seed, i])``; n = ``config.data.epoch_size``.
- stores (GoPro, HIDE, RealBlur, paired folders): example i reads record ``perm[i]`` and
  cuts the same random window, with the same flip/transpose, from both images; only the
  PNG tiles under the window are decoded.

Everything random is a function of (seed, i), so the stream is identical with any number
of workers and the iterator state (`get_state()` / `set_state()`) resumes at the same
example.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import grain
import jax
import numpy as np
from absl import flags

from aspdc_jax.data import imageio, synthetic
from aspdc_jax.data.settings import DATASETS, DataSettings

__all__ = [
    "DATASETS",
    "DataSettings",
    "EvalPair",
    "EvalPairs",
    "TrainLoader",
    "eval_pairs",
    "make_train_loader",
    "store_for",
]


@dataclasses.dataclass(frozen=True)
class EvalPair:
    """One evaluation image: uint8 (H, W, 3) ``blurred``, ``sharp`` (None if no ground truth)."""

    name: str
    blurred: np.ndarray
    sharp: np.ndarray | None
    meta: dict


@dataclasses.dataclass
class EvalPairs:
    """An iterator of `EvalPair` that knows how many it yields (for progress bars)."""

    count: int
    pairs: Iterator[EvalPair]

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[EvalPair]:
        return self.pairs

    def __next__(self) -> EvalPair:
        return next(self.pairs)


def _settings(data: DataSettings, caller: str) -> DataSettings:
    """``data`` itself; a TypeError for anything else (e.g. a ConfigDict: build the
    settings once with ``DataSettings.from_config(config.data)``)."""
    if not isinstance(data, DataSettings):
        raise TypeError(
            f"{caller} takes DataSettings, got {type(data).__name__}; build them with "
            "aspdc_jax.data.DataSettings.from_config(config.data) (or aspdc_jax.data.settings.defaults())"
        )
    return data


def _blur_config(data: DataSettings) -> synthetic.SyntheticBlurConfig:
    return synthetic.SyntheticBlurConfig(
        strength=data.synthetic_strength,
        max_camera_blur=data.synthetic_max_blur,
        sharp_probability=data.synthetic_sharp_probability,
        object_probability=data.synthetic_object_probability,
        noise_sigma=data.synthetic_noise_sigma,
        gamma=data.synthetic_gamma,
        saturation_probability=data.synthetic_saturation_probability,
        jpeg_probability=data.synthetic_jpeg_probability,
    )


def store_for(data: DataSettings, split: str | None = None):
    """Prepare (or reuse) the TFDS store of a non-synthetic dataset; returns the builder.

    With ``split`` ("train" | "test"), GoPro and RealBlur get a store of that split alone
    (evaluating on the test set never encodes the training set); other datasets, and
    ``split=None``, store every split on disk.
    """
    name = _settings(data, "store_for").dataset
    if name == "synthetic":
        raise ValueError("the synthetic dataset has no store here; use eval_pairs / make_train_loader")
    config = None
    builder_name = name
    if name == "gopro":
        config = data.gopro_variant
    elif name.startswith("realblur"):
        builder_name, config = "realblur", name[-1].upper()
    from aspdc_jax.data import builders  # noqa: PLC0415 (tensorflow_datasets only for stores)

    if config is not None and split is not None:
        if split not in ("train", "test"):
            raise ValueError(f"{name} has the splits 'train' and 'test', got {split!r}")
        config = f"{config}_{split}"
    return builders.prepare(builder_name, manual_dir=data.data_dir, tfds_dir=data.tfds_dir, config=config)


def _split_of(builder, wanted: str) -> str:
    splits = list(builder.info.splits.keys())
    if wanted in splits:
        return wanted
    if "data" in splits:  # a single paired folder serves as train and test
        return "data"
    raise ValueError(f"{builder.name}: no split {wanted!r} in the prepared store (it has {splits})")


# ----------------------------------------------------------------------------- transforms


def _with_index(index: int, record: int) -> tuple[int, int]:
    return index, record


class SyntheticExample:
    """(global index, unused) -> fresh synthetic pair {"blurred", "sharp"} uint8 (c, c, 3).

    With probability ``scene_probability`` the scene is a fresh procedural one
    (`synthetic.dead_leaves_scene`), otherwise a random crop of a training photo.
    """

    def __init__(
        self,
        photo_dir: str | None,
        crop_size: int,
        seed: int,
        blur: synthetic.SyntheticBlurConfig,
        scales: tuple[float, ...] = (1.0,),
        scene_probability: float = 0.0,
    ):
        self.photo_dir, self.crop_size, self.seed, self.blur = photo_dir, crop_size, seed, blur
        self.scales = tuple(scales)
        self.scene_probability = float(scene_probability)
        self._photos: list | None = None

    def __getstate__(self):
        return dict(self.__dict__, _photos=None)  # workers reload the photos themselves

    def photos(self) -> list:
        if self._photos is None:
            photos = synthetic.photo_source(self.photo_dir, "train")
            self._photos = synthetic.rescaled_photos(photos, self.scales, min_side=self.crop_size)
        return self._photos

    def __call__(self, item: tuple[int, int]) -> dict[str, np.ndarray]:
        index, _ = item
        rng = np.random.default_rng([self.seed, 0x5EED, index])
        if rng.uniform() < self.scene_probability:
            textures = synthetic.builtin_textures() if self.photo_dir is None else ()
            blurred, sharp, _ = synthetic.scene_crop_pair(self.crop_size, rng, self.blur, textures)
        else:
            photos = self.photos()
            _, photo = photos[int(rng.integers(len(photos)))]
            blurred, sharp, _ = synthetic.random_crop_pair(photo, self.crop_size, rng, self.blur, augment=True)
        return {"blurred": blurred, "sharp": sharp}


class StoreCrop:
    """(global index, record index) -> the same random crop + flip/transpose of both images."""

    def __init__(self, source, crop_size: int, seed: int, augment: bool):
        self.source, self.crop_size, self.seed, self.augment = source, crop_size, seed, augment

    def __call__(self, item: tuple[int, int]) -> dict[str, np.ndarray]:
        index, record = item
        ex = self.source[int(record)]
        h, w, tile, c = int(ex["height"]), int(ex["width"]), int(ex["tile"]), self.crop_size
        if h < c or w < c:
            raise ValueError(f"example {ex['name'].decode()} is {h}x{w}, smaller than the crop {c}x{c}")
        rng = np.random.default_rng([self.seed, 0xC0DE, index])
        y0, x0 = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
        code = int(rng.integers(0, 8)) if self.augment else 0
        out = {}
        for key in ("blurred", "sharp"):
            window = imageio.decode_window(list(ex[f"{key}_tiles"]), h, w, tile, y0, x0, c, c)
            out[key] = np.ascontiguousarray(synthetic._flip_transpose(window, code))
        return out


# ----------------------------------------------------------------------------- loader


@dataclasses.dataclass
class TrainLoader:
    """Infinite iterable of batches {"blurred", "sharp"}: uint8 (b, crop, crop, 3).

    ``iter(loader)`` gives a grain iterator with ``get_state()`` / ``set_state(state)``.
    ``num_examples`` is the number of training examples per epoch (all processes).
    """

    dataset: grain.IterDataset
    num_examples: int
    batch_size: int
    crop_size: int

    def __iter__(self) -> grain.DatasetIterator:
        return iter(self.dataset)


def _ensure_absl_flags_parsed() -> None:
    # grain worker processes read absl flags; parse them (empty) if the caller did not.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_train_loader(
    data: DataSettings,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> TrainLoader:
    """Training loader for ``data`` (``config.data``, see module doc); this process's shard.

    The batch per process is ``global_batch_size // process_count``: process ``p`` reads
    the examples at global positions ``p, p + process_count, ...`` of the one shuffled
    stream, so the processes' batches are disjoint and together hold the examples of one
    process's global batch. ``process_index`` / ``process_count`` default to JAX's.
    """
    _settings(data, "make_train_loader")
    pc = jax.process_count() if process_count is None else int(process_count)
    pi = jax.process_index() if process_index is None else int(process_index)
    if not 0 <= pi < pc:
        raise ValueError(f"process_index must be in [0, {pc}), got {pi}")
    if global_batch_size <= 0 or global_batch_size % pc:
        raise ValueError(
            f"global_batch_size must be a positive multiple of process_count={pc}, got {global_batch_size}"
        )
    batch = global_batch_size // pc
    crop, name = data.crop_size, data.dataset
    if name == "synthetic":
        photo_dir = data.data_dir
        photos = synthetic.photo_source(photo_dir, "train")
        for pname, photo in photos:
            if min(photo.shape[:2]) < crop:
                raise ValueError(
                    f"photo {pname} is {photo.shape[0]}x{photo.shape[1]}, smaller than the crop {crop}x{crop}; "
                    "lower config.data.crop_size or remove the photo"
                )
        num_examples = data.epoch_size
        scales = synthetic.photo_scales(data.synthetic_photo_scales)
        sides = [min(photo.shape[:2]) for _, photo in photos]
        if not any(round(side * float(s)) >= crop for side in sides for s in scales):
            raise ValueError(
                f"config.data.synthetic_photo_scales {scales}: every rescaled photo is smaller than the crop {crop}"
            )
        scene_p = data.synthetic_scene_probability
        transform: Any = SyntheticExample(photo_dir, crop, seed, _blur_config(data), scales, scene_p)
    elif name in ("hide", "unpaired_folder"):
        raise ValueError(f"dataset {name} is for evaluation only (no training pairs)")
    else:
        builder = store_for(data, split="train")
        split = _split_of(builder, "train")
        too_small = [(n, h, w, f) for n, h, w, f in builder.info.metadata["sizes"][split] if h < crop or w < crop]
        if too_small:
            n, h, w, f = too_small[0]
            raise ValueError(
                f"{len(too_small)} image(s) smaller than the crop {crop}x{crop}, e.g. {f} ({h}x{w}); "
                "lower config.data.crop_size or remove them"
            )
        source = builder.as_data_source(split)
        num_examples = len(source)
        transform = StoreCrop(source, crop, seed, data.augment)
    if num_examples < pc:
        raise ValueError(f"{num_examples} training examples cannot be sharded over {pc} processes")

    ds = grain.MapDataset.range(num_examples).shuffle(seed=seed).repeat(None)
    ds = ds.map_with_index(_with_index)[pi::pc]
    ds = ds.map(transform).batch(batch, drop_remainder=True)
    workers = data.num_workers
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=data.read_threads, prefetch_buffer_size=2 * batch))
    if workers > 0:
        _ensure_absl_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2))
    return TrainLoader(dataset=it, num_examples=num_examples, batch_size=batch, crop_size=crop)


# ----------------------------------------------------------------------------- evaluation


#: The validation split: a fixed, seeded part of the training data (see `eval_pairs`).
VAL_SPLIT = "val"


def synthetic_eval_list(data: DataSettings, split: str = "test") -> list[tuple[str, np.ndarray, np.ndarray, dict]]:
    """The fixed, seeded synthetic pairs (same as the `synthetic_blur` store's test split).

    ``split="val"``: the same kind of pairs made from the *training* photos with another
    seed (the training stream draws fresh random crops and blur, so these exact pairs are
    not trained on, but their photos are)."""
    val = split == VAL_SPLIT
    _settings(data, "synthetic_eval_list")
    return synthetic.synthetic_test_pairs(
        synthetic.photo_source(data.data_dir, "train" if val else split),
        crops_per_photo=data.synthetic_test_crops_per_photo,
        crop_size=data.synthetic_test_crop_size,
        seed=data.synthetic_test_seed + (7919 if val else 0),
        config=_blur_config(data),
    )


def eval_pairs(data: DataSettings, split: str = "test", limit: int | None = None) -> EvalPairs:
    """Full evaluation images in a deterministic (sorted-name) order.

    synthetic: ``synthetic_test_crops_per_photo`` fixed crops (``synthetic_test_crop_size``)
    of each held-out photo, seeded by ``synthetic_test_seed``; other datasets: the prepared
    store's split (prepared on first use). ``split="val"`` is the validation set that
    training selects its best checkpoint on: a fixed, seeded part of the training data
    (synthetic: pairs of the training photos; stores: ``limit`` records of the train split
    drawn with seed 0), never the test split. ``sharp`` is None for unpaired folders.
    The dataset is opened (and checked) here, not on the first ``next``; ``len()`` of the
    result is the number of pairs it yields.
    """
    name = _settings(data, "eval_pairs").dataset
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    if name == "synthetic":
        pairs = synthetic_eval_list(data, split)
        pairs = pairs[:limit] if limit is not None else pairs
        return EvalPairs(len(pairs), (EvalPair(n, b, s, dict(info, dataset="synthetic")) for n, b, s, info in pairs))
    if split == VAL_SPLIT:  # a fixed, seeded sample of the training split
        builder = store_for(data, split="train")
        source = builder.as_data_source(_split_of(builder, "train"))
        count = len(source) if limit is None else min(limit, len(source))
        picked = sorted(np.random.default_rng(0).permutation(len(source))[:count].tolist())
        return EvalPairs(count, _store_pairs(source, picked, name))
    builder = store_for(data, split=split)
    source = builder.as_data_source(_split_of(builder, split))
    count = len(source) if limit is None else min(limit, len(source))
    return EvalPairs(count, _store_pairs(source, range(count), name))


def _store_pairs(source: Any, indices: Iterable[int], name: str) -> Iterator[EvalPair]:
    from aspdc_jax.data import builders  # noqa: PLC0415

    for i in indices:
        ex = source[i]
        meta = json.loads(ex["meta"].decode() if isinstance(ex["meta"], bytes) else ex["meta"])
        meta["dataset"] = name
        pair_name = ex["name"].decode() if isinstance(ex["name"], bytes) else str(ex["name"])
        blurred = builders.decode_example(ex, "blurred")
        if blurred is None:
            raise ValueError(f"{name}: record {pair_name} has no blurred image; prepare the store again")
        yield EvalPair(pair_name, blurred, builders.decode_example(ex, "sharp"), meta)


logging.getLogger("absl").setLevel(logging.WARNING)
