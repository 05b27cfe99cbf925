"""What a process of a multi-process run does when it, or another, fails.

With several processes (`aspdc_jax.training.sharding.maybe_initialize_distributed`), a
process that dies leaves the others waiting in their next collective until it fails
(sooner) or the heartbeat timeout ends them (later); and a process that fails waits at
exit for the others at JAX's shutdown barrier. ``train.py`` wraps the training in both
handlers below: `ending_promptly_on_failure` (any failure ends this process at once,
without that barrier) around `reporting_runtime_errors` (a failed collective, the sign of
a dead peer, becomes one ``error:`` line that says so). Both are no-ops with one process.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import traceback
from collections.abc import Iterator

import jax

from aspdc_jax.training.sharding import distributed_initialized

__all__ = ["ending_promptly_on_failure", "reporting_runtime_errors"]


def _exit_now(status: int) -> None:
    """Ends this process at once: no ``jax.distributed`` shutdown barrier, which would
    wait for the other processes (up to the heartbeat or shutdown timeout)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


# The status codes XLA's errors start with ("UNKNOWN: Gloo AllGather failed: ..."): the
# mark of a runtime error that JAX re-raised as another type (e.g. ValueError from jit).
_XLA_STATUS = re.compile(
    r"^(CANCELLED|UNKNOWN|INVALID_ARGUMENT|DEADLINE_EXCEEDED|NOT_FOUND|ALREADY_EXISTS|PERMISSION_DENIED|"
    r"RESOURCE_EXHAUSTED|FAILED_PRECONDITION|ABORTED|OUT_OF_RANGE|UNIMPLEMENTED|INTERNAL|UNAVAILABLE|"
    r"DATA_LOSS|UNAUTHENTICATED): "
)


def _runtime_error(err: BaseException | None) -> BaseException | None:
    """The JAX runtime error in ``err``'s chain of causes (what a failed collective
    raises, however it was re-raised), or None."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, jax.errors.JaxRuntimeError) or _XLA_STATUS.match(str(err)):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


@contextlib.contextmanager
def reporting_runtime_errors(show_traceback: bool = False) -> Iterator[None]:
    """In a multi-process run, a JAX runtime error (what this process sees when another
    one died: its next collective fails) becomes one ``error:`` line that says so, and
    exit status 1. Other exceptions pass. No-op with one process."""
    if not distributed_initialized():
        yield
        return
    try:
        yield
    except Exception as err:
        runtime = _runtime_error(err)
        if runtime is None:
            raise
        if show_traceback:
            traceback.print_exc()
        text = str(runtime).strip()
        print(
            f"error: process {jax.process_index()} of {jax.process_count()}: a JAX runtime error "
            f"({text.splitlines()[0] if text else type(runtime).__name__}). When another process died or "
            "was stopped, this is what the others see: look at its output. Start all processes again "
            "with the same command to resume from the last checkpoint.",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


@contextlib.contextmanager
def ending_promptly_on_failure() -> Iterator[None]:
    """In a multi-process run, any failure (an exception, or ``sys.exit`` with a non-zero
    status) ends this process at once, so the others fail fast in their next collective
    instead of waiting for it, and this one does not wait for them at the shutdown
    barrier. No-op with one process."""
    if not distributed_initialized():
        yield
        return
    try:
        yield
    except SystemExit as done:
        if done.code in (0, None):
            raise
        if not isinstance(done.code, int):
            print(done.code, file=sys.stderr)
        _exit_now(done.code if isinstance(done.code, int) else 1)
    except BaseException:  # any other failure: reported, then this process ends at once
        traceback.print_exc()
        _exit_now(1)
