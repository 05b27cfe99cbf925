"""The argparse tools accept both spellings of multi-word flags."""

from __future__ import annotations

import pytest

from aspdc_jax.cli import FlagParser
from aspdc_jax.inference.cli import build_parser


def _parser() -> FlagParser:
    parser = FlagParser()
    parser.add_argument("--crop_size", type=int, default=1)
    parser.add_argument("--photo_dir", default=None)
    parser.add_argument("rest", nargs="*")
    return parser


@pytest.mark.parametrize(
    "argv",
    [
        ["--crop_size", "64", "--photo_dir", "a-b"],
        ["--crop-size", "64", "--photo-dir", "a-b"],
        ["--crop-size=64", "--photo-dir=a-b"],
    ],
)
def test_dash_and_underscore_spellings_agree(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    assert (args.crop_size, args.photo_dir) == (64, "a-b")  # values keep their dashes


def test_tokens_after_double_dash_are_positional() -> None:
    args = _parser().parse_args(["--", "--not-a-flag"])
    assert args.rest == ["--not-a-flag"]


def test_unknown_flag_is_still_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["--crop-sise", "3"])
    assert "--crop_sise" in capsys.readouterr().err


def test_deblur_cli_declares_underscore_flags_only() -> None:
    names = [s for a in build_parser()._actions for s in a.option_strings if s.startswith("--")]
    assert names and all("-" not in s[2:] for s in names), names
