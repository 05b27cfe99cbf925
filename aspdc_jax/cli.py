"""What the command-line entry points share: bad input ends in one line, not a traceback,
and multi-word flags are spelled alike (``--crop_size``, as absl writes them; ``--crop-size``
is accepted too)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence

__all__ = ["USER_ERRORS", "FlagParser", "reporting_user_errors"]

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


class FlagParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that reads ``--a-b`` as ``--a_b``.

    The argparse tools (deblur, convert, the synthetic preview, the benchmarks) declare
    their multi-word flags with underscores, like the absl flags of ``train.py`` and
    ``evaluate.py``; users may type either spelling. Tokens after ``--`` are left alone.
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        tokens = list(sys.argv[1:] if args is None else args)
        normalised = []
        for i, token in enumerate(tokens):
            if token == "--":
                normalised += tokens[i:]
                break
            if token.startswith("--") and len(token) > 2:
                name, eq, value = token.partition("=")
                token = "--" + name[2:].replace("-", "_") + eq + value
            normalised.append(token)
        return super().parse_known_args(normalised, namespace)
