"""aspdc_jax.inference (buckets, padding, tiling) and the deblur CLI, on a tiny DeblurNet."""

from __future__ import annotations

import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from aspdc_jax import inference
from aspdc_jax.images import ImageReadError, read_image, to_model, to_uint8
from aspdc_jax.inference import cli as deblur_module
from aspdc_jax.inference import deblurrer as deblurrer_module
from aspdc_jax.inference.cli import MANIFEST_NAME
from aspdc_jax.inference.cli import main as deblur_main
from tests.helpers.models import smooth_image, tiny_export, tiny_models


@pytest.fixture(scope="module")
def tiny():
    deblur, dparams, _, _ = tiny_models()
    return deblur, dparams


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return tiny_export(tmp_path_factory.mktemp("export"))


def _direct(module, params, image: np.ndarray, hb: int, wb: int) -> np.ndarray:
    """Reference: reflect-pad with numpy, apply the module un-bucketed, crop; float [0, 1]."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((0, hb - h), (0, wb - w), (0, 0)), mode="reflect")
    out = jax.jit(module.apply)({"params": params}, to_model(padded[None]))
    return np.clip((np.asarray(out.deblurred, np.float64)[0, :h, :w] + 1) / 2, 0, 1)


def test_bucket_size():
    assert inference.bucket_size(720) == 768
    assert inference.bucket_size(1280) == 1280
    assert inference.bucket_size(17, "exact") == 20
    assert inference.bucket_size(33, 32) == 64
    assert inference.bucket_size(33, 6) == 36  # lcm(6, 4) = 12
    for n in range(1, 3000, 7):
        b = inference.bucket_size(n)
        assert b % 4 == 0 and n <= b <= max(n * 1.125, n + 4)
    with pytest.raises(ValueError, match="bucket"):
        inference.bucket_size(10, "huge")


def test_tile_starts_cover_with_overlap():
    for length, tile, overlap in [(200, 96, 32), (4000, 512, 64), (97, 96, 32), (96, 96, 8)]:
        starts = inference.tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == max(length, tile)
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


@settings(max_examples=200, deadline=None)
@given(
    length=st.integers(1, 5000).map(lambda n: 4 * n),
    tile=st.integers(1, 400).map(lambda n: 4 * n),
    overlap_frac=st.floats(0, 0.5),
)
def test_tile_starts_stay_on_the_network_grid(length, tile, overlap_frac):
    """Tiles start on multiples of 4 (the DeblurNet downsampling), so a tile sees the image
    on the same grid as an untiled run: e.g. 620 px in 256-px tiles used to start at 182."""
    overlap = int(tile * overlap_frac)
    starts = inference.tile_starts(length, tile, overlap, align=4)
    assert starts[0] == 0 and starts[-1] + tile == max(length, tile)
    assert all(s % 4 == 0 for s in starts) and starts == sorted(set(starts))
    if tile - overlap >= 4:
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    assert inference.tile_starts(620, 256, 64, align=4) == [0, 184, 364]


@pytest.mark.parametrize("shape", [(17, 23), (1, 9), (12, 16)])
def test_odd_sizes_are_padded_and_cropped(tiny, shape):
    module, params = tiny
    deblurrer = inference.Deblurrer(module, params, bucket="exact")
    image = smooth_image(np.random.default_rng(0), *shape)
    out = deblurrer.deblur(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    hb, wb = deblurrer.bucket_shape(*shape)
    want = _direct(module, params, image, hb, wb)
    np.testing.assert_allclose(deblurrer.deblur_float(image), want, atol=1e-5)
    assert np.abs(out.astype(int) - np.round(want * 255)).max() <= 1  # rounding ties only


def test_one_compile_per_bucket_and_structures(tiny):
    module, params = tiny
    deblurrer = inference.Deblurrer(module, params, bucket=32)
    rng = np.random.default_rng(1)
    sizes = [(20, 30), (25, 31), (32, 32), (17, 29), (31, 18), (9, 27)]
    images = [smooth_image(rng, h, w) for h, w in sizes]
    singles = [deblurrer.deblur(im) for im in images]
    assert deblurrer.num_compilations == 1
    listed = deblurrer.deblur(images)
    assert [o.shape for o in listed] == [im.shape for im in images]
    for a, b in zip(listed, singles):
        np.testing.assert_array_equal(a, b)
    assert deblurrer.num_compilations == 1
    batch = np.stack([images[0], images[0][::-1]])
    out = deblurrer.deblur(batch)
    assert out.shape == batch.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], singles[0])
    deblurrer.deblur(smooth_image(rng, 40, 20))  # a new bucket: one more compile
    assert deblurrer.num_compilations == 2


def test_batched_groups_match_single(tiny):
    module, params = tiny
    deblurrer = inference.Deblurrer(module, params, bucket=32, batch_size=4)
    rng = np.random.default_rng(2)
    images = [smooth_image(rng, 24 + i, 28) for i in range(5)]
    out = deblurrer.deblur(images)  # batches of 4 and 1
    single = inference.Deblurrer(module, params, bucket=32)
    for o, im in zip(out, images):
        assert np.abs(o.astype(int) - single.deblur(im)).max() <= 1


def test_tiled_agrees_with_untiled(tiny):
    module, params = tiny
    deblurrer = inference.Deblurrer(module, params, bucket="exact")
    image = smooth_image(np.random.default_rng(3), 150, 118)
    full = deblurrer.deblur(image)
    tiled = deblurrer.deblur(image, tile=96, overlap=24)
    assert tiled.shape == image.shape
    diff = np.abs(full.astype(int) - tiled)
    # Away from the seams (> 12 px from any interior tile edge) within one uint8 level.
    ys = inference.tile_starts(152, 96, 24)  # the image is padded to 152x120 first
    xs = inference.tile_starts(120, 96, 24)
    assert len(ys) == 2 and len(xs) == 2
    edges_y = [s for s in ys if s > 0] + [s + 96 for s in ys if s + 96 < 152]
    edges_x = [s for s in xs if s > 0] + [s + 96 for s in xs if s + 96 < 120]
    dy = np.min(np.abs(np.arange(150)[:, None] - np.array(edges_y)[None]), axis=1)
    dx = np.min(np.abs(np.arange(118)[:, None] - np.array(edges_x)[None]), axis=1)
    away = np.minimum(dy[:, None], dx[None, :]) > 12
    assert away.mean() > 0.2
    assert diff[away].max() <= 1
    assert np.mean(diff) < 0.5  # and the seams themselves are close too
    # One compile for the full image, one for the tile shape.
    assert deblurrer.num_compilations == 2


def test_tiling_uses_grid_aligned_starts(tiny, monkeypatch):
    module, params = tiny
    calls = []
    real = inference.tile_starts
    monkeypatch.setattr(deblurrer_module, "tile_starts", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    deblurrer = inference.Deblurrer(module, params, bucket="exact")
    out = deblurrer.deblur(smooth_image(np.random.default_rng(5), 210, 60), tile=64, overlap=8)
    assert out.shape == (210, 60, 3)
    starts = [real(*a, **k) for a, k in calls]
    assert starts[0] == [0, 48, 100, 148]  # 212 px (padded) in 64-px tiles; unaligned: 49, 99
    assert all(s % deblurrer.multiple == 0 for ss in starts for s in ss)


def test_bfloat16_close_to_float32(tiny):
    module, params = tiny
    image = smooth_image(np.random.default_rng(4), 24, 20)
    f32 = inference.Deblurrer(module, params).deblur(image)
    bf16 = inference.Deblurrer(module, params, dtype="bfloat16").deblur(image)
    assert bf16.shape == f32.shape
    assert np.abs(f32.astype(int) - bf16).mean() < 3


def test_load_export_and_bad_inputs(export_dir):
    deblurrer = inference.load(export_dir, bucket="exact")
    out = deblurrer.deblur(np.zeros((8, 8, 3), np.uint8))
    assert out.shape == (8, 8, 3)
    with pytest.raises(ValueError, match="uint8"):
        deblurrer.deblur(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="HxWx3"):
        deblurrer.deblur(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match="tile"):
        deblurrer.deblur(np.zeros((8, 8, 3), np.uint8), tile=30)
    with pytest.raises(ValueError, match="checkpoint"):
        inference.load(export_dir / "missing")


def _png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _png16_rgb(path, array: np.ndarray) -> None:
    """Writes a 16-bit RGB PNG by hand (Pillow cannot write one)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = array.shape
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def test_read_image_conversions(tmp_path):
    rng = np.random.default_rng(5)
    gray = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    (tmp_path / "gray.png").write_bytes(_png_bytes(gray))
    loaded = read_image(tmp_path / "gray.png")
    assert loaded.rgb.shape == (9, 7, 3) and np.array_equal(loaded.rgb[..., 1], gray)
    deep = gray.astype(np.uint16) * 257
    Image.fromarray(deep).save(tmp_path / "deep.png")
    loaded = read_image(tmp_path / "deep.png")
    assert loaded.rgb.dtype == np.uint8 and np.array_equal(loaded.rgb[..., 0], gray)
    assert any("16-bit" in n for n in loaded.notes)
    deep_rgb = rng.integers(0, 65536, (6, 5, 3)).astype(np.uint16)
    _png16_rgb(tmp_path / "deep_rgb.png", deep_rgb)
    loaded = read_image(tmp_path / "deep_rgb.png")
    assert np.array_equal(loaded.rgb, (deep_rgb >> 8).astype(np.uint8))
    assert loaded.notes == ["16-bit RGB reduced to 8 bit by Pillow (high byte)"]
    rgba = rng.integers(0, 256, (9, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    loaded = read_image(tmp_path / "rgba.png")
    assert loaded.rgb.shape == (9, 7, 3) and np.array_equal(loaded.alpha, rgba[..., 3])


def test_cli_folder_with_corrupt_file(tmp_path, export_dir, capsys):
    rng = np.random.default_rng(6)
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(smooth_image(rng, 20, 26)).save(src / "a.png")
    Image.fromarray(smooth_image(rng, 13, 11)).save(src / "sub" / "b.jpg", quality=95)
    Image.fromarray(rng.integers(0, 256, (10, 12), dtype=np.uint8)).save(src / "gray.png")
    rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(src / "alpha.png")
    good = _png_bytes(smooth_image(rng, 30, 30))
    (src / "truncated.png").write_bytes(good[: len(good) // 2])
    (src / "notes.jpg").write_text("this is not an image")
    (src / "readme.txt").write_text("not an image suffix: listed as skipped too")
    (src / ".hidden").write_text("hidden files are passed over silently")
    out = tmp_path / "out"
    rc = deblur_main(["--ckpt", str(export_dir), str(src), "--out", str(out), "--quiet"])
    assert rc == 1  # three inputs were skipped
    err = capsys.readouterr().err
    assert "truncated.png" in err and "notes.jpg" in err and "skipped 3" in err
    assert "readme.txt: not an image (suffix .txt)" in err and ".hidden" not in err
    produced = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert produced == ["a.png", "alpha.png", "gray.png", "sub/b.png"]
    with Image.open(out / "alpha.png") as im:
        assert im.mode == "RGBA" and np.array_equal(np.asarray(im)[..., 3], rgba[..., 3])
    with Image.open(out / "sub" / "b.png") as im:
        assert im.size == (11, 13)
    # A single file input; existing outputs are skipped unless --overwrite.
    rc = deblur_main(["--ckpt", str(export_dir), str(src / "a.png"), "--out", str(out), "--quiet"])
    assert rc == 0 and "exists" in capsys.readouterr().err
    assert deblur_main(["--ckpt", str(export_dir), str(tmp_path / "nope"), "--out", str(out)]) == 2


def test_cli_output_names_never_collide_or_replace_inputs(tmp_path, export_dir, capsys):
    rng = np.random.default_rng(7)
    for folder in ("in1", "in2", "same"):
        (tmp_path / folder).mkdir()
    img = smooth_image(rng, 12, 14)
    for name in ("in1/a.jpg", "in1/a.png", "in1/a.bmp", "in2/a.jpg", "same/a.png"):
        Image.fromarray(img).save(tmp_path / name)
    out = tmp_path / "out"
    args = ["--ckpt", str(export_dir), "--quiet"]
    assert deblur_main([*args, str(tmp_path / "in1"), str(tmp_path / "in2"), "--out", str(out)]) == 0
    produced = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert produced == ["in1/a.jpg.png", "in1/a.png", "in1/a.png.png", "in2/a.png"]
    # The same file twice: a second, distinct name.
    twice = tmp_path / "twice"
    assert (
        deblur_main([*args, str(tmp_path / "in2" / "a.jpg"), str(tmp_path / "in2" / "a.jpg"), "--out", str(twice)]) == 0
    )
    assert sorted(p.name for p in twice.glob("*.png")) == ["a.jpg.png", "a.png"]
    # Outputs that would replace an input are refused before anything is written.
    before = (tmp_path / "same" / "a.png").read_bytes()
    capsys.readouterr()
    assert deblur_main([*args, str(tmp_path / "same"), "--out", str(tmp_path / "same"), "--overwrite"]) == 2
    assert "is one of the input folders" in capsys.readouterr().err
    assert deblur_main([*args, str(tmp_path / "same" / "a.png"), "--out", str(tmp_path / "same"), "--overwrite"]) == 2
    assert "would replace the input file" in capsys.readouterr().err
    assert (tmp_path / "same" / "a.png").read_bytes() == before
    # An --out inside the input folder is not searched on reruns.
    for _ in range(2):
        assert deblur_main([*args, str(tmp_path / "in2"), "--out", str(tmp_path / "in2" / "out")]) == 0
    assert sorted(p.relative_to(tmp_path / "in2").as_posix() for p in (tmp_path / "in2").rglob("*.png")) == [
        "out/a.png"
    ]
    # --out is a file.
    assert deblur_main([*args, str(tmp_path / "in2"), "--out", str(tmp_path / "in2" / "a.jpg")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def _pngs(folder) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))


def _manifest_inputs(out) -> dict[str, str]:
    """output name -> input path, from the output folder's manifest."""
    data = json.loads((out / MANIFEST_NAME).read_text())
    return {name: entry["input"] for name, entry in data["outputs"].items()}


def test_cli_output_names_are_stable_across_runs(tmp_path, export_dir, capsys, monkeypatch):
    rng = np.random.default_rng(8)
    inc, out = tmp_path / "inc", tmp_path / "outinc"
    inc.mkdir()
    Image.fromarray(smooth_image(rng, 12, 16)).save(inc / "a.png")
    args = ["--ckpt", str(export_dir), "--quiet", str(inc), "--out", str(out)]
    assert deblur_main(args) == 0
    assert _pngs(out) == ["a.png"]
    assert _manifest_inputs(out) == {"a.png": str(inc / "a.png")}
    first = (out / "a.png").read_bytes()
    # A new input with the same stem gets its own name; a.png is known and unchanged.
    Image.fromarray(smooth_image(rng, 12, 16)).save(inc / "a.jpg")
    capsys.readouterr()
    assert deblur_main(args) == 0
    err = capsys.readouterr().err
    assert f"made from this unchanged input, skipped (use --overwrite to redo): {out / 'a.png'}" in err
    assert "wrote 1 image(s)" in err
    assert _pngs(out) == ["a.jpg.png", "a.png"]
    assert _manifest_inputs(out) == {"a.png": str(inc / "a.png"), "a.jpg.png": str(inc / "a.jpg")}
    assert (out / "a.png").read_bytes() == first
    # A changed input is deblurred again under its own name; the other is skipped.
    Image.fromarray(smooth_image(rng, 14, 16)).save(inc / "a.png")
    assert deblur_main(args) == 0
    err = capsys.readouterr().err
    assert "changed since" in err and "wrote 1 image(s)" in err
    assert _pngs(out) == ["a.jpg.png", "a.png"]
    with Image.open(out / "a.png") as im:
        assert im.size == (16, 14)
    # The manifest is saved after each output: an interrupted run keeps what it wrote.
    real_write, written = deblur_module.write_image, []

    def write_then_fail(path, rgb, alpha=None):
        if written:
            raise KeyboardInterrupt
        written.append(path)
        real_write(path, rgb, alpha)

    monkeypatch.setattr(deblur_module, "write_image", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        deblur_main([*args[:-1], str(tmp_path / "fresh")])
    assert _manifest_inputs(tmp_path / "fresh") == {"a.png": str(inc / "a.jpg")}  # a.jpg sorts first


def test_cli_unknown_existing_output_is_not_credited_to_another_input(tmp_path, export_dir, capsys):
    rng = np.random.default_rng(9)
    inc = tmp_path / "inc"
    inc.mkdir()
    for name in ("a.png", "a.jpg"):
        Image.fromarray(smooth_image(rng, 12, 16)).save(inc / name)
    stray = _png_bytes(np.zeros((4, 4, 3), np.uint8))
    args = ["--ckpt", str(export_dir), "--quiet"]
    # Only one input would be named a.png: the unknown file is skipped as before.
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.png").write_bytes(stray)
    assert deblur_main([*args, str(inc / "a.png"), "--out", str(one)]) == 0
    assert f"exists, skipped (use --overwrite): {one / 'a.png'}" in capsys.readouterr().err
    assert (one / "a.png").read_bytes() == stray and not (one / MANIFEST_NAME).exists()
    # Two inputs would be named a.png: neither is credited with the unknown file.
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.png").write_bytes(stray)
    assert deblur_main([*args, str(inc), "--out", str(two)]) == 0
    assert "exists" not in capsys.readouterr().err
    assert _pngs(two) == ["a.jpg.png", "a.png", "a.png.png"]
    assert (two / "a.png").read_bytes() == stray
    assert _manifest_inputs(two) == {"a.jpg.png": str(inc / "a.jpg"), "a.png.png": str(inc / "a.png")}
    # A damaged manifest is an error that says what to do.
    (two / MANIFEST_NAME).write_text("{not json")
    assert deblur_main([*args, str(inc), "--out", str(two)]) == 2
    assert "delete it" in capsys.readouterr().err


def test_read_image_16_and_32_bit_integer_gray(tmp_path):
    values = np.array([[0, 128, 129, 257, 385, 386, 32896, 65535]], dtype=np.uint16)
    expected = np.array([[0, 0, 1, 1, 1, 2, 128, 255]], dtype=np.uint8)  # round(v / 257)
    Image.fromarray(values).save(tmp_path / "g16.png")
    Image.fromarray(values.astype(np.int32), mode="I").save(tmp_path / "i32.tif")
    kinds = {"g16.png": "16-bit grayscale (I;16)", "i32.tif": "32-bit integer grayscale (I) with values in 0..65535"}
    for name, kind in kinds.items():
        loaded = read_image(tmp_path / name)
        assert np.array_equal(loaded.rgb, np.repeat(expected[..., None], 3, axis=-1)), name
        assert loaded.notes == [f"{kind} scaled to 8 bit (round(v / 257)) and converted to RGB"]
    Image.fromarray(np.array([[0, 50000, 100000]], dtype=np.int32), mode="I").save(tmp_path / "wide.tif")
    with pytest.raises(ImageReadError, match=r"values 0\.\.100000, outside the 16-bit range 0\.\.65535; rescale"):
        read_image(tmp_path / "wide.tif")


def test_cli_refuses_32_bit_values_beyond_16_bit(tmp_path, export_dir, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.array([[0, 50000, 100000]] * 8, dtype=np.int32), mode="I").save(src / "wide.tif")
    Image.fromarray(smooth_image(np.random.default_rng(10), 8, 8)).save(src / "ok.png")
    out = tmp_path / "out"
    assert deblur_main(["--ckpt", str(export_dir), "--quiet", str(src), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "wide.tif: I image with values 0..100000" in err and "skipped 1" in err
    assert _pngs(out) == ["ok.png"]


def test_cli_follows_folder_links_without_looping(tmp_path, export_dir, capsys):
    rng = np.random.default_rng(11)
    src, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    (src / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    img = smooth_image(rng, 8, 12)
    for path in (src / "a.png", src / "sub" / "b.png", elsewhere / "c.png"):
        Image.fromarray(img).save(path)
    os.symlink(elsewhere, src / "linked")  # followed
    os.symlink(src, src / "sub" / "loop")  # a cycle: not followed again
    args = ["--ckpt", str(export_dir), "--quiet"]
    out = tmp_path / "out"
    assert deblur_main([*args, str(src), "--out", str(out)]) == 0
    assert _pngs(out) == ["a.png", "linked/c.png", "sub/b.png"]
    assert f"note: {src / 'sub' / 'loop'} links back to {src}" in capsys.readouterr().err
    # With several inputs, a linked input's results go under the link's name.
    os.symlink(elsewhere, tmp_path / "alias")
    multi = tmp_path / "multi"
    assert deblur_main([*args, str(tmp_path / "alias"), str(src), "--out", str(multi)]) == 0
    assert _pngs(multi) == ["alias/c.png", "photos/a.png", "photos/linked/c.png", "photos/sub/b.png"]
    # An --out that contains the input folder does not hide the input.
    assert deblur_main([*args, str(elsewhere), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "c.png").is_file()


def test_cli_same_named_folders_get_distinct_stable_subfolders(tmp_path, export_dir, capsys):
    rng = np.random.default_rng(12)
    a, b = tmp_path / "a" / "pics", tmp_path / "b" / "pics"
    for folder in (a, b):
        folder.mkdir(parents=True)
        Image.fromarray(smooth_image(rng, 8, 8)).save(folder / "p.png")
    out = tmp_path / "out"
    args = ["--ckpt", str(export_dir), "--quiet", "--out", str(out)]
    assert deblur_main([*args, str(a), str(b)]) == 0
    assert _pngs(out) == ["pics-2/p.png", "pics/p.png"]
    assert _manifest_inputs(out) == {"pics/p.png": str(a / "p.png"), "pics-2/p.png": str(b / "p.png")}
    # Reversed order: each folder keeps its sub-folder; nothing is redone.
    capsys.readouterr()
    assert deblur_main([*args, str(b), str(a)]) == 0
    assert "wrote 0 image(s)" in capsys.readouterr().err
    assert _pngs(out) == ["pics-2/p.png", "pics/p.png"]


def test_unit_conventions_roundtrip():
    u8 = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
    np.testing.assert_array_equal(np.asarray(to_uint8(to_model(u8, jnp.float32))), u8)


def test_self_ensemble_is_the_mean_of_the_eight_transforms(tiny):
    """x8: one compiled function per shape whose output is the mean of D over the 8
    flips/transposes, each mapped back; with tiling too."""
    module, params = tiny
    rng = np.random.default_rng(11)
    image = (64 + smooth_image(rng, 24, 32) // 2).astype(np.uint8)  # mid-range: no clipping
    x8 = inference.Deblurrer(module, params, bucket="exact", self_ensemble=True)
    got = x8.deblur_float(image)
    assert x8.num_compilations == 1
    plain = inference.Deblurrer(module, params, bucket="exact")
    views = []
    for t in (False, True):
        for fy in (False, True):
            for fx in (False, True):
                v = np.swapaxes(image, 0, 1) if t else image
                v = v[::-1] if fy else v
                v = v[:, ::-1] if fx else v
                y = plain.deblur_float(np.ascontiguousarray(v))
                y = y[:, ::-1] if fx else y
                y = y[::-1] if fy else y
                views.append(np.swapaxes(y, 0, 1) if t else y)
    np.testing.assert_allclose(got, np.mean(views, axis=0), atol=1e-5)
    assert np.abs(got - plain.deblur_float(image)).max() > 1e-3  # it is not the plain forward
    tiled = x8.deblur_float(smooth_image(rng, 40, 72), tile=32, overlap=8)
    assert tiled.shape == (40, 72, 3) and np.isfinite(tiled).all()
