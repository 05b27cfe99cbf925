"""Two JAX processes on localhost train like one process with two devices.

``train.py`` is started as a user would start it on two hosts: two processes with
``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``, one CPU device
each, talking over JAX's CPU collectives (gloo, TCP), against one process with two
(fake) CPU devices. A tiny quickstart-style config (width 4, one group with a static and
one deformable branch, 16 px crops, global batch 4, constant learning rate) keeps the
runs cheap; ``--xla_backend_optimization_level=0`` cuts XLA's compile time (which
dominates on CPU) for every run alike, and the runs of one topology share a persistent
compilation cache. The runs (one module fixture):

- ``one``: 1 process, 2 devices, 8 steps: the reference.
- ``two``: 2 processes, 4 steps (an epoch), with a validation at step 4 (best export),
  a preview image and the after-phase evaluation; stderr on a pseudo-terminal so a
  progress bar is drawn where one would be for a user.
- ``again``: the same 2 processes rerun with a longer schedule: they resume from step 4;
  once step 8 is logged, process 1 is killed and process 0 must end with an error soon
  (``ASPDC_HEARTBEAT_TIMEOUT=20``) instead of waiting for it forever.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "train.py"

STEPS_PER_EPOCH = 4  # epoch_size 16 / batch_size 4
OVERRIDES = (
    f"--config={ROOT / 'configs' / 'quickstart.py'}",
    "--config.phases=deblur",
    "--config.model.deblur_width=4",
    "--config.model.reblur_width=4",
    "--config.model.num_groups=1",
    "--config.model.branches=('static','d1')",  # one deformable branch of four: less to compile
    "--config.data.crop_size=16",
    "--config.data.epoch_size=16",
    "--config.data.synthetic_photo_scales=(1.0,)",
    "--config.data.synthetic_test_crop_size=16",
    "--config.batch_size=4",
    "--config.deblur.schedule=constant",
    "--config.deblur.warmup_epochs=0",
    "--config.log_every_steps=1",
    "--config.checkpoint_every_steps=4",
    "--config.image_every_steps=0",
    "--config.eval_limit=0",
)
# ``two`` also validates (best export), draws a preview and evaluates after the phase.
EXTRAS = (
    "--config.eval_limit=1",
    "--config.eval_every_steps=4",
    "--config.image_every_steps=4",
    "--config.progress_bar=True",
)
KILL_DEADLINE_S = 60.0  # heartbeat timeout 20 s, plus a loaded 2-core machine's slack
RUN_TIMEOUT_S = 600.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(cache: Path, devices: int, port: int | None = None, process_id: int | None = None) -> dict[str, str]:
    """A user's environment for one process; ``cache``: its persistent compilation cache
    (shared by the runs of one topology only)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_", "OMPI_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    env.update(
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
    )
    flags = ["--xla_backend_optimization_level=0"]
    if devices > 1:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    if port is not None:
        env.update(
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(process_id),
            ASPDC_INITIALIZATION_TIMEOUT="120",
            ASPDC_HEARTBEAT_TIMEOUT="20",
            ASPDC_SHUTDOWN_TIMEOUT="60",
        )
    return env


class _Train:
    """One ``train.py`` process: stdout to a file, stderr to a file or a pseudo-terminal."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, tty: bool = False):
        self.stdout_path, self.stderr_path = log.with_suffix(".out"), log.with_suffix(".err")
        self._stderr: list[bytes] = []
        self._reader: threading.Thread | None = None
        with open(self.stdout_path, "wb") as out:
            if tty:
                master, slave = pty.openpty()
                # a terminal 120 columns wide (tqdm draws nothing at a new pty's 0 columns)
                fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
                self.proc = subprocess.Popen(args, env=env, stdout=out, stderr=slave, cwd=log.parent)
                os.close(slave)
                self._reader = threading.Thread(target=self._drain, args=(master,), daemon=True)
                self._reader.start()
            else:
                self.proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.PIPE, cwd=log.parent)
                self._reader = threading.Thread(target=self._drain_pipe, daemon=True)
                self._reader.start()

    def _drain(self, master: int) -> None:
        try:
            while chunk := os.read(master, 65536):
                self._stderr.append(chunk)
        except OSError:  # EIO: the process closed the terminal
            pass
        finally:
            os.close(master)

    def _drain_pipe(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        for chunk in iter(lambda: stream.read1(65536), b""):
            self._stderr.append(chunk)

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
        """The exit status; a process still running after ``timeout`` s is killed."""
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.close()

    def close(self) -> None:
        """Kills the process if it still runs; keeps its stderr in ``<log>.err``."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=10)
        self.stderr_path.write_text(self.stderr)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return b"".join(self._stderr).decode(errors="replace")

    def report(self) -> str:
        return f"rc={self.proc.returncode}\n--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}"


