"""The ``stacked`` launcher (``hydra/launcher=stacked``): a sweep's jobs that differ only in values a
stack can give each member (learning rate, optimizer settings, stopping values, seed: see
``runner.core.stacked``) trained at once, each still a job with its own Hydra folder, its own
run, line and result.

It takes the sweeper's batches (a grid is one batch; an Optuna sweep's batches hold
``hydra.sweeper.n_jobs`` trials). Each job starts as any job does (``start_job`` of the Hydra app,
in Hydra's job context: its folder, ``.hydra`` files and start line); the jobs of a batch that
can stack are trained as stacks (``run_stacks``); each job then ends as any job does
(``end_job``: its line and result). A batch is spread over ``n_jobs`` worker processes when given
(forked from the same preloaded server as the ``local`` launcher's, ending with bprun), the jobs
of a stack split between them when there are fewer stacks than workers. Ctrl-C or SIGTERM stops
every stack after the same mini-batch, each run ending KILLED.

The Hydra app registers how its jobs start and end (``register_stackable``); another task
function cannot be stacked, and is refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import cloudpickle
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from runner import names
from runner.core.run import RunRequest
from runner.core.stacked import PER_MEMBER, run_stacks
from runner.names import flatten
from runner.process import interruption
from runner.process.children import ChildPool, start_forkserver
from runner.process.errors import CommandError, CommandExit, InvalidInput
from runner.sweeps import WORKER_PRELOAD, hydra_name
from runner.sweeps.composing import JobComposer
from runner.sweeps.context import SweepRun
from runner.sweeps.launching import ComposedJob, compose_jobs, execute_job, refuse_setting, wait_for_jobs

log = logging.getLogger(__name__)
T = TypeVar("T")

LAUNCHER_TAG = "bprun.launcher"  # a stacked job's run: the launcher that trained it


@dataclass(frozen=True)
class Stackable:
    """How a task function's jobs start and end apart from their training (the Hydra app's)."""

    start: Callable[[DictConfig], Any]  # in Hydra's job context; returns what ``end`` takes
    request: Callable[[Any], RunRequest]  # what a started job trains
    end: Callable[[Any, Any], Any]  # (started job, RunResult or error) -> the job's return value


_STACKABLE: dict[str, Stackable] = {}


def register_stackable(task_function: TaskFunction, steps: Stackable) -> None:
    _STACKABLE[_name(task_function)] = steps


def _name(task_function: TaskFunction) -> str:
    return f"{task_function.__module__}.{task_function.__qualname__}"


class NotStackable(InvalidInput):
    pass


class WorkerLost(CommandError):
    """A worker process ended in the middle of a stack (killed by the system, out of memory)."""


@dataclass
class StackedLauncherConf:
    """``hydra/launcher=stacked``: the jobs that can stack trained at once, in bprun's process
    (``n_jobs`` 1) or spread over ``n_jobs`` worker processes."""

    _target_: str = hydra_name("StackedLauncher")
    n_jobs: int = 1


class StackedLauncher(Launcher):
    """Trains a batch's jobs as stacks (see the module docstring)."""

    def __init__(self, n_jobs: int = 1) -> None:
        if n_jobs < 1:
            refuse_setting("hydra.launcher.n_jobs", n_jobs, "it must be an integer >= 1")
        self.n_jobs = n_jobs
        self._pool: ChildPool | None = None
        self._caller: ChildPool | None = None
        self._closed = False

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        if _name(task_function) not in _STACKABLE:
            raise CommandExit(
                NotStackable(f"hydra/launcher=stacked trains bprun's own jobs, not {_name(task_function)}'s")
            )
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        self.composer = JobComposer(hydra_context, config)  # for launch(): jobs given as overrides
        if self.n_jobs > 1:
            start_forkserver(WORKER_PRELOAD)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return self.launch_composed(compose_jobs(self.composer, job_overrides), initial_job_idx)

    def launch_composed(self, jobs: Sequence[ComposedJob], initial_job_idx: int) -> list[JobReturn]:
        """Run the batch ``jobs`` as stacks; results in job order."""
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = []
        for number, (_, config) in enumerate(jobs, start=initial_job_idx):
            with open_dict(config):
                config.hydra.job.id = number
                config.hydra.job.num = number
            configs.append(config)
        parts = _spread(_groups(configs), self.n_jobs)
        if self.n_jobs == 1:
            outcomes = [run_part([configs[i] for i in part], self.hydra_context, self.task_function) for part in parts]
        else:
            outcomes = self._in_workers([[configs[i] for i in part] for part in parts])
        results: dict[int, JobReturn] = {}
        stacks: list[int] = []
        for part, (returns, sizes) in zip(parts, outcomes):
            results.update(zip(part, returns))
            stacks += sizes
        self._say_how_it_stacked(configs, stacks)
        return [results[index] for index in range(len(configs))]

    def _in_workers(self, parts: list[list[DictConfig]]) -> list[tuple[list[JobReturn], list[int]]]:
        if self._pool is None:
            self._pool = ChildPool(self.n_jobs, "forkserver")
        pool = self._pool
        # cloudpickle, as Hydra's own joblib launcher: Hydra's state holds OmegaConf resolvers
        # defined in functions, which the standard pickle refuses.
        state = cloudpickle.dumps((self.hydra_context, self.task_function, Singleton.get_state()))
        futures: list[Future[tuple[list[JobReturn], list[int]]]] = [
            pool.submit(run_part_in_worker, part, state) for part in parts
        ]
        pending = set(futures)

        def all_done(timeout: float) -> bool:
            nonlocal pending
            _, pending = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
            return not pending

        def stop() -> None:
            pool.stop()  # every stack stops after its current mini-batch; the others never start
            for future in futures:
                future.cancel()
            wait(futures)

        wait_for_jobs(all_done, stop)
        interruption.check()
        try:
            return [future.result() for future in futures]
        except BrokenProcessPool as error:
            raise CommandExit(
                WorkerLost(f"a worker process of the sweep ended abruptly ({error}); the sweep stopped")
            ) from None

    def _say_how_it_stacked(self, configs: list[DictConfig], stacks: list[int]) -> None:
        """One line, and a tag of the sweep's parent run, saying how the batch was stacked."""
        sizes = ", ".join(str(size) for size in stacks)
        line = f"{len(configs)} job(s) trained as {len(stacks)} stack(s) of {sizes}"
        keys = _differing_keys(configs)
        if keys:
            line += f" (the jobs differ in {', '.join(keys)}, which a stack cannot vary)"
        print(f"bprun: hydra/launcher=stacked: {line}", flush=True)
        sweep = SweepRun.from_job_environment(configs[0].hydra.job.env_set) if configs else None
        if sweep is not None:
            from runner.sweeps.parent import tag_parent  # (lazy: MLflow, where the parent exists)

            self.call(tag_parent, sweep, {names.SWEEP_STACKS: line})

    # --- the rest of SweepLauncher ------------------------------------------------------------
    def runs_jobs_elsewhere(self) -> str | None:
        return None

    def call(self, function: Callable[..., T], *arguments: Any) -> T:
        """``function(*arguments)`` in a worker of its own when there are workers (MLflow is
        warm there), else here."""
        if self.n_jobs > 1 and not self._closed:
            try:
                if self._caller is None:
                    self._caller = ChildPool(1, "forkserver")
                return self._caller.submit(function, *arguments).result()
            except BrokenProcessPool:
                log.debug("the workers are gone; %s runs in this process", function.__name__)
        return function(*arguments)

    def close(self) -> None:
        self._closed = True
        for pool in (self._pool, self._caller):
            if pool is not None:
                pool.shutdown(cancel_pending=True)
        self._pool = self._caller = None


