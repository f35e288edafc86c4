"""What bprun's sweepers need of a launcher (``SweepLauncher``), and what bprun's launchers share:
running one composed job as Hydra does, and waiting for jobs while watching for Ctrl-C.

Hydra's ``Launcher`` only launches jobs given as overrides. A sweep also needs to launch the
configs it composed to validate its jobs (each job composed once), to know before the parent run
exists whether jobs run on other machines (a local store is refused then), to run the parent's
MLflow calls where MLflow is imported already, and to stop the launcher's workers when it ends.
bprun's launchers implement all of it; any other Hydra launcher is wrapped in ``HydraLauncher``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NoReturn, Protocol, TypeVar, runtime_checkable

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, run_job
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from runner.process import interruption
from runner.process.errors import CommandError, CommandExit, InvalidInput
from runner.sweeps.composing import JobComposer

T = TypeVar("T")

# How often a launcher waiting for its jobs looks for a recorded Ctrl-C or SIGTERM.
POLL_SECONDS = 0.1

ComposedJob = tuple[list[str], DictConfig]  # (the job's overrides, its composed config)


@runtime_checkable
class SweepLauncher(Protocol):
    """A launcher as bprun's sweepers use it."""

    def launch_composed(self, jobs: Sequence[ComposedJob], initial_job_idx: int) -> Sequence[JobReturn]:
        """Run each job; job ``i`` gets number ``initial_job_idx + i``; results in order."""
        ...

    def runs_jobs_elsewhere(self) -> str | None:
        """Where jobs may run that is not this machine ("on the SLURM cluster's nodes"), or None."""
        ...

    def call(self, function: Callable[..., T], *arguments: Any) -> T:
        """``function(*arguments)`` where MLflow is imported already (a warm worker), else here."""
        ...

    def close(self) -> None:
        """Stop the launcher's workers, once each has ended the runs of its jobs."""
        ...


class HydraLauncher:
    """Any other Hydra launcher, as a ``SweepLauncher``: it composes the jobs again from their
    overrides, runs them where it runs them, and has nothing to close."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher

    def launch_composed(self, jobs: Sequence[ComposedJob], initial_job_idx: int) -> Sequence[JobReturn]:
        return self.launcher.launch([overrides for overrides, _ in jobs], initial_job_idx=initial_job_idx)

    def runs_jobs_elsewhere(self) -> str | None:
        return None

    def call(self, function: Callable[..., T], *arguments: Any) -> T:
        return function(*arguments)

    def close(self) -> None:
        pass


@runtime_checkable
class JobStream(Protocol):
    """A launcher that starts jobs one at a time, as a sweeper asks, and hands each result back
    as the job ends: a new job can start as soon as a slot is free, not when a batch ends."""

    def capacity(self) -> int:
        """How many jobs it runs at once."""
        ...

    def start(self, job: ComposedJob, number: int) -> None:
        """Start ``job`` as job ``number`` (the caller never starts more than ``capacity()``)."""
        ...

    def next_result(self, timeout: float) -> tuple[int, JobReturn] | None:
        """A job that ended, with its number; None if none ends within ``timeout`` seconds."""
        ...

    def stop(self) -> None:
        """Stop every running job at its next safe point (each ends its run KILLED); return once
        they have ended."""
        ...


class BatchStream:
    """A launcher that only runs batches, as a ``JobStream``: the jobs started are launched
    together when a result is asked for, and the next batch starts when this one has ended."""

    def __init__(self, launcher: SweepLauncher, batch_size: int) -> None:
        self.launcher, self.batch_size = launcher, batch_size
        self._queued: list[tuple[ComposedJob, int]] = []
        self._results: list[tuple[int, JobReturn]] = []

    def capacity(self) -> int:
        # None more while a batch's results are being handed out: the next batch is whole.
        return 0 if self._results else self.batch_size

    def start(self, job: ComposedJob, number: int) -> None:
        self._queued.append((job, number))

    def next_result(self, timeout: float) -> tuple[int, JobReturn] | None:
        if not self._results and self._queued:
            batch, self._queued = self._queued, []
            results = self.launcher.launch_composed([job for job, _ in batch], initial_job_idx=batch[0][1])
            self._results = [(number, result) for (_, number), result in zip(batch, results)]
        return self._results.pop(0) if self._results else None

    def stop(self) -> None:
        self._queued.clear()  # a batch stops as its launcher stops it, inside launch_composed


class WholeBatches:
    """A ``JobStream`` on which jobs are planned in whole batches of ``batch_size``: the next batch
    is planned once every job of this one has ended, so a sampler proposes the same trials
    whatever order jobs end in. A batch larger than the launcher's slots waits for free ones."""

    def __init__(self, stream: JobStream, batch_size: int) -> None:
        self.stream, self.batch_size = stream, batch_size
        self._waiting: list[tuple[ComposedJob, int]] = []  # planned, waiting for a free slot
        self._running = 0  # started on ``stream``
        self._ending = False  # a job of this batch has ended: plan none until all have

    def capacity(self) -> int:
        return 0 if self._ending else self.batch_size

    def start(self, job: ComposedJob, number: int) -> None:
        self._waiting.append((job, number))
        self._start_waiting()

    def _start_waiting(self) -> None:
        while self._waiting and self._running < self.stream.capacity():
            self.stream.start(*self._waiting.pop(0))
            self._running += 1

    def next_result(self, timeout: float) -> tuple[int, JobReturn] | None:
        done = self.stream.next_result(timeout)
        if done is not None:
            self._running -= 1
            self._start_waiting()
            self._ending = bool(self._running or self._waiting)
        return done

    def stop(self) -> None:
        self._waiting.clear()
        self.stream.stop()


