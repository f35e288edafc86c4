"""What bprun's sweepers share: a tracked sweep's life, batch by batch.

A sweeper hands ``launch_batch`` one batch of jobs (each a list of overrides) at a time. The
first batch composes and validates every job before anything runs, so a sweep with a value that
does not compose or validate fails with nothing in the store; then the parent run is created
(``runner.sweeps.parent``) and every job is launched with the parent's ``job_overrides``. When
the sweep ends, ``sweep_lifetime`` ends the parent: FINISHED or FAILED with the summary, KILLED
after Ctrl-C or SIGTERM, FAILED when an error stopped the sweep.

Hydra imports the sweepers as bprun starts (``bprun --help`` included), so the MLflow side of a
sweep (``runner.sweeps.parent``) is imported only once a sweep needs it: the imports marked lazy.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict, read_write

from runner.core.validation import ConfigError, validate
from runner.process import interruption
from runner.process.errors import CommandError, CommandExit, RunError
from runner.sweeps.cluster_job import JobsElsewhere
from runner.sweeps.context import SweepRun
from runner.sweeps.launching import SweepLauncher, sweep_launcher
from runner.sweeps.overrides import swept_values
from runner.tracking.destination import Destination, TrackingLost, where_to_look

log = logging.getLogger(__name__)
T = TypeVar("T")


class SweepFailed(CommandError):
    """Some jobs of the sweep failed (each is in the summary); the others ran to the end."""


class TrackedSweeper(Sweeper):
    """Base class of bprun's sweepers (see the module docstring)."""

    config: DictConfig
    hydra_context: HydraContext
    job_launcher: SweepLauncher  # what runs the jobs: the launcher the sweep's config chose

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.job_launcher = sweep_launcher(
            Plugins.instance().instantiate_launcher(
                hydra_context=hydra_context, task_function=task_function, config=config
            )
        )
        self.sweep_run: SweepRun | None = None
        self._next_job = 0
        self._unrecorded: list[Any] = []  # JobOutcome of jobs that failed before their run existed
        self._server_lost: TrackingLost | None = None  # a job found the tracking server gone
        self.planned_jobs: int | None = None  # how many jobs the sweep runs, when its sweeper knows

    # --- the life of the sweep -----------------------------------------------------------------
    @contextlib.contextmanager
    def sweep_lifetime(self) -> Iterator[None]:
        """Around the whole sweep: end the parent run however the sweep ends, and stop the
        launcher's workers."""
        try:
            try:
                yield
            except interruption.Interrupted as stop:
                # Every job has ended its own run (KILLED) by now; the launcher's workers are warm.
                if parent_id := self._end_stopped("KILLED", stop.verb):
                    stop.ended = (
                        f"the sweep's parent run {parent_id} and its running jobs were ended KILLED, "
                        "every completed epoch logged"
                    )
                raise
            except BaseException as error:
                self._close_launcher()  # first: its workers end the runs of their jobs
                if isinstance(error, CommandExit) and isinstance(error.error, TrackingLost):
                    raise  # the store cannot be told anything more
                reason = str(error) if isinstance(error, CommandExit) else f"{type(error).__name__}: {error}"
                if parent_id := self._end_stopped("FAILED", f"stopped by an error: {reason}"[:500]):
                    print(
                        f"bprun: the sweep's parent run {parent_id} and its running jobs were ended FAILED",
                        file=sys.stderr,
                    )
                raise
            self._finish()
        finally:
            self._close_launcher()

    def _close_launcher(self) -> None:
        self.job_launcher.close()

    def _end_stopped(self, status: str, reason: str) -> str | None:
        """End the parent run and its running jobs ``status``; its id, None if there is no parent yet."""
        if self.sweep_run is None:
            return None
        from runner.sweeps.parent import end_stopped_sweep  # (lazy: MLflow, where the parent exists)

        self.call(end_stopped_sweep, self.sweep_run, status, reason)
        return self.sweep_run.run_id

    def _finish(self) -> None:
        if self.sweep_run is None:
            return
        if self._server_lost is not None:  # asking the server again would only wait its timeout again
            raise CommandExit(
                TrackingLost(
                    f"the sweep stopped: its tracking server at {self.sweep_run.tracking_uri} stopped answering (see "
                    f"the jobs above); its parent run {self.sweep_run.run_id} stays RUNNING there until bprun-doctor "
                    "marks it KILLED",
                    self.sweep_run.run_id,
                )
            )
        interruption.test_point("sweep-summary")
        from runner.sweeps.parent import finish_sweep  # (lazy: MLflow)

        try:
            summary = self.call(finish_sweep, self.sweep_run, self._unrecorded)
        except TrackingLost as error:  # one message; the store cannot be told anything more
            raise CommandExit(error) from None
        print(summary.table)
        interruption.check(
            f"every job of the sweep had run; its parent run {self.sweep_run.run_id} was ended "
            f"{'FAILED' if summary.failed else 'FINISHED'} with the summary"
        )
        if summary.failed:
            raise CommandExit(
                SweepFailed(f"{summary.failed} of {summary.jobs} job(s) of the sweep failed; see the summary above")
            )

    # --- one batch -----------------------------------------------------------------------------
    def launch_batch(self, batch: Sequence[Sequence[str]]) -> Sequence[JobReturn]:
        """Compose and validate every job of ``batch``, create the parent run before the first
        batch, launch the jobs, and return their results (in order)."""
        configs = [self._compose(list(overrides)) for overrides in batch]
        tracked = bool(self.config.tracking.enabled)
        if tracked and self.sweep_run is None:
            self._check_jobs_reach_store()
            self.sweep_run = self._start_parent()
            interruption.test_point("sweep-start")
        jobs = [list(overrides) for overrides in batch]
        if self.sweep_run is not None:
            extra = self.sweep_run.job_overrides()
            jobs = [overrides + extra for overrides in jobs]
            for config in configs:
                add_job_environment(config, self.sweep_run.job_environment(), extra)
        interruption.check()
        results = self.job_launcher.launch_composed(list(zip(jobs, configs)), initial_job_idx=self._next_job)
        self._next_job += len(batch)
        self._record(batch, results)
        return results

    def _compose(self, overrides: list[str]) -> DictConfig:
        interruption.check()
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        try:
            validate(config)
        except ConfigError as error:
            raise CommandExit(ConfigError(f"job {' '.join(overrides)}: {error}")) from None
        return config

    def _check_jobs_reach_store(self) -> None:
        """Refuse a store that is a file of this machine when the launcher runs jobs elsewhere."""
        where = self.job_launcher.runs_jobs_elsewhere()
        destination = Destination.configured(self.config.tracking, self.config.hydra.runtime.cwd)
        if where and not destination.is_server:
            option = self.config.hydra.runtime.choices.get("hydra/launcher")
            raise CommandExit(
                JobsElsewhere(
                    f"hydra/launcher={option} runs jobs {where}, which cannot write to this machine's MLflow store "
                    f"{destination.uri}; track to a server that every machine reaches: tracking=server "
                    "tracking.uri=http://HOST:5000 (bprun-server starts one; docs/team.md, docs/clusters.md)"
                )
            )

    def _start_parent(self) -> SweepRun:
        from runner.sweeps.parent import create_parent, parent_request  # (lazy: MLflow)

        tracking = self.config.tracking
        where = Destination.configured(tracking, self.config.hydra.runtime.cwd)
        request = parent_request(
            where,
            tracking.experiment,
            swept_values(list(self.config.hydra.overrides.task)),
            str(self.config.hydra.sweep.dir),
            jobs=self.planned_jobs,
        )
        try:
            sweep_run = self.call(create_parent, request)
        except CommandError as error:
            raise CommandExit(error) from None
        print(
            f"bprun: sweep parent run {sweep_run.run_id} in {sweep_run.tracking_uri}\n"
            f"  see it: {where_to_look(sweep_run.tracking_uri, sweep_run.experiment_id, sweep_run.run_id)}"
        )
        return sweep_run

    def _record(self, batch: Sequence[Sequence[str]], results: Sequence[JobReturn]) -> None:
        from runner.sweeps.parent import JobOutcome  # (lazy: MLflow)

        for overrides, result in zip(batch, results):
            if result.status != JobStatus.FAILED:
                continue
            try:
                # Hydra's getter prints "Error executing job ..." before raising the job's error;
                # the job has said what went wrong in one line already.
                with contextlib.redirect_stderr(io.StringIO()):
                    result.return_value  # noqa: B018 (raises the job's error)
            except Exception as error:
                if isinstance(error, TrackingLost):
                    self._server_lost = error
                if not (isinstance(error, RunError) and error.run_id):  # else its run holds the failure
                    self._unrecorded.append(JobOutcome(tuple(overrides), f"{type(error).__name__}: {error}"))

    def call(self, function: Callable[..., T], *arguments: Any) -> T:
        """``function(*arguments)`` where MLflow is imported already: in one of the launcher's
        workers when it has them, else here."""
        return self.job_launcher.call(function, *arguments)


def add_job_environment(config: DictConfig, environment: dict[str, str], overrides: list[str]) -> None:
    """Give a job config composed before the sweep's parent run existed what composing it with
    ``overrides`` (the parent's ``job_overrides``) gives: ``hydra.job.env_set`` holds
    ``environment``, and ``hydra.overrides.hydra`` records the overrides."""
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.job.env_set.update(environment)
        config.hydra.overrides.hydra.extend(overrides)
