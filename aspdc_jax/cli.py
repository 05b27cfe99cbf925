"""What the command-line entry points share: bad input ends in one line, not a traceback,
and multi-word flags are spelled alike (``--crop_size``, as absl writes them; ``--crop-size``
is accepted too)."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from aspdc_jax.errors import USER_ERRORS
from aspdc_jax.progress import show_progress

__all__ = [
    "USER_ERRORS",
    "FlagParser",
    "add_compute_flags",
    "parse_absl_flags",
    "print_user_error",
    "reporting_user_errors",
    "returning_user_errors",
    "show_progress",
]


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
        print_user_error(err)
        sys.exit(2)


def returning_user_errors(main: Callable[[], int], *extra: type[BaseException], traceback: bool = False) -> int:
    """``main()``, or exit status 2 after `print_user_error` when it raises one of
    ``USER_ERRORS`` (and ``extra``): the argparse tools' form of `reporting_user_errors`."""
    try:
        return main()
    except USER_ERRORS + extra as err:
        if traceback:
            raise
        print_user_error(err)
        return 2


def add_compute_flags(parser: argparse.ArgumentParser) -> None:
    """``--dtype`` and ``--self_ensemble``, as every tool that runs the DeblurNet spells them."""
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="compute dtype; bfloat16 is for GPUs/TPUs (default: %(default)s)",
    )
    parser.add_argument(
        "--self_ensemble",
        action="store_true",
        help="geometric x8 self-ensemble: average the outputs of the 8 flips/transposes (8x the time)",
    )


def print_user_error(err: BaseException | str) -> None:
    """The one way the entry points report bad input: ``error: <message>`` on stderr, and
    how to see the traceback."""
    print(f"error: {err}", file=sys.stderr, flush=True)
    print("(rerun with --verbosity=1 for the traceback)", file=sys.stderr, flush=True)


class FlagParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that reads ``--a-b`` as ``--a_b``, and has ``--verbosity``.

    The argparse tools (deblur, convert, the synthetic preview, the benchmarks) declare
    their multi-word flags with underscores, like the absl flags of ``train.py`` and
    ``evaluate.py``; users may type either spelling. Tokens after ``--`` are left alone.
    ``--verbosity=1`` shows the traceback of an ``error:`` (as absl's flag does).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--verbosity",
            type=int,
            default=0,
            help="1: show the traceback behind an 'error:' line (default 0: the line only)",
        )

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


def parse_absl_flags(argv: list[str]) -> list[str]:
    """``absl.app.run(main, flags_parser=parse_absl_flags)``: like absl's own parser, but a
    bad flag, a ``--config.<field>`` override that names no field, or a config file that
    does not load ends in one ``error:`` line and exit status 2 instead of a traceback."""
    from absl import flags  # noqa: PLC0415

    with reporting_bad_overrides(argv):
        try:
            remaining = flags.FLAGS(argv)
        except flags.Error as err:
            _exit_usage(str(err))
    config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
    if config is not None:
        try:
            config.keys()  # ml_collections defers a config file's load error to first use
        except OSError as err:
            cause = str(err.__cause__ or err).strip().splitlines()
            _exit_usage(f"{flags.FLAGS['config'].serialize()}: the config file does not load: {cause[-1].strip()}")
    return remaining


@contextlib.contextmanager
def reporting_bad_overrides(argv: Sequence[str]) -> Iterator[None]:
    """A ``--config.<field>`` override that names no field (ml_collections raises it while
    the config flag is defined or parsed) -> one ``error:`` line, exit status 2."""
    try:
        yield
    except (AttributeError, KeyError) as err:
        text = str(err)
        name = re.search(r"'(\w+)", text)
        hint = re.search(r'Did you mean "(\w+)"', text)
        overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        _exit_usage(
            "a --config override names no config field"
            + (f' "{name.group(1)}"' if name else "")
            + (f' (did you mean "{hint.group(1)}"?)' if hint else "")
            + f"; overrides given: {', '.join(overrides) or 'none'}. The fields are listed in "
            "configs/default.py"
        )


def _exit_usage(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    print("(--help lists the flags)", file=sys.stderr, flush=True)
    sys.exit(2)
