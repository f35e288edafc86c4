"""Errors that end a command with one message and a documented exit code, never a traceback.

==== ===========================================================================================
code meaning
==== ===========================================================================================
0    done (``bprun-rerun``: identical)
1    training failed, or a job of a sweep failed (``bprun-rerun``: different)
2    invalid input (config, data, store): refused before anything was trained or logged
130  interrupted by Ctrl-C (SIGINT), 143 terminated (SIGTERM): 128 + the signal's number
==== ===========================================================================================
"""

from __future__ import annotations

import errno

EXIT_FAILED = 1
EXIT_INVALID = 2


class CommandError(Exception):
    """Something the user is told in one message; ``exit_code`` ends the command."""

    exit_code = EXIT_FAILED


class RunError(CommandError):
    """An error that an MLflow run holds already (its status, its ``failure_reason``):
    ``run_id`` names the run, None when the work stopped before its run existed."""

    def __init__(self, message: str, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


class RunCrashed(RunError):
    """An unexpected error inside a tracked run, which ended the run FAILED with the error as its
    ``failure_reason`` and the traceback as an artifact; ``__cause__`` is the error."""


class InvalidInput(CommandError):
    """The input (config, data, store) cannot be used; nothing was trained or logged."""

    exit_code = EXIT_INVALID


class CommandExit(BaseException):
    """Carries a ``CommandError`` out through code that catches ``Exception`` (Hydra reports
    those with its own traceback and exit 1) to the command, which prints it and exits."""

    def __init__(self, error: CommandError) -> None:
        super().__init__(error)
        self.error = error


class DiskFull(CommandError):
    """The disk filled up (or turned read-only) under a run."""


def out_of_space(error: BaseException | None) -> bool:
    """Whether ``error``, or one it arose from, is a full (or read-only) disk; SQLite reports that
    as 'database or disk is full' inside its own exception types."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            return True
        if "database or disk is full" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False
