"""aspdc_jax.inference (buckets, padding, tiling) and the deblur CLI, on a tiny DeblurNet."""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from eval_helpers import smooth_image, tiny_export, tiny_models
from PIL import Image

from aspdc_jax import inference
from aspdc_jax.deblur import main as deblur_main
from aspdc_jax.deblur import read_image
from aspdc_jax.images import to_model, to_uint8


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
    import struct  # noqa: PLC0415
    import zlib  # noqa: PLC0415

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
    deep = (gray.astype(np.uint16) * 257)
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
    (src / "readme.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "out"
    rc = deblur_main(["--ckpt", str(export_dir), str(src), "--out", str(out), "--quiet"])
    assert rc == 1  # two inputs were skipped
    err = capsys.readouterr().err
    assert "truncated.png" in err and "notes.jpg" in err and "skipped 2" in err
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
    assert deblur_main([*args, str(tmp_path / "in2" / "a.jpg"), str(tmp_path / "in2" / "a.jpg"), "--out", str(twice)]) == 0
    assert sorted(p.name for p in twice.iterdir()) == ["a.jpg.png", "a.png"]
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
    assert sorted(p.relative_to(tmp_path / "in2").as_posix() for p in (tmp_path / "in2").rglob("*.png")) == ["out/a.png"]
    # --out is a file.
    assert deblur_main([*args, str(tmp_path / "in2"), "--out", str(tmp_path / "in2" / "a.jpg")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_unit_conventions_roundtrip():
    u8 = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
    np.testing.assert_array_equal(np.asarray(to_uint8(to_model(u8, jnp.float32))), u8)
