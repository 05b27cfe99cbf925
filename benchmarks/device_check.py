r"""One prepared device check: GPU tests, GPU benchmarks, a time-boxed demo training run, its
evaluation and its published weights, written into one output folder.

    python benchmarks/device_check.py --out OUT [--budget_s 520] [--smoke]

Stages, each with its own time box; a failing or late stage is recorded and the next one
still runs (those that need its output say so):

 1. versions     jax / jaxlib / flax / optax / orbax / grain versions, the device, its memory
 2. gpu_tests    ``pytest -m gpu tests/test_gpu.py`` (junit XML): the exported artifact on
                 CUDA, the official fixtures in float32 (HIGHEST, default) and bfloat16,
                 multi-device inference; concurrently ``data_probe``: crops/s of the demo
                 config's synthetic input pipeline with this machine's cores
 3. bench        ``benchmarks/bench_gpu.py``: the paper's train steps (6x256x256, deblur and
                 finetune, float32 / bfloat16, with and without remat, peak memory against
                 the paper's 11 GiB card), 1280x720 inference at batch 1 and 4, the demo
                 config's own step
 4. train        ``train.py --config=configs/gpu_demo.py`` stopped by
                 ``--config.max_train_seconds`` (whatever the budget leaves after the other
                 stages); its cosine schedule is sized from the measured step rate and data
                 rate so that it ends when the time does
 5. publish      ``python -m aspdc_jax.publish`` (the published weight format, < 30 MiB)
 6. evaluate     ``evaluate.py --dataset synthetic --compare`` on the published weights:
                 the held-out synthetic test, per strength band
 7. unseen       the same weights on the held-out photos blurred by another generator (camera
                 shake kernels convolved in gamma space, no linear light, no objects): a
                 proxy for "a generator you have not seen"
 8. summary      ``summary.json`` and ``summary.md`` (and the README GPU table in both)

OUT receives at most 8 files, none over 16 MiB (what the device tool brings back):
``summary.json``, ``summary.md``, ``versions.json``, ``bench_gpu.json``, ``gpu_tests.xml``,
``check.log``, ``weights_demo.tar`` (the published export as ``demo/``: ``tar -xf
weights_demo.tar -C weights`` gives ``weights/demo``) and ``details.tar`` (evaluation
tables, a few comparison pictures, metrics.jsonl, every stage's log). The full work tree
(checkpoints, all pictures) stays in ``--work``.

``--smoke`` runs every stage at tiny sizes on a CPU in about a minute (the test
``tests/test_device_check.py``); ``--print_command`` prints the one line to give the
device tool, and ``--download_wheels .whl`` fetches the wheels it installs there (see
docs/gpu.md). ``--readme_table summary.json`` prints the README's GPU table again.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import io
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE.parent))

from bench_gpu import SMOKE_DEMO_OVERRIDES

#: What OUT holds (the device tool brings back at most 8 files of at most 16 MiB).
OUT_FILES = (
    "summary.json",
    "summary.md",
    "versions.json",
    "bench_gpu.json",
    "gpu_tests.xml",
    "check.log",
    "weights_demo.tar",
    "details.tar",
)
MAX_OUT_FILE_BYTES = 16 * 2**20
#: The issue's limit on committed weights.
MAX_WEIGHTS_MIB = 30.0
#: Packages the device image lacks; --download_wheels fetches these (at this venv's versions).
DEVICE_WHEELS = ("grain", "array-record", "ml-collections", "tensorboardX", "portpicker")
#: What the check reports the version of.
PACKAGES = (
    "jax",
    "jaxlib",
    "jax-cuda12-plugin",
    "jax-cuda13-plugin",
    "flax",
    "optax",
    "orbax-checkpoint",
    "grain",
    "numpy",
    "scikit-image",
    "ml-collections",
    "tensorboardX",
    "pytest",
)
#: The bar of the issue (held-out test, gain in dB per band): mild >= 0, middle and strong >= +1.
BAR = {"mild": 0.0, "gopro": 1.0, "strong": 1.0}
#: "Unseen generator" bands: camera-shake kernel extent in pixels (about the synthetic
#: test's mild ~32 dB / gopro ~26 dB / strong ~23 dB inputs on 256 px crops).
UNSEEN_BANDS = {"mild": 3.0, "gopro": 9.0, "strong": 20.0}
#: Tiny demo training for --smoke (the data, test and schedule sizes too).
SMOKE_TRAIN_OVERRIDES = (
    *SMOKE_DEMO_OVERRIDES,  # bench_gpu's tiny network and crops
    "data.num_workers=0",
    "data.epoch_size=8",
    "data.synthetic_test_crops_per_photo=1",
    "data.synthetic_test_crop_size=32",
    "eval_limit=0",  # evaluate.py and unseen score it; the trainer's own pass would compile again
    "log_every_steps=2",
    "checkpoint_every_steps=4",
)
DEVICE_COMMAND = (
    "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
    ".whl/*.whl; export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1; "
    "python3 benchmarks/device_check.py --out $OUT --budget_s {budget}"
)


@dataclasses.dataclass
class Budget:
    """Seconds per stage (the train stage gets what the others leave)."""

    versions: float
    gpu_tests: float
    data_probe: float
    bench: float
    publish: float
    evaluate: float
    unseen: float
    #: train.py's own start, compile, final checkpoint and after-phase evaluation: the stage
    #: time box minus this is --config.max_train_seconds.
    train_overhead: float
    min_train: float

    @property
    def after_train(self) -> float:
        return self.publish + self.evaluate + self.unseen + 10.0


FULL_BUDGET = Budget(
    versions=40,
    gpu_tests=75,
    data_probe=45,
    bench=135,
    publish=30,
    evaluate=50,
    unseen=35,
    train_overhead=55,
    min_train=90,
)
SMOKE_BUDGET = Budget(
    versions=30,
    gpu_tests=60,
    data_probe=40,
    bench=240,
    publish=40,
    evaluate=60,
    unseen=40,
    train_overhead=45,
    min_train=60,
)


# ----------------------------------------------------------------------------- running stages


@dataclasses.dataclass
class StageResult:
    status: str  # ok | failed | timed out | skipped
    seconds: float
    note: str = ""


class Check:
    """The state of one run: folders, log, deadline and what each stage recorded."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.smoke = bool(args.smoke)
        self.budget = SMOKE_BUDGET if self.smoke else FULL_BUDGET
        self.out = Path(args.out).absolute()
        self.work = Path(args.work).absolute()
        self.logs = self.work / "logs"
        self.start = time.monotonic()
        self.deadline = self.start + float(args.budget_s)
        self.stages: dict[str, StageResult] = {}
        self.data: dict[str, Any] = {}
        self.out.mkdir(parents=True, exist_ok=True)
        if self.work.exists():
            import shutil

            shutil.rmtree(self.work)
        self.logs.mkdir(parents=True)
        self.log = open(self.out / "check.log", "w", encoding="utf-8")
        self.env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
            PYTHONUNBUFFERED="1",
            XLA_PYTHON_CLIENT_PREALLOCATE="false",
            # One compilation cache for every stage: the same program in two stages (the
            # evaluation's forward, say) compiles once.
            JAX_COMPILATION_CACHE_DIR=str(self.work / "jax_cache"),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
        )

    def smoke_flag(self) -> list[str]:
        return ["--smoke"] if self.smoke else []

    def train_overrides(self) -> list[str]:
        """``key=value`` changes of configs/gpu_demo.py for this run (data workers: the cores
        less two, for the training process and XLA's host threads)."""
        if self.smoke:
            return list(SMOKE_TRAIN_OVERRIDES)
        return [f"data.num_workers={max(1, (os.cpu_count() or 2) - 2)}"]

    def say(self, text: str) -> None:
        line = f"[{time.monotonic() - self.start:6.1f} s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def popen(self, name: str, cmd: list[str]) -> tuple[subprocess.Popen, Any]:
        log = open(self.logs / f"{name}.log", "w", encoding="utf-8")
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        # Its own process group, so that a time-out also ends its children (bench workers).
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return proc, log

    def finish(self, name: str, proc: subprocess.Popen, log: Any, timeout: float, started: float) -> StageResult:
        """Waits for ``proc`` at most ``timeout`` s, then SIGTERM to its process group (train.py
        saves a checkpoint on it) and SIGKILL 10 s later."""
        try:
            proc.wait(timeout=max(timeout, 1.0))
            status = "ok" if proc.returncode == 0 else "failed"
            note = "" if proc.returncode == 0 else f"exit {proc.returncode}"
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status, note = "timed out", f"stopped after {timeout:.0f} s"
        log.close()
        tail = _tail(self.logs / f"{name}.log", 40)
        self.log.write(f"---- {name}: last lines of its log ----\n{tail}\n")
        return StageResult(status, time.monotonic() - started, note)

    def command(self, name: str, cmd: list[str], timeout: float) -> StageResult:
        started = time.monotonic()
        timeout = min(timeout, max(self.left(), 1.0))
        self.say(f"{name}: {shlex.join(cmd)} (time box {timeout:.0f} s)")
        proc, log = self.popen(name, cmd)
        return self.finish(name, proc, log, timeout, started)

    def stage(self, name: str, fn: Callable[[], StageResult | None], needs: tuple[str, ...] = ()) -> None:
        """Runs ``fn`` as stage ``name``: an exception is a failed stage, not the end."""
        started = time.monotonic()
        missing = [n for n in needs if self.stages.get(n, StageResult("skipped", 0)).status != "ok"]
        if missing:
            result = StageResult("skipped", 0.0, f"needs {', '.join(missing)}")
        elif self.left() < 2:
            result = StageResult("skipped", 0.0, "the budget (--budget_s) ran out")
        else:
            try:
                result = fn() or StageResult("ok", time.monotonic() - started)
            except Exception as e:  # recorded; the later stages still run
                result = StageResult("failed", time.monotonic() - started, f"{type(e).__name__}: {e}"[:500])
        self.stages[name] = result
        self.say(f"{name}: {result.status} in {result.seconds:.1f} s{' (' + result.note + ')' if result.note else ''}")


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ----------------------------------------------------------------------------- the stages


