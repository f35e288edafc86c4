"""What the companion commands share: quiet MLflow logging and one-line messages on stderr."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def quiet_mlflow() -> None:
    """MLflow's INFO logging (store migrations, "View run" links) and its download progress bars
    would fill the terminal; warnings and errors still show. MLflow reads the variables when it is
    imported or when it would print, the logger levels hold after; processes started later
    inherit them."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Its "View run ... at" lines, after every run ended on a server: bprun says where to look once.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # It logs every database error with its traceback (a full disk, a locked file), then raises
    # it to the caller, whose one-line message says what it means.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (pytest swaps it per test)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr)
        except Exception:  # logging must never break the command
            self.handleError(record)


@contextmanager
def command_logging(program: str, logger: logging.Logger) -> Iterator[None]:
    """``logger``'s notes and warnings as ``<program>: warning: ...`` lines on stderr, for the
    duration of one command (``main`` may be called in-process; the logger is left as it was)."""
    handler = _StderrHandler()
    handler.setFormatter(_Formatter(program))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


class _Formatter(logging.Formatter):
    def __init__(self, program: str) -> None:
        super().__init__()
        self.program = program

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"{self.program}: {level}{record.getMessage()}"
