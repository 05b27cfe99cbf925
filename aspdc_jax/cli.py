"""What the command-line entry points share: bad input ends in one line, not a traceback."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

__all__ = ["USER_ERRORS", "reporting_user_errors"]

# Raised for bad input (a missing folder or checkpoint, a wrong config value, an image
# smaller than the crop, an output folder that is a file, ...), with a message that says
# what to change.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)


@contextlib.contextmanager
def reporting_user_errors(*extra: type[BaseException], traceback: bool = False) -> Iterator[None]:
    """Turns ``USER_ERRORS`` (and ``extra``) into ``error: <message>`` on stderr, exit 2.

    With ``traceback=True`` (e.g. ``--verbosity=1``) they propagate unchanged, for debugging.
    """
    try:
        yield
    except USER_ERRORS + extra as err:
        if traceback:
            raise
        print(f"error: {err}", file=sys.stderr, flush=True)
        print("(rerun with --verbosity=1 for the traceback)", file=sys.stderr, flush=True)
        sys.exit(2)
