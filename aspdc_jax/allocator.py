"""The process's malloc chosen for XLA on CPU, so a plain install runs as fast as a tuned one.

XLA's CPU runtime allocates and frees buffers of tens of MB many times per step, from its
worker threads. With glibc's defaults each worker thread gets its own malloc arena, whose
64 MB heaps are unmapped as soon as they are empty, and blocks above the mmap threshold are
mapped and unmapped on every allocation. Each fresh mapping is paid for again in page faults
(zero-filled pages) and ``munmap`` calls: a deformable-convolution backward pass at
(6, 64, 64, 128) took 4.8x the page faults of the same run under tcmalloc (1.75 M vs 0.36 M).

`tune_malloc` (called first thing by the entry points: ``train.py``, ``evaluate.py``, the
deblur CLI, the benchmarks) picks, by ``ASPDC_MALLOC``:

* ``auto`` (the default): when tcmalloc or jemalloc is installed (found by the dynamic
  linker, e.g. ``apt install libtcmalloc-minimal4``) and not yet loaded, an entry point
  re-executes its process once with it in ``LD_PRELOAD`` (same arguments, same PID), so
  ``python train.py ...`` runs as fast as with ``LD_PRELOAD`` set by hand. Otherwise, and
  when called in-process (``reexec=False``), as ``glibc``.
* ``glibc``: glibc's malloc tuned through ``mallopt``, so freed memory is kept and reused:
  ``M_ARENA_MAX = 1`` (all threads share the main arena; XLA's CPU threads hold it
  briefly), ``M_MMAP_MAX = 0`` (large blocks come from the heap, not a fresh ``mmap``
  each time), ``M_TRIM_THRESHOLD = 2 GiB - 1`` and ``M_TOP_PAD = 256 MiB`` (the heap is
  not shrunk and regrown between steps). The DCN run above then makes 0.36-0.51 M page
  faults, like tcmalloc. Memory stays bounded: freed blocks are reused for the next step's
  buffers of the same sizes, but peak RSS is higher than tcmalloc's (see the README).
* ``system``: glibc's defaults, nothing changed.

An allocator already named in ``LD_PRELOAD`` (tcmalloc, jemalloc, mimalloc) is left alone,
as is a C library other than glibc. Library code never calls `tune_malloc`: importing
``aspdc_jax`` leaves the process's allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
import time

__all__ = [
    "ENV_VAR",
    "MODES",
    "PRELOADED",
    "describe",
    "heap_in_use",
    "installed_allocator",
    "tune_malloc",
    "wait_for_heap_release",
]

#: ``ASPDC_MALLOC`` selects the mode: ``auto`` (default), ``glibc`` or ``system``.
ENV_VAR = "ASPDC_MALLOC"
MODES = ("auto", "glibc", "system")

#: Allocators that, when named in ``LD_PRELOAD``, replace malloc (and make mallopt moot).
PRELOADED = ("tcmalloc", "jemalloc", "mimalloc")

#: Libraries ``auto`` preloads, best first (ctypes.util.find_library names).
_CANDIDATES = ("tcmalloc_minimal", "tcmalloc", "jemalloc")

# mallopt parameters from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

#: (parameter, value) pairs the ``glibc`` mode sets, in order.
_SETTINGS = (
    (_M_ARENA_MAX, 1),
    (_M_MMAP_MAX, 0),
    (_M_TRIM_THRESHOLD, 2**31 - 1),
    (_M_TOP_PAD, 256 << 20),
)

_tuned = False  # set once mallopt succeeded in this process


def _preloaded() -> str | None:
    preload = os.environ.get("LD_PRELOAD", "")
    return next((name for name in PRELOADED if name in preload), None)


def _mode() -> str:
    mode = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise SystemExit(f"error: {ENV_VAR}={mode!r} is not one of {', '.join(MODES)}; unset it for the default (auto)")
    return mode


def installed_allocator() -> str | None:
    """The soname of an installed tcmalloc or jemalloc that loads (``None`` if none is)."""
    for name in _CANDIDATES:
        soname = ctypes.util.find_library(name)
        if soname is None:
            continue
        try:
            ctypes.CDLL(soname)  # loadable here (right architecture, dependencies present)
        except OSError:
            continue
        return soname
    return None


def tune_malloc(reexec: bool = False) -> str:
    """Sets up malloc as the module docstring says (once per process); returns `describe`.

    Call it before the first JAX computation (XLA's CPU threads start then). With
    ``reexec=True`` (for a script's own process only, before any work worth keeping), in
    ``auto`` mode with tcmalloc or jemalloc installed, it replaces the process: ``execve``
    of ``sys.orig_argv`` with the library preloaded. Where it cannot apply (another C
    library, mallopt missing) it leaves malloc as it is. An unknown ``ASPDC_MALLOC`` value
    exits with one ``error:`` line.
    """
    global _tuned
    mode = _mode()
    if _tuned or _preloaded() or mode == "system" or platform.libc_ver()[0] != "glibc":
        return describe()
    if mode == "auto" and reexec:
        library = installed_allocator()
        if library is not None:
            env = dict(os.environ)
            env["LD_PRELOAD"] = ":".join(p for p in (library, env.get("LD_PRELOAD", "")) if p)
            sys.stdout.flush()
            sys.stderr.flush()
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _tuned = all(libc.mallopt(param, value) == 1 for param, value in _SETTINGS)
    except (OSError, AttributeError):
        _tuned = False
    return describe()


def describe() -> str:
    """The allocator this process runs with, as the benchmarks report it: ``"tcmalloc"``
    (or another preloaded one), ``"glibc malloc (tuned)"`` or ``"glibc malloc"``."""
    preloaded = _preloaded()
    if preloaded:
        return preloaded
    return "glibc malloc (tuned)" if _tuned else "glibc malloc"


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def heap_in_use() -> int | None:
    """Bytes malloc has handed out and not had back (tcmalloc's
    ``generic.current_allocated_bytes``, or glibc's ``mallinfo2``: main arena plus mmapped
    blocks); ``None`` where neither can be read."""
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
    returns the seconds waited.

    XLA:CPU frees a computation's temporaries on its worker thread just after the outputs
    are ready. A step dispatched in that window gets fresh memory for its own temporaries:
    peak RSS doubles (7.2 -> 13.4 GiB at 6x256x256, in 5 of 5 runs of 5 steps, under
    tcmalloc and tuned glibc alike) and that step runs 2x slower, page-faulting it in. The
    training loop on a CPU therefore waits, after each step, for the heap to fall back to
    what it was before the step (``target``). With tcmalloc that ended the doubling (10
    of 10 steps at 7.25 GiB); tuned glibc can still grow by fragmentation.
    """
    start = time.perf_counter()
    while True:
        in_use = heap_in_use()
        waited = time.perf_counter() - start
        if in_use is None or in_use <= target + margin or waited >= timeout_s:
            return waited
        time.sleep(0.001)
