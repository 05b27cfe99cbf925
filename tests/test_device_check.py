"""benchmarks/device_check.py: the prepared GPU check runs end to end at tiny sizes on a CPU
(``--smoke``), so the one command a lent GPU runs cannot rot while no GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import device_check  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    base = tmp_path_factory.mktemp("device_check")
    out, work = base / "out", base / "work"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["JAX_PLATFORMS"] = "cpu"
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "device_check.py"),
            "--smoke",
            "--out",
            str(out),
            "--work",
            str(work),
        ],
        cwd=base,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, seconds


def test_smoke_writes_every_file_and_every_stage_passes(smoke) -> None:
    out, seconds = smoke
    assert sorted(p.name for p in out.iterdir()) == sorted(device_check.OUT_FILES)
    assert all(p.stat().st_size <= device_check.MAX_OUT_FILE_BYTES for p in out.iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["smoke"] is True and summary["wall_s"] <= seconds
    stages = summary["stages"]
    expected = ["versions", "data_probe", "gpu_tests", "bench", "train", "publish", "evaluate", "unseen"]
    assert sorted(stages) == sorted(expected)
    assert {name: s["status"] for name, s in stages.items()} == dict.fromkeys(expected, "ok"), stages
    for key in ("date", "device", "jax", "bench_table", "readme_table", "train_command"):
        assert summary[key], key
    assert "SMOKE RUN" in summary["readme_table"] and summary["jax"] in summary["readme_table"]
    assert (out / "summary.md").read_text().startswith("# Device check: ")


def test_smoke_versions_and_gpu_tests(smoke) -> None:
    out, _ = smoke
    versions = json.loads((out / "versions.json").read_text())
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain"):
        assert versions["packages"][name], name
    assert versions["platform"] == "cpu" and versions["device_count"] >= 1 and versions["builtin_photos"] == 15
    root = ET.parse(out / "gpu_tests.xml").getroot()
    cases = list(root.iter("testcase"))
    assert len(cases) >= 6  # on a CPU every one is skipped: "needs a GPU"
    assert all(case.find("skipped") is not None for case in cases)
    tests = json.loads((out / "summary.json").read_text())["gpu_tests"]
    assert tests["total"] == len(cases) and tests["skipped"] == len(cases)


def test_smoke_bench_covers_the_paper_steps_and_inference(smoke) -> None:
    out, _ = smoke
    bench = json.loads((out / "bench_gpu.json").read_text())
    # The smoke run measures two of the four train variants, the deblur step only (a GPU
    # run: all four, deblur and finetune).
    for dtype, remat in (("float32", "plain"), ("bfloat16", "remat")):
        r = bench[f"train_{dtype}_{remat}"]
        assert r["deblur_step_s"] > 0 and r["remat"] == (remat == "remat") and r["dtype"] == dtype, r
    for dtype in ("float32", "bfloat16"):
        f = bench[f"forward_{dtype}"]
        assert f["seconds_b1"] > 0 and f["seconds_b4"] > 0, f
    assert bench["demo"]["steps_per_s"] > 0 and bench["matmul"]["bf16_tflops"] > 0
    assert bench["fixture"]["max_abs_err_f32_highest"] < 1e-3
    assert "| measure | float32 | bfloat16 |" in bench["table"] and "failed" not in bench["table"]


def test_smoke_trains_evaluates_and_publishes(smoke, tmp_path: Path) -> None:
    out, _ = smoke
    summary = json.loads((out / "summary.json").read_text())
    train, plan = summary["train"], summary["train_plan"]
    assert train["steps"] >= 2 and plan["steps"] >= 1 and plan["max_train_seconds"] > 0
    assert "--config=configs/gpu_demo.py" in summary["train_command"]
    for key in ("eval", "unseen"):
        bands = summary[key]["per_band"]
        assert bands and all(isinstance(b["gain_db"], float) for b in bands.values()), summary[key]
    assert set(summary["unseen"]["per_band"]) == {"mild", "gopro", "strong"}
    assert isinstance(summary["bar"]["met"], bool) and summary["bar"]["unseen_generator"] is not None
    weights = summary["weights"]
    assert weights["under_30_mib"] and weights["comes_back"]
    with tarfile.open(out / "weights_demo.tar") as tar:
        names = tar.getnames()
        assert {"demo/model_config.json", "demo/SHA256SUMS", "demo/training.json"} <= set(names)
        tar.extractall(tmp_path, filter="data")
    from aspdc_jax.weights import load_for_inference

    loaded = load_for_inference(tmp_path / "demo")  # the manifest checks out
    assert loaded.deblur.width == 4
    with tarfile.open(out / "details.tar") as tar:
        names = set(tar.getnames())
    assert "details/eval/metrics.json" in names and any(n.endswith(".png") for n in names)


def test_a_failing_stage_is_recorded_and_the_next_still_runs(tmp_path: Path) -> None:
    args = device_check.argparse.Namespace(smoke=True, out=str(tmp_path / "out"), work=str(tmp_path / "w"), budget_s=60)
    check = device_check.Check(args)
    check.stage("first", lambda: check.command("first", [sys.executable, "-c", "raise SystemExit(3)"], 30))
    check.stage("second", lambda: 1 / 0)
    check.stage("third", lambda: None)
    check.stage("fourth", lambda: None, needs=("first",))
    assert check.stages["first"].status == "failed" and check.stages["first"].note == "exit 3"
    assert check.stages["second"].status == "failed" and "ZeroDivisionError" in check.stages["second"].note
    assert check.stages["third"].status == "ok"
    assert check.stages["fourth"].status == "skipped"
    check.log.close()


def test_the_device_command_fits_the_tool() -> None:
    line = device_check.device_command(520)
    assert len(line) < 2000 and "$OUT" in line and ".whl/*.whl" in line and "\n" not in line
