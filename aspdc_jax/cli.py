"""What the command-line entry points share: bad input ends in one line, not a traceback,
multi-word flags are spelled alike (``--crop_size``, as absl writes them; ``--crop-size``
is accepted too), and a dataclass of options makes its own absl flags (`define_flags`).

Only the entry points import this module; the library raises `aspdc_jax.errors` types
(and ValueError, OSError, ...) that the entry points turn into one ``error:`` line."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from aspdc_jax.errors import USER_ERRORS
from aspdc_jax.progress import show_progress

__all__ = [
    "USER_ERRORS",
    "FlagParser",
    "add_compute_flags",
    "config_from_flags",
    "define_flags",
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


def define_flags(config_type: type) -> None:
    """One absl flag per field of the dataclass ``config_type`` (e.g.
    `aspdc_jax.evaluation.protocol.EvalConfig`), so its options are stated once, there: the
    flag has the field's name and default, ``metadata["help"]`` as its help and
    ``metadata["choices"]`` (if any) as its allowed values; a field without a default is a
    required flag. Types: bool, int, float, str, each optionally ``| None``; any other
    (e.g. ``int | str``) is a string flag that the dataclass converts itself.
    Read them back with `config_from_flags`."""
    from absl import flags  # noqa: PLC0415 (the argparse tools need no absl)

    hints = typing.get_type_hints(config_type)
    for field in dataclasses.fields(config_type):
        required = field.default is dataclasses.MISSING
        default: Any = None if required else field.default
        help_text = field.metadata.get("help", field.name)
        kind = _flag_kind(hints[field.name])
        if "choices" in field.metadata:
            flags.DEFINE_enum(field.name, default, list(field.metadata["choices"]), help_text, required=required)
        elif kind is bool:
            flags.DEFINE_bool(field.name, default, help_text, required=required)
        elif kind is int:
            flags.DEFINE_integer(field.name, default, help_text, required=required)
        elif kind is float:
            flags.DEFINE_float(field.name, default, help_text, required=required)
        else:
            flags.DEFINE_string(field.name, default, help_text, required=required)


def config_from_flags(config_type: type) -> Any:
    """The ``config_type`` dataclass of the parsed flags that `define_flags` defined."""
    from absl import flags  # noqa: PLC0415 (the argparse tools need no absl)

    return config_type(**{f.name: flags.FLAGS[f.name].value for f in dataclasses.fields(config_type)})


def _flag_kind(hint: Any) -> Any:
    """bool, int, float or str for a field's type (``X | None`` counts as X); else str."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else str
    return hint if hint in (bool, int, float, str) else str


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
