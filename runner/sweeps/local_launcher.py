"""The ``local`` launcher (bprun's default): a sweep's jobs on this machine, in this process
(``n_jobs: 1``) or in ``n_jobs`` worker processes.

Workers are forked from multiprocessing's fork server, which imports what a job needs once
(``runner.sweeps.worker_preload``: MLflow, matplotlib, the app), so each worker starts ready
instead of spending seconds of a core on imports. They end with bprun, however it ends
(``runner.process.children``). On Ctrl-C or SIGTERM every running job stops after its current
mini-batch and ends its run KILLED; jobs not started yet never start.

Each job gets a fixed BLAS thread count (``trainer.blas_threads``), so a job gives the same
numbers here, in a worker or under the basic launcher. The sweepers of this package hand the
launcher the configs they composed to validate the jobs (``launch_composed``), so each job is
composed once; ``launch`` composes them itself, as every Hydra launcher does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import cloudpickle
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from runner.plots.background import running_helper
from runner.process import interruption
from runner.process.children import ChildPool, start_forkserver
from runner.process.errors import CommandError, CommandExit
from runner.sweeps import WORKER_PRELOAD, hydra_name
from runner.sweeps.composing import JobComposer
from runner.sweeps.launching import (
    ComposedJob,
    compose_jobs,
    execute_job,
    refuse_setting,
    run_all,
    shown_overrides,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class WorkerLost(CommandError):
    """A worker process ended in the middle of a job (killed by the system, out of memory)."""


@dataclass
class LocalLauncherConf:
    """``hydra/launcher=local``: with ``n_jobs`` 1 the jobs run one after the other in bprun's
    process; with more, that many at a time in worker processes that end with bprun."""

    _target_: str = hydra_name("LocalLauncher")
    n_jobs: int = 1


class LocalLauncher(Launcher):
    """Runs a sweep's jobs here (``n_jobs`` 1) or in ``n_jobs`` worker processes, each started
    as soon as a slot is free (a ``JobStream``)."""

    def __init__(self, n_jobs: int = 1) -> None:
        if n_jobs < 1:
            refuse_setting("hydra.launcher.n_jobs", n_jobs, "it must be an integer >= 1")
        self.n_jobs = n_jobs
        self._pool: ChildPool | None = None
        self._caller: ChildPool | None = None  # runs the sweeper's MLflow calls, never behind a job
        self._closed = False
        self._plot_helper = contextlib.ExitStack()  # for jobs run in this process
        self._prepared = False
        self._hydra_state = b""
        self._running: dict[Future[JobReturn], int] = {}  # a worker's job -> its number
        self._ended_here: list[tuple[int, JobReturn]] = []  # jobs run in this process

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.composer = JobComposer(hydra_context, config)  # for launch(): jobs given as overrides
        if self.n_jobs > 1:
            start_forkserver(WORKER_PRELOAD)  # its imports overlap the sweeper's composing

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return self.launch_composed(compose_jobs(self.composer, job_overrides), initial_job_idx)

    def launch_composed(self, jobs: Sequence[ComposedJob], initial_job_idx: int) -> list[JobReturn]:
        """Run each ``(overrides, composed config)`` job; job ``i`` gets number
        ``initial_job_idx + i``."""
        return run_all(self, jobs, initial_job_idx)

    # --- a JobStream ---------------------------------------------------------------------------
    def capacity(self) -> int:
        return self.n_jobs

    def start(self, job: ComposedJob, number: int) -> None:
        overrides, config = job
        self._prepare()
        log.debug(f"#{number} : {' '.join(shown_overrides(overrides))}")
        with open_dict(config):
            config.hydra.job.id = number
            config.hydra.job.num = number
        if self.n_jobs == 1:
            interruption.check()
            self._ended_here.append((number, execute_job(config, self.hydra_context, self.task_function)))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        else:
            self._running[self._workers().submit(execute_job_in_worker, config, self._hydra_state)] = number

    def next_result(self, timeout: float) -> tuple[int, JobReturn] | None:
        if self._ended_here:
            return self._ended_here.pop(0)
        if not self._running:
            return None
        done, _ = wait(self._running, timeout=timeout, return_when=FIRST_COMPLETED)
        if not done:
            return None
        future = next(iter(done))
        number = self._running.pop(future)
        try:
            return number, future.result()
        except BrokenProcessPool as error:
            raise CommandExit(
                WorkerLost(
                    f"a worker process of the sweep ended abruptly ({error}); the sweep stopped (was it killed by "
                    "the system, out of memory?)"
                )
            ) from None

    def stop(self) -> None:
        if self._pool is not None and self._running:
            self._pool.stop()  # running jobs end their runs KILLED; the others never start
            for future in self._running:
                future.cancel()
            wait(self._running)
            interruption.test_point("workers-stopped")
        self._running.clear()

    def _prepare(self) -> None:
        """What the first job needs: Hydra's logging and the sweep's folder; here, a helper that
        draws completed runs' plots on the other core; for workers, Hydra's state to send them."""
        if self._prepared:
            return
        self._prepared = True
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info("Launching jobs " + ("locally" if self.n_jobs == 1 else f"in {self.n_jobs} worker processes"))
        if self.n_jobs == 1:
            self._plot_helper.enter_context(running_helper())
        else:
            # cloudpickle, as Hydra's own joblib launcher: Hydra's state holds OmegaConf resolvers
            # defined in functions, which the standard pickle refuses.
            self._hydra_state = cloudpickle.dumps((self.hydra_context, self.task_function, Singleton.get_state()))

    # --- the rest of SweepLauncher ------------------------------------------------------------
    def runs_jobs_elsewhere(self) -> str | None:
        return None

    def call(self, function: Callable[..., T], *arguments: Any) -> T:
        """``function(*arguments)`` in a worker process of its own if this launcher has workers
        (forked from the same server: MLflow is imported and warm there, and this process may
        never import it), else here."""
        if self.n_jobs > 1 and not self._closed:
            try:
                if self._caller is None:
                    self._caller = ChildPool(1, "forkserver")
                return self._caller.submit(function, *arguments).result()
            except BrokenProcessPool:  # killed: the sweep is ending, do it here
                log.debug("the workers are gone; %s runs in this process", function.__name__)
        return function(*arguments)

    def close(self) -> None:
        """Stop the workers, once each has ended the runs of its jobs, and the plot helper, once
        it has drawn every plot."""
        self._closed = True
        self._plot_helper.close()
        for pool in (self._pool, self._caller):
            if pool is not None:
                pool.shutdown(cancel_pending=True)
        self._pool = self._caller = None

    def _workers(self) -> ChildPool:
        if self._pool is None:
            self._pool = ChildPool(self.n_jobs, "forkserver")
        return self._pool


def execute_job_in_worker(config: DictConfig, hydra_state: bytes) -> JobReturn:
    """One job in a worker, with the Hydra state of the launching process."""
    hydra_context, task_function, singleton_state = cloudpickle.loads(hydra_state)
    setup_globals()
    Singleton.set_state(singleton_state)
    return execute_job(config, hydra_context, task_function)
