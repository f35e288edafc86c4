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


def sweep_launcher(launcher: Launcher) -> SweepLauncher:
    return launcher if isinstance(launcher, SweepLauncher) else HydraLauncher(launcher)


def compose_jobs(
    hydra_context: HydraContext, config: DictConfig, job_overrides: Sequence[Sequence[str]]
) -> list[ComposedJob]:
    """``(overrides, composed config)`` of each job, as ``launch_composed`` takes them."""
    jobs = []
    for overrides in job_overrides:
        interruption.check()
        jobs.append((list(overrides), hydra_context.config_loader.load_sweep_config(config, list(overrides))))
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
