"""The exceptions the library raises for bad input; the entry points turn them into one line.

Library code raises these (or the built-in ``ValueError`` / ``FileNotFoundError`` family,
which `USER_ERRORS` also covers) with a message that names the file or field and says what
to change; it never prints or exits. ``aspdc_jax.cli`` catches `USER_ERRORS` and prints
``error: <message>``.
"""

from __future__ import annotations

__all__ = ["USER_ERRORS", "UserError"]


class UserError(ValueError):
    """Bad input from the user (a path, a flag, a config field, a file), with what to do."""


#: What the entry points report as one ``error:`` line instead of a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)
