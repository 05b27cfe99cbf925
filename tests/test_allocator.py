"""aspdc_jax.allocator: the best allocator installed is preloaded (tcmalloc, jemalloc, else
the mimalloc wheel); the heap in use is read where the allocator can say it.

Each case runs in a fresh interpreter (LD_PRELOAD and execve change the whole process). The
measure of reuse is the kernel's count of minor page faults while a 100 MiB buffer is
allocated, filled and freed five times: glibc's defaults map and unmap it each time (fresh
zero pages, faulted in again), a preloaded allocator reuses the pages it already has.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"

PROBE = """
import resource, sys
import numpy as np
from aspdc_jax.allocator import tune_malloc
name = tune_malloc()
np.ones(1 << 24)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    buffer = np.ones(100 << 17)  # 100 MiB of float64, written
    del buffer
print(name, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="preloads into glibc processes only")


def _env(**env: str) -> dict[str, str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASPDC_MALLOC")}
    full_env.update(env)
    return full_env


def _probe(**env: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=_env(**env), capture_output=True, text=True, check=True
    ).stdout.split()
    return " ".join(out[:-1]), int(out[-1])


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="cmeel-mimalloc ships Linux x86_64/aarch64")
def test_the_preloaded_mimalloc_reuses_freed_memory_without_page_faults() -> None:
    from aspdc_jax.allocator import find_library

    mimalloc_name, mimalloc_faults = _probe(LD_PRELOAD=str(find_library("mimalloc")))
    default_name, default_faults = _probe(ASPDC_MALLOC="system")
    assert (mimalloc_name, default_name) == ("mimalloc", "glibc malloc")
    # 5 x 100 MiB freshly mapped: at least one fault per 2 MiB huge page (250), usually one
    # per 4 KiB page (128000). Reused pages: none beyond noise.
    assert default_faults >= 250
    assert mimalloc_faults <= default_faults // 10


@pytest.mark.skipif(not Path(TCMALLOC).exists(), reason="tcmalloc is not installed")
def test_a_preloaded_allocator_is_left_alone() -> None:
    name, _ = _probe(LD_PRELOAD=TCMALLOC)
    assert name == "tcmalloc"


REEXEC = """
import json, os, sys
print("before", os.getpid(), flush=True)
from aspdc_jax.allocator import tune_malloc
name = tune_malloc(reexec=True)
print(json.dumps([name, os.getpid(), os.environ.get("LD_PRELOAD", ""), sys.argv[1:], sys.stdout.write_through]))
"""


def _installed() -> tuple[str, str] | None:
    from aspdc_jax.allocator import installed_allocator

    return installed_allocator()


def _run(code: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-u", "-c", code, *args], cwd=ROOT, env=_env(**env), capture_output=True, text=True
    )


@pytest.mark.skipif(_installed() is None, reason="no allocator to preload is installed")
def test_an_entry_point_reexecutes_itself_with_the_best_installed_allocator() -> None:
    import json

    proc = _run(REEXEC, "--flag=1", "two words")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    # The process ran from the start twice (once before the execve), as one PID.
    first, second = out[0].split(), out[1].split()
    assert first[0] == second[0] == "before" and first[1] == second[1]
    name, pid, preload, argv, unbuffered = json.loads(out[2])
    expected_name, expected_library = _installed()  # type: ignore[misc]
    assert pid == int(first[1])
    assert name == expected_name and preload.split(":")[0] == expected_library
    assert argv == ["--flag=1", "two words"] and unbuffered is True  # arguments and interpreter flags survive


def test_auto_prefers_tcmalloc_then_jemalloc_then_the_mimalloc_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    from aspdc_jax import allocator

    present: dict[str, str | None] = {"tcmalloc": None, "jemalloc": None, "mimalloc": "/wheel/libmimalloc.so.3"}
    monkeypatch.setattr(allocator, "find_library", lambda name: present[name])
    assert allocator.installed_allocator() == ("mimalloc", "/wheel/libmimalloc.so.3")
    present["jemalloc"] = "libjemalloc.so.2"
    assert allocator.installed_allocator() == ("jemalloc", "libjemalloc.so.2")
    present["tcmalloc"] = "libtcmalloc_minimal.so.4"
    assert allocator.installed_allocator() == ("tcmalloc", "libtcmalloc_minimal.so.4")
    present.update(tcmalloc=None, jemalloc=None, mimalloc=None)
    assert allocator.installed_allocator() is None


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="cmeel-mimalloc ships Linux x86_64/aarch64")
def test_the_mimalloc_wheel_is_found_and_preloaded_with_its_options() -> None:
    import json

    from aspdc_jax.allocator import PRELOAD_OPTIONS, find_library

    options = PRELOAD_OPTIONS["mimalloc"]

    library = find_library("mimalloc")
    assert library is not None and "libmimalloc" in library
    code = REEXEC + "print(json.dumps({k: os.environ.get(k) for k in " + repr(sorted(options)) + "}))"
    proc = _run(code, ASPDC_MALLOC="mimalloc")
    assert proc.returncode == 0, proc.stderr
    name, _, preload, _, _ = json.loads(proc.stdout.splitlines()[2])
    assert name == "mimalloc" and preload == library
    assert json.loads(proc.stdout.splitlines()[3]) == options


