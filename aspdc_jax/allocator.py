"""The process's malloc chosen for XLA on CPU, so a plain ``pip install`` runs at full speed.

XLA's CPU runtime allocates and frees buffers of tens of MB many times per step, from its
worker threads. glibc's malloc maps and unmaps blocks above its mmap threshold on every
allocation and trims its heaps as soon as they empty, so each step pays again in page
faults (zero-filled pages) and ``munmap`` calls: a deformable-convolution backward pass at
(6, 64, 64, 128) made 4.8x the page faults of the same run under tcmalloc (1.75 M vs
0.36 M). tcmalloc, jemalloc and mimalloc keep freed memory and hand it out again.

`tune_malloc` (called first thing by the entry points: ``train.py``, ``evaluate.py``, the
deblur CLI, the app, the benchmarks) picks, by ``ASPDC_MALLOC``:

* ``auto`` (the default): the best allocator present, preloaded by re-executing the
  process once with it in ``LD_PRELOAD`` (same PID, arguments and interpreter flags): a
  system tcmalloc, else a system jemalloc (both found by the dynamic linker, e.g. after
  ``apt install libtcmalloc-minimal4``), else the mimalloc that the ``cmeel-mimalloc``
  wheel installs with the package (a dependency on Linux x86_64 and aarch64), else glibc's
  malloc. In-process callers (``reexec=False``) keep the allocator they have.
* ``tcmalloc``, ``jemalloc``, ``mimalloc``: that one, or one ``error:`` line if it is not
  installed.
* ``glibc`` and ``system``: glibc's malloc as it is, nothing preloaded or changed. (The
  ``mallopt`` tuning of earlier versions is gone: measured, it was never faster than
  glibc's defaults, and with its one-arena limit slower.)

Measured on the 2-core reference machine (the quickstart deblur phase, 256 steps, whole
processes with ``benchmarks/bench_allocators.py``, wall time relative to tcmalloc in the
same round, median of 3 rounds; 2026-12-05): mimalloc 1.07-1.12 in three sets of 3 (1.08
over the 9 rounds), jemalloc as preloaded here 1.02 (2 rounds), glibc's defaults 1.29-1.34.
``docs/benchmarks.md`` has the tables.

Preloading happens only where it can: for a script's own process (``reexec=True``), before
any work worth keeping. In-process callers (``reexec=False``: a notebook, a test,
`aspdc_jax.inference.cli.main` called from Python) never re-execute. An allocator already
named in ``LD_PRELOAD`` is left alone (an explicit mode naming another one is an error),
as is a C library other than glibc. Library code never calls `tune_malloc`: importing
``aspdc_jax`` leaves the process's allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import os
import platform
import sys
import time
from pathlib import Path

__all__ = [
    "ENV_VAR",
    "MODES",
    "PRELOADED",
    "PRELOAD_OPTIONS",
    "describe",
    "find_library",
    "heap_in_use",
    "installed_allocator",
    "tune_malloc",
    "wait_for_heap_release",
]

#: ``ASPDC_MALLOC`` selects the mode; see the module docstring.
ENV_VAR = "ASPDC_MALLOC"
#: Allocators that, when named in ``LD_PRELOAD``, replace malloc; ``auto`` tries them in
#: this order.
PRELOADED = ("tcmalloc", "jemalloc", "mimalloc")
MODES = ("auto", *PRELOADED, "glibc", "system")

#: ctypes.util.find_library names of the system libraries, best first.
_SYSTEM_NAMES = {"tcmalloc": ("tcmalloc_minimal", "tcmalloc"), "jemalloc": ("jemalloc",), "mimalloc": ("mimalloc",)}
_INSTALL_HINTS = {
    "tcmalloc": "apt install libtcmalloc-minimal4",
    "jemalloc": "apt install libjemalloc2",
    "mimalloc": "pip install cmeel-mimalloc",
}
#: Where the ``cmeel-mimalloc`` wheel puts the shared library, inside site-packages.
_MIMALLOC_WHEEL = ("cmeel-mimalloc", "cmeel.prefix/lib/libmimalloc.so.3", "cmeel.prefix/lib/libmimalloc.so")

#: Environment variables set (unless already set) when this module preloads an allocator,
#: chosen by paired runs of the quickstart deblur phase (``docs/benchmarks.md``):
#:
#: * mimalloc: its defaults keep freed memory for a second (``purge_delay`` 1000 ms in
#:   mimalloc 3); every shorter delay tried (0-250 ms) lowered peak RSS to tcmalloc's
#:   but cost 1.19-1.27x the wall time; longer ones (2000, 3000, 5000 ms) and never
#:   purging (-1) ran at 1.00-1.07x tcmalloc's time (the default: 1.07-1.10 in the same
#:   sets) but peaked at 1.8-1.9 GiB against 1.4. Transparent huge pages off: no slower,
#:   peak RSS 1.52-1.53 instead of 1.59-1.68 GiB (96 steps).
#: * jemalloc: its default decay (dirty pages returned after 10 s) ran at 1.04x glibc's
#:   defaults' time (slower than no allocator at all); never decaying ran at 1.02x
#:   tcmalloc's time with peak RSS 2.09 GiB against 1.38.
PRELOAD_OPTIONS: dict[str, dict[str, str]] = {
    "mimalloc": {"MIMALLOC_ALLOW_THP": "0"},
    "jemalloc": {"MALLOC_CONF": "dirty_decay_ms:-1"},
}

#: glibc is left as it is, in every mode: paired runs of the 256-step quickstart deblur
#: phase against glibc's defaults gave 1.00, 1.03 and 1.00 for the mallopt tuning of
#: earlier versions without its arena limit (no mmap for large blocks, no trimming; fewer
#: page faults, no faster), and earlier (96 steps) 1.05x with ``M_ARENA_MAX = 1`` and
#: 1.20x for that limit alone: one arena makes XLA's worker threads queue on one lock.


def _preloaded() -> str | None:
    preload = os.environ.get("LD_PRELOAD", "")
    return next((name for name in PRELOADED if name in preload), None)


def _mode() -> str:
    mode = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise SystemExit(f"error: {ENV_VAR}={mode!r} is not one of {', '.join(MODES)}; unset it for the default (auto)")
    return mode


def _loads(path: str) -> bool:
    try:
        ctypes.CDLL(path)  # loadable here (right architecture, dependencies present)
    except OSError:
        return False
    return True


def _wheel_mimalloc() -> str | None:
    name, *files = _MIMALLOC_WHEEL
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    for relative in files:
        path = Path(str(dist.locate_file(relative)))
        if path.is_file():
            return str(path)
    return None


def find_library(name: str) -> str | None:
    """The path or soname of allocator ``name`` (one of `PRELOADED`) that loads here, or
    ``None``: the system library the dynamic linker finds, and for mimalloc also the one
    the ``cmeel-mimalloc`` wheel installed."""
    candidates = [ctypes.util.find_library(n) for n in _SYSTEM_NAMES[name]]
    if name == "mimalloc":
        candidates.insert(0, _wheel_mimalloc())
    return next((c for c in candidates if c is not None and _loads(c)), None)


def installed_allocator() -> tuple[str, str] | None:
    """``(name, library)`` of the allocator ``auto`` preloads: the first of `PRELOADED`
    that `find_library` finds; ``None`` if none is present."""
    for name in PRELOADED:
        library = find_library(name)
        if library is not None:
            return name, library
    return None


def _reexec_with(name: str, library: str) -> None:
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(p for p in (library, env.get("LD_PRELOAD", "")) if p)
    for key, value in PRELOAD_OPTIONS.get(name, {}).items():
        env.setdefault(key, value)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def tune_malloc(reexec: bool = False) -> str:
    """Sets up malloc as the module docstring says (once per process); returns `describe`.

    Call it before the first JAX computation (XLA's CPU threads start then). With
    ``reexec=True`` (for a script's own process only, before any work worth keeping) it
    may replace the process: ``execve`` of ``sys.orig_argv`` with the chosen library
    preloaded. An unknown ``ASPDC_MALLOC`` value, or an explicit allocator that is not
    installed (or conflicts with one already in ``LD_PRELOAD``), exits with one ``error:``
    line.
    """
    mode = _mode()
    preloaded = _preloaded()
    if mode in PRELOADED and preloaded not in (None, mode):
        raise SystemExit(f"error: {ENV_VAR}={mode} but LD_PRELOAD already has {preloaded}; unset one of them")
    if preloaded or mode in ("glibc", "system") or platform.libc_ver()[0] != "glibc":
        return describe()
    if mode in PRELOADED:
        library = find_library(mode)
        if library is None:
            hint = _INSTALL_HINTS[mode]
            raise SystemExit(f"error: {ENV_VAR}={mode} but {mode} is not installed ({hint}); or unset {ENV_VAR}")
        if reexec:
            _reexec_with(mode, library)
        return describe()
    if mode == "auto" and reexec:
        found = installed_allocator()
        if found is not None:
            _reexec_with(*found)
    return describe()


def describe() -> str:
    """The allocator this process runs with, as the benchmarks report it: ``"tcmalloc"``
    (or another preloaded one) or ``"glibc malloc"``."""
    return _preloaded() or "glibc malloc"


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def heap_in_use() -> int | None:
    """Bytes malloc has handed out and not had back (tcmalloc's
    ``generic.current_allocated_bytes``, or glibc's ``mallinfo2``: the main arena plus
    mmapped blocks, not the other threads' arenas); ``None`` where it cannot be read.

    jemalloc and mimalloc give ``None``, so the wait below returns at once. mimalloc's
    release build cannot say when XLA has handed a step's temporaries back: its
    statistics count huge blocks when allocated but not when freed (``malloc_huge`` only
    grows; ``committed`` stays up until a purge), and its page count takes other
    threads' frees in late (a 3 GiB block freed on another thread was still counted).

    What going without the wait costs under mimalloc (2-core reference machine,
    2026-12-05): at the quickstart's size, nothing measurable (96 steps: 1.02-1.03x
    tcmalloc's time; peak RSS 1.52 against 1.14 GiB is memory kept for reuse, not doubled
    temporaries: with ``MIMALLOC_PURGE_DELAY=0`` the peak was tcmalloc's 1.12 GiB). At
    full width (``bench_train``, 6x256x256, 6.1 GiB of temporaries) the steps took
    1.24-1.29x tcmalloc's time at the same 7.9 GiB peak: each step takes fresh memory
    while the last one's is still being freed, and pages it in. Install tcmalloc for
    full-width training on a CPU.
    """
    process = ctypes.CDLL(None)
    if _preloaded() == "tcmalloc":
        value = ctypes.c_size_t()
        getter = getattr(process, "MallocExtension_GetNumericProperty", None)
        if getter is not None and getter(b"generic.current_allocated_bytes", ctypes.byref(value)):
            return int(value.value)
        return None
    if _preloaded() or platform.libc_ver()[0] != "glibc":
        return None
    mallinfo2 = getattr(process, "mallinfo2", None)  # glibc >= 2.33
    if mallinfo2 is None:
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return int(info.uordblks + info.hblkhd)


def wait_for_heap_release(target: int, margin: int = 256 << 20, timeout_s: float = 2.0) -> float:
    """Waits until `heap_in_use` is at most ``target + margin`` (or ``timeout_s`` passed);
    returns the seconds waited (0 at once where `heap_in_use` is ``None``).

    XLA:CPU frees a computation's temporaries on its worker thread just after the outputs
    are ready. A step dispatched in that window gets fresh memory for its own temporaries:
    peak RSS doubled (7.2 -> 13.4 GiB at 6x256x256, in 5 of 5 runs of 5 steps, under
    tcmalloc and tuned glibc alike) and that step ran 2x slower, page-faulting it in. The
    training loop on a CPU therefore waits, after each step, for the heap to fall back to
    what it was before the step (``target``). With tcmalloc that ended the doubling (10
    of 10 steps at 7.25 GiB).
    """
    start = time.perf_counter()
    while True:
        in_use = heap_in_use()
        waited = time.perf_counter() - start
        if in_use is None or in_use <= target + margin or waited >= timeout_s:
            return waited
        time.sleep(0.001)
