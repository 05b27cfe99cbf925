"""The web app (aspdc_jax.app): its handlers as plain functions, its API endpoint through
gradio_client, and one end-to-end run in a real headless Chromium (Debian's package, driven
by Playwright; skipped only where /usr/bin/chromium is absent).

The handlers run a width-4 model at 32x32 (tiles of 32 for the tiled photo, so one compiled
shape). The server tests start ``python -m aspdc_jax.app`` on converted official weights
(``python -m aspdc_jax.convert`` of the reduced-width fixture) on 127.0.0.1 and compare
what it returns with ``python -m aspdc_jax.deblur``'s PNG for the same photo, byte for byte.

``ASPDC_APP_SCREENSHOT=docs/images/app.png`` makes the browser test save its screenshot there.
"""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aspdc_jax.app.handlers import AppError, DeblurApp, Options, changed_most, zoom_pair
from aspdc_jax.images import read_image, write_image
from tests.helpers.models import tiny_export

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
CHROMIUM = Path("/usr/bin/chromium")
SMALL = Options(tile=32, overlap=8)  # the tiled photo runs in 32x32 tiles: one compiled shape


# ---------------------------------------------------------------------------- photos
def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR))


def _photos(folder: Path) -> dict[str, Path]:
    """One file per kind of input the CLI converts, all 32x32 but the tiled one (40x48)."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = _rgb(32, 32)
    paths = {}
    paths["rgb"] = folder / "plain.png"
    Image.fromarray(rgb).save(paths["rgb"])
    paths["gray16"] = folder / "gray16.png"
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257 + 3).astype(np.uint16)).save(paths["gray16"])
    paths["gray"] = folder / "gray.jpg"
    Image.fromarray(rgb[..., 1]).save(paths["gray"], quality=95)
    paths["cmyk"] = folder / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(paths["cmyk"], quality=95)
    paths["alpha"] = folder / "alpha.png"
    alpha = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1))
    Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(paths["alpha"])
    paths["tiled"] = folder / "tiled.png"
    Image.fromarray(_rgb(40, 48, seed=1)).save(paths["tiled"])
    return paths


def _cli_png(deblurrer, path: Path, out: Path) -> bytes:
    """What the deblur CLI writes for ``path``: read_image -> Deblurrer -> write_image."""
    image = read_image(path)
    write_image(out, deblurrer.deblur(image.rgb), image.alpha)
    return out.read_bytes()


# ---------------------------------------------------------------------------- handlers
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.mktemp("app_tiny") / "export")


@pytest.fixture(scope="module")
def app(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    # 0.01 megapixels: 10,000 pixels, so a 64x200 photo is "very large" here.
    app = DeblurApp(tiny_ckpt, workdir=tmp_path_factory.mktemp("app_results"), max_megapixels=0.01)
    yield app
    app.close()


def test_each_kind_of_photo_gives_the_cli_png(app: DeblurApp, tiny_ckpt: Path, tmp_path: Path) -> None:
    from aspdc_jax import inference

    photos = _photos(tmp_path / "in")
    seen = []
    batch = app.deblur_files(
        list(photos.values()), SMALL, progress=lambda done, total, name: seen.append((done, total, name))
    )
    assert len(batch.results) == len(photos), batch.messages
    assert seen[0] == (0, len(photos), "plain.png") and seen[-1] == (len(photos), len(photos), "")
    cli = inference.load(tiny_ckpt, tile=SMALL.tile, overlap=SMALL.overlap)
    for (kind, path), result in zip(photos.items(), batch.results):
        assert result.output.name == f"{path.stem}.png"
        assert result.output.read_bytes() == _cli_png(cli, path, tmp_path / "cli" / f"{kind}.png"), kind
        assert result.before.is_file() and result.after.is_file() and result.zoom.is_file()
    notes = {kind: " ".join(r.notes) for kind, r in zip(photos, batch.results)}
    assert "16-bit grayscale" in notes["gray16"] and "L converted to RGB" in notes["gray"]
    assert "CMYK converted to RGB" in notes["cmyk"] and "alpha channel kept" in notes["alpha"]
    assert Image.open(batch.results[4].output).mode == "RGBA"  # alpha put back, as the CLI does
    assert all("\n" not in m for m in batch.messages)
    assert "tiled.png: deblurred (48x40" in batch.messages[-1]


def test_bad_files_get_one_line_each_and_the_rest_goes_on(app: DeblurApp, tmp_path: Path) -> None:
    good = _photos(tmp_path / "in")["rgb"]
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[:200])
    huge = tmp_path / "huge.png"
    Image.fromarray(_rgb(64, 200)).save(huge)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    batch = app.deblur_files([notes, truncated, huge, empty, good], SMALL)
    assert [r.name for r in batch.results] == ["plain.png"]
    lines = batch.messages
    assert len(lines) == 5 and all("\n" not in line for line in lines)
    assert lines[0] == "notes.txt: not an image Pillow can read"
    assert lines[1].startswith("cut.png: unreadable or truncated image")
    assert lines[2].startswith("huge.png: 200x64 is 0.0128 megapixels, above this app's limit of 0.01")
    assert lines[3].startswith("empty.jpg: not an image")
    assert str(tmp_path) not in " ".join(lines)  # named as uploaded, not by server paths
    with pytest.raises(AppError, match=r"^notes\.txt: not an image"):
        app.deblur_one(notes)
    assert app.deblur_files([], SMALL).messages[0].startswith("No photo given")


def test_options_reference_and_zoom(app: DeblurApp, tmp_path: Path) -> None:
    good = _photos(tmp_path / "in")["rgb"]
    batch = app.deblur_files([good], Options(tile=30))
    assert batch.results == [] and batch.messages[0].startswith("options: tile must be a positive multiple of 4")
    other = tmp_path / "other.png"
    Image.fromarray(_rgb(16, 16)).save(other)
    batch = app.deblur_files([good, other], SMALL, reference=good)
    first, second = batch.results
    m = first.metrics
    assert m is not None and m["psnr_in"] == float("inf") and m["ssim_in"] == pytest.approx(1.0, abs=1e-5)
    assert np.isfinite(m["psnr_out"]) and "output PSNR" in first.metrics_text()
    assert second.metrics is None and "no PSNR/SSIM: the reference is 32x32, this photo 16x16" in second.notes
    # The zoom finds a planted change and shows both crops side by side.
    before = np.zeros((64, 80, 3), np.uint8)
    after = before.copy()
    after[40:50, 60:70] = 200
    x, y, side = changed_most(before, after, side=16)
    assert side == 16 and x <= 60 and x + 16 >= 70 and y <= 40 and y + 16 >= 50
    assert zoom_pair(before, after, (x, y, side), shown=64).shape == (64, 132, 3)


def test_without_weights_every_answer_says_how_to_get_them(tmp_path: Path) -> None:
    for ckpt in (None, tmp_path / "missing"):
        app = DeblurApp(ckpt, workdir=tmp_path / "w")
        error = app.weights_error
        assert error is not None and "\n" not in error and error.count(". ") == 0
        assert "python -m aspdc_jax.convert" in error and "configs/quickstart.py" in error
        assert ("missing" in error) == (ckpt is not None)
        assert app.deblur_files([tmp_path], SMALL).messages == [error]
        with pytest.raises(AppError, match="No weights loaded"):
            app.deblur_one(tmp_path / "x.png")
        assert app.model_card()["weights"] == "none"


def test_model_card(app: DeblurApp) -> None:
    card = app.model_card()
    assert card["weights"].startswith("export ") and card["ema"] == "not recorded (an export)"
    assert re.match(r"[\d,]+ \(DeblurNet width 4, 1 ASPDC groups\)", card["parameters"])
    assert "CPU" in card["device"]


# ---------------------------------------------------------------------------- server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _photo(path: Path, sharp_path: Path | None = None) -> Path:
    """A small blurred photo (scikit-image's cat, box-blurred), and its sharp original."""
    import skimage.data
    from PIL import ImageFilter

    sharp = Image.fromarray(skimage.data.chelsea()).resize((96, 64), Image.Resampling.LANCZOS)
    sharp.filter(ImageFilter.BoxBlur(1.5)).save(path)
    if sharp_path is not None:
        sharp.save(sharp_path)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """(url, folder, the CLI's PNG of folder/blurred.png) with the app serving converted official weights."""
    pytest.importorskip("gradio", reason="the app extra is not installed: pip install -e '.[app]'")
    from aspdc_jax import convert

    folder = tmp_path_factory.mktemp("app_server")
    weights = folder / "official"
    assert convert.main(["--deblur", str(FIXTURES / "DeblurringNet_FT.pth"), "--out", str(weights)]) == 0
    photo = _photo(folder / "blurred.png", folder / "sharp.png")
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", GRADIO_ANALYTICS_ENABLED="False")
    env["JAX_COMPILATION_CACHE_DIR"] = str(folder / "xla_cache")  # the CLI and the app share compilations
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    log = (folder / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "aspdc_jax.app", "--ckpt", str(weights), "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    cli = subprocess.run(
        [sys.executable, "-m", "aspdc_jax.deblur", "--ckpt", str(weights), str(photo), "--out", str(folder / "cli")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            assert proc.poll() is None, (folder / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the app did not answer within 180 s"
            time.sleep(0.5)
        yield url, folder, (folder / "cli" / "blurred.png").read_bytes()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    assert "Traceback" not in (folder / "server.log").read_text()


def _alive(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status == 200


def test_api_endpoint_two_clients_at_once_and_a_bad_file(server) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError as ClientAppError

    url, folder, cli_png = server
    client = Client(url, verbose=False)
    jobs = [client.submit(handle_file(str(folder / "blurred.png")), api_name="/deblur") for _ in range(2)]
    outputs = [Path(job.result(timeout=240)) for job in jobs]  # queued one after the other; both finish
    assert [p.name for p in outputs] == ["blurred.png", "blurred.png"]
    assert all(p.read_bytes() == cli_png for p in outputs)
    notes = folder / "notes.txt"
    notes.write_text("not a photo")
    with pytest.raises(ClientAppError, match=r"notes\.txt: not an image Pillow can read"):
        client.predict(handle_file(str(notes)), api_name="/deblur")
    assert _alive(url)


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="no /usr/bin/chromium (apt-get install chromium; .ci/run does)")
def test_browser_upload_result_download(server, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the app extra)")
    url, folder, cli_png = server
    notes = folder / "notes.txt"
    notes.write_text("not a photo")
    outside: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh --user-data-dir
            executable_path=str(CHROMIUM),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
            viewport={"width": 1280, "height": 1000},
            accept_downloads=True,
        )
        try:
            page = browser.new_page()
            page.on("request", lambda r: None if r.url.startswith((url, "data:", "blob:")) else outside.append(r.url))
            expect = sync_api.expect
            # A file that is not an image: one line on the page, and the server lives on.
            page.goto(url)
            page.locator("#photos input[type=file]").set_input_files(str(notes))
            expect(page.locator("#photos a[href$='/notes.txt']")).to_have_count(1, timeout=30_000)  # uploaded
            page.locator("#run").click()
            messages = page.locator("#messages textarea")
            expect(messages).to_have_value("notes.txt: not an image Pillow can read", timeout=120_000)
            # A photo: upload -> result -> download, equal to the deblur CLI's PNG.
            page.reload()
            page.locator("#photos input[type=file]").set_input_files(str(folder / "blurred.png"))
            page.locator("#reference input[type=file]").set_input_files(str(folder / "sharp.png"))
            expect(page.locator("#photos a[href$='/blurred.png']")).to_have_count(1, timeout=30_000)
            expect(page.locator("#reference a[href$='/sharp.png']")).to_have_count(1, timeout=30_000)
            page.locator("#run").click()
            expect(messages).to_have_value(re.compile(r"^blurred\.png: deblurred \(96x64"), timeout=180_000)
            link = page.locator("#downloads a[href$='/blurred.png']").first
            expect(link).to_be_visible(timeout=30_000)
            expect(page.locator("#slider img").first).to_be_visible(timeout=30_000)
            expect(page.locator("#caption")).to_contain_text("output PSNR", timeout=30_000)
            with page.expect_download(timeout=60_000) as download:
                link.click()
            saved = tmp_path / "downloaded.png"
            download.value.save_as(saved)
            assert saved.read_bytes() == cli_png
            page.mouse.move(0, 0)
            shot = page.screenshot(full_page=True)
        finally:
            browser.close()
    assert not outside, f"the page requested addresses beyond the app: {outside[:5]}"
    assert _alive(url)
    (tmp_path / "app.png").write_bytes(shot)
    target = os.environ.get("ASPDC_APP_SCREENSHOT")
    if target:
        image = Image.open(io.BytesIO(shot)).convert("RGB")
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        palette = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        image.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(target, optimize=True)  # < 300 KB
