"""python -m aspdc_jax.export: the artifact runs in a Python that imports only jax and
numpy, at sizes the export never saw, bit for bit the Deblurrer's output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from aspdc_jax.export import main as export_main
from aspdc_jax.inference import Deblurrer
from aspdc_jax.weights import load_for_inference
from tests.helpers.models import smooth_image, tiny_export

# A fresh interpreter: deserialize and run the artifact, report what got imported.
CONSUMER = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np

    with open(sys.argv[1], "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    for path in sys.argv[2:]:
        np.save(path + ".out.npy", np.asarray(exported.call(np.load(path))))
    ours = sorted(m for m in sys.modules if m.split(".")[0] in ("aspdc_jax", "flax", "orbax", "tests"))
    print("RESULT" + json.dumps({"modules": ours, "platforms": list(exported.platforms),
                                 "in": str(exported.in_avals[0]), "out": str(exported.out_avals[0])}))
    """
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.mktemp("ckpt"), with_reblur=False)


def test_exported_model_runs_with_jax_alone(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    artifact = tmp_path / "model.jaxexport"
    assert export_main(["--ckpt", str(ckpt), "--out", str(artifact)]) == 0
    assert f"wrote {artifact}" in capsys.readouterr().out
    rng = np.random.default_rng(7)
    batches = {
        "even": np.stack([smooth_image(rng, 20, 28) for _ in range(2)]),
        "odd": smooth_image(rng, 13, 18)[None],  # padded to 16x20 inside, cropped back
    }
    for name, batch in batches.items():
        np.save(tmp_path / f"{name}.npy", batch)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["JAX_PLATFORMS"] = "cpu"
    inputs = [str(tmp_path / f"{name}.npy") for name in batches]
    proc = subprocess.run(
        [sys.executable, "-c", CONSUMER, str(artifact), *inputs],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads([x for x in proc.stdout.splitlines() if x.startswith("RESULT")][-1][len("RESULT") :])
    assert result["modules"] == [], result
    assert result["in"] == result["out"] == "uint8[b,h,w,3]"
    assert set(result["platforms"]) >= {"cpu", "cuda", "tpu"}
    deblurrer = Deblurrer.from_loaded(load_for_inference(ckpt), bucket="exact", batch_size=2)
    for name, batch in batches.items():
        got = np.load(tmp_path / f"{name}.npy.out.npy")
        assert got.dtype == np.uint8 and got.shape == batch.shape
        np.testing.assert_array_equal(got, deblurrer.deblur(batch), err_msg=name)


def test_missing_checkpoint_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model.jaxexport"
    assert export_main(["--ckpt", str(tmp_path / "nope"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err.splitlines()[0]
    assert "Traceback" not in err and not out.exists()


def test_existing_output_needs_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model.jaxexport"
    out.write_bytes(b"old")
    assert export_main(["--ckpt", str(tmp_path), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err.splitlines()[0]
    assert out.read_bytes() == b"old"
    assert export_main(["--ckpt", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err.splitlines()[0]