def stage_versions(check: Check) -> StageResult:
    path = check.work / "versions.json"
    result = check.command("versions", _python(str(HERE), "--worker", "versions", "--json", str(path)), 40)
    versions = _read_json(path)
    if versions is not None:
        check.data["versions"] = versions
        (check.out / "versions.json").write_text(json.dumps(versions, indent=2) + "\n")
    return result


def stage_gpu_tests(check: Check) -> StageResult:
    """pytest -m gpu, and the data probe concurrently (it needs the CPUs, the tests the GPU)."""
    started = time.monotonic()
    probe_json = check.work / "data_probe.json"
    probe_cmd = _python(str(HERE), "--worker", "data_probe", "--json", str(probe_json), *check.smoke_flag())
    probe_cmd += [f"--override={o}" for o in check.train_overrides()]
    check.say(f"data_probe: {shlex.join(probe_cmd)} (concurrently)")
    probe, probe_log = check.popen("data_probe", probe_cmd)
    probe_started = time.monotonic()
    xml = check.out / "gpu_tests.xml"
    cmd = _python(
        "-m",
        "pytest",
        "-q",
        "-m",
        "gpu",
        "-p",
        "no:cacheprovider",
        "-o",
        "junit_family=xunit1",
        f"--junitxml={xml}",
        "tests/test_gpu.py",
    )
    result = check.command("gpu_tests", cmd, check.budget.gpu_tests)
    remaining = check.budget.data_probe - (time.monotonic() - probe_started)
    check.stages["data_probe"] = check.finish("data_probe", probe, probe_log, remaining, probe_started)
    check.data["data_probe"] = _read_json(probe_json)
    check.say(f"data_probe: {check.stages['data_probe'].status}: {json.dumps(check.data['data_probe'])}")
    check.data["gpu_tests"] = junit_summary(xml)
    result.seconds = time.monotonic() - started
    if result.status == "failed" and check.data["gpu_tests"] and check.data["gpu_tests"].get("failed"):
        result.note = f"{check.data['gpu_tests']['failed']} test(s) failed"
    return result


