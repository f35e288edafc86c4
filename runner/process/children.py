"""Worker processes that end with their parent, however the parent ends.

``ChildPool`` is a ``concurrent.futures.ProcessPoolExecutor`` whose workers each watch a
lifeline: the read end of a pipe whose only write end this process holds. That end closes when
the pool is stopped (``stop``) and when this process dies, whatever killed it, SIGKILL
included. A worker that sees it close records an interruption (``runner.process.interruption``):
the call in progress stops at its next safe point, a job ending its MLflow run KILLED with what
it logged, and later calls stop at once. If the pool was not stopped on purpose, this process is
gone and nobody will collect the worker's results: the worker exits as soon as the call in
progress has returned. So does a worker sent SIGTERM (by a user, or by the executor ending a
pool one of whose workers died): terminating is what SIGTERM asks, once the call's run is ended.

Signals are blocked while a worker process is created and unblocked by the worker once its own
handlers are installed, so a Ctrl-C that reaches the whole process group never finds a worker
half started (a traceback, a broken pool) and never gets lost in bprun either: a blocked signal
stays pending until it is unblocked.

Workers come from multiprocessing's fork server (``start_forkserver``: modules imported once,
in the server, and inherited by every worker) or from ``spawn``; never from a plain ``fork`` of
this process, which would copy its threads' locks and its open database connections.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

from runner.process import interruption

T = TypeVar("T")


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back in this thread (and in processes started meanwhile); they
    are delivered when the block ends, not lost."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, interruption.SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def started_deaf_to_ctrl_c() -> Iterator[None]:
    """Processes started meanwhile ignore SIGINT (a terminal's Ctrl-C goes to its whole process
    group) until they install a handler and unblock it, as bprun's jobs do: whoever started them
    stops them with SIGTERM, in their own time. A Ctrl-C to this process meanwhile waits until
    the end of the block, not lost."""
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
    previous_handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)


def start_forkserver(preload: Sequence[str]) -> None:
    """Start multiprocessing's fork server now, importing the modules ``preload`` names once
    for every worker later forked from it (a no-op if it runs already). Its first module should
    call ``settle_forkserver_signals``. The server ends when this process ends."""
    multiprocessing.set_forkserver_preload(list(preload))
    # The resource tracker first: starting it unblocks the signals at its end (multiprocessing
    # blocks and then unblocks them around its own start), which inside the next block would let
    # a Ctrl-C reach the fork server's interpreter start-up.
    with signals_blocked():
        multiprocessing.resource_tracker.ensure_running()
    with signals_blocked():  # inherited by the server until settle_forkserver_signals
        multiprocessing.forkserver.ensure_running()


def settle_forkserver_signals() -> None:
    """For the fork server's first preloaded module: ignore Ctrl-C, which reaches the whole
    process group (the server has nothing to stop; it ends with its parent), and accept
    signals again. Workers forked from it install their own handlers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, interruption.SIGNALS)


class ChildPool:
    """A pool of ``workers`` processes started with ``start_method`` (``forkserver`` or
    ``spawn``) that end with this process; ``initializer(*initargs)`` runs in each once its
    lifeline and signal handlers are in place. With ``quiet_signals`` a worker ignores SIGINT and
    SIGTERM (it stops only through its lifeline); otherwise it records them as bprun does."""

    def __init__(
        self,
        workers: int,
        start_method: str = "forkserver",
        initializer: Callable[..., None] | None = None,
        initargs: tuple = (),
        quiet_signals: bool = False,
    ) -> None:
        context = multiprocessing.get_context(start_method)
        self._lifeline, self._lifeline_writer = context.Pipe(duplex=False)
        self._stopped_on_purpose = context.RawValue("b", 0)
        self._executor = ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_start_worker,
            initargs=(self._lifeline, self._stopped_on_purpose, quiet_signals, initializer, initargs),
        )
        self._closed = False

    def submit(self, function: Callable[..., T], *arguments: Any) -> Future[T]:
        """Run ``function(*arguments)`` in a worker (starting one if none is idle)."""
        with signals_blocked():  # the new worker starts with them blocked, see the module docstring
            return self._executor.submit(_call, function, *arguments)

    def stop(self) -> None:
        """Ask every worker to stop its call at the next safe point; later calls stop at once."""
        if not self._stopped_on_purpose.value:
            self._stopped_on_purpose.value = 1
            self._lifeline_writer.close()

    def shutdown(self, cancel_pending: bool = False) -> None:
        """Wait for the calls in progress (and, unless ``cancel_pending``, the queued ones), then
        end the workers."""
        if self._closed:
            return
        self._closed = True
        self._stopped_on_purpose.value = 1  # a worker seeing its lifeline close now must not exit early
        self._executor.shutdown(wait=True, cancel_futures=cancel_pending)
        self._lifeline_writer.close()
        self._lifeline.close()


# --- in the worker ---------------------------------------------------------------------------
# Held while a call runs: a worker whose parent is gone exits only once the call has returned.
_calling = threading.Lock()


def _start_worker(
    lifeline: Any,
    stopped_on_purpose: Any,
    quiet_signals: bool,
    initializer: Callable[..., None] | None,
    initargs: tuple,
) -> None:
    if quiet_signals:
        interruption.ignore()
    else:
        interruption.install()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, interruption.SIGNALS)
    threading.Thread(target=_watch_lifeline, args=(lifeline, stopped_on_purpose), name="lifeline", daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


# How often a worker's watcher looks at its lifeline and for a recorded SIGTERM.
WATCH_SECONDS = 0.1


def _watch_lifeline(lifeline: Any, stopped_on_purpose: Any) -> None:
    watching = True
    while True:
        if watching and lifeline.poll(WATCH_SECONDS):  # readable only at EOF: nothing is ever sent
            watching = False
            if stopped_on_purpose.value:
                interruption.request(signal.SIGINT)  # stop; the pool collects the result and ends us
            else:
                break  # the parent is gone
        elif not watching:
            time.sleep(WATCH_SECONDS)
        if interruption.requested() == signal.SIGTERM:
            break
    interruption.request(signal.SIGTERM)
    with _calling:  # let the call in progress end its run, then leave
        os._exit(128 + signal.SIGTERM)


def _call(function: Callable[..., T], *arguments: Any) -> T:
    with _calling:
        return function(*arguments)
