"""evaluate.py end to end on a fake GoPro tree with a tiny checkpoint; figures; alignment."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from aspdc_jax import inference
from aspdc_jax.evaluation import figures
from aspdc_jax.evaluation.alignment import realblur_scores, warp_image
from tests.helpers.models import smooth_image, tiny_export

REPO = Path(__file__).resolve().parents[1]


def _gopro_tree(root: Path, h: int = 42, w: int = 58) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    truth = {}
    for split in ("train", "test"):
        for scene in ("GOPR0384_11_00", "GOPR0385_11_01"):
            for i in range(2):
                sharp = smooth_image(rng, h, w)
                blurred = np.clip(
                    (sharp.astype(np.float32) + np.roll(sharp, 2, axis=1) + np.roll(sharp, 4, axis=1)) / 3, 0, 255
                ).astype(np.uint8)
                for sub, arr in (("sharp", sharp), ("blur", blurred), ("blur_gamma", blurred)):
                    path = root / "GOPRO_Large" / split / scene / sub / f"{i:06d}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(arr).save(path)
                if split == "test":
                    truth[f"{scene}/{i:06d}"] = (blurred, sharp)
    return truth


def _sk_scores(pred: np.ndarray, sharp: np.ndarray) -> tuple[float, float, float]:
    p, s = pred.astype(np.float64), sharp.astype(np.float64)
    return (
        peak_signal_noise_ratio(s, p, data_range=1.0),
        structural_similarity(
            s, p, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
        ),
        structural_similarity(s, p, channel_axis=-1, win_size=7, data_range=2.0),
    )


def test_evaluate_end_to_end_fake_gopro(tmp_path):
    data = tmp_path / "data"
    truth = _gopro_tree(data)
    export = tiny_export(tmp_path / "export")
    out = tmp_path / "out"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [
        sys.executable,
        str(REPO / "evaluate.py"),
        "--ckpt",
        str(export),
        "--dataset",
        "gopro",
        "--data_dir",
        str(data),
        "--tfds_dir",
        str(tmp_path / "tfds"),
        "--out",
        str(out),
        "--save_images",
        "--reblur",
        "--figures",
        "--num_figures",
        "1",
        "--noprogress",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GoPro PSNR" in proc.stdout and "Blurred input" in proc.stdout
    result = json.loads((out / "metrics.json").read_text())
    assert result["num_images"] == len(truth) == 4

    # The same numbers computed directly (skimage on the Deblurrer's float output).
    deblurrer = inference.load(export, bucket="exact")
    direct = {k: [] for k in ("psnr", "ssim", "ssim_official", "psnr_blurred", "ssim_blurred", "psnr_uint8")}
    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == sorted(truth)
    for name in sorted(truth):
        blurred, sharp = truth[name]
        pred = deblurrer.deblur_float(blurred)
        s = sharp / 255.0
        p, ss, so = _sk_scores(pred, s)
        pb, sb, _ = _sk_scores(blurred / 255.0, s)
        pu8 = peak_signal_noise_ratio(sharp, np.round(pred * 255).astype(np.uint8), data_range=255)
        for key, value in zip(direct, (p, ss, so, pb, sb, pu8)):
            direct[key].append(value)
        saved = np.asarray(Image.open(out / "images" / f"{name}.png"))
        np.testing.assert_array_equal(saved, deblurrer.deblur(blurred))
    for key, values in direct.items():
        assert abs(result[key] - float(np.mean(values))) <= 1e-4, (key, result[key], np.mean(values))
    reblur = result["reblur"]
    assert np.isfinite(reblur["psnr"]) and 0 <= reblur["ssim"] <= 1 and reblur["abs_diff_var"] >= 0
    produced = {p.name for p in (out / "figures").rglob("*.png")}
    # one image: input, attention, offsets (3 branches, one figure), the reblur differences, reblurred
    assert produced == {f"000000_{k}.png" for k in ("input", "attention", "offsets", "reblur_diff", "reblurred")}
    diff = json.loads((out / "figures" / "GOPR0384_11_00" / "000000_reblur_diff.json").read_text())
    assert [p["label"] for p in diff["panels"]] == ["|sharp - blurred|", "|reblurred - blurred|"]
    blurred, sharp = truth["GOPR0384_11_00/000000"]
    assert diff["panels"][0]["max"] == pytest.approx(np.abs(sharp / 255 - blurred / 255).mean(-1).max(), abs=1e-5)
    offsets = json.loads((out / "figures" / "GOPR0384_11_00" / "000000_offsets.json").read_text())
    assert [p["label"] for p in offsets["panels"]] == ["d1: dilation 1", "d2: dilation 2", "d4: dilation 4"]
    assert offsets["max_magnitude"] == max(p["max_magnitude"] for p in offsets["panels"])


def test_evaluate_help_explains_itself():
    proc = subprocess.run(
        [sys.executable, str(REPO / "evaluate.py"), "--helpshort"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    text = proc.stdout + proc.stderr
    for word in ("--ckpt", "--dataset", "realblur_j", "--reblur", "--timing", "--align", "Table 3"):
        assert word in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ckpt", "{tmp}/missing", "--dataset", "synthetic"], "error: checkpoint folder .*missing does not exist"),
        (
            ["--ckpt", "{export}", "--dataset", "gopro", "--data_dir", "{tmp}/nowhere"],
            "error: data_dir for gopro: folder .*nowhere does not exist",
        ),
        (
            ["--ckpt", "{export}", "--dataset", "gopro", "--data_dir", "{tmp}/empty"],
            r"error: data_dir for gopro: folder .*empty is empty; expected GOPRO_Large/\{train,test\}/<scene>/",
        ),
        (["--ckpt", "{export}", "--dataset", "synthetic", "--bucket", "odd"], "error: bucket must be"),
        (
            ["--ckpt", "{export}", "--dataset", "synthetic", "--out", "{tmp}/outfile.png"],
            r"error: --out .*outfile.png is a file; give a folder",
        ),
    ],
)
def test_evaluate_bad_input_is_one_line(tmp_path, args, message):
    """A missing checkpoint / data folder or a bad flag value: `error: ...`, exit 2, no traceback."""
    import re

    export = tiny_export(tmp_path / "export")
    (tmp_path / "empty").mkdir()
    (tmp_path / "outfile.png").write_bytes(b"not a folder")
    args = [a.format(tmp=tmp_path, export=export) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    proc = subprocess.run(
        [sys.executable, str(REPO / "evaluate.py"), *args, "--noprogress"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert re.search(message, proc.stderr), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_timing_alone_and_tiny_images(tmp_path):
    """--timing --limit 0 scores nothing and still writes the timing; an image too small for
    SSIM is named in the error; seconds per image leave out the compiling calls."""
    from aspdc_jax.evaluation.protocol import EvalConfig, evaluate, format_table

    export = tiny_export(tmp_path / "export")
    root = tmp_path / "pf"
    rng = np.random.default_rng(3)
    for name, (h, w) in {"a": (20, 24), "b": (20, 24), "c": (20, 24)}.items():
        for sub in ("blur", "sharp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(smooth_image(rng, h, w)).save(root / sub / f"{name}.png")
    common = dict(
        ckpt=str(export), dataset="paired_folder", data_dir=str(root), tfds_dir=str(tmp_path / "t"), progress=False
    )
    result = evaluate(EvalConfig(out=str(tmp_path / "o1"), limit=0, timing=True, timing_repeats=1, **common))
    assert result["num_images"] == 0 and result["timing"]["seconds_mean"] > 0
    assert "s / 1280x720 (untiled)" in format_table(result) and "PSNR" not in format_table(result)
    result = evaluate(EvalConfig(out=str(tmp_path / "o2"), **common))
    assert result["num_images"] == 3 and result["seconds_per_image_includes_compilation"] is False
    with open(tmp_path / "o2" / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["compiled"] for r in rows] == ["True", "False", "False"]
    assert [r["file"] for r in rows] == ["", "", ""]  # nothing saved: no file named
    evaluate(EvalConfig(out=str(tmp_path / "o4"), figures=True, num_figures=1, **common))
    with open(tmp_path / "o4" / "per_image.csv") as f:
        assert [r["file"] for r in csv.DictReader(f)] == ["a", "", ""]  # the figures' prefix
    assert (tmp_path / "o4" / "figures" / "a_input.png").is_file()
    _check_attention_figure(tmp_path / "o4" / "figures", export, root / "blur" / "a.png")
    for sub in ("blur", "sharp"):
        Image.fromarray(smooth_image(rng, 6, 9)).save(root / sub / "tiny.png")
    with pytest.raises(ValueError, match=r"tiny \(6x9\): .*at least 11x11"):
        evaluate(EvalConfig(out=str(tmp_path / "o3"), **common))


def _colorbar_positions(figure: np.ndarray, box: list[int]) -> np.ndarray:
    """Each row of the colour bar (top first) as its position in [0, 1] on the viridis map
    (the nearest of 1001 samples to the pixel at the bar's centre column)."""
    x0, y0, x1, y1 = box
    column = figure[y0:y1, (x0 + x1) // 2].astype(np.int64)
    samples = figures.colormap(np.linspace(0, 1, 1001)).astype(np.int64)
    nearest = ((column[:, None, :] - samples[None]) ** 2).sum(-1).argmin(1)
    return nearest / 1000.0


def _check_attention_figure(folder: Path, export: Path, blurred_file: Path) -> None:
    """The attention figure: one panel per branch, named; its .json's value range is the
    model's attention's min / max; the colour bar runs monotonically from the top of the
    colour map (vmax, top) to its bottom (vmin)."""
    from aspdc_jax.weights import load_for_inference

    figure = np.asarray(Image.open(folder / "a_attention.png"))
    info = json.loads((folder / "a_attention.json").read_text())
    loaded = load_for_inference(export)
    attention = figures.model_maps(loaded.deblur, loaded.deblur_params, np.asarray(Image.open(blurred_file)))[
        "attention"
    ]
    assert [p["label"] for p in info["panels"]] == [
        "static: no offsets",
        "d1: dilation 1",
        "d2: dilation 2",
        "d4: dilation 4",
    ]
    assert info["vmin"] == pytest.approx(float(attention.min()), abs=1e-6)
    assert info["vmax"] == pytest.approx(float(attention.max()), abs=1e-5)
    for k, panel in enumerate(info["panels"]):
        assert panel["max"] == pytest.approx(float(attention[..., k].max()), abs=1e-6)
        x0, y0, x1, y1 = panel["box"]
        assert (x1 - x0, y1 - y0) == (24, 20)  # the image's size (attention upsampled x4, cropped)
    assert figure.shape[1] >= 4 * 24 and figure.shape[0] > 20
    positions = _colorbar_positions(figure, info["colorbar"]["box"])
    assert np.all(np.diff(positions) <= 0.01) and positions[0] > 0.99 and positions[-1] < 0.01


def test_figures_have_titles_colour_bars_and_value_ranges(tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 7, 4))
    attention = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = figures.branch_labels(("static", "d1", "d2", "d4"))
    image, info = figures.attention_figure(attention, labels, factor=4, height=22, width=26, title="x: attention")
    figures.save_figure(tmp_path / "att.png", image, info)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "att.png")), image)
    assert json.loads((tmp_path / "att.json").read_text()) == info
    assert (info["vmin"], info["vmax"]) == pytest.approx((attention.min(), attention.max()))
    # Every panel shows its branch's map on the shared scale (viridis of (a - vmin) / span).
    for k, panel in enumerate(info["panels"]):
        x0, y0, x1, y1 = panel["box"]
        expected = figures.colormap((attention[..., k] - info["vmin"]) / (info["vmax"] - info["vmin"]))
        np.testing.assert_array_equal(image[y0:y1:4, x0:x1:4], expected[: (y1 - y0 + 3) // 4, : (x1 - x0 + 3) // 4])
    positions = _colorbar_positions(image, info["colorbar"]["box"])
    assert np.all(np.diff(positions) <= 0.01) and positions[0] > 0.99 and positions[-1] < 0.01
    title_rows = image[: info["panels"][0]["box"][1]]
    assert (title_rows < 128).any()  # the title and captions are drawn (dark text on white)
    assert figures.branch_labels(("d2",), 3) == ["d2 #1: dilation 2", "d2 #2: dilation 2", "d2 #3: dilation 2"]
    with pytest.raises(ValueError, match="4 attention maps but 3 labels"):
        figures.attention_figure(attention, labels[:3])

    sharp = rng.random((20, 24, 3))
    blurred = sharp * 0.5
    image, info = figures.reblur_diff_figure(sharp, blurred + 0.01, blurred, title="x: diff")
    assert (info["vmin"], info["vmax"], info["clipped_above"]) == (0.0, 0.1, True)
    assert info["panels"][1]["max"] == pytest.approx(0.01, abs=1e-6)
    assert info["panels"][0]["max"] == pytest.approx(np.abs(sharp - blurred).mean(-1).max(), abs=1e-6)

    offsets = np.zeros((5, 6, 36), np.float32)
    offsets[..., 18:36:2] = 2.0  # branch 2: every tap moves 2 px down
    image, info = figures.offsets_figure(offsets, ["d1: dilation 1", "d2: dilation 2"], factor=4, title="x: offsets")
    assert [p["max_magnitude"] for p in info["panels"]] == [0.0, 2.0] and info["max_magnitude"] == 2.0
    x0, y0, x1, y1 = info["panels"][0]["box"]
    assert (image[y0:y1, x0:x1] == 255).all()  # no motion is white
    x0, y0, x1, y1 = info["wheel"]["box"]
    wheel = image[y0:y1, x0:x1]
    assert (wheel[0, 0] == 255).all() and len(np.unique(wheel.reshape(-1, 3), axis=0)) > 50


def test_limit_reads_only_the_first_pairs(tmp_path):
    """--limit N reads the first N pairs' files directly: no store is prepared, a corrupt
    file after them is never opened, and they are exactly the store's first N pairs."""
    from aspdc_jax.data import eval_pairs
    from aspdc_jax.data.settings import defaults
    from aspdc_jax.evaluation.protocol import EvalConfig, _eval_pairs, evaluate

    data = tmp_path / "data"
    truth = _gopro_tree(data, h=20, w=24)
    stored = list(eval_pairs(defaults().replace(dataset="gopro", data_dir=str(data), tfds_dir=str(tmp_path / "store"))))
    common = dict(dataset="gopro", data_dir=str(data), tfds_dir=str(tmp_path / "tfds"), progress=False)
    direct = list(_eval_pairs(EvalConfig(ckpt="", out="", limit=3, **common)))
    assert [p.name for p in direct] == [p.name for p in stored[:3]] == sorted(truth)[:3]
    for a, b in zip(direct, stored):
        assert np.array_equal(a.blurred, b.blurred) and np.array_equal(a.sharp, b.sharp) and a.meta == b.meta
    last = data / "GOPRO_Large" / "test" / "GOPR0385_11_01" / "blur" / "000001.png"
    last.write_bytes(b"not a png")  # the 4th pair: never read with --limit 3
    export = tiny_export(tmp_path / "export")
    result = evaluate(EvalConfig(ckpt=str(export), out=str(tmp_path / "out"), limit=3, **common))
    assert result["num_images"] == 3 and not (tmp_path / "tfds").exists()
    with pytest.raises(ValueError, match="000001.png"):  # without --limit the whole split is read
        evaluate(EvalConfig(ckpt=str(export), out=str(tmp_path / "out2"), **common))


def test_scan_split_lists_a_split_without_reading_it(tmp_path):
    from aspdc_jax.data import layouts

    for split in ("train", "test"):
        for sub in ("blur", "sharp"):
            (tmp_path / "pf" / split / sub).mkdir(parents=True)
            (tmp_path / "pf" / split / sub / f"{split}_b.png").write_bytes(b"never read")
            (tmp_path / "pf" / split / sub / f"{split}_a.png").write_bytes(b"never read")
    assert [p.name for p in layouts.scan_split("paired_folder", tmp_path / "pf", "test")] == ["test_a", "test_b"]
    with pytest.raises(ValueError, match="needs the folder holding it"):
        layouts.scan_split("gopro", None, "test")
    with pytest.raises(ValueError, match=r"hide: no split 'train'"):
        (tmp_path / "HIDE_dataset" / "GT").mkdir(parents=True)
        layouts.scan_split("hide", tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="RealBlur-R: list file"):
        (tmp_path / "rb").mkdir()
        (tmp_path / "rb" / "RealBlur_J_test_list.txt").write_text("")
        layouts.scan_split("realblur_r", tmp_path / "rb", "test")


def test_limit_synthetic_makes_only_the_prefix():
    from aspdc_jax.data import eval_pairs
    from aspdc_jax.data.settings import defaults
    from aspdc_jax.evaluation.protocol import EvalConfig, _eval_pairs

    full = list(eval_pairs(defaults().replace(dataset="synthetic"), limit=13))
    prefix = _eval_pairs(EvalConfig(ckpt="", out="", dataset="synthetic", limit=13))
    assert len(prefix) == 13
    for a, b in zip(prefix, full, strict=True):
        assert a.name == b.name and np.array_equal(a.blurred, b.blurred) and np.array_equal(a.sharp, b.sharp)


def test_reblur_only_export_scores_table4(tmp_path):
    """A ReblurNet-only export: evaluate --reblur scores Table 4 alone (and its figures);
    without --reblur, or with a flag that needs the DeblurNet, one clear line."""
    from aspdc_jax.evaluation.protocol import EvalConfig, evaluate, format_table
    from aspdc_jax.models import model_config_dict
    from aspdc_jax.weights import CheckpointError, save_export
    from tests.helpers.models import tiny_models

    deblur, _, reblur, rparams = tiny_models()
    export = save_export(
        tmp_path / "reblur_only",
        model_config=model_config_dict(deblur, reblur),
        deblur_params=None,
        reblur_params=rparams,
    )
    root = tmp_path / "pf"
    rng = np.random.default_rng(3)
    for sub in ("blur", "sharp"):
        (root / sub).mkdir(parents=True)
        Image.fromarray(smooth_image(rng, 20, 24)).save(root / sub / "a.png")
    common = dict(
        ckpt=str(export), dataset="paired_folder", data_dir=str(root), tfds_dir=str(tmp_path / "t"), progress=False
    )
    result = evaluate(EvalConfig(out=str(tmp_path / "o"), reblur=True, figures=True, **common))
    assert result["num_images"] == 1 and result["networks"] == ["reblur"] and "psnr" not in result
    assert np.isfinite(result["reblur"]["psnr"]) and "Reblurring (Table 4)" in format_table(result)
    assert {p.name for p in (tmp_path / "o" / "figures").iterdir()} == {
        "a_input.png",
        "a_reblur_diff.png",
        "a_reblur_diff.json",
        "a_reblurred.png",
    }
    with pytest.raises(CheckpointError, match=r"holds only a ReblurNet .*evaluate.py --reblur scores") as err:
        evaluate(EvalConfig(out=str(tmp_path / "o2"), **common))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="--timing needs the DeblurNet, but .* holds only a ReblurNet"):
        evaluate(EvalConfig(out=str(tmp_path / "o3"), reblur=True, timing=True, **common))
    with pytest.raises(CheckpointError, match="holds only a ReblurNet"):
        inference.load(export)


def test_output_names_keep_dots_and_never_collide(tmp_path):
    """shot.v1 / shot.v2 keep their own PNG and figures; pairs that would share a file
    (x from x.png, x.png from x.png.png) get distinct, deterministic names."""
    from aspdc_jax.evaluation.protocol import EvalConfig, evaluate

    export = tiny_export(tmp_path / "export")
    root = tmp_path / "pf"
    rng = np.random.default_rng(5)
    blurred = {}
    for file in ("shot.v1.png", "shot.v2.png", "x.png", "x.png.png"):
        for sub in ("blur", "sharp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
            img = smooth_image(rng, 20, 24)
            Image.fromarray(img).save(root / sub / file, format="PNG")
            blurred.setdefault(file, img)
    out = tmp_path / "out"
    evaluate(
        EvalConfig(
            ckpt=str(export),
            out=str(out),
            dataset="paired_folder",
            data_dir=str(root),
            tfds_dir=str(tmp_path / "t"),
            save_images=True,
            figures=True,
            num_figures=4,
            progress=False,
        )
    )
    with open(out / "per_image.csv") as f:
        files = {r["name"]: r["file"] for r in csv.DictReader(f)}
    assert files == {"shot.v1": "shot.v1.png", "shot.v2": "shot.v2.png", "x": "x.png", "x.png": "x_2.png"}
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(files.values())
    deblurrer = inference.load(export, bucket="exact")
    for name, source in (
        ("shot.v1", "shot.v1.png"),
        ("shot.v2", "shot.v2.png"),
        ("x", "x.png"),
        ("x.png", "x.png.png"),
    ):
        saved = np.asarray(Image.open(out / "images" / files[name]))
        np.testing.assert_array_equal(saved, deblurrer.deblur(blurred[source]))
        assert np.array_equal(
            np.asarray(Image.open(out / "figures" / files[name].replace(".png", "_input.png"))), blurred[source]
        )
    assert len(list((out / "figures").glob("*_attention.png"))) == 4


def test_output_name_rules():
    from aspdc_jax.evaluation.protocol import _output_name

    taken: set[str] = set()
    names = ["GOPR0384_11_00/000001", "a.JPG", "b.tar", "A", "a", "a_2", "v1.2"]
    assert [_output_name(n, taken).as_posix() for n in names] == [
        "GOPR0384_11_00/000001.png",
        "a.png",
        "b.tar.png",
        "A_2.png",
        "a_3.png",
        "a_2_2.png",
        "v1.2.png",
    ]


def test_table_counts_images_in_words():
    from aspdc_jax.evaluation.protocol import format_table

    scores = dict(
        psnr=30.0, ssim=0.9, ssim_official=0.91, psnr_blurred=25.0, ssim_blurred=0.8, ssim_official_blurred=0.81
    )
    assert "\n(1 image; PSNR" in format_table(dict(scores, dataset="gopro", num_images=1))
    assert "\n(3 images; PSNR" in format_table(dict(scores, dataset="gopro", num_images=3))
    assert "\n(0 images; PSNR" in format_table(dict(dataset="gopro", num_images=0))


def test_out_that_is_a_file_is_refused_first(tmp_path):
    from aspdc_jax.evaluation.protocol import EvalConfig, evaluate

    (tmp_path / "outfile.png").write_bytes(b"x")
    for out, message in (
        ("outfile.png", r"^--out .*outfile.png is a file; give a folder$"),
        ("outfile.png/sub", r"^--out .*outfile.png/sub: .*outfile.png is a file; give a folder$"),
    ):
        with pytest.raises(NotADirectoryError, match=message):  # before the (missing) checkpoint is read
            evaluate(EvalConfig(ckpt=str(tmp_path / "missing"), out=str(tmp_path / out), dataset="synthetic"))


def test_timing_block(tmp_path):
    from aspdc_jax.evaluation.protocol import measure_timing

    deblurrer = inference.load(tiny_export(tmp_path / "export"), bucket="exact")
    timing = measure_timing(deblurrer, height=36, width=64, repeats=1)
    assert timing["seconds_mean"] > 0 and timing["peak_memory_gib"] > 0
    assert "cpu" in timing["device"].lower() or timing["device"]


def test_figure_helpers():
    flow = np.zeros((4, 6, 2))
    flow[0, 0] = (0.0, 1.0)
    img = figures.flow_to_color(flow)
    assert img.shape == (4, 6, 3) and img.dtype == np.uint8
    assert (img[1, 1] == 255).all()  # no motion is white
    assert not (img[0, 0] == 255).all()
    strip = figures.attention_strip(np.random.default_rng(0).random((5, 6, 4)), factor=4, gap=2)
    assert strip.shape == (20, 4 * 24 + 3 * 2, 3)
    flows = figures.offset_flow_images(np.zeros((5, 6, 54)), factor=4, height=18, width=22)
    assert len(flows) == 3 and flows[0].shape == (18, 22, 3)
    with pytest.raises(ValueError, match="multiple of 18"):
        figures.offset_flow_images(np.zeros((5, 6, 10)))


def test_realblur_alignment_recovers_a_shift():
    rng = np.random.default_rng(1)
    truth = smooth_image(rng, 64, 80).astype(np.float64) / 255
    shift = np.array([[1.0, 0.0, 1.5], [0.0, 1.0, -1.0], [0.0, 0.0, 1.0]])
    moved = warp_image(truth, np.linalg.inv(shift), order=3)
    aligned = realblur_scores(moved, truth, iterations=30)
    unaligned = peak_signal_noise_ratio(truth, moved, data_range=1.0)
    assert aligned["psnr"] > unaligned + 10
    assert aligned["ssim"] > 0.99


@pytest.mark.slow
def test_train_workdir_loads_for_inference_and_evaluation(tmp_path):
    """A tiny train.py workdir (deblur + reblur phases) through inference.load and evaluate."""
    from aspdc_jax.evaluation.protocol import EvalConfig, evaluate
    from aspdc_jax.training import train_and_evaluate
    from tests.helpers.train_fakes import fake_loader_factory, tiny_config

    config = tiny_config()
    config.phases = "deblur,reblur"
    workdir = tmp_path / "run"
    train_and_evaluate(config, workdir, loader_factory=fake_loader_factory, eval_pairs_fn=None)
    deblurrer = inference.load(workdir)
    image = smooth_image(np.random.default_rng(0), 30, 42)
    assert deblurrer.deblur(image).shape == image.shape
    result = evaluate(
        EvalConfig(
            ckpt=str(workdir),
            out=str(tmp_path / "eval"),
            dataset="synthetic",
            limit=1,
            reblur=True,
            progress=False,
        )
    )
    assert result["num_images"] == 1 and "reblur" in result
