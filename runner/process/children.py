"""Worker processes that end with their parent, however the parent ends.

``ChildPool`` is a ``concurrent.futures.ProcessPoolExecutor`` whose workers each watch a
lifeline: the read end of a pipe whose only write end this process holds. That end closes when
this process dies, whatever killed it, SIGKILL included, and when this process lets go of the
workers: once the pool has ended, or once it broke (a worker ended abruptly), when nothing reads
the workers' results any more. A worker that sees its lifeline close records an interruption
(``runner.process.interruption``): the call in progress stops at its next safe point, a job
ending its MLflow run KILLED with what it logged, and the worker exits as soon as that call has
returned.

Otherwise a worker leaves only when the pool ends it. ``stop``, SIGINT and SIGTERM (a terminal's
Ctrl-C, a SIGTERM to the process group, the executor terminating the workers of a broken pool)
stop the call in progress at its next safe point and later calls at once; the worker then waits
for the pool. A worker that left on its own while this process still reads its results could
leave in the middle of sending one, or holding a lock of the pool's queues, and the pool or the
other workers would wait for it forever.

Signals are blocked while a worker process is created and unblocked by the worker once its own
handlers are installed, so a Ctrl-C that reaches the whole process group never finds a worker
half started (a traceback, a broken pool) and never gets lost either: a blocked signal stays
pending until it is unblocked.

Workers come from multiprocessing's fork server (``start_forkserver``: modules imported once,
in the server, and inherited by every worker) or from ``spawn``; never from a plain ``fork`` of
this process, which would copy its threads' locks and its open database connections. The fork
server keeps SIGINT and SIGTERM blocked, so that the workers it forks start with them blocked,
and so that a signal to the process group leaves it running: the pool learns of its workers'
exits through it, and would take every worker for dead without it. It dies with this process.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from runner.process import interruption, lifetime

T = TypeVar("T")

# The pid of the process starting the fork server, in the server's environment only: the server
# dies with that process (``settle_forkserver_signals``).
FORKSERVER_PARENT_VARIABLE = "BPRUN_FORKSERVER_PARENT"


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
    call ``settle_forkserver_signals``. Call it from the main thread: the server dies when the
    thread that started it ends, even while it is still importing."""
    multiprocessing.set_forkserver_preload(list(preload))
    # The resource tracker first: starting it unblocks the signals at its end (multiprocessing
    # blocks and then unblocks them around its own start), which inside the next block would let
    # a Ctrl-C reach the fork server's interpreter start-up.
    with signals_blocked():
        multiprocessing.resource_tracker.ensure_running()
    os.environ[FORKSERVER_PARENT_VARIABLE] = str(os.getpid())
    try:
        with signals_blocked():  # the server keeps them blocked, see settle_forkserver_signals
            multiprocessing.forkserver.ensure_running()
    finally:
        del os.environ[FORKSERVER_PARENT_VARIABLE]


def settle_forkserver_signals() -> None:
    """For the fork server's first preloaded module. The server ignores SIGINT and SIGTERM and
    keeps them blocked (see the module docstring); the workers it forks install their own
    handlers and unblock them. The server dies with the process that started it: multiprocessing
    tells it through a pipe, which it reads only once every preloaded module is imported, seconds
    later; the kernel's SIGKILL reaches it at once."""
    for signum in interruption.SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    parent = os.environ.pop(FORKSERVER_PARENT_VARIABLE, None)
    lifetime.die_with_parent(signal.SIGKILL, int(parent) if parent else None)


class ChildPool:
    """A pool of ``workers`` processes started with ``start_method`` (``forkserver`` or
    ``spawn``) that end with this process; ``initializer(*initargs)`` runs in each once its
    lifeline and signal handlers are in place. With ``quiet_signals`` a worker ignores SIGINT and
    SIGTERM (it stops only through ``stop`` and its lifeline); otherwise it records them as bprun
    does."""

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
        self._letting_go = threading.Lock()  # the executor's thread and this one both let go
        self._stop_requested = context.RawValue("b", 0)
        self._executor = ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_start_worker,
            initargs=(self._lifeline, self._stop_requested, quiet_signals, initializer, initargs),
        )
        self._closed = False

    def submit(self, function: Callable[..., T], *arguments: Any) -> Future[T]:
        """Run ``function(*arguments)`` in a worker (starting one if none is idle)."""
        try:
            with signals_blocked():  # the new worker starts with them blocked, see the module docstring
                future = self._executor.submit(_call, function, *arguments)
        except BrokenProcessPool:
            self._let_go()
            raise
        future.add_done_callback(self._after_call)
        return future

    def stop(self) -> None:
        """Ask every worker to stop its call at the next safe point; later calls stop at once."""
        self._stop_requested.value = 1

    def shutdown(self, cancel_pending: bool = False) -> None:
        """Wait for the calls in progress (and, unless ``cancel_pending``, the queued ones), then
        end the workers."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=cancel_pending)
        self._let_go()
        self._lifeline.close()

    def _after_call(self, future: Future) -> None:
        # In the executor's thread, when the pool breaks: its workers' results are no longer
        # read, and it waits for each worker to exit (it sends them SIGTERM, which only stops
        # their calls).
        if not future.cancelled() and isinstance(future.exception(), BrokenProcessPool):
            self._let_go()

    def _let_go(self) -> None:
        """Close the workers' lifeline: each exits once its call in progress has returned."""
        with self._letting_go:
            if not self._lifeline_writer.closed:
                self._lifeline_writer.close()


# --- in the worker ---------------------------------------------------------------------------
# Held while a call runs: a worker whose lifeline closed exits only once the call has returned.
_calling = threading.Lock()


def _start_worker(
    lifeline: Any,
    stop_requested: Any,
    quiet_signals: bool,
    initializer: Callable[..., None] | None,
    initargs: tuple,
) -> None:
    if quiet_signals:
        interruption.ignore()
    else:
        interruption.install()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, interruption.SIGNALS)
    threading.Thread(target=_watch_lifeline, args=(lifeline, stop_requested), name="lifeline", daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


# How often a worker's watcher looks at its lifeline and at the pool's request to stop.
WATCH_SECONDS = 0.1


def _watch_lifeline(lifeline: Any, stop_requested: Any) -> None:
    while not lifeline.poll(WATCH_SECONDS):  # readable only at EOF: nothing is ever sent
        if stop_requested.value:
            interruption.request(signal.SIGINT)  # stop; the pool collects the result and ends us
    interruption.request(signal.SIGTERM)
    with _calling:  # let the call in progress end its run, then leave
        os._exit(128 + signal.SIGTERM)


def _call(function: Callable[..., T], *arguments: Any) -> T:
    with _calling:
        return function(*arguments)