def _settings(config: DictConfig) -> dict[str, str]:
    """A job's settings by dotted key, as its config file and overrides give them (unresolved:
    cheap, and equal texts resolve alike; ``run_stacks`` stacks by the validated settings)."""
    job = {key: value for key, value in config.items() if key != "hydra"}
    return {key: str(value) for key, value in flatten(OmegaConf.to_container(DictConfig(job))).items()}


def _groups(configs: list[DictConfig]) -> list[list[int]]:
    """The jobs (by position) that may stack: those whose settings differ only in ``PER_MEMBER``."""
    groups: dict[str, list[int]] = {}
    for index, config in enumerate(configs):
        shared = {key: value for key, value in _settings(config).items() if key not in PER_MEMBER}
        groups.setdefault(json.dumps(shared, sort_keys=True), []).append(index)
    return list(groups.values())


def _spread(groups: list[list[int]], workers: int) -> list[list[int]]:
    """The groups as parts for ``workers`` workers: the largest split in two while there are
    fewer parts than workers, then the parts dealt out to balance the jobs per worker."""
    parts = [list(group) for group in groups]
    while len(parts) < workers:
        largest = max(parts, key=len)
        if len(largest) < 2:
            break
        parts.remove(largest)
        half = (len(largest) + 1) // 2
        parts += [largest[:half], largest[half:]]
    if workers == 1:
        return [[index for part in parts for index in part]]
    return sorted(parts, key=len, reverse=True)


def _differing_keys(configs: list[DictConfig]) -> list[str]:
    """The settings (beyond those a stack varies) whose values differ between the jobs."""
    values: dict[str, set[str]] = {}
    for config in configs:
        for key, value in _settings(config).items():
            values.setdefault(key, set()).add(value)
    return sorted(key for key, seen in values.items() if len(seen) > 1 and key not in PER_MEMBER)


def run_part(
    configs: list[DictConfig], hydra_context: HydraContext, task_function: TaskFunction
) -> tuple[list[JobReturn], list[int]]:
    """Start every job, train those that started as stacks, end each one; the jobs' returns, in
    order, and the sizes of the stacks trained."""
    steps = _STACKABLE[_name(task_function)]
    returns = [execute_job(config, hydra_context, _started_by(steps)) for config in configs]
    started = [index for index, result in enumerate(returns) if result.status == JobStatus.COMPLETED]
    requests = []
    for index in started:
        request = steps.request(returns[index].return_value)
        tags = {**request.launch.tags, LAUNCHER_TAG: "stacked"}
        requests.append(dataclasses.replace(request, launch=dataclasses.replace(request.launch, tags=tags)))
    outcomes, stacks = run_stacks(requests)
    for index, outcome in zip(started, outcomes):
        result = returns[index]
        configure_log(configs[index].hydra.job_logging, configs[index].hydra.verbose)
        try:
            result.return_value = steps.end(result.return_value, outcome)
        except Exception as error:
            result.return_value, result.status = error, JobStatus.FAILED
    return returns, [len(stack) for stack in stacks]


def _started_by(steps: Stackable) -> TaskFunction:
    def start(config: DictConfig) -> Any:
        return steps.start(config)

    return start


def run_part_in_worker(configs: list[DictConfig], hydra_state: bytes) -> tuple[list[JobReturn], list[int]]:
    """``run_part`` in a worker, with the Hydra state of the launching process."""
    hydra_context, task_function, singleton_state = cloudpickle.loads(hydra_state)
    setup_globals()
    Singleton.set_state(singleton_state)
    return run_part(configs, hydra_context, task_function)
