"""``python -m aspdc_jax.deblur`` and ``aspdc-deblur``: the deblur CLI (see :mod:`aspdc_jax.inference.cli`)."""

from aspdc_jax.allocator import tune_malloc


def main() -> int:
    """Console entry point: the process's malloc first (it may re-execute with tcmalloc, see
    :mod:`aspdc_jax.allocator`), then the CLI."""
    tune_malloc(reexec=True)
    from aspdc_jax.inference.cli import main as cli_main  # noqa: PLC0415 (after the re-exec)

    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