def stage_bench(check: Check) -> StageResult:
    path = check.out / "bench_gpu.json"
    cmd = _python("benchmarks/bench_gpu.py", "--json", str(path), "--budget_s", str(check.budget.bench - 10))
    cmd += ["--parallel", "2" if check.smoke else "5", "--repeats", "2" if check.smoke else "5"]
    cmd += ["--smoke"] if check.smoke else [f"--demo_override={o}" for o in check.train_overrides()]
    result = check.command("bench", cmd, check.budget.bench)
    check.data["bench"] = _read_json(path)
    return result


def plan_schedule(check: Check, train_seconds: float) -> dict[str, Any]:
    """Steps of the demo's cosine schedule: the seconds it may train (less the step's
    compile) times the slower of the measured GPU step rate and the data rate (x 0.92), or
    the config's own length when neither was measured."""
    from bench_gpu import demo_config

    config = demo_config(check.train_overrides())
    batch = int(config.batch_size)
    steps_per_epoch = max(1, int(config.data.epoch_size) // batch)
    rates = {}
    demo = (check.data.get("bench") or {}).get("demo") or {}
    if isinstance(demo.get("steps_per_s"), (int, float)):
        rates["gpu"] = float(demo["steps_per_s"])
    probe = check.data.get("data_probe") or {}
    if isinstance(probe.get("crops_per_s"), (int, float)) and probe["crops_per_s"] > 0:
        rates["data"] = float(probe["crops_per_s"]) / batch
    plan: dict[str, Any] = {"batch": batch, "steps_per_epoch": steps_per_epoch, "rates_steps_per_s": rates}
    # max_train_seconds counts from the first step, whose compile is part of it.
    compile_s = float(demo["first_call_s"]) if isinstance(demo.get("first_call_s"), (int, float)) else 30.0
    plan["compile_s_assumed"] = round(compile_s, 1)
    if rates:
        steps = max(steps_per_epoch, int(0.92 * max(train_seconds - compile_s, 1.0) * min(rates.values())))
        plan["limited_by"] = min(rates, key=lambda k: rates[k])
    else:
        steps = int(round(float(config.deblur.num_epochs) * steps_per_epoch))
        plan["limited_by"] = "unmeasured: the config's own length"
    if check.smoke:
        steps = min(steps, 4)
    epochs = steps / steps_per_epoch
    warmup = float(config.deblur.warmup_epochs) / float(config.deblur.num_epochs) * epochs
    plan.update(steps=steps, num_epochs=round(epochs, 4), warmup_epochs=round(warmup, 4))
    return plan


def stage_train(check: Check) -> StageResult:
    timeout = check.left() - check.budget.after_train
    if timeout < check.budget.min_train:
        return StageResult("skipped", 0.0, f"only {timeout:.0f} s left for training")
    train_seconds = max(5.0, timeout - check.budget.train_overhead)
    if check.smoke:  # a few steps (the schedule ends them): what is checked is that the stage works
        train_seconds = min(train_seconds, 90.0)
    plan = plan_schedule(check, train_seconds)
    workdir = check.work / "train"
    overrides = [
        f"max_train_seconds={train_seconds:.0f}",
        f"deblur.num_epochs={plan['num_epochs']}",
        f"deblur.warmup_epochs={plan['warmup_epochs']}",
        "progress_bar=False",
        *check.train_overrides(),
    ]
    flags = [f"--config.{o}" for o in overrides]
    # As recorded in training.json: the same run from the repository root.
    check.data["train_command"] = shlex.join(
        ["python", "train.py", "--config=configs/gpu_demo.py", "--workdir=runs/gpu_demo", *flags]
    )
    check.data["train_plan"] = dict(plan, max_train_seconds=round(train_seconds), time_box_s=round(timeout))
    check.say(f"train: plan {json.dumps(check.data['train_plan'])}")
    cmd = _python("train.py", "--config=configs/gpu_demo.py", f"--workdir={workdir}", *flags)
    result = check.command("train", cmd, timeout)
    check.data["train"] = training_summary(workdir / "metrics.jsonl", plan, train_seconds)
    return result


def stage_publish(check: Check) -> StageResult:
    export = check.work / "weights_demo"
    cmd = _python("-m", "aspdc_jax.publish", "--ckpt", str(check.work / "train"), "--out", str(export))
    cmd += ["--no_reblur", "--command", check.data.get("train_command", "")]
    result = check.command("publish", cmd, check.budget.publish)
    if result.status == "ok":
        size = sum(p.stat().st_size for p in export.rglob("*") if p.is_file())
        tar = check.out / "weights_demo.tar"
        with tarfile.open(tar, "w") as t:
            t.add(export, arcname="demo")
        check.data["weights"] = {
            "file": tar.name,
            "mib": round(size / 2**20, 3),
            "tar_mib": round(tar.stat().st_size / 2**20, 3),
            "under_30_mib": size / 2**20 < MAX_WEIGHTS_MIB,
            "comes_back": tar.stat().st_size <= MAX_OUT_FILE_BYTES,
        }
        if tar.stat().st_size > MAX_OUT_FILE_BYTES:
            tar.unlink()
            result.note = f"weights_demo.tar is {size / 2**20:.1f} MiB: over the device tool's 16 MiB per file"
    return result


def _weights(check: Check) -> Path:
    export = check.work / "weights_demo"
    return export if check.stages.get("publish", StageResult("", 0)).status == "ok" else check.work / "train"


def stage_evaluate(check: Check) -> StageResult:
    out = check.work / "eval"
    cmd = ["evaluate.py", f"--ckpt={_weights(check)}", "--dataset=synthetic", f"--out={out}", "--compare"]
    cmd += ["--progress=false"] + (["--limit=3"] if check.smoke else [])
    result = check.command("evaluate", _python(*cmd), check.budget.evaluate)
    metrics = _read_json(out / "metrics.json")
    if metrics is not None:
        check.data["eval"] = {
            "psnr": metrics.get("psnr"),
            "psnr_blurred": metrics.get("psnr_blurred"),
            "num_images": metrics.get("num_images"),
            "per_band": _bands(metrics.get("per_band") or {}),
        }
    return result


def stage_unseen(check: Check) -> StageResult:
    path = check.work / "unseen.json"
    cmd = _python(str(HERE), "--worker", "unseen", "--ckpt", str(_weights(check)), "--json", str(path))
    result = check.command("unseen", cmd + check.smoke_flag(), check.budget.unseen)
    unseen = _read_json(path)
    if unseen is not None:
        check.data["unseen"] = dict(unseen, per_band=_bands(unseen.get("per_band") or {}))
    return result


def _bands(per_band: dict[str, dict]) -> dict[str, dict]:
    out = {}
    for band, b in per_band.items():
        gain = None
        if isinstance(b.get("psnr"), (int, float)) and isinstance(b.get("psnr_blurred"), (int, float)):
            gain = round(float(b["psnr"]) - float(b["psnr_blurred"]), 3)
        out[band] = dict(b, gain_db=gain)
    return out


# ----------------------------------------------------------------------------- reading results


def junit_summary(path: Path) -> dict[str, Any] | None:
    """Counts and per-test outcomes (with their recorded properties) of a junit XML."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    tests = []
    for case in root.iter("testcase"):
        outcome = "passed"
        message = ""
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                message = (node.get("message") or "")[:300]
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        tests.append({"name": case.get("name"), "outcome": outcome, "message": message, "properties": props})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return dict(counts, total=len(tests), tests=tests)


def training_summary(metrics_path: Path, plan: dict[str, Any], train_seconds: float) -> dict[str, Any]:
    """Steps, step rate, loss, data-wait share and the after-phase evaluation of metrics.jsonl."""
    records = []
    with contextlib.suppress(OSError):
        for line in metrics_path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(line))
    train = [r for r in records if r.get("event") == "train"]
    evals = [r for r in records if r.get("event") == "eval"]
    out: dict[str, Any] = {
        "planned_steps": plan.get("steps"),
        "max_train_seconds": round(train_seconds),
        "steps": train[-1]["step"] if train else 0,
    }
    if train:
        first, last = train[0], train[-1]
        out["final_loss"] = last.get("loss")
        out["first_loss"] = first.get("loss")
        rates = [r["steps_per_s"] for r in train[1:] if isinstance(r.get("steps_per_s"), (int, float))]
        out["steps_per_s"] = round(sorted(rates)[len(rates) // 2], 3) if rates else None
        out["train_wall_s"] = round(last["time"] - first["time"], 1) if len(train) > 1 else None
        waits = [r["data_wait_fraction"] for r in train if isinstance(r.get("data_wait_fraction"), (int, float))]
        out["data_wait_fraction"] = round(sum(waits) / len(waits), 4) if waits else None
        if not waits:
            out["data_wait_note"] = "metrics.jsonl has no data_wait_fraction (the trainer does not report it)"
        out["stopped_early"] = bool(plan.get("steps") and last["step"] < plan["steps"])
    if evals:
        final = evals[-1]
        out["eval"] = {k: final.get(k) for k in ("psnr_output", "psnr_input", "psnr_gain", "num_pairs", "per_band")}
    return out


def bar_verdict(per_band: dict[str, dict] | None) -> dict[str, Any] | None:
    if not per_band:
        return None
    gains = {band: (per_band.get(band) or {}).get("gain_db") for band in BAR}
    met = all(isinstance(g, (int, float)) and g >= BAR[b] for b, g in gains.items())
    return {"gains_db": gains, "thresholds_db": BAR, "met": met}


# ----------------------------------------------------------------------------- summary


def build_summary(check: Check) -> dict[str, Any]:
    versions = check.data.get("versions") or {}
    bench = check.data.get("bench") or {}
    summary: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": versions.get("device") or bench.get("device"),
        "device_count": versions.get("device_count"),
        "device_memory_gib": versions.get("device_memory_gib"),
        "jax": (versions.get("packages") or {}).get("jax"),
        "smoke": check.smoke,
        "budget_s": check.args.budget_s,
        "wall_s": round(time.monotonic() - check.start, 1),
        "stages": {k: dataclasses.asdict(v) for k, v in check.stages.items()},
        "versions": versions,
        "gpu_tests": _without(check.data.get("gpu_tests"), "tests_detail"),
        "data_probe": check.data.get("data_probe"),
        "bench": {k: v for k, v in bench.items() if k != "table"},
        "bench_table": bench.get("table"),
        "train_plan": check.data.get("train_plan"),
        "train_command": check.data.get("train_command"),
        "train": check.data.get("train"),
        "eval": check.data.get("eval"),
        "unseen": check.data.get("unseen"),
        "weights": check.data.get("weights"),
    }
    summary["bar"] = {
        "synthetic_test": bar_verdict((summary["eval"] or {}).get("per_band")),
        "unseen_generator": bar_verdict((summary["unseen"] or {}).get("per_band")),
    }
    both = [v for v in summary["bar"].values() if v is not None]
    summary["bar"]["met"] = bool(len(both) == 2 and all(v["met"] for v in both))
    summary["readme_table"] = readme_table(summary)
    return summary


def _without(value: Any, key: str) -> Any:
    return {k: v for k, v in value.items() if k != key} if isinstance(value, dict) else value


def _f(value: Any, fmt: str, missing: str = "-") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and math.isfinite(value) else missing


def readme_table(summary: dict[str, Any]) -> str:
    """The README's GPU section table, from a summary (``--readme_table summary.json``)."""
    head = (
        f"Measured by `python benchmarks/device_check.py` on {summary.get('device')} "
        f"({str(summary.get('date', ''))[:10]}; jax {summary.get('jax')}"
        f"{'; SMOKE RUN, not a measurement' if summary.get('smoke') else ''})."
    )
    lines = [head, "", summary.get("bench_table") or "| measure | float32 | bfloat16 |\n|---|---|---|"]
    train = summary.get("train") or {}
    plan = summary.get("train_plan") or {}
    if train.get("steps"):
        wait = train.get("data_wait_fraction")
        lines.append(
            f"| demo training (configs/gpu_demo.py, deblur phase) | | {train['steps']} steps in "
            f"{plan.get('max_train_seconds', '?')} s ({_f(train.get('steps_per_s'), '.1f')} steps/s, "
            f"data wait {_f(wait, '.0%', 'not reported')}) |"
        )
    for key, label in (("eval", "held-out synthetic test"), ("unseen", "held-out photos, unseen blur generator")):
        bands = (summary.get(key) or {}).get("per_band") or {}
        if bands:
            cells = ", ".join(
                f"{band} {_f(b.get('psnr_blurred'), '.2f')} -> {_f(b.get('psnr'), '.2f')} dB "
                f"({_f(b.get('gain_db'), '+.2f')})"
                for band, b in bands.items()
            )
            lines.append(f"| demo weights, {label} | {cells} | |")
    return "\n".join(lines)


def summary_markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# Device check: {summary.get('device')}, {summary.get('date')}",
        "",
        f"jax {summary.get('jax')}; budget {summary.get('budget_s')} s, wall {summary.get('wall_s')} s"
        + ("; **smoke run (tiny sizes, CPU): not a measurement**" if summary.get("smoke") else ""),
        "",
        "| stage | status | seconds | note |",
        "|---|---|---|---|",
    ]
    for name, s in summary["stages"].items():
        lines.append(f"| {name} | {s['status']} | {s['seconds']:.1f} | {s['note']} |")
    tests = summary.get("gpu_tests") or {}
    if tests:
        lines += ["", f"GPU tests: {tests.get('passed')} passed, {tests.get('failed')} failed, "
                  f"{tests.get('error')} errors, {tests.get('skipped')} skipped."]  # fmt: skip
        for t in tests.get("tests", []):
            props = ", ".join(f"{k}={v}" for k, v in t["properties"].items())
            lines.append(f"- {t['name']}: {t['outcome']}{' (' + props + ')' if props else ''}")
    lines += ["", "## README GPU table", "", summary["readme_table"], ""]
    plan = summary.get("train_plan") or {}
    train = summary.get("train") or {}
    lines += [
        "## Demo training",
        "",
        f"- plan: {json.dumps(plan)}",
        f"- result: {json.dumps(_without(train, 'eval'))}",
        f"- data probe: {json.dumps(summary.get('data_probe'))}",
        f"- command: `{summary.get('train_command')}`",
        f"- weights: {json.dumps(summary.get('weights'))}",
        "",
        "## Bar (gain in dB: mild >= 0, gopro and strong >= +1)",
        "",
        f"- held-out synthetic test: {json.dumps(summary['bar'].get('synthetic_test'))}",
        f"- unseen blur generator: {json.dumps(summary['bar'].get('unseen_generator'))}",
        f"- **met: {summary['bar'].get('met')}**",
        "",
    ]
    return "\n".join(lines)


