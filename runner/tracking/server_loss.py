"""A tracking server that stopped answering: recognizing it, and not waiting for it twice.

A call to a server that is gone fails after its timeout and retries (seconds each). Once one call
of a run has failed that way, the run's later calls fail at once with ``TrackingLost`` instead of
waiting again: ``ServerCalls``.

The failure is recognized by the types in the error's chain (a refused or reset connection, a
timeout, a server answering only with errors to every retry), never by its message: MLflow wraps
the ``requests`` error in its own ``MlflowException``, whose ``__context__`` is that error.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import requests
import urllib3.exceptions

from runner.tracking.destination import TrackingLost

T = TypeVar("T")

TIMED_OUT = "no answer within the request timeout"


def lost_server(error: BaseException) -> str | None:
    """Why a call failed, in words ("Connection refused", "no answer within the request
    timeout"), when it failed because the server could not be reached; else None."""
    chain = list(_causes(error))
    # Only a failure of the http client says anything about the server: an OSError alone may be
    # this machine's full disk.
    if not any(isinstance(seen, (requests.RequestException, urllib3.exceptions.HTTPError)) for seen in chain):
        return None
    if any(isinstance(seen, (TimeoutError, requests.Timeout, urllib3.exceptions.TimeoutError)) for seen in chain):
        return TIMED_OUT
    for seen in chain:
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen.strerror or os.strerror(seen.errno)
    if any(isinstance(seen, (requests.ConnectionError, urllib3.exceptions.ProtocolError)) for seen in chain):
        return "the connection failed"
    if any(isinstance(seen, (requests.exceptions.RetryError, urllib3.exceptions.ResponseError)) for seen in chain):
        return "the server answered every retry with an error status"
    return None  # it answered: a refusal is the caller's to report


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every error it arose from: Python's chain (``__cause__``, ``__context__``),
    and the errors urllib3 and requests hold as an argument or a ``reason``."""
    seen: set[int] = set()
    waiting = [error]
    while waiting:
        current = waiting.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        waiting += [item for item in linked if isinstance(item, BaseException)]


class ServerCalls:
    """Calls to a run's store through ``call``: once one has found the server gone, every later
    call raises ``TrackingLost`` at once. ``describe(reason)`` words the loss for the user."""

    def __init__(self, describe: Callable[[str], str], run_id: Callable[[], str]) -> None:
        self._describe = describe
        self._run_id = run_id
        self.lost: str | None = None  # why the server stopped answering, once it has

    def __call__(self, call: Callable[..., T], *arguments: Any, **keywords: Any) -> T:
        if self.lost is None:
            try:
                return call(*arguments, **keywords)
            except Exception as error:
                reason = lost_server(error)
                if reason is None:
                    raise
                self.lost = reason
        raise TrackingLost(self._describe(self.lost), self._run_id())
