"""Draw completed runs' plots in a helper process while the next job of a sweep trains.

Three PNGs take about 0.3 s of matplotlib work per run, most of what a small sweep job costs
besides its training. A sweep run by the basic launcher (``enable()`` in
``runner.sweep.SweepCallback``) hands that work to one helper process, so that on a machine with a
spare core the next job starts at once. Everything else draws in-process, as before: a single run
(a helper would only add its start-up), a run that failed or was interrupted (the process may be
about to exit), a store that uploads artifacts when the run ends (the PNGs must exist by then),
the Python API (``run``/``run_experiment`` return with the plots written) and joblib's worker
processes (each job is already in a process of its own).

The helper is one long-lived process (started with ``spawn`` when the sweep starts), so its
imports and matplotlib's caches are paid once, not per run. A fresh ``fork`` per run was tried
first and drew 1.5-2.5x slower than in-process: copy-on-write faults and cold caches in every
child. At most ``MAX_QUEUED`` runs wait for the helper, so a fast sweep cannot queue up work
without bound. The sweep waits for every plot before its summary and ``bprun`` before it exits, so
a finished command leaves every plot in place; a run is marked FINISHED up to one plot-drawing
time (a fraction of a second) before its PNGs appear. The helper ignores Ctrl-C and SIGTERM (it
finishes what it has in well under a second: an interrupted sweep keeps the plots of its
completed runs); a plot that fails is logged as a warning, as in-process.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

if TYPE_CHECKING:  # imported when the helper starts: bprun's start-up does not pay for multiprocessing
    from concurrent.futures import Future, ProcessPoolExecutor

MAX_QUEUED = 2
T = TypeVar("T")

log = logging.getLogger(__name__)

_enabled = False
_executor: ProcessPoolExecutor | None = None
_queued: list[tuple[Future, str]] = []  # (the helper's work, run id)


def enable() -> None:
    """Let this process's completed runs draw their plots in the helper process, and start it
    now, so that its start-up (a new interpreter importing matplotlib) overlaps other work."""
    global _enabled
    try:
        _start().submit(_warm_up)
    except Exception as error:  # no helper (process limits, say): plots are drawn in-process
        log.debug("no helper process for plots: %s", error)
        return
    _enabled = True


def enabled() -> bool:
    return _enabled


def submit(metrics: dict[str, Sequence[float]], directory: Path, steps: Sequence[int] | None, run_id: str) -> None:
    """Queue ``save_training_plots(metrics, directory, steps)`` for the helper and return (after
    the oldest queued run's plots, if ``MAX_QUEUED`` are already waiting)."""
    from runner.plots import save_training_plots

    while len(_queued) >= MAX_QUEUED:
        _collect(*_queued.pop(0))
    _queued.append((_start().submit(save_training_plots, dict(metrics), directory, steps), run_id))


def wait() -> None:
    """Block until every queued run's plots are written (or have failed, with a warning)."""
    while _queued:
        _collect(*_queued.pop(0))


def call(function: Callable[..., T], *arguments: Any) -> T:
    """``function(*arguments)`` in the helper if it runs (its matplotlib is imported and warm),
    else here; either way the result is returned once it is done. The sweep summary's plots are
    drawn this way."""
    if _enabled:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return _start().submit(function, *arguments).result()
        except BrokenProcessPool:  # the helper died (killed, out of memory): do it here
            log.debug("the plot helper is gone; %s runs in-process", getattr(function, "__name__", function))
    return function(*arguments)


def pending() -> int:
    """How many runs' plots are queued or being drawn."""
    return len(_queued)


def shutdown() -> None:
    """Wait for the queued plots, then stop the helper process."""
    global _executor
    wait()
    if _executor is not None:
        # Nothing is left to draw: end the helper at once rather than let it tear down its
        # imports (a quarter of a second the command would wait for).
        for process in list((getattr(_executor, "_processes", None) or {}).values()):
            process.kill()
        _executor.shutdown(wait=True)
        _executor = None


def _start() -> ProcessPoolExecutor:
    global _executor
    if _executor is None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: a clean interpreter that shares no state (SQLite handles, threads,
        # locks) with this one.
        _executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=ignore_interrupts)
    return _executor


def _warm_up() -> None:
    import importlib

    # What the runs' plots and, at the end, the sweep summary (a pandas table) will need.
    for module in ("matplotlib.backends.backend_agg", "matplotlib.figure", "pandas", "runner.plots"):
        importlib.import_module(module)


def _collect(work: Future, run_id: str) -> None:
    try:
        work.result()
    except Exception as error:  # the run's metrics are logged; a missing picture is only a warning
        log.warning("could not draw the plots of run %s: %s: %s", run_id, type(error).__name__, error)


def ignore_interrupts() -> None:
    """For a helper process that must finish its work: Ctrl-C (sent to the whole process group)
    and SIGTERM are bprun's to handle."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