def pack_details(check: Check) -> None:
    """details.tar: tables, a few pictures, metrics, logs; under the 16 MiB a file may have."""
    limit = MAX_OUT_FILE_BYTES - 512 * 1024
    candidates: list[Path] = []
    eval_dir = check.work / "eval"
    candidates += [eval_dir / n for n in ("metrics.json", "table.md", "per_image.csv")]
    candidates += [check.work / n for n in ("unseen.json", "data_probe.json", "versions.json")]
    candidates += [check.work / "train" / "metrics.jsonl", check.work / "weights_demo" / "training.json"]
    candidates += sorted(check.logs.glob("*.log"))
    pictures = sorted((eval_dir / "compare").rglob("*.png")) if (eval_dir / "compare").is_dir() else []
    picked: dict[str, Path] = {}
    for band in ("mild", "gopro", "strong"):  # two of each band first
        for p in [p for p in pictures if band in p.name][:2]:
            picked[p.name] = p
    candidates += list(picked.values()) + [p for p in pictures if p.name not in picked]
    total = 0
    with tarfile.open(check.out / "details.tar", "w") as tar:
        for path in candidates:
            if not path.is_file():
                continue
            size = path.stat().st_size
            if path.suffix == ".log" and size > 2 * 2**20:  # keep the end of a long log
                data = path.read_bytes()[-2 * 2**20 :]
                if total + len(data) > limit:
                    continue
                info = tarfile.TarInfo(f"details/{path.name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                total += len(data)
                continue
            if total + size > limit:
                continue
            tar.add(path, arcname=f"details/{path.relative_to(check.work)}")
            total += size


def write_summary(check: Check) -> dict[str, Any]:
    summary = build_summary(check)
    (check.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (check.out / "summary.md").write_text(summary_markdown(summary))
    return summary


def run_check(args: argparse.Namespace) -> int:
    check = Check(args)
    check.say(f"device check: out {check.out}, work {check.work}, budget {args.budget_s:.0f} s, smoke {check.smoke}")
    check.stage("versions", lambda: stage_versions(check))
    check.stage("gpu_tests", lambda: stage_gpu_tests(check))
    check.stage("bench", lambda: stage_bench(check))
    check.stage("train", lambda: stage_train(check))
    check.stage("publish", lambda: stage_publish(check))
    check.stage("evaluate", lambda: stage_evaluate(check))
    check.stage("unseen", lambda: stage_unseen(check))
    with contextlib.suppress(Exception):
        pack_details(check)
    summary = write_summary(check)
    check.say(f"wrote {', '.join(sorted(p.name for p in check.out.iterdir()))}; bar met: {summary['bar']['met']}")
    check.log.close()
    print(summary["readme_table"])
    failed = [n for n, s in check.stages.items() if s.status != "ok"]
    print(f"stages not ok: {', '.join(failed) if failed else 'none'}", flush=True)
    return 0


# ----------------------------------------------------------------------------- workers


def worker_versions(args: argparse.Namespace) -> dict[str, Any]:
    import importlib.metadata
    import platform

    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    import jax

    devices = jax.devices()
    stats = devices[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    out: dict[str, Any] = {
        "packages": packages,
        "python": platform.python_version(),
        "platform": devices[0].platform,
        "device": f"{devices[0].platform}: {devices[0].device_kind}",
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "device_memory_gib": None if limit is None else round(limit / 2**30, 2),
        "cpu_count": os.cpu_count(),
    }
    with contextlib.suppress(Exception):
        out["platform_version"] = devices[0].client.platform_version
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if smi.returncode == 0:
            out["nvidia_smi"] = smi.stdout.strip()
    from aspdc_jax.data import synthetic

    try:
        out["builtin_photos"] = len(synthetic.builtin_photos("train")) + len(synthetic.builtin_photos("test"))
    except Exception as e:  # the demo trains on them: say so here, first
        out["builtin_photos_error"] = f"{type(e).__name__}: {e}"
    return out


def worker_data_probe(args: argparse.Namespace) -> dict[str, Any]:
    """Crops/s of the demo config's training loader with its workers (this machine's cores)."""
    from absl import logging as absl_logging
    from bench_gpu import demo_config

    from aspdc_jax.data import make_train_loader
    from aspdc_jax.data.settings import DataSettings

    absl_logging.set_verbosity(absl_logging.ERROR)
    config = demo_config(args.override)
    batch = int(config.batch_size)
    loader = make_train_loader(DataSettings.from_config(config.data), global_batch_size=batch, seed=0)
    it = iter(loader)
    t0 = time.perf_counter()
    for _ in range(2):  # the workers start and fill their buffers
        next(it)
    warm = time.perf_counter() - t0
    window = 3.0 if args.smoke else 12.0
    n, t1 = 0, time.perf_counter()
    while time.perf_counter() - t1 < window or n < 2:
        next(it)
        n += 1
    seconds = time.perf_counter() - t1
    return {
        "crops_per_s": round(n * batch / seconds, 2),
        "crop": int(config.data.crop_size),
        "batch": batch,
        "num_workers": int(config.data.num_workers),
        "cpu_count": os.cpu_count(),
        "warmup_s": round(warm, 2),
        "batches_timed": n,
    }


def shake_kernel(length: float, rng: Any) -> Any:
    """A camera-shake PSF: a random walk with momentum, scaled so its extent is ``length`` px,
    splatted bilinearly and normalised (odd square, centred on its centroid)."""
    import numpy as np

    steps = 200
    vel = rng.normal(size=2)
    pts = np.zeros((steps, 2))
    for t in range(1, steps):
        vel = 0.95 * vel + 0.35 * rng.normal(size=2)
        pts[t] = pts[t - 1] + vel
    pts -= pts.mean(axis=0)
    extent = float(np.max(np.linalg.norm(pts[:, None] - pts[None], axis=-1)))
    pts *= length / max(extent, 1e-6)
    r = int(np.ceil(np.abs(pts).max())) + 1
    kernel = np.zeros((2 * r + 1, 2 * r + 1))
    y, x = pts[:, 0] + r, pts[:, 1] + r
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    wy, wx = y - y0, x - x0
    for dy, dx, w in ((0, 0, (1 - wy) * (1 - wx)), (1, 0, wy * (1 - wx)), (0, 1, (1 - wy) * wx), (1, 1, wy * wx)):
        np.add.at(kernel, (y0 + dy, x0 + dx), w)
    return kernel / kernel.sum()


def shake_pair(photo: Any, crop: int, length: float, rng: Any) -> tuple[Any, Any]:
    """(blurred, sharp) uint8 crops: the PSF convolved in gamma space (sRGB values, unlike
    the training generator's linear light), Gaussian noise 0.005, 8-bit rounding."""
    import numpy as np
    from scipy.signal import fftconvolve

    kernel = shake_kernel(length, rng)
    r = kernel.shape[0] // 2
    h, w = photo.shape[:2]
    y = int(rng.integers(r, h - crop - r + 1))
    x = int(rng.integers(r, w - crop - r + 1))
    region = photo[y - r : y + crop + r, x - r : x + crop + r].astype(np.float64) / 255.0
    blurred = np.stack([fftconvolve(region[..., c], kernel, mode="valid") for c in range(3)], axis=-1)
    blurred += rng.normal(0.0, 0.005, blurred.shape)
    blurred_u8 = np.clip(np.round(blurred * 255.0), 0, 255).astype(np.uint8)
    return blurred_u8, np.ascontiguousarray(photo[y : y + crop, x : x + crop])


def worker_unseen(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from aspdc_jax.data.synthetic import builtin_photos
    from aspdc_jax.images import psnr_numpy
    from aspdc_jax.inference import Deblurrer
    from aspdc_jax.weights import load_for_inference

    crop, per_photo = (64, 1) if args.smoke else (256, 2)
    rng = np.random.default_rng(20261205)
    rows = []
    for name, photo in builtin_photos("test"):
        for band, length in UNSEEN_BANDS.items():
            for _ in range(per_photo):
                blurred, sharp = shake_pair(photo, crop, length, rng)
                rows.append({"photo": name, "band": band, "blurred": blurred, "sharp": sharp})
    deblurrer = Deblurrer.from_loaded(load_for_inference(args.ckpt), bucket="exact", batch_size=8)
    outputs = deblurrer.deblur(np.stack([r["blurred"] for r in rows]))
    per_band: dict[str, dict[str, Any]] = {}
    for row, out in zip(rows, outputs):
        b = per_band.setdefault(row["band"], {"psnr": [], "psnr_blurred": []})
        b["psnr"].append(psnr_numpy(out, row["sharp"], peak=255.0))
        b["psnr_blurred"].append(psnr_numpy(row["blurred"], row["sharp"], peak=255.0))
    return {
        "generator": "camera-shake PSF (momentum random walk) convolved in gamma space, noise 0.005",
        "kernel_extent_px": UNSEEN_BANDS,
        "crop": crop,
        "num_images": len(rows),
        "per_band": {
            band: {
                "psnr": round(float(np.mean(b["psnr"])), 3),
                "psnr_blurred": round(float(np.mean(b["psnr_blurred"])), 3),
                "num_images": len(b["psnr"]),
            }
            for band, b in per_band.items()
        },
    }


WORKERS = {"versions": worker_versions, "data_probe": worker_data_probe, "unseen": worker_unseen}


# ----------------------------------------------------------------------------- helpers for the GPU session


def download_wheels(folder: str) -> int:
    """Fetches DEVICE_WHEELS (this venv's versions) for the device's CPython 3.12 / x86-64."""
    import importlib.metadata

    target = Path(folder).absolute()
    pins = []
    for name in DEVICE_WHEELS:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(name)
    platforms = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"]
    cmd += ["--implementation", "cp", "-d", str(target)]
    for p in platforms + ["manylinux1_x86_64"]:
        cmd += ["--platform", p]
    print("$ " + shlex.join(cmd + pins), flush=True)
    rc = subprocess.call(cmd + pins)
    exclude = ROOT / ".git" / "info" / "exclude"
    with contextlib.suppress(OSError, ValueError):
        rel = f"/{target.relative_to(ROOT)}/"
        text = exclude.read_text() if exclude.is_file() else ""
        if rel not in text.split():
            exclude.parent.mkdir(parents=True, exist_ok=True)
            exclude.write_text(text + ("" if text.endswith("\n") or not text else "\n") + rel + "\n")
            print(f"added {rel} to {exclude}")
    return rc


def device_command(budget_s: float) -> str:
    """The one line for the device tool's ``run`` (carry ``.whl``)."""
    return DEVICE_COMMAND.format(budget=f"{budget_s:g}")


def main(argv: list[str] | None = None) -> int:
    from aspdc_jax.cli import FlagParser

    parser = FlagParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="output folder (at most 8 files; see above)")
    parser.add_argument(
        "--work", default=None, help="work folder for checkpoints and logs (default: /tmp/aspdc_device_check); emptied"
    )
    parser.add_argument("--budget_s", type=float, default=None, help="wall-clock budget (default 520, --smoke 600)")
    parser.add_argument("--smoke", action="store_true", help="every stage at tiny sizes (a CPU check of the script)")
    parser.add_argument("--print_command", action="store_true", help="print the line for the device tool and exit")
    parser.add_argument("--download_wheels", metavar="DIR", help="fetch the wheels the device lacks into DIR, exit")
    parser.add_argument("--readme_table", metavar="SUMMARY_JSON", help="print the README GPU table of a summary")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--override", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = 600.0 if args.smoke else 520.0
    if args.print_command:
        line = device_command(args.budget_s)
        assert len(line) < 2000
        print(line)
        return 0
    if args.download_wheels:
        return download_wheels(args.download_wheels)
    if args.readme_table:
        print(readme_table(json.loads(Path(args.readme_table).read_text())))
        return 0
    if args.worker:
        result = WORKERS[args.worker](args)
        text = json.dumps(result, indent=2, default=str)
        if args.json:
            Path(args.json).write_text(text + "\n")
        print(text)
        return 0
    if not args.out:
        parser.error("--out is required")
    args.work = args.work or "/tmp/aspdc_device_check"
    return run_check(args)


if __name__ == "__main__":
    sys.exit(main())
