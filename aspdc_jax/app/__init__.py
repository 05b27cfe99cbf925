"""A local web app for deblurring photos: ``python -m aspdc_jax.app --ckpt DIR`` (also the
``aspdc-app`` console script). Needs the ``app`` extra: ``pip install -e '.[app]'`` (Gradio).

The page takes one or several photos (drag and drop, or paste one), deblurs each with the
deblur CLI's path (:mod:`aspdc_jax.app.handlers`: the same PNG, byte for byte, for the same
photo, weights and options), and shows a before/after slider, a zoomed crop where the
output changed most, PSNR/SSIM against an optional sharp reference and the full-resolution
PNGs to download. The deblurring is also the API endpoint ``/deblur`` (one image file in,
its PNG out) for ``gradio_client``. The server listens on 127.0.0.1 unless ``--host`` says
otherwise; requests are queued and run one at a time.

``--ckpt`` takes whatever the deblur CLI's does (converted official weights, a ``train.py``
workdir, phase or step folder, published weights). Without it, or with a folder that does
not load, the app still starts and the page and the terminal say in one sentence what is
wrong and how to get weights.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from aspdc_jax.allocator import tune_malloc

__all__ = ["DEFAULT_MAX_MEGAPIXELS", "build_parser", "main"]

#: Photos with more pixels than this (in millions) are refused, by default (``--max_megapixels``).
DEFAULT_MAX_MEGAPIXELS = 50.0


def build_parser() -> argparse.ArgumentParser:
    """The app's flags (``--max_megapixels`` also spelled ``--max-megapixels``)."""
    parser = argparse.ArgumentParser(
        prog="python -m aspdc_jax.app",
        description="A local web app (Gradio) that deblurs photos with an ASPDC checkpoint, "
        "as the deblur CLI does; also an API endpoint named 'deblur' for gradio_client.",
    )
    parser.add_argument(
        "--ckpt",
        default=None,
        help="export folder (python -m aspdc_jax.convert, aspdc_jax.publish) or train.py workdir / phase / "
        "step folder; without it the page says how to get weights",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s, this machine only; another address exposes "
        "the app to the network)",
    )
    parser.add_argument(
        "--port", type=int, default=None, help="port (default: the first free one from 7860 up to 7959)"
    )
    parser.add_argument(
        "--max_megapixels",
        "--max-megapixels",
        type=float,
        default=DEFAULT_MAX_MEGAPIXELS,
        help="photos with more pixels are refused with the reason; smaller ones above the tile size "
        "run in tiles (default: %(default)s)",
    )
    parser.add_argument(
        "--max_upload_mb",
        "--max-upload-mb",
        type=float,
        default=200.0,
        help="largest file the page accepts, in MB (default: %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: the process's malloc first (it may re-execute with tcmalloc, see
    :mod:`aspdc_jax.allocator`), then the server; returns the exit status (0 after Ctrl+C,
    2 with one ``error:`` line when the server cannot start)."""
    tune_malloc(reexec=True)
    args = build_parser().parse_args(argv)
    from aspdc_jax.app.ui import serve  # noqa: PLC0415 (Gradio and JAX after the re-exec)

    return serve(args)
