"""Errors the CLI turns into one clear line and an exit code, never a traceback."""


class Gr00tExportError(Exception):
    """Base class: `str(err)` is the one line shown to the user (problem, then fix)."""

    exit_code = 2


class InputError(Gr00tExportError):
    """Bad user input: missing files, wrong config, unknown tag, mis-shaped weights. Exit code 2."""

    exit_code = 2


class ValidationFailure(Gr00tExportError):
    """An artifact or drop failed a check. Exit code 1."""

    exit_code = 1
