"""The deblur CLI on Ray Data (``--ray``): one local Ray cluster on 127.0.0.1 with 2 CPUs.

Skipped when Ray is not installed (``pip install -e '.[ray]'``).
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from PIL import Image

from aspdc_jax.inference import cli
from aspdc_jax.inference.cli import MANIFEST_NAME
from aspdc_jax.inference.ray_data import REPORT_NAME
from tests.helpers.models import smooth_image, tiny_export

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore")  # Ray's own deprecation/resource warnings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster() -> Any:
    """A local Ray bound to 127.0.0.1 with 2 CPUs; its workers share the session's XLA cache."""
    cache = jax.config.jax_compilation_cache_dir
    env = {"JAX_PLATFORMS": "cpu"}
    if cache:
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(cache),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
        )
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": env},
        logging_level="ERROR",
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


def _photos(folder: Path, seed: int) -> None:
    """Mixed sizes (three buckets, one tiled), 16-bit gray, RGBA, CMYK, EXIF-rotated, and a bad file."""
    rng = np.random.default_rng(seed)
    (folder / "sub").mkdir(parents=True)
    for i, (h, w) in enumerate([(20, 24), (19, 22), (33, 40), (13, 18), (44, 30)]):
        Image.fromarray(smooth_image(rng, h, w)).save(folder / ("sub" if i % 2 else "") / f"im{i}.png")
    gray16 = (smooth_image(rng, 17, 21)[..., 0].astype(np.uint16) * 257 + 100).astype(np.uint16)
    Image.fromarray(gray16).save(folder / "gray16.png")
    rgba = np.dstack([smooth_image(rng, 16, 20), rng.integers(0, 256, (16, 20), dtype=np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(folder / "alpha.png")
    Image.fromarray(smooth_image(rng, 18, 14)).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    rotated = Image.fromarray(smooth_image(rng, 14, 22))
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(folder / "rotated.jpg", exif=exif, quality=95)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny checkpoint, unseen photos, and the local CLI's outputs for them."""
    root = tmp_path_factory.mktemp("ray_job")
    ckpt = tiny_export(root / "ckpt", seed=7)
    photos = root / "photos"
    _photos(photos, seed=123)
    local = root / "local"
    base = ["--ckpt", str(ckpt), *_SHAPES, "--quiet"]
    assert cli.main([*base, str(photos), "--out", str(local)]) == 1  # broken.png is skipped
    return {"ckpt": ckpt, "photos": photos, "local": local, "root": root}


#: Mixed sizes padded to one bucket (48x48) and one tiled photo (40x48 tiles): few compiles.
_SHAPES = ["--bucket", "48", "--tile", "40", "--overlap", "8"]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _same_as_local(out: Path, local: Path) -> None:
    """Every PNG equal byte for byte, and the same manifest records."""
    ours, theirs = _files(out), _files(local)
    pngs = sorted(k for k in theirs if k.endswith(".png"))
    assert sorted(k for k in ours if k.endswith(".png")) == pngs and len(pngs) == 9
    for name in pngs:
        assert ours[name] == theirs[name], name
    assert json.loads(ours[MANIFEST_NAME]) == json.loads(theirs[MANIFEST_NAME])
    assert not [k for k in ours if k.endswith(".tmp")]


@pytest.fixture
def renames(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """Counts the driver's renames onto each output PNG."""
    counts: collections.Counter[str] = collections.Counter()
    replace = os.replace

    def counting(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if str(dst).endswith(".png"):
            counts[str(dst)] += 1
        replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", counting)
    return counts


def _ray_args(job: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["--ckpt", str(job["ckpt"]), *_SHAPES, "--quiet", str(job["photos"]), "--out", str(out), "--ray", *extra]


def test_ray_cli_equals_local_bit_for_bit_with_an_actor_killed(
    cluster: Any,
    job: dict[str, Path],
    tmp_path: Path,
    renames: collections.Counter[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    """2 CPU actors, one of which dies (os._exit) on its second batch: Ray restarts it and
    retries the batch; every output is written once, equal to the local CLI's."""
    from aspdc_jax.inference import ray_data

    marker = tmp_path / "crashed"

    class DiesOnce(ray_data.DeblurBatch):
        calls = 0

        def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
            DiesOnce.calls += 1
            if DiesOnce.calls == 2:
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    pass
                else:
                    os._exit(1)
            return super().__call__(batch)

    monkeypatch.setattr(ray_data, "DeblurBatch", DiesOnce)
    out = tmp_path / "out"
    assert cli.main(_ray_args(job, out, "--actors", "2", "--batch_size", "1")) == 1  # broken.png
    assert marker.exists()  # an actor did die mid-job
    err = capsys.readouterr().err
    assert "wrote 9 image(s)" in err and "skipped 1" in err and "broken.png" in err
    _same_as_local(out, job["local"])
    assert set(renames.values()) == {1} and len(renames) == 9  # each output written once
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["written"] == 9 and len(report["skipped"]) == 1 and "broken.png" in report["skipped"][0]


def test_ray_rerun_skips_what_the_local_cli_did(job: dict[str, Path], tmp_path: Path, capsys: Any) -> None:
    """--ray on the local CLI's output folder: everything is done, nothing runs on Ray."""
    import shutil

    photos, out = tmp_path / "photos", tmp_path / "out"
    shutil.copytree(job["photos"], photos, ignore=shutil.ignore_patterns("broken.png"))
    argv = ["--ckpt", str(job["ckpt"]), *_SHAPES, "--quiet", str(photos), "--out", str(out)]
    assert cli.main(argv) == 0
    capsys.readouterr()
    before = _files(out)
    assert cli.main([*argv, "--ray", "--actors", "2"]) == 0
    err = capsys.readouterr().err
    assert "wrote 0 image(s)" in err and err.count("unchanged input, skipped") == 9
    after = _files(out)
    assert {k: v for k, v in after.items() if k != REPORT_NAME} == before


@pytest.mark.slow
def test_ray_batches_of_three_then_a_rerun(
    cluster: Any, job: dict[str, Path], tmp_path: Path, renames: collections.Counter[str], capsys: Any
) -> None:
    out = tmp_path / "out"
    assert cli.main(_ray_args(job, out, "--actors", "2", "--batch_size", "3")) == 1
    _same_as_local(out, job["local"])
    assert set(renames.values()) == {1} and len(renames) == 9
    renames.clear()
    capsys.readouterr()
    assert cli.main(_ray_args(job, out, "--actors", "1")) == 1  # only broken.png is tried again
    err = capsys.readouterr().err
    assert "wrote 0 image(s)" in err and err.count("unchanged input, skipped") == 9
    assert not renames


def test_importing_inference_does_not_import_ray() -> None:
    code = "import sys, aspdc_jax.inference, aspdc_jax.inference.cli; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


@pytest.mark.slow
def test_export_artifact_and_file_uri(cluster: Any, job: dict[str, Path], tmp_path: Path) -> None:
    """The actors load a jax.export file instead of the checkpoint, and read the inputs
    through a file:// URI: untiled outputs equal the local CLI's bit for bit."""
    from aspdc_jax.export import export_deblur
    from aspdc_jax.weights import load_for_inference

    loaded = load_for_inference(job["ckpt"])
    artifact = tmp_path / "tiny.jaxexport"
    artifact.write_bytes(bytes(export_deblur(loaded, loaded.deblur_params, platforms=("cpu",)).serialize()))
    out = tmp_path / "out"
    untiled = ["--bucket", "48", "--tile", "0", "--quiet"]
    ray_argv = ["--ckpt", str(artifact), *untiled, f"file://{job['photos']}", "--out", str(out), "--ray"]
    assert cli.main([*ray_argv, "--actors", "2"]) == 1
    local = tmp_path / "local"
    assert cli.main(["--ckpt", str(job["ckpt"]), *untiled, str(job["photos"]), "--out", str(local)]) == 1
    ours, theirs = _files(out), _files(local)
    pngs = sorted(k for k in theirs if k.endswith(".png"))
    assert pngs == sorted(k for k in ours if k.endswith(".png"))
    differ = {
        name: int(np.abs(np.asarray(Image.open(out / name), int) - np.asarray(Image.open(local / name))).max())
        for name in pngs
        if ours[name] != theirs[name]
    }
    assert not differ, differ  # name: largest pixel difference
