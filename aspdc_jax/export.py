"""``python -m aspdc_jax.export``: the deblurring network as a standalone ``jax.export`` file.

    python -m aspdc_jax.export --ckpt weights/demo --out demo.jaxexport

writes the serialized :class:`jax.export.Exported` of
:func:`aspdc_jax.inference.make_deblur_fn` with the weights embedded as constants: uint8
NHWC images ``[b, h, w, 3]`` in [0, 255] in, uint8 ``[b, h, w, 3]`` out, with *symbolic*
batch, height and width (any ``b, h, w >= 1``; reflect padding to the network's multiple
of 4 and the crop back happen inside). It is StableHLO plus calling-convention metadata,
lowered for the ``--platforms`` given, and runs with only ``jax`` installed (``jax.export``
needs the ``flatbuffers`` package to read it)::

    import jax, numpy as np
    with open("demo.jaxexport", "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    sharp = np.asarray(exported.call(blurred_u8))        # compiles once per input shape

The output is bit for bit ``Deblurrer(..., bucket="exact").deblur`` of the same
checkpoint on the same platform.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aspdc_jax.cli import FlagParser, add_compute_flags, returning_user_errors

__all__ = ["DEFAULT_PLATFORMS", "INPUT_SHAPE", "export_deblur", "main"]

#: Platforms lowered for by default (``jax.export`` lowers for each without its hardware).
DEFAULT_PLATFORMS: tuple[str, ...] = ("cpu", "cuda", "rocm", "tpu")
#: The symbolic input (and output) shape of the exported function.
INPUT_SHAPE = "b, h, w, 3"


def export_deblur(
    models: Any,
    params: Any,
    *,
    dtype: str = "float32",
    self_ensemble: bool = False,
    platforms: Sequence[str] | None = DEFAULT_PLATFORMS,
) -> Any:
    """The :class:`jax.export.Exported` of the deblur forward with ``params`` as constants.

    Args:
      models: a DeblurNet module or :class:`aspdc_jax.weights.LoadedModels`.
      params: the DeblurNet ``params`` collection (float32, as stored).
      dtype, self_ensemble: as for :func:`aspdc_jax.inference.make_deblur_fn`.
      platforms: platforms to lower for (None: the current backend only).

    Returns:
      ``jax.export.Exported`` mapping uint8 ``[b, h, w, 3]`` NHWC images in [0, 255] to
      uint8 ``[b, h, w, 3]``; ``.serialize()`` gives the bytes of the artifact.
    """
    import jax  # noqa: PLC0415 (--help without JAX)
    import jax.numpy as jnp  # noqa: PLC0415 (--help without JAX)

    from aspdc_jax.inference.functional import make_deblur_fn  # noqa: PLC0415 (--help without JAX)

    deblur_fn = make_deblur_fn(models, dtype=dtype, self_ensemble=self_ensemble)
    params = jax.tree_util.tree_map(jnp.asarray, params)

    def deblur(images_u8: jax.Array) -> jax.Array:
        """uint8 (B, H, W, 3) NHWC in [0, 255] -> uint8 (B, H, W, 3), weights embedded."""
        return deblur_fn(params, images_u8)

    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(INPUT_SHAPE), jnp.uint8)
    return jax.export.export(jax.jit(deblur), platforms=platforms)(spec)


def _platforms(value: str) -> tuple[str, ...]:
    names = tuple(p.strip().lower() for p in value.split(",") if p.strip())
    known = set(DEFAULT_PLATFORMS)
    if not names or not set(names) <= known:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(DEFAULT_PLATFORMS)}, got {value!r}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(
        prog="python -m aspdc_jax.export",
        description="Serialize the deblurring network (weights included) as a jax.export artifact: "
        "uint8 [b, h, w, 3] images in, uint8 [b, h, w, 3] out, any batch and size; it runs with "
        "jax alone (jax.export.deserialize(...).call(images)), or as StableHLO elsewhere.",
    )
    parser.add_argument(
        "--ckpt",
        required=True,
        help="export folder (python -m aspdc_jax.convert) or train.py workdir / phase folder",
    )
    parser.add_argument("--out", required=True, type=Path, help="file to write, e.g. model.jaxexport")
    add_compute_flags(parser)
    parser.add_argument(
        "--platforms",
        type=_platforms,
        default=DEFAULT_PLATFORMS,
        help=f"comma-separated platforms to lower for (default: {','.join(DEFAULT_PLATFORMS)})",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 written, 2 bad input: one ``error:`` line)."""
    from aspdc_jax.weights import CheckpointError  # noqa: PLC0415 (--help without JAX)

    args = build_parser().parse_args(argv)
    return returning_user_errors(lambda: _run(args), CheckpointError, IsADirectoryError, traceback=args.verbosity > 0)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give a file name such as {out / 'model.jaxexport'}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"--out {out} exists; add --overwrite to replace it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"the folder of --out {out} does not exist")


def _write(out: Path, data: bytes | bytearray) -> None:
    """Writes ``data`` to a hidden file beside ``out`` and renames it over ``out``."""
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_bytes(bytes(data))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _run(args: argparse.Namespace) -> int:
    from aspdc_jax.weights import load_for_inference  # noqa: PLC0415 (--help without JAX)

    out = args.out.expanduser()
    _check_out(out, args.overwrite)
    loaded = load_for_inference(args.ckpt)
    exported = export_deblur(
        loaded,
        loaded.deblur_params,
        dtype=args.dtype,
        self_ensemble=args.self_ensemble,
        platforms=args.platforms,
    )
    data = exported.serialize()
    _write(out, data)
    print(
        f"wrote {out} ({len(data) / 2**20:.2f} MiB) from {loaded.source}: uint8 [{INPUT_SHAPE}] -> "
        f"uint8 [{INPUT_SHAPE}], {args.dtype}{', x8 self-ensemble' if args.self_ensemble else ''}, "
        f"platforms {', '.join(exported.platforms)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
