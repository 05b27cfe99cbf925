"""Data: synthetic blur, TFDS builders on tiny fake trees, bad-data errors, grain pipeline."""

from __future__ import annotations

import os
import pathlib
import shutil
import time

import jax
import numpy as np
import pytest
from PIL import Image

from aspdc_jax.data import builders, eval_pairs, imageio, layouts, make_train_loader, pipeline, synthetic
from aspdc_jax.data.settings import DataSettings, defaults
from aspdc_jax.data.synthetic.__main__ import main as preview_main

# ----------------------------------------------------------------------------- helpers


def _img(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path: pathlib.Path, arr: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def _cfg(**kw) -> DataSettings:
    """configs/default.py's data section at test sizes (photo crops only: no procedural scenes)."""
    small = dict(
        dataset="synthetic",
        crop_size=32,
        num_workers=0,
        epoch_size=40,
        read_threads=1,
        synthetic_scene_probability=0.0,
        synthetic_test_crops_per_photo=2,
        synthetic_test_crop_size=64,
    )
    return defaults().replace(**{**small, **kw})


def _gopro_tree(root: pathlib.Path, h: int = 40, w: int = 72) -> dict:
    truth = {}
    for split in ("train", "test"):
        for s, scene in enumerate(("GOPR0372_07_00", "GOPR0374_11_01")):
            for i in range(2):
                seed = hash((split, s, i)) % 10_000
                sharp = _save(root / "GOPRO_Large" / split / scene / "sharp" / f"{i:06d}.png", _img(h, w, seed))
                blur = _save(root / "GOPRO_Large" / split / scene / "blur" / f"{i:06d}.png", 255 - sharp)
                _save(root / "GOPRO_Large" / split / scene / "blur_gamma" / f"{i:06d}.png", sharp // 2)
                truth[(split, f"{scene}/{i:06d}")] = (blur, sharp)
    return truth


@pytest.fixture(scope="module")
def gopro(tmp_path_factory):
    raw = tmp_path_factory.mktemp("gopro_raw")
    truth = _gopro_tree(raw)
    tfds_dir = tmp_path_factory.mktemp("gopro_tfds")
    return raw, tfds_dir, truth


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_deterministic_sharp_crop_and_fast():
    photo = synthetic.builtin_photos("train")[0][1]
    cfg = synthetic.SyntheticBlurConfig(object_probability=0.0, saturation_probability=0.0)
    a = synthetic.random_crop_pair(photo, 128, np.random.default_rng(3), cfg)
    b = synthetic.random_crop_pair(photo, 128, np.random.default_rng(3), cfg)
    c = synthetic.random_crop_pair(photo, 128, np.random.default_rng(4), cfg)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    # without objects the sharp target is exactly a crop (any dihedral transform) of the photo
    m = cfg.margin()
    src = photo[: 128 + 2 * m, : 128 + 2 * m]
    crop = synthetic.synthesize_blur(src, 128, np.random.default_rng(0), cfg)
    assert np.array_equal(crop[1], src[m : m + 128, m : m + 128])
    # no motion -> blurred is the sharp image up to noise
    still_cfg = synthetic.SyntheticBlurConfig(strength=0, noise_sigma=0, jpeg_probability=0, gamma_jitter=0)
    ms = still_cfg.margin()
    still = synthetic.synthesize_blur(photo[: 128 + 2 * ms, : 128 + 2 * ms], 128, np.random.default_rng(0), still_cfg)
    assert np.array_equal(still[0], still[1])
    times = []
    rng = np.random.default_rng(0)
    for _ in range(5):
        t0 = time.perf_counter()
        synthetic.random_crop_pair(photo, 256, rng)
        times.append(time.perf_counter() - t0)
    assert np.median(times) < 0.2, times  # ~30 ms on an idle core; generous for a shared CPU


def test_synthetic_strength_controls_blur():
    photos = synthetic.builtin_photos("train")
    psnr = {}
    for strength in (0.5, 1.0, 2.0):
        cfg = synthetic.SyntheticBlurConfig(strength=strength, sharp_probability=0.0)
        rng = np.random.default_rng(0)
        vals = [synthetic.psnr_u8(*synthetic.random_crop_pair(photos[i % 4][1], 128, rng, cfg)[:2]) for i in range(16)]
        psnr[strength] = np.mean(vals)
    assert psnr[0.5] > psnr[1.0] > psnr[2.0]


def test_training_stream_covers_the_strength_range():
    """Blurred-vs-sharp PSNR of the default training stream (photos and procedural scenes)
    spans the task: a strong tail below 22 dB, GoPro-like ~26 dB, and nearly sharp pairs."""
    ex = pipeline.SyntheticExample(None, 64, 0, synthetic.SyntheticBlurConfig(), (1.0,), 0.5)
    psnrs = np.array([synthetic.psnr_u8(d["blurred"], d["sharp"]) for d in (ex((i, 0)) for i in range(200))])
    assert np.percentile(psnrs, 10) < 22.0 < 26.0 < np.median(psnrs) < 34.0 < np.percentile(psnrs, 80), psnrs
    assert np.mean(psnrs > 40.0) >= 0.05  # the sharp share: leave sharp content alone
    # the blur length itself is log-uniform over [min_blur, max]: half the blurred
    # examples are shorter than the geometric mean
    cfg = synthetic.SyntheticBlurConfig(sharp_probability=0.0)
    rng = np.random.default_rng(0)
    lengths = np.array([synthetic._blur_length(rng, cfg) for _ in range(4000)])
    assert lengths.min() >= cfg.min_blur and lengths.max() <= cfg.max_camera_blur
    assert abs(np.mean(lengths < np.sqrt(cfg.min_blur * cfg.max_camera_blur)) - 0.5) < 0.03


def test_test_bands_hit_their_psnr_and_membership():
    pairs = synthetic.synthetic_test_pairs(synthetic.builtin_photos("test"), crops_per_photo=3, crop_size=256)
    assert len(pairs) == 36 and len({p[3]["photo"] for p in pairs}) == 4  # >= 4 photos, >= 24 crops
    targets = {"mild": 32.0, "gopro": 26.0, "strong": 23.0}
    for band, target in targets.items():
        members = [p for p in pairs if p[3]["band"] == band]
        assert len(members) == 12 and all(p[0].split("_")[-2] == band for p in members)
        lo, hi = synthetic.BANDS[band]
        assert all(lo - 0.5 <= p[3]["camera_blur_px"] <= hi + 0.5 for p in members), band
        mean = np.mean([synthetic.psnr_u8(p[1], p[2]) for p in members])
        assert abs(mean - target) < 1.5, (band, mean)
    # a prefix (evaluation with a limit) covers every band
    assert {p[3]["band"] for p in pairs[:3]} == set(targets)


def test_sharp_target_is_the_centroid_of_the_blur():
    """A point light blurred by any camera path spreads around its sharp position: the
    centroid of the blurred spot is where the sharp image has the point (within 1 px)."""
    cfg = synthetic.SyntheticBlurConfig(
        min_blur=4,
        max_camera_blur=12,
        sharp_probability=0.0,
        object_probability=0.0,
        noise_sigma=0.0,
        jpeg_probability=0.0,
        saturation_probability=0.0,
        gamma=1.0,
        gamma_jitter=0.0,
    )
    m, s = cfg.margin(), 64
    rng = np.random.default_rng(1)
    kinds = set()
    for _ in range(12):
        src = np.zeros((s + 2 * m, s + 2 * m, 3), np.uint8)
        src[m + 32, m + 32] = 255
        blurred, sharp, info = synthetic.synthesize_blur(src, s, rng, cfg)
        kinds.add(info["path"])
        spot = blurred[..., 0].astype(np.float64)
        yy, xx = np.mgrid[0:s, 0:s]
        centroid = np.array([(yy * spot).sum(), (xx * spot).sum()]) / spot.sum()
        assert np.abs(centroid - 32).max() < 1.0, (info, centroid)
        assert sharp[32, 32, 0] == 255
    assert kinds == set(synthetic.PATH_KINDS)


def test_camera_factors_saturation_noise_jpeg():
    photo = synthetic.builtin_photos("train")[0][1]
    plain = dict(
        sharp_probability=0.0,
        object_probability=0.0,
        noise_sigma=0.0,
        jpeg_probability=0.0,
        saturation_probability=0.0,
        gamma_jitter=0.0,
    )
    src = np.full((64 + 2 * 26, 64 + 2 * 26, 3), 60, np.uint8)
    src[40:50, 40:50] = 255  # a light source
    base = synthetic.SyntheticBlurConfig(**dict(plain, min_blur=6.0))
    b0, s0, _ = synthetic.synthesize_blur(src, 64, np.random.default_rng(0), base)
    hot = synthetic.SyntheticBlurConfig(**dict(plain, min_blur=6.0, saturation_probability=1.0))
    b1, s1, info = synthetic.synthesize_blur(src, 64, np.random.default_rng(0), hot)
    assert info["saturation_gain"] > 1.0 and np.array_equal(s0, s1)  # the sharp image is white there anyway
    # without saturation the blurred light is no longer white; a light brighter than white
    # blooms: clipped after the averaging, it stays white over at least its own area
    assert (b0[..., 0] == 255).sum() < 100 <= (b1[..., 0] == 255).sum()
    noisy = synthetic.SyntheticBlurConfig(**dict(plain, noise_sigma=0.02, strength=0.0))
    m = noisy.margin()
    b2, s2, info = synthetic.synthesize_blur(photo[: 64 + 2 * m, : 64 + 2 * m], 64, np.random.default_rng(0), noisy)
    assert 0 < np.std(b2.astype(float) - s2) < 0.03 * 255 * 1.5 and info["noise_sigma"] > 0
    jpeg = synthetic.SyntheticBlurConfig(**dict(plain, jpeg_probability=1.0, strength=0.0))
    b3, s3, info = synthetic.synthesize_blur(photo[: 64 + 2 * m, : 64 + 2 * m], 64, np.random.default_rng(0), jpeg)
    assert 60 <= info["jpeg_quality"] <= 95 and not np.array_equal(b3, s3) and synthetic.psnr_u8(b3, s3) > 28


def test_builtin_split_is_by_image():
    train = {n for n, _ in synthetic.builtin_photos("train")}
    test = {n for n, _ in synthetic.builtin_photos("test")}
    assert train.isdisjoint(test) and len(test) >= 4
    assert {"motorcycle_left", "motorcycle_right"} <= train  # the stereo pair stays together
    assert set(synthetic.TEXTURE_PHOTOS) <= train


def test_heldout_photos_never_reach_the_training_stream(monkeypatch):
    """Every image the training stream reads (photos at every scale, scene textures) comes
    from the train split: record every built-in file loaded while drawing examples."""
    loaded: list[str] = []
    real = synthetic._load_builtin.__wrapped__
    synthetic._load_builtin.cache_clear()
    synthetic.builtin_textures.cache_clear()

    def spy(name: str) -> np.ndarray:
        loaded.append(name)
        return real(name)

    monkeypatch.setattr(synthetic, "_load_builtin", spy)
    ex = pipeline.SyntheticExample(None, 48, 0, synthetic.SyntheticBlurConfig(), (1.0, 1.5, 2.0), 0.5)
    for i in range(40):
        ex((i, 0))
    assert loaded and set(loaded) <= set(synthetic.BUILTIN_TRAIN_PHOTOS), set(loaded)
    assert not set(loaded) & set(synthetic.BUILTIN_TEST_PHOTOS)
    synthetic.builtin_textures.cache_clear()


def test_synthetic_path_does_not_need_tensorflow_datasets(tmp_path):
    """The built-in data, training and inference import without tensorflow_datasets (only
    the GoPro/HIDE/RealBlur stores need it), e.g. on an accelerator image that lacks it."""
    import subprocess
    import sys

    (tmp_path / "tensorflow_datasets").mkdir()
    (tmp_path / "tensorflow_datasets" / "__init__.py").write_text("raise ImportError('blocked')\n")
    code = (
        "import aspdc_jax.data, aspdc_jax.training, aspdc_jax.inference\n"
        "from aspdc_jax.data import synthetic\n"
        "assert len(synthetic.builtin_photos('test')) == 4\n"
        "import sys; assert 'tensorflow_datasets' not in sys.modules\n"
    )
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": f"{tmp_path}:{root}", "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_synthetic_eval_pairs_fixed_and_match_store(tmp_path):
    cfg = _cfg(tfds_dir=str(tmp_path))
    a = list(eval_pairs(cfg))
    b = list(eval_pairs(cfg))
    assert len(a) == 24 and a[0].blurred.shape == (64, 64, 3)  # 4 photos x 3 bands x 2 crops
    assert [p.name for p in a[:4]] == [
        "astronaut_mild_00",
        "astronaut_gopro_00",
        "astronaut_strong_00",
        "chelsea_mild_00",
    ]
    assert [p.meta["band"] for p in a[:3]] == ["mild", "gopro", "strong"]
    assert all(np.array_equal(x.blurred, y.blurred) and np.array_equal(x.sharp, y.sharp) for x, y in zip(a, b))
    assert len(list(eval_pairs(cfg, limit=3))) == 3
    store_cfg = builders.SyntheticBlurStoreConfig.make(crop_size=64, test_crops_per_photo=2)
    builder = builders.prepare("synthetic_blur", manual_dir=None, tfds_dir=tmp_path, config=store_cfg)
    src = builder.as_data_source("test")
    assert [src[i]["name"].decode() for i in range(len(src))] == [p.name for p in a]
    assert np.array_equal(builders.decode_example(src[2], "blurred"), a[2].blurred)
    assert np.array_equal(builders.decode_example(src[2], "sharp"), a[2].sharp)


def test_synthetic_user_photo_folder(tmp_path):
    for i in range(5):
        _save(tmp_path / f"p{i}.png", _img(80, 90, i))
    assert [n for n, _ in synthetic.photo_source(str(tmp_path), "test")] == ["p4.png"]
    assert len(synthetic.photo_source(str(tmp_path), "train")) == 4
    pairs = list(eval_pairs(_cfg(data_dir=str(tmp_path), synthetic_test_crop_size=48)))
    assert [p.name for p in pairs] == [
        "p4_mild_00",
        "p4_gopro_00",
        "p4_strong_00",
        "p4_mild_01",
        "p4_gopro_01",
        "p4_strong_01",
    ]


def test_preview_cli(tmp_path):  # python -m aspdc_jax.data.synthetic
    out = tmp_path / "preview.png"
    assert preview_main(["--preview", str(out), "--rows", "2", "--crop-size", "64"]) == 0
    assert Image.open(out).size == (64 * 2 + 4, 64 * 2 + 4)
    # One photo of your own is enough for a preview; one too small is named.
    (tmp_path / "mine").mkdir()
    _save(tmp_path / "mine" / "big.png", _img(80, 90, 1))
    assert (
        preview_main(["--preview", str(out), "--rows", "1", "--crop-size", "64", "--photo-dir", str(tmp_path / "mine")])
        == 0
    )
    _save(tmp_path / "mine" / "small.png", _img(30, 90, 1))
    assert preview_main(["--preview", str(out), "--crop-size", "64", "--photo-dir", str(tmp_path / "mine")]) == 2
    with pytest.raises(SystemExit):
        preview_main(["--preview", str(out), "--rows", "0"])


@pytest.mark.parametrize(
    "where, message",
    [
        ("missing/preview.png", "the folder .*missing does not exist"),
        ("", "is a folder; give a file name"),
        ("preview.txt", "give an image file name ending in .png"),
    ],
)
def test_preview_cli_bad_output_path_fails_before_work(tmp_path, capsys, where, message):
    import re

    assert preview_main(["--preview", str(tmp_path / where), "--rows", "1", "--crop_size", "64"]) == 2
    captured = capsys.readouterr()
    assert re.search(message, captured.err), captured.err
    assert "PSNR" not in captured.out  # nothing was synthesised first


# ----------------------------------------------------------------------------- image IO


def test_read_rgb8_conversions(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    assert np.array_equal(imageio.read_rgb8(tmp_path / "g.png"), np.repeat(gray[..., None], 3, 2))
    rgba = _img(3, 4, 0)
    rgba = np.concatenate([rgba, np.full((3, 4, 1), 7, np.uint8)], 2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.array_equal(imageio.read_rgb8(tmp_path / "a.png"), rgba[..., :3])  # alpha discarded
    g16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    out = imageio.read_rgb8(tmp_path / "g16.png")
    assert out.dtype == np.uint8 and out.shape == (3, 4, 3)
    assert np.array_equal(out[..., 0], np.rint(g16 / 257).astype(np.uint8))
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="bad.png"):
        imageio.read_rgb8(tmp_path / "bad.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        imageio.read_rgb8(tmp_path / "missing.png")


def test_tiles_roundtrip_and_window():
    img = _img(300, 270, 1)
    tiles = imageio.encode_tiles(img)
    assert len(tiles) == 3 * 3
    assert np.array_equal(imageio.decode_tiles(tiles, 300, 270, imageio.TILE), img)
    assert np.array_equal(
        imageio.decode_window(tiles, 300, 270, imageio.TILE, 101, 127, 150, 140), img[101:251, 127:267]
    )
    with pytest.raises(ValueError, match="outside"):
        imageio.decode_window(tiles, 300, 270, imageio.TILE, 200, 0, 150, 10)


# ----------------------------------------------------------------------------- builders


def test_gopro_builder_both_variants_and_reuse(gopro):
    raw, tfds_dir, truth = gopro
    b = builders.prepare("gopro", manual_dir=raw, tfds_dir=tfds_dir, config="blur")
    assert b.info.splits["train"].num_examples == 4 and b.info.splits["test"].num_examples == 4
    pairs = list(eval_pairs(_cfg(dataset="gopro", data_dir=str(raw), tfds_dir=str(tfds_dir))))
    assert [p.name for p in pairs] == sorted(n for s, n in truth if s == "test")
    for p in pairs:
        blur, sharp = truth[("test", p.name)]
        assert np.array_equal(p.blurred, blur) and np.array_equal(p.sharp, sharp)
        assert p.meta["scene"] == p.name.split("/")[0]
    files = sorted(pathlib.Path(b.data_dir).glob("*.array_record*"))
    stamps = [f.stat().st_mtime_ns for f in files]
    builders.prepare("gopro", manual_dir=raw, tfds_dir=tfds_dir, config="blur")  # reuses
    assert [f.stat().st_mtime_ns for f in files] == stamps
    g = builders.prepare("gopro", manual_dir=raw, tfds_dir=tfds_dir, config="blur_gamma")
    ex = g.as_data_source("test")[0]
    _, sharp = truth[("test", ex["name"].decode())]
    assert np.array_equal(builders.decode_example(ex, "blurred"), sharp // 2)


def test_hide_builder_records_subset(tmp_path):
    root = tmp_path / "HIDE_dataset"
    for sub, n in (("test-close-ups", 2), ("test-long-shot", 1)):
        for i in range(n):
            sharp = _save(root / "GT" / f"{sub}{i}.png", _img(24, 40, i))
            _save(root / "test" / sub / f"{sub}{i}.png", 255 - sharp)
    pairs = list(eval_pairs(_cfg(dataset="hide", data_dir=str(tmp_path), tfds_dir=str(tmp_path / "tfds"))))
    assert [p.meta["subset"] for p in pairs] == ["close-up", "close-up", "long-shot"]
    assert all(np.array_equal(p.blurred, 255 - p.sharp) for p in pairs)
    src = builders.prepare("hide", manual_dir=tmp_path, tfds_dir=tmp_path / "tfds").as_data_source("test")
    assert src[2]["subset"] == b"long-shot"
    with pytest.raises(ValueError, match="evaluation only"):
        make_train_loader(
            _cfg(dataset="hide", data_dir=str(tmp_path), tfds_dir=str(tmp_path / "tfds")), global_batch_size=1, seed=0
        )


@pytest.mark.parametrize("variant", ["J", "R"])
def test_realblur_builder_uses_list_files(tmp_path, variant):
    folder = f"RealBlur-{variant}_ECC_IMCORR_centroid_itensity_ref"
    lines = {"train": [], "test": []}
    for k, (split, scene) in enumerate([("train", "scene001"), ("train", "scene002"), ("test", "scene003")]):
        sharp = _save(tmp_path / folder / scene / "gt" / "gt_1.png", _img(20, 36, k))
        _save(tmp_path / folder / scene / "blur" / "blur_1.png", 255 - sharp)
        lines[split].append(f"{folder}/{scene}/gt/gt_1.png {folder}/{scene}/blur/blur_1.png")
    # an unlisted pair must be ignored
    _save(tmp_path / folder / "scene009" / "blur" / "blur_1.png", _img(20, 36, 9))
    for split, ls in lines.items():
        (tmp_path / f"RealBlur_{variant}_{split}_list.txt").write_text("\n".join(ls) + "\n")
    cfg = _cfg(
        dataset=f"realblur_{variant.lower()}", data_dir=str(tmp_path), tfds_dir=str(tmp_path / "tfds"), crop_size=16
    )
    pairs = list(eval_pairs(cfg))
    assert [p.name for p in pairs] == ["scene003/blur_1"] and np.array_equal(pairs[0].blurred, 255 - pairs[0].sharp)
    assert make_train_loader(cfg, global_batch_size=2, seed=0).num_examples == 2


def test_paired_and_unpaired_folders(tmp_path):
    single = tmp_path / "single"
    for i in range(3):
        sharp = _save(single / "sharp" / f"im{i}.png", _img(30, 34, i))
        _save(single / "blur" / f"im{i}.png", 255 - sharp)
    pairs = list(eval_pairs(_cfg(dataset="paired_folder", data_dir=str(single), tfds_dir=str(tmp_path / "t"))))
    assert [p.name for p in pairs] == ["im0", "im1", "im2"]
    split = tmp_path / "split"
    for s, n in (("train", 3), ("test", 1)):
        for i in range(n):
            sharp = _save(split / s / "sharp" / f"{s}{i}.png", _img(30, 34, i))
            _save(split / s / "blur" / f"{s}{i}.png", 255 - sharp)
    cfg = _cfg(dataset="paired_folder", data_dir=str(split), tfds_dir=str(tmp_path / "t"), crop_size=16)
    assert [p.name for p in eval_pairs(cfg)] == ["test0"]
    assert make_train_loader(cfg, global_batch_size=1, seed=0).num_examples == 3
    for i in range(2):
        _save(tmp_path / "rwbi" / f"real{i}.jpg", _img(26, 30, i))
    un = list(
        eval_pairs(_cfg(dataset="unpaired_folder", data_dir=str(tmp_path / "rwbi"), tfds_dir=str(tmp_path / "t")))
    )
    assert [p.name for p in un] == ["real0", "real1"] and un[0].sharp is None and un[0].blurred.shape == (26, 30, 3)


# ----------------------------------------------------------------------------- bad data


def _paired(tmp_path, name="d") -> pathlib.Path:
    root = tmp_path / name
    for i in range(2):
        _save(root / "sharp" / f"x{i}.png", _img(30, 34, i))
        _save(root / "blur" / f"x{i}.png", _img(30, 34, i + 5))
    return root


def _prepare(root, tmp_path, dataset="paired_folder"):
    return builders.prepare(dataset, manual_dir=root, tfds_dir=tmp_path / "tfds")


def test_error_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _prepare(tmp_path / "nowhere", tmp_path)
    for sub in ("blur", "sharp"):
        _save(tmp_path / "GOPRO_Large" / "train" / "GOPR0001_00_00" / sub / "000001.png", _img(8, 8, 0))
    with pytest.raises(FileNotFoundError, match=r"GOPRO_Large/(test|train)"):
        _prepare(tmp_path / "GOPRO_Large" / "train", tmp_path, "gopro")
    # Only the train split on disk: it can be trained on; asking for test names what is missing.
    assert list(_prepare(tmp_path, tmp_path, "gopro").info.splits.keys()) == ["train"]
    with pytest.raises(FileNotFoundError, match=r"GoPro test split \(expected GOPRO_Large/test\)"):
        list(eval_pairs(_cfg(dataset="gopro", data_dir=str(tmp_path), tfds_dir=str(tmp_path / "tfds"))))
    with pytest.raises(
        ValueError, match=r"needs the folder holding it \(train.py: config.data.data_dir; evaluate.py: --data_dir\)"
    ):
        list(eval_pairs(_cfg(dataset="gopro")))


def test_error_missing_twin(tmp_path):
    root = _paired(tmp_path)
    (root / "sharp" / "x1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"blur/x1.png has no sharp twin"):
        _prepare(root, tmp_path)


def test_error_duplicate_names(tmp_path):
    root = _paired(tmp_path)
    _save(root / "blur" / "x1.jpg", _img(30, 34, 3))
    with pytest.raises(ValueError, match=r"x1.jpg and .*x1.png would both be the pair 'x1'"):
        _prepare(root, tmp_path)


def test_error_size_mismatch(tmp_path):
    root = _paired(tmp_path)
    _save(root / "sharp" / "x1.png", _img(31, 34, 0))
    with pytest.raises(ValueError, match=r"x1.png is 30x34 but sharp .*x1.png is 31x34"):
        _prepare(root, tmp_path)


def test_error_unreadable_file(tmp_path):
    root = _paired(tmp_path)
    (root / "blur" / "x0.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match=r"cannot read image .*blur/x0.png"):
        _prepare(root, tmp_path)


def test_error_image_smaller_than_crop(tmp_path):
    root = _paired(tmp_path)
    cfg = _cfg(dataset="paired_folder", data_dir=str(root), tfds_dir=str(tmp_path / "tfds"), crop_size=32)
    with pytest.raises(ValueError, match=r"smaller than the crop 32x32, e.g. .*x0.png \(30x34\)"):
        make_train_loader(cfg, global_batch_size=1, seed=0)


def test_grayscale_rgba_16bit_pairs_are_converted(tmp_path):
    root = tmp_path / "mixed"
    gray = np.arange(30 * 34, dtype=np.uint16).reshape(30, 34)
    (root / "blur").mkdir(parents=True)
    (root / "sharp").mkdir()
    Image.fromarray((gray % 256).astype(np.uint8), "L").save(root / "blur" / "g.png")
    Image.fromarray(np.concatenate([_img(30, 34, 1), np.zeros((30, 34, 1), np.uint8)], 2), "RGBA").save(
        root / "sharp" / "g.png"
    )
    Image.fromarray(gray * 60).save(root / "blur" / "h.png")  # 16-bit grayscale
    _save(root / "sharp" / "h.png", _img(30, 34, 2))
    pairs = list(eval_pairs(_cfg(dataset="paired_folder", data_dir=str(root), tfds_dir=str(tmp_path / "t"))))
    assert all(p.blurred.dtype == np.uint8 and p.blurred.shape == (30, 34, 3) for p in pairs)
    assert np.array_equal(pairs[0].blurred[..., 1], (gray % 256).astype(np.uint8))
    assert np.array_equal(pairs[0].sharp, _img(30, 34, 1))
    assert np.array_equal(pairs[1].blurred[..., 2], np.rint(gray * 60 / 257).astype(np.uint8))


def test_store_reprepare_from_other_folder_is_refused(tmp_path):
    for name in ("a", "b"):
        r = tmp_path / name / "HIDE_dataset"
        _save(r / "GT" / "x.png", _img(8, 8, 0))
        _save(r / "test" / "test-close-ups" / "x.png", _img(8, 8, 1))
        (r / "test" / "test-long-shot").mkdir(parents=True)
    builders.prepare("hide", manual_dir=tmp_path / "a", tfds_dir=tmp_path / "tfds")
    with pytest.raises(
        ValueError,
        match=r"prepared from .*a/HIDE_dataset, not from data_dir .*b/HIDE_dataset; .*"
        r"\(train.py: config.data.tfds_dir; evaluate.py: --tfds_dir\)",
    ):
        builders.prepare("hide", manual_dir=tmp_path / "b", tfds_dir=tmp_path / "tfds")


def test_dataset_folder_and_its_parent_share_a_store(gopro, tmp_path, capsys):
    """README trains with data_dir=.../GOPRO_Large and evaluates with its parent: one store."""
    raw, _, truth = gopro
    assert layouts.dataset_root("gopro", raw) == layouts.dataset_root("gopro", raw / "GOPRO_Large")
    tfds_dir = tmp_path / "tfds"
    b = builders.prepare("gopro", manual_dir=raw, tfds_dir=tfds_dir, config="blur_test")
    assert b.info.metadata["source"] == str((raw / "GOPRO_Large").resolve())
    files = sorted(pathlib.Path(b.data_dir).glob("*.array_record*"))
    stamps = [f.stat().st_mtime_ns for f in files]
    assert "preparing the gopro store from" in capsys.readouterr().err
    cfg = _cfg(dataset="gopro", data_dir=str(raw / "GOPRO_Large"), tfds_dir=str(tfds_dir))
    assert [p.name for p in eval_pairs(cfg)] == sorted(n for s, n in truth if s == "test")
    assert [f.stat().st_mtime_ns for f in files] == stamps  # reused, not prepared again
    assert "preparing" not in capsys.readouterr().err
    # A store that recorded the parent (as before the root was recorded) is the same dataset too.
    assert builders._source_root("gopro", str(raw)) == (raw / "GOPRO_Large").resolve()


def test_folder_errors_come_before_the_store_check(gopro, tmp_path):
    """An empty data_dir, or one without scene folders, is reported as such, not as a store
    prepared from another folder."""
    raw, _, _ = gopro
    tfds_dir = tmp_path / "tfds"
    builders.prepare("gopro", manual_dir=raw, tfds_dir=tfds_dir, config="blur_test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty is empty; expected GOPRO_Large/\{train,test\}/<scene>/"):
        builders.prepare("gopro", manual_dir=tmp_path / "empty", tfds_dir=tfds_dir, config="blur_test")
    (tmp_path / "noscenes" / "GOPRO_Large" / "test").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no scene folders \(GOPRxxxx_xx_xx\) in .*noscenes/GOPRO_Large/test"):
        builders.prepare("gopro", manual_dir=tmp_path / "noscenes", tfds_dir=tfds_dir, config="blur_test")
    shutil.copytree(raw / "GOPRO_Large" / "test", tmp_path / "other" / "GOPRO_Large" / "test")
    with pytest.raises(ValueError, match="was prepared from"):
        builders.prepare("gopro", manual_dir=tmp_path / "other", tfds_dir=tfds_dir, config="blur_test")


@pytest.mark.parametrize(
    "dataset, expected",
    [
        ("gopro", r"GOPRO_Large/\{train,test\}/<scene>/\{blur,blur_gamma,sharp\}"),
        ("hide", r"HIDE_dataset/GT/\*.png"),
        ("realblur_j", r"RealBlur_\{J,R\}_\{train,test\}_list.txt"),
        ("paired_folder", r"blur/ \+ sharp/"),
    ],
)
def test_empty_or_wrong_data_dir_names_the_layout(tmp_path, dataset, expected):
    """Checked before TFDS sees the folder (TFDS would raise an AssertionError)."""
    cfg = _cfg(dataset=dataset, data_dir=str(tmp_path / "d"), tfds_dir=str(tmp_path / "tfds"))
    (tmp_path / "d").mkdir()
    with pytest.raises(FileNotFoundError, match=rf"data_dir for \w+: folder .*d is empty; expected {expected}"):
        eval_pairs(cfg)
    (tmp_path / "d" / "notes.txt").write_text("not a dataset")
    with pytest.raises(FileNotFoundError, match=expected):
        eval_pairs(cfg)
    cfg = cfg.replace(data_dir=str(tmp_path / "d" / "notes.txt"))
    with pytest.raises(NotADirectoryError, match=r"notes.txt is a file, not a folder"):
        eval_pairs(cfg)
    assert not (tmp_path / "tfds").exists()


def test_bad_folder_is_reported_before_preparing(gopro, tmp_path, capsys):
    """'preparing ... (once)' is printed only once the folder has been checked."""
    raw, _, _ = gopro
    shutil.copytree(raw / "GOPRO_Large" / "test", tmp_path / "GOPRO_Large" / "test")
    cfg = _cfg(dataset="gopro", data_dir=str(tmp_path), tfds_dir=str(tmp_path / "tfds"))
    with pytest.raises(FileNotFoundError, match=r"GoPro train split \(expected GOPRO_Large/train\)"):
        make_train_loader(cfg, global_batch_size=1, seed=0)
    rb = tmp_path / "rb"
    _save(rb / "s" / "gt" / "gt_1.png", _img(8, 8, 0))
    _save(rb / "s" / "blur" / "blur_1.png", _img(8, 8, 1))
    (rb / "RealBlur_J_test_list.txt").write_text("s/gt/gt_1.png s/blur/blur_1.png\n")
    with pytest.raises(FileNotFoundError, match=r"RealBlur-R: list file .*RealBlur_R_test_list.txt does not exist"):
        eval_pairs(_cfg(dataset="realblur_r", data_dir=str(rb), tfds_dir=str(tmp_path / "tfds")))
    assert "preparing" not in capsys.readouterr().err
    assert not (tmp_path / "tfds").exists()


def test_store_is_prepared_again_when_the_folder_changes(tmp_path):
    root = _paired(tmp_path)
    cfg = _cfg(dataset="paired_folder", data_dir=str(root), tfds_dir=str(tmp_path / "tfds"))
    names = [p.name for p in eval_pairs(cfg)]
    assert [p.name for p in eval_pairs(cfg)] == names  # unchanged: reused
    removed = names[0]
    for sub in ("blur", "sharp"):
        (root / sub / f"{removed}.png").unlink()
        _save(root / sub / "zz_new.png", _img(30, 34, 9))
    assert [p.name for p in eval_pairs(cfg)] == [*names[1:], "zz_new"]
    # An edited file (same name) is picked up too.
    edited = _img(30, 34, 5)
    _save(root / "blur" / f"{names[1]}.png", edited)
    os.utime(root / "blur" / f"{names[1]}.png", ns=(1, 1))
    pair = next(p for p in eval_pairs(cfg) if p.name == names[1])
    assert np.array_equal(pair.blurred, edited)


def test_gopro_test_split_only_can_be_evaluated(gopro, tmp_path):
    raw, _, truth = gopro
    shutil.copytree(raw / "GOPRO_Large" / "test", tmp_path / "GOPRO_Large" / "test")
    cfg = _cfg(dataset="gopro", data_dir=str(tmp_path), tfds_dir=str(tmp_path / "tfds"))
    pairs = list(eval_pairs(cfg))
    assert [p.name for p in pairs] == sorted(n for s, n in truth if s == "test")
    # Evaluation stores the test split alone (never encodes the training set).
    assert list(pipeline.store_for(cfg, split="test").info.splits.keys()) == ["test"]
    assert sorted(p.name for p in (tmp_path / "tfds" / "gopro").iterdir() if not p.name.startswith(".")) == [
        "blur_test"
    ]


# ----------------------------------------------------------------------------- pipeline


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in ("blurred", "sharp"))


def test_store_loader_same_window_and_flip_deterministic_resume(gopro):
    raw, tfds_dir, _ = gopro
    cfg = _cfg(dataset="gopro", data_dir=str(raw), tfds_dir=str(tfds_dir), crop_size=24)
    loader = make_train_loader(cfg, global_batch_size=3, seed=5)
    assert loader.num_examples == 4
    it = iter(loader)
    first = _take(it, 4)  # crosses the epoch boundary (4 examples, batches of 3)
    for batch in first:
        assert batch["blurred"].shape == (3, 24, 24, 3) and batch["blurred"].dtype == np.uint8
        assert np.array_equal(batch["blurred"], 255 - batch["sharp"])  # same window + flip on both
    state = it.get_state()
    rest = _take(it, 3)
    again = iter(make_train_loader(cfg, global_batch_size=3, seed=5))
    assert _same(_take(again, 4), first)  # deterministic from the seed
    resumed = iter(make_train_loader(cfg, global_batch_size=3, seed=5))
    resumed.set_state(state)
    assert _same(_take(resumed, 3), rest)  # resumes at the same example
    other = iter(make_train_loader(cfg, global_batch_size=3, seed=6))
    assert not _same(_take(other, 4), first)


def test_rescaled_photos():
    a, b = _img(40, 60, 0), _img(30, 30, 1)
    out = synthetic.rescaled_photos([("a", a), ("b", b)], (1.0, 1.5, 0.5, 1.5), min_side=20)
    # scale 1 keeps the arrays; duplicates dropped; b at 0.5 (15 px) is below min_side.
    assert [n for n, _ in out] == ["a", "b", "a@1.5", "b@1.5", "a@0.5"]
    assert out[0][1] is a and out[1][1] is b
    assert [x.shape for _, x in out[2:]] == [(60, 90, 3), (45, 45, 3), (20, 30, 3)]
    assert all(x.dtype == np.uint8 for _, x in out)
    # A constant photo stays constant (Lanczos weights sum to 1).
    flat = synthetic.rescaled_photos([("c", np.full((20, 24, 3), 77, np.uint8))], (2.0,))[0][1]
    assert flat.shape == (40, 48, 3) and np.all(flat == 77)
    for bad in ((), (0.0,), (-1.0,), ("2",)):
        with pytest.raises(ValueError, match="scales"):
            synthetic.rescaled_photos([("a", a)], bad)


def test_synthetic_loader_uses_rescaled_photos(tmp_path):
    for i in range(5):
        _save(tmp_path / f"p{i}.png", _img(40, 44, i))
    cfg = _cfg(data_dir=str(tmp_path), crop_size=32, epoch_size=8, synthetic_photo_scales=(1.0, 2.0))
    loader = make_train_loader(cfg, global_batch_size=4, seed=0)
    assert next(iter(loader))["blurred"].shape == (4, 32, 32, 3)
    ex = pipeline.SyntheticExample(str(tmp_path), 32, 0, synthetic.SyntheticBlurConfig(), (1.0, 2.0, 0.5))
    # 4 training photos at x1 and x2; at x0.5 (20 px) they are smaller than the crop.
    assert [n for n, _ in ex.photos()] == [f"p{i}.png" for i in range(4)] + [f"p{i}.png@2" for i in range(4)]
    with pytest.raises(ValueError, match="synthetic_photo_scales must be a non-empty list"):
        _cfg(data_dir=str(tmp_path), synthetic_photo_scales=(0.0,))
    with pytest.raises(ValueError, match="smaller than the crop 32"):
        make_train_loader(_cfg(data_dir=str(tmp_path), synthetic_photo_scales=(0.5,)), global_batch_size=1, seed=0)


def test_synthetic_loader_fresh_blur_and_resume():
    cfg = _cfg(crop_size=32, epoch_size=6)
    it = iter(make_train_loader(cfg, global_batch_size=4, seed=0))
    batches = _take(it, 3)
    flat = np.concatenate([b["blurred"] for b in batches])
    # 12 examples over 2 epochs of 6: all fresh (no repeated pair across epochs)
    assert len({x.tobytes() for x in flat}) == 12
    state = it.get_state()
    rest = _take(it, 2)
    it2 = iter(make_train_loader(cfg, global_batch_size=4, seed=0))
    it2.set_state(state)
    assert _same(_take(it2, 2), rest)


def test_sharding_by_process(gopro, monkeypatch):
    cfg = _cfg(epoch_size=8, crop_size=16)
    full = np.concatenate([b["blurred"] for b in _take(iter(make_train_loader(cfg, global_batch_size=4, seed=1)), 2)])
    shards = []
    for index in (0, 1):
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        monkeypatch.setattr(jax, "process_index", lambda i=index: i)
        batches = _take(iter(make_train_loader(cfg, global_batch_size=4, seed=1)), 2)
        assert batches[0]["blurred"].shape[0] == 2
        shards.append(np.concatenate([b["blurred"] for b in batches]))
    # process p gets global examples p, p + 2, p + 4, ...
    assert np.array_equal(shards[0], full[0::2]) and np.array_equal(shards[1], full[1::2])
    with pytest.raises(ValueError, match="multiple of process_count=2"):
        make_train_loader(cfg, global_batch_size=3, seed=1)


def test_worker_processes_give_the_same_stream_and_resume(gopro):
    raw, tfds_dir, _ = gopro
    cfg0 = _cfg(dataset="gopro", data_dir=str(raw), tfds_dir=str(tfds_dir), crop_size=16)
    ref = _take(iter(make_train_loader(cfg0, global_batch_size=2, seed=3)), 5)
    cfg2 = _cfg(dataset="gopro", data_dir=str(raw), tfds_dir=str(tfds_dir), crop_size=16, num_workers=2)
    it = iter(make_train_loader(cfg2, global_batch_size=2, seed=3))
    got = _take(it, 3)
    state = it.get_state()
    assert _same(got, ref[:3])
    del it
    it2 = iter(make_train_loader(cfg2, global_batch_size=2, seed=3))
    it2.set_state(state)
    assert _same(_take(it2, 2), ref[3:])
    del it2


def test_pipeline_config_errors():
    with pytest.raises(ValueError, match="config.data.dataset must be one of"):
        _cfg(dataset="imagenet")
    with pytest.raises(TypeError, match="make_train_loader takes DataSettings, got dict"):
        make_train_loader({"dataset": "synthetic"}, global_batch_size=1, seed=0)
    with pytest.raises(ValueError, match="smaller than the crop"):
        make_train_loader(_cfg(crop_size=700), global_batch_size=1, seed=0)  # photos are 400-1000 px
    assert pipeline.DATASETS[0] == "synthetic"
