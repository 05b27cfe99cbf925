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
    assert {"000000_attention.png", "000000_offsets_d4.png", "000000_diff_reblurred_vs_blurred.png"} <= produced
    assert len(produced) == 8  # one image: input, attention, 3 offsets, 2 diffs, reblurred


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
    for sub in ("blur", "sharp"):
        Image.fromarray(smooth_image(rng, 6, 9)).save(root / sub / "tiny.png")
    with pytest.raises(ValueError, match=r"tiny \(6x9\): .*at least 11x11"):
        evaluate(EvalConfig(out=str(tmp_path / "o3"), **common))


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