def test_in_process_callers_and_opted_out_processes_are_not_reexecuted() -> None:
    code = "from aspdc_jax.allocator import tune_malloc; print(tune_malloc())"
    for env, expected in (
        ({}, "glibc malloc"),
        ({"ASPDC_MALLOC": "mimalloc"}, "glibc malloc"),
        ({"ASPDC_MALLOC": "glibc"}, "glibc malloc"),
        ({"ASPDC_MALLOC": "system"}, "glibc malloc"),
    ):
        proc = _run(code, **env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == expected, env


def test_bad_modes_are_one_error_line() -> None:
    from aspdc_jax.allocator import find_library

    code = "from aspdc_jax.allocator import tune_malloc; tune_malloc(reexec=True)"
    proc = _run(code, ASPDC_MALLOC="fast")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: ASPDC_MALLOC='fast' is not one of auto, tcmalloc, jemalloc, mimalloc, glibc, system; "
        "unset it for the default (auto)"
    ]
    missing = next((name for name in ("jemalloc", "tcmalloc") if find_library(name) is None), None)
    if missing is not None:
        proc = _run(code, ASPDC_MALLOC=missing)
        assert proc.returncode == 1
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith(f"error: ASPDC_MALLOC={missing} but {missing} is not installed (apt install lib")
    proc = _run(code, ASPDC_MALLOC="tcmalloc", LD_PRELOAD="/nonexistent/libmimalloc.so")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: ASPDC_MALLOC=tcmalloc but LD_PRELOAD already has mimalloc; unset one of them"
    )


HEAP = """
import json, threading, time
from aspdc_jax.allocator import describe, heap_in_use, tune_malloc, wait_for_heap_release
tune_malloc()
base = heap_in_use()
held = bytearray(512 << 20)
grown = heap_in_use()
timed_out = wait_for_heap_release(base, margin=64 << 20, timeout_s=0.2)
def free_later():
    global held
    time.sleep(0.3)
    held = None
threading.Thread(target=free_later).start()
released = wait_for_heap_release(base, margin=64 << 20, timeout_s=10.0)
print(json.dumps([describe(), base, grown, timed_out, released, heap_in_use()]))
"""


@pytest.mark.parametrize(
    "env",
    [{"ASPDC_MALLOC": "glibc"}, {"ASPDC_MALLOC": "system"}, {"LD_PRELOAD": TCMALLOC}],
    ids=["tuned-glibc", "glibc", "tcmalloc"],
)
def test_the_heap_in_use_is_read_and_its_release_awaited(env: dict[str, str]) -> None:
    import json

    if "LD_PRELOAD" in env and not Path(TCMALLOC).exists():
        pytest.skip("tcmalloc is not installed")
    out = subprocess.run(
        [sys.executable, "-c", HEAP], cwd=ROOT, env=_env(**env), capture_output=True, text=True, check=True
    )
    name, base, grown, timed_out, released, after = json.loads(out.stdout)
    assert name in ("glibc malloc", "tcmalloc")
    # 512 MiB held: the count grows by it; while held the wait runs to its timeout.
    assert abs(grown - base - (512 << 20)) < (16 << 20)
    assert 0.2 <= timed_out < 1.0
    # Freed by another thread after 0.3 s: the wait ends then, not at its timeout.
    assert 0.25 <= released < 5.0
    assert after - base < (64 << 20)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="cmeel-mimalloc ships Linux x86_64/aarch64")
def test_under_mimalloc_the_heap_is_not_read_and_the_wait_returns_at_once() -> None:
    import json

    from aspdc_jax.allocator import find_library

    code = (
        "import json; from aspdc_jax.allocator import describe, heap_in_use, wait_for_heap_release; "
        "print(json.dumps([describe(), heap_in_use(), wait_for_heap_release(0, margin=0, timeout_s=5.0)]))"
    )
    proc = _run(code, LD_PRELOAD=str(find_library("mimalloc")))
    assert proc.returncode == 0, proc.stderr
    name, in_use, waited = json.loads(proc.stdout)
    assert name == "mimalloc" and in_use is None and waited < 0.1
