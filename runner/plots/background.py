"""Drawing completed runs' plots in a helper process while the next job of a sweep trains.

A run's three PNGs are most of what a small sweep job costs besides its training (the benchmarks
doc has the figures). When a sweep runs its jobs one after the other in one process,
its launcher starts a ``PlotHelper`` (``running_helper``), and the runs of that process hand
their plots to it (``active_helper``): on a machine with a spare core the next job starts at once.
Everything else draws in-process: a single run (a helper would only add its start-up), a run
that failed or was interrupted, and worker processes (each job already has a process of its own).

At most ``MAX_QUEUED`` runs wait for the helper, so a fast sweep cannot queue work without
bound. A run on a local store is marked FINISHED up to that many plot drawings before its PNGs
appear; a run whose artifacts are uploaded when it ends (a tracking server) waits for its plots
(``wait_for``) before the upload, while it sends its last metrics. The helper is waited for
before the launcher returns, so a finished sweep leaves every plot in place. The
helper ignores Ctrl-C and SIGTERM (it finishes what it has, well under a second) and ends with its
parent however that ends (``runner.process.children``).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

from runner.process.children import ChildPool

if TYPE_CHECKING:  # matplotlib is imported in the helper process only
    from runner.plots.training import Steps

log = logging.getLogger(__name__)

MAX_QUEUED = 2

_active: PlotHelper | None = None


class PlotHelper:
    """One helper process (``spawn``: a clean interpreter sharing nothing with this one) that
    draws runs' plots; its imports and matplotlib's caches are paid once per sweep."""

    def __init__(self) -> None:
        self._pool = ChildPool(1, "spawn", initializer=_warm_up, quiet_signals=True)
        self._queued: list[tuple[Future, str]] = []  # (the helper's work, run id)
        self._pool.submit(_ready)  # start it now: its start-up overlaps the first job

    def draw(self, metrics: Mapping[str, Sequence[float]], directory: Path, epochs: Steps, run_id: str) -> None:
        """Queue ``save_training_plots(metrics, directory, epochs)``; returns at once (after the
        oldest queued run's plots, if ``MAX_QUEUED`` are waiting)."""
        while len(self._queued) >= MAX_QUEUED:
            self._collect(*self._queued.pop(0))
        self._queued.append((self._pool.submit(_draw, dict(metrics), directory, epochs), run_id))

    def wait_for(self, run_id: str) -> None:
        """Return once the plots of run ``run_id`` (and of the runs queued before it) are
        written, or have failed with a warning."""
        while any(queued_run == run_id for _, queued_run in self._queued):
            self._collect(*self._queued.pop(0))

    def wait(self) -> None:
        """Return once every queued run's plots are written (or have failed, with a warning)."""
        while self._queued:
            self._collect(*self._queued.pop(0))

    def close(self) -> None:
        self.wait()
        self._pool.shutdown()

    @staticmethod
    def _collect(work: Future, run_id: str) -> None:
        try:
            work.result()
        except Exception as error:  # the run's metrics are logged; a missing picture is a warning
            log.warning("could not draw the plots of run %s: %s: %s", run_id, type(error).__name__, error)


@contextlib.contextmanager
def running_helper() -> Iterator[PlotHelper | None]:
    """Run a plot helper for this process while the block runs, and wait for its plots at the
    end. Yields None (runs then draw in-process) when no helper process can be started."""
    global _active
    try:
        helper = PlotHelper()
    except Exception as error:  # process limits, say: draw in-process
        log.debug("no plot helper: %s", error)
        yield None
        return
    _active = helper
    try:
        yield helper
    finally:
        _active = None
        helper.close()


def active_helper() -> PlotHelper | None:
    """The plot helper of this process, while a sweep's launcher runs one."""
    return _active


def _warm_up() -> None:
    # What drawing needs, imported before the first run's plots arrive.
    for module in ("matplotlib.backends.backend_agg", "matplotlib.figure", "runner.plots.training"):
        importlib.import_module(module)


def _draw(metrics: dict[str, Sequence[float]], directory: Path, epochs: Steps) -> None:
    # (lazy: matplotlib is imported in the helper, never by a sweep's launching process for it)
    from runner.plots.training import save_training_plots

    save_training_plots(metrics, directory, epochs)


def _ready() -> None:
    """A first call, which starts the process."""