def _start(
    workdir: Path, name: str, epochs: int, processes: int, extra: tuple[str, ...] = (), tty: bool = False
) -> list[_Train]:
    """``processes`` train.py processes (1: with 2 devices) into ``workdir``; logs ``<name>_p<i>.*``."""
    args = [sys.executable, str(TRAIN), f"--workdir={workdir}", *OVERRIDES, f"--config.deblur.num_epochs={epochs}"]
    args += list(extra)
    if processes == 1:
        return [_Train(args, _env(workdir.with_name("cache_1x2"), 2), workdir.with_name(f"{name}_p0"))]
    port = _free_port()
    return [
        _Train(args, _env(workdir.with_name("cache_2x1"), 1, port, i), workdir.with_name(f"{name}_p{i}"), tty=tty)
        for i in range(processes)
    ]


def _finish(procs: list[_Train]) -> None:
    for p in procs:
        p.wait()
    for i, p in enumerate(procs):
        assert p.proc.returncode == 0, f"process {i}: {p.report()}"


def _records(workdir: Path) -> list[dict]:
    """metrics.jsonl, without a last line torn by a kill."""
    out = []
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _losses(records: list[dict]) -> dict[int, float]:
    return {int(r["step"]): float(r["loss"]) for r in records if r["event"] == "train"}


