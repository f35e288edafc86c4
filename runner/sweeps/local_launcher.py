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
from pathlib import Path
from typing import Any, TypeVar

import cloudpickle
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from runner.plots.background import running_helper
from runner.process import interruption
from runner.process.children import ChildPool, start_forkserver
from runner.process.errors import CommandError, CommandExit
from runner.sweeps import WORKER_PRELOAD
from runner.sweeps.cluster_job import shown_overrides

log = logging.getLogger(__name__)
T = TypeVar("T")

# How often the wait for the workers looks for a recorded Ctrl-C or SIGTERM.
INTERRUPTION_POLL_SECONDS = 0.1


class WorkerLost(CommandError):
    """A worker process ended in the middle of a job (killed by the system, out of memory)."""


class LocalLauncher(Launcher):
    def __init__(self, n_jobs: int = 1) -> None:
        if n_jobs < 1:
            raise ValueError(f"hydra.launcher.n_jobs={n_jobs}: it must be an integer >= 1")
        self.n_jobs = n_jobs
        self._pool: ChildPool | None = None
        self._closed = False
        self._plot_helper = contextlib.ExitStack()  # for jobs run in this process
        self._plot_helper_started = False

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function
        if self.n_jobs > 1:
            start_forkserver(WORKER_PRELOAD)  # its imports overlap the sweeper's composing

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return self.launch_composed(compose_jobs(self.hydra_context, self.config, job_overrides), initial_job_idx)

    def launch_composed(self, jobs: Sequence[tuple[list[str], DictConfig]], initial_job_idx: int) -> list[JobReturn]:
        """Run each ``(overrides, composed config)`` job; job ``i`` gets number
        ``initial_job_idx + i``."""
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        where = "locally" if self.n_jobs == 1 else f"in {min(self.n_jobs, len(jobs))} worker processes"
        log.info(f"Launching {len(jobs)} jobs {where}")
        configs = []
        for number, (overrides, config) in enumerate(jobs, start=initial_job_idx):
            log.info(f"\t#{number} : {' '.join(shown_overrides(overrides))}")
            with open_dict(config):
                config.hydra.job.id = number
                config.hydra.job.num = number
            configs.append(config)
        if self.n_jobs == 1:
            return self._run_here(configs)
        return self._run_in_workers(configs)

    def _run_here(self, configs: list[DictConfig]) -> list[JobReturn]:
        if not self._plot_helper_started:  # completed runs' plots drawn on the other core
            self._plot_helper_started = True
            self._plot_helper.enter_context(running_helper())
        results = []
        for config in configs:
            interruption.check()
            results.append(execute_job(config, self.hydra_context, self.task_function))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return results

    def _run_in_workers(self, configs: list[DictConfig]) -> list[JobReturn]:
        pool = self._workers()
        # cloudpickle, as Hydra's own joblib launcher: Hydra's state holds OmegaConf resolvers
        # defined in functions, which the standard pickle refuses.
        hydra_state = cloudpickle.dumps((self.hydra_context, self.task_function, Singleton.get_state()))
        futures = [pool.submit(execute_job_in_worker, config, hydra_state) for config in configs]
        pending: set[Future] = set(futures)
        while pending:
            _, pending = wait(pending, timeout=INTERRUPTION_POLL_SECONDS, return_when=FIRST_COMPLETED)
            if interruption.requested():
                pool.stop()  # running jobs end their runs KILLED; the others never start
                for future in pending:
                    future.cancel()
                wait(pending)
                interruption.test_point("workers-stopped")
                break
        interruption.check()
        try:
            return [future.result() for future in futures]
        except BrokenProcessPool as error:
            raise CommandExit(
                WorkerLost(
                    f"a worker process of the sweep ended abruptly ({error}); the sweep "
                    "stopped (was it killed by the system, out of memory?)"
                )
            ) from None

    def call(self, function: Callable[..., T], *arguments: Any) -> T:
        """``function(*arguments)`` in a worker if this launcher has them (their MLflow is
        imported and warm; this process may never import it), else here."""
        if self.n_jobs > 1 and not self._closed:
            try:
                return self._workers().submit(function, *arguments).result()
            except BrokenProcessPool:  # a worker was killed: the sweep is ending, do it here
                log.debug("the workers are gone; %s runs in this process", function.__name__)
        return function(*arguments)

    def close(self) -> None:
        """Stop the workers, once each has ended the runs of its jobs, and the plot helper, once
        it has drawn every plot."""
        self._closed = True
        self._plot_helper.close()
        if self._pool is not None:
            self._pool.shutdown(cancel_pending=True)
            self._pool = None

    def _workers(self) -> ChildPool:
        if self._pool is None:
            self._pool = ChildPool(self.n_jobs, "forkserver")
        return self._pool


def compose_jobs(
    hydra_context: HydraContext, config: DictConfig, job_overrides: Sequence[Sequence[str]]
) -> list[tuple[list[str], DictConfig]]:
    """``(overrides, composed config)`` of each job, as ``launch_composed`` takes them."""
    jobs = []
    for overrides in job_overrides:
        interruption.check()
        jobs.append((list(overrides), hydra_context.config_loader.load_sweep_config(config, list(overrides))))
    return jobs


def execute_job_in_worker(config: DictConfig, hydra_state: bytes) -> JobReturn:
    """One job in a worker, with the Hydra state of the launching process."""
    hydra_context, task_function, singleton_state = cloudpickle.loads(hydra_state)
    setup_globals()
    Singleton.set_state(singleton_state)
    return execute_job(config, hydra_context, task_function)


def execute_job(config: DictConfig, hydra_context: HydraContext, task_function: TaskFunction) -> JobReturn:
    """One job, as Hydra's launchers run it."""
    HydraConfig.instance().set_config(config)
    return run_job(
        hydra_context=hydra_context,
        task_function=task_function,
        config=config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