def run_all(stream: JobStream, jobs: Sequence[ComposedJob], initial_job_idx: int) -> list[JobReturn]:
    """Every job through ``stream``, a new one started as a slot frees; results in job order.
    A recorded Ctrl-C or SIGTERM stops the running jobs and raises ``Interrupted``."""
    waiting = list(enumerate(jobs, start=initial_job_idx))
    results: dict[int, JobReturn] = {}

    def all_done(timeout: float) -> bool:
        while waiting and len(jobs) - len(waiting) - len(results) < stream.capacity():  # running < capacity
            number, job = waiting.pop(0)
            stream.start(job, number)
        done = stream.next_result(timeout)
        if done is not None:
            results[done[0]] = done[1]
        return len(results) == len(jobs)

    wait_for_jobs(all_done, stream.stop)
    interruption.check()
    return [results[number] for number in range(initial_job_idx, initial_job_idx + len(jobs))]


def sweep_launcher(launcher: Launcher) -> SweepLauncher:
    return launcher if isinstance(launcher, SweepLauncher) else HydraLauncher(launcher)


def compose_jobs(composer: JobComposer, job_overrides: Sequence[Sequence[str]]) -> list[ComposedJob]:
    """``(overrides, composed config)`` of each job, as ``launch_composed`` takes them."""
    jobs = []
    for overrides in job_overrides:
        interruption.check()
        jobs.append((list(overrides), composer.compose(list(overrides))))
    return jobs


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


def wait_for_jobs(wait: Callable[[float], bool], stop: Callable[[], None]) -> None:
    """Wait until ``wait(timeout)``, which waits at most ``timeout`` seconds, says every job is
    done; when a Ctrl-C or SIGTERM is recorded meanwhile, ``stop()`` the jobs (cancel those not
    started, stop the running ones at their next safe point, and wait for them) instead."""
    while not wait(POLL_SECONDS):
        if interruption.requested():
            stop()
            return


class SettingRefused(InvalidInput):
    """A sweeper's or launcher's setting is out of its range; nothing has run."""


def refuse_setting(key: str, value: Any, allowed: str) -> NoReturn:
    """Refuse a plugin's setting in one line, before anything runs. Raised through Hydra's
    instantiation as ``CommandExit``: Hydra would wrap an ordinary error in its own message."""
    raise CommandExit(SettingRefused(f"{key}={value!r} is not allowed: {allowed}"))


class JobLost(CommandError):
    """A job ended without a result: its process, worker or node died (killed, out of memory)."""


def failed_job(failure: BaseException) -> JobReturn:
    """The result of a job that failed outside Hydra's job runner, as the sweeper records it."""
    result = JobReturn()
    result.status = JobStatus.FAILED
    result.return_value = failure
    return result


def shown_overrides(overrides: Sequence[str]) -> list[str]:
    """A job's overrides as its launch line shows them: without the sweep's ``hydra.*`` ones."""
    return [override for override in overrides if not override.lstrip("+~").startswith("hydra.")]