def _wait_for_step(workdir: Path, step: int, procs: list[_Train], timeout: float = RUN_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (workdir / "metrics.jsonl").is_file() and max(_losses(_records(workdir)), default=0) >= step:
            return
        for i, p in enumerate(procs):
            assert p.proc.poll() is None, f"process {i} ended before step {step}: {p.report()}"
        time.sleep(0.2)
    raise AssertionError(f"step {step} not logged within {timeout} s")


def _kill_one(workdir: Path, procs: list[_Train]) -> dict:
    """Once step 8 is logged: SIGKILL process 1; how process 0 ends and how long it took."""
    _wait_for_step(workdir, 2 * STEPS_PER_EPOCH, procs)
    records = _records(workdir)  # before the kill: process 0 may still log a step or two
    procs[1].proc.kill()
    killed = time.monotonic()
    procs[1].wait()
    try:
        rc: int | None = procs[0].proc.wait(timeout=KILL_DEADLINE_S + 60)
    except subprocess.TimeoutExpired:
        rc = None  # still waiting for the dead process: killed by close()
    seconds = time.monotonic() - killed
    procs[0].close()
    return {"rc": rc, "seconds": seconds, "records": records}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("multiprocess")
    one, two = root / "one", root / "two"
    started: list[_Train] = []
    try:
        ref = _start(one, "one", epochs=2, processes=1)
        pair = _start(two, "two", epochs=1, processes=2, extra=EXTRAS, tty=True)
        started += ref + pair
        _finish(pair)
        _finish(ref)
        after_two = {"records": _records(two), "tensorboard": sorted((two / "tensorboard").rglob("events.out*"))}
        again = _start(two, "again", epochs=100, processes=2)
        started += again
        killed = _kill_one(two, again)
        yield {"one": one, "two": two, "ref": ref, "pair": pair, "again": again, "after_two": after_two, **killed}
    finally:
        for p in started:
            p.close()


# ----------------------------------------------------------------------------- (a) shards


def test_processes_read_disjoint_shards_that_make_up_the_global_batch():
    """The pipeline itself: process p of 2 reads global positions p, p + 2, ... of the one
    shuffled stream; together the two hold exactly one process's global batch."""
    from aspdc_jax.data import make_train_loader
    from aspdc_jax.data.settings import defaults

    cfg = defaults().replace(dataset="synthetic", crop_size=16, epoch_size=8, num_workers=0)

    def batches(index: int, count: int) -> list[dict[str, np.ndarray]]:
        loader = make_train_loader(cfg, global_batch_size=4, seed=3, process_index=index, process_count=count)
        it = iter(loader)
        return [next(it) for _ in range(3)]  # 2 steps per epoch: crosses the reshuffle

    single, first, second = batches(0, 1), batches(0, 2), batches(1, 2)
    for whole, a, b in zip(single, first, second):
        assert whole["blurred"].shape == (4, 16, 16, 3) and a["blurred"].shape == (2, 16, 16, 3)
        keys = [x.tobytes() for x in whole["blurred"]]
        assert len(set(keys)) == 4  # four different examples
        assert not {x.tobytes() for x in a["blurred"]} & {x.tobytes() for x in b["blurred"]}
        for key in ("blurred", "sharp"):
            np.testing.assert_array_equal(a[key], whole[key][0::2])
            np.testing.assert_array_equal(b[key], whole[key][1::2])
    with pytest.raises(ValueError, match="process_index"):
        make_train_loader(cfg, global_batch_size=4, seed=3, process_index=2, process_count=2)


def test_each_process_loads_its_share(runs):
    """End to end: each process says which share it loads, and step 1's loss (one global
    batch, before any update) is the single process's: the two shards made up its batch."""
    for i, p in enumerate(runs["pair"]):
        assert f"2 cpu devices on 2 hosts; global batch 4 (2 per device); process {i} loads 2 per step" in p.stdout
    assert "2 cpu devices on 1 host; global batch 4 (2 per device)\n" in runs["ref"][0].stdout
    one, two = _losses(_records(runs["one"])), _losses(runs["after_two"]["records"])
    assert abs(two[1] - one[1]) <= 1e-5 * abs(one[1]), (one[1], two[1])


# ----------------------------------------------------------------------------- (b) losses


def test_two_processes_train_like_one_with_two_devices(runs):
    one, two = _losses(_records(runs["one"])), _losses(runs["records"])
    assert sorted(one) == list(range(1, 9))
    assert set(range(1, 9)) <= set(two)
    rel = {s: abs(two[s] - one[s]) / abs(one[s]) for s in range(1, 9)}
    assert max(rel.values()) <= 1e-3, rel
    assert len({round(one[s], 6) for s in one}) == 8  # the loss moves: the comparison means something


# ----------------------------------------------------------------------------- (c) writers


def test_only_process_0_writes_metrics_tensorboard_and_progress_bars(runs):
    records = runs["after_two"]["records"]
    assert [r["step"] for r in records if r["event"] == "train"] == [1, 2, 3, 4]  # once each, not per process
    assert [r["event"] for r in records if r["event"] != "train"] == ["val", "eval", "phase_end"]
    assert len(runs["after_two"]["tensorboard"]) == 1, runs["after_two"]["tensorboard"]
    bar = re.compile(r"deblur: +\d+%\|.*\| \d+/4 \[")
    first, second = runs["pair"]
    assert bar.search(first.stderr), first.stderr[-2000:]
    assert not bar.search(second.stderr) and "step/s" not in second.stderr, second.stderr[-2000:]


# ----------------------------------------------------------------------------- (d) checkpoints


def test_both_processes_save_one_checkpoint_that_a_rerun_resumes(runs):
    """The 2-process step-4 checkpoint and best export hold the 1-process step-4 weights;
    the rerun of both processes resumes from it."""
    from aspdc_jax.training import PhaseCheckpoints
    from aspdc_jax.trees import flatten
    from aspdc_jax.weights import load_for_inference, load_workdir

    two = runs["two"]
    with PhaseCheckpoints(two / "deblur", read_only=True) as ckpt:
        assert ckpt.all_steps()[0] == 4
        meta = ckpt.meta(4)
    assert meta.total_steps == 4 and meta.finished
    params = flatten(load_workdir(two / "deblur" / "4").deblur_params)
    ref = flatten(load_workdir(runs["one"] / "deblur" / "4").deblur_params)
    assert params.keys() == ref.keys()
    diff = max(float(np.max(np.abs(np.asarray(params[k]) - np.asarray(ref[k])))) for k in ref)
    assert diff <= 1e-5, diff
    best = json.loads((two / "deblur" / "best" / "best.json").read_text())
    assert best["step"] == 4 and np.isfinite(best["psnr_output"])
    exported = flatten(load_for_inference(two / "deblur" / "best").deblur_params)
    for key, value in params.items():
        np.testing.assert_array_equal(np.asarray(exported[key]), np.asarray(value))
    for i, p in enumerate(runs["again"]):
        assert "[deblur] resuming from step 4/400" in p.stdout, f"process {i}: {p.stdout[-2000:]}"
    resumed = [r["step"] for r in runs["records"] if r["event"] == "train"]
    assert resumed[:8] == list(range(1, 9))  # steps 1-4 of the first run, 5-8 after the resume


# ----------------------------------------------------------------------------- (e) a process dies


def test_a_dead_process_ends_the_other_with_an_error(runs):
    survivor = runs["again"][0]
    assert runs["rc"] not in (None, 0), survivor.report()
    assert runs["seconds"] <= KILL_DEADLINE_S, (runs["seconds"], survivor.report())
    clear = (
        "error: process 0 of 2: a JAX runtime error",
        "another task died",  # jax.distributed's own message when the heartbeat times out
    )
    assert any(text in survivor.stderr for text in clear), survivor.report()


def test_distributed_timeouts_come_from_the_environment():
    from aspdc_jax.training.sharding import distributed_timeouts

    assert distributed_timeouts({}) == {
        "initialization_timeout": 300,
        "heartbeat_timeout_seconds": 100,
        "shutdown_timeout_seconds": 300,
    }
    env = {"ASPDC_HEARTBEAT_TIMEOUT": "20", "ASPDC_SHUTDOWN_TIMEOUT": " 45 "}
    assert distributed_timeouts(env) == {
        "initialization_timeout": 300,
        "heartbeat_timeout_seconds": 20,
        "shutdown_timeout_seconds": 45,
    }
    for bad in ("0", "-5", "ten", "1.5"):
        with pytest.raises(ValueError, match="ASPDC_INITIALIZATION_TIMEOUT must be a positive number"):
            distributed_timeouts({"ASPDC_INITIALIZATION_TIMEOUT": bad})
