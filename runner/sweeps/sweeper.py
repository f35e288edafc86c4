"""What bprun's sweepers share: a tracked sweep's life, job by job.

A sweeper plans its jobs (a ``JobSource``: the grid's, Optuna's trials) and ``run_jobs`` runs
them, each started as soon as the launcher has a free slot (a ``JobStream``; launchers that only
run batches get theirs in batches), each result handed back as the job ends, with a progress line
every few seconds and the best objective so far logged on the parent run. A source composes and
validates its first batch before anything runs, so a sweep with a value that does not compose
or validate fails with nothing in the store; the parent run is created (``runner.sweeps.parent``)
before the first job starts, and every job is launched with the parent's ``job_overrides``. When
the sweep ends, ``sweep_lifetime`` ends the parent: FINISHED or FAILED with the summary, KILLED
after Ctrl-C or SIGTERM, FAILED when an error stopped the sweep.

Hydra imports the sweepers as bprun starts (``bprun --help`` included), so the MLflow side of a
sweep (``runner.sweeps.parent``) is imported only once a sweep needs it: the imports marked lazy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict, read_write

from runner import names
from runner.core.validation import ConfigError, validate
from runner.process import interruption
from runner.process.errors import CommandError, CommandExit, RunError
from runner.sweeps.cluster_job import JobsElsewhere
from runner.sweeps.composing import JobComposer
from runner.sweeps.context import SweepRun, encoded
from runner.sweeps.launching import (
    BatchStream,
    JobStream,
    SweepLauncher,
    WholeBatches,
    sweep_launcher,
    wait_for_jobs,
)
from runner.sweeps.overrides import swept_values
from runner.sweeps.progress import SweepProgress
from runner.tracking.destination import Destination, TrackingLost, where_to_look

if TYPE_CHECKING:  # MLflow: imported once a sweep needs it (see the module docstring)
    pass

log = logging.getLogger(__name__)
T = TypeVar("T")


class SweepFailed(CommandError):
    """Some jobs of the sweep failed (each is in the summary); the others ran to the end."""


@dataclass
class PlannedJob:
    """A job a sweeper plans: its overrides, its composed and validated config, and a tag by
    which the sweeper knows its result again (a trial, an index)."""

    overrides: list[str]
    config: DictConfig
    tag: Any
    environment: dict[str, str] = field(
        default_factory=dict
    )  # variables of its own: a trial's pruner, the runs it supersedes


class JobSource(Protocol):
    """What a sweeper plans, job by job, and what it learns from each job's result."""

    batch_size: int  # jobs launched together on a launcher that only runs batches
    whole_batches: bool  # plan jobs in whole batches of batch_size on every launcher

    def next_job(self) -> PlannedJob | None:
        """The job to start now, or None when there is none to start now."""
        ...

    def record(self, tag: Any, result: JobReturn) -> None:
        """The result of the job planned with ``tag``."""
        ...

    def overrides_of(self, tag: Any) -> list[str]:
        """The overrides of the job planned with ``tag``."""
        ...


class SweepLifetime(Sweeper):
    """What every bprun sweeper shares: its launcher, its parent run's life (created before the
    first job, ended however the sweep ends, with the summary), composing and recording its jobs."""

    config: DictConfig
    hydra_context: HydraContext
    job_launcher: SweepLauncher  # what runs the jobs: the launcher the sweep's config chose

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.composer = JobComposer(hydra_context, config)  # one Hydra composition per list of group overrides
        self.job_launcher = sweep_launcher(
            Plugins.instance().instantiate_launcher(
                hydra_context=hydra_context, task_function=task_function, config=config
            )
        )
        self.sweep_run: SweepRun | None = None
        self.next_job = 0
        self._unrecorded: list[Any] = []  # JobOutcome of jobs that failed before their run existed
        self._server_lost: TrackingLost | None = None  # a job found the tracking server gone
        self.planned_jobs: int | None = None  # how many jobs the sweep runs, when its sweeper knows
        self.name_digits: int | None = None  # significant digits of floats in job names (sampled values)
        objective = str(config.hydra.sweeper.get("objective", names.DEFAULT_RANKING_METRIC))
        direction = str(config.hydra.sweeper.get("direction", "minimize"))
        self.progress = SweepProgress(None, objective, direction)
        self.resuming = os.environ.get(names.ENV_RESUME_PARENT) or None  # bprun-resume: the parent run
        self._started = 0  # jobs started by this command
        self.parent_to_reopen = False

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
                        f"every completed epoch logged; continue it with: {self._resume_command()}"
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

    def _resume_command(self) -> str:
        assert self.sweep_run is not None
        return f"bprun-resume {self.sweep_run.run_id} --tracking-uri {self.sweep_run.tracking_uri}"

    def _end_stopped(self, status: str, reason: str) -> str | None:
        """End the parent run and its running jobs ``status``; its id, None if there is no parent
        yet, or if it is a resumed sweep's that this command has not made RUNNING again (a refusal
        leaves it as it was)."""
        if self.sweep_run is None or self.parent_to_reopen:
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
            summary = self.call(finish_sweep, self.sweep_run, self._unrecorded, self.progress.objective)
        except TrackingLost as error:  # one message; the store cannot be told anything more
            raise CommandExit(error) from None
        print(summary.table)
        if summary.view:
            print(f"  the sweep's runs ranked, with their charts: {summary.view}")
        interruption.check(
            f"every job of the sweep had run; its parent run {self.sweep_run.run_id} was ended "
            f"{'FAILED' if summary.failed else 'FINISHED'} with the summary"
        )
        if summary.failed:
            raise CommandExit(
                SweepFailed(
                    f"{summary.failed} of {summary.jobs} job(s) of the sweep failed; see the summary above; run them "
                    f"again with: {self._resume_command()}"
                )
            )

    def compose(self, overrides: list[str]) -> DictConfig:
        interruption.check()
        config = self.composer.compose(overrides)
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
        sweep_run = dataclasses.replace(sweep_run, size=self.planned_jobs, name_digits=self.name_digits)
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


class TrackedSweeper(SweepLifetime):
    """Base class of bprun's sweepers: runs the jobs a sweeper plans (see the module docstring)."""

    # --- running the jobs ------------------------------------------------------------------------
    def run_jobs(self, source: JobSource) -> None:
        """Run the jobs ``source`` plans: each started as soon as the launcher has a free slot
        (in batches, on a launcher that only runs batches), each result handed back to
        ``source`` as its job ends, the parent run created before the first job starts."""
        from runner.sweeps.parent import log_best  # (lazy: MLflow, where the parent exists)

        stream = self._stream(source)
        running: dict[int, Any] = {}  # a running job's number -> its tag in ``source``
        progress = self.progress
        progress.size = self.planned_jobs
        progress.done_before = progress.done  # a resumed sweep's jobs that had finished
        progress.restart_clock()

        def step(timeout: float) -> bool:
            while len(running) < stream.capacity() and (planned := source.next_job()) is not None:
                running[self._start(stream, planned)] = planned.tag
            if not running:
                return True
            done = stream.next_result(timeout)
            if done is not None:
                number, result = done
                tag = running.pop(number)
                self._record([source.overrides_of(tag)], [result])
                if progress.ended(result) and self.sweep_run is not None and progress.best is not None:
                    self.call(log_best, self.sweep_run, progress.objective, progress.best, progress.done)
                source.record(tag, result)
            if progress.due():
                print(progress.line(len(running)), flush=True)
            return False

        wait_for_jobs(step, stream.stop)
        interruption.check()

    def _stream(self, source: JobSource) -> JobStream:
        """The launcher as a stream of jobs, planned in whole batches when ``source`` asks for
        them; a launcher that only runs batches says so once."""
        batch_size = source.batch_size
        if isinstance(self.job_launcher, JobStream):
            return WholeBatches(self.job_launcher, batch_size) if source.whole_batches else self.job_launcher
        option = self.config.hydra.runtime.choices.get("hydra/launcher")
        print(
            f"bprun: hydra/launcher={option} runs jobs in batches of {batch_size}: a job starts when the batch "
            "before it has ended",
            flush=True,
        )
        return BatchStream(self.job_launcher, batch_size)

    def _start(self, stream: JobStream, planned: PlannedJob) -> int:
        """Start a planned job with its sweep's environment (the parent run created, or a
        resumed one made RUNNING again, first, when tracked); return its number."""
        if bool(self.config.tracking.enabled) and self.sweep_run is None:
            self._check_jobs_reach_store()
            self.sweep_run = self._start_parent()
            interruption.test_point("sweep-start")
        elif self.parent_to_reopen and self.sweep_run is not None:
            from runner.sweeps.parent import reopen_parent  # (lazy: MLflow, where the parent exists)

            self._check_jobs_reach_store()
            self.call(reopen_parent, self.sweep_run)
            self.parent_to_reopen = False
            print(f"bprun: resuming the sweep of parent run {self.sweep_run.run_id}", flush=True)
        overrides = list(planned.overrides)
        if self.sweep_run is not None:
            environment = self.sweep_run.job_environment()
            self._started += 1
            environment[names.ENV_JOB_POSITION] = str(self.progress.done_before + self._started)
            environment.update({name: encoded(value) for name, value in planned.environment.items()})
            extra = [f"++hydra.job.env_set.{name}='{value}'" for name, value in environment.items()]
            overrides += extra
            add_job_environment(planned.config, environment, extra)
        interruption.check()
        number = self.next_job
        self.next_job += 1
        stream.start((overrides, planned.config), number)
        return number


def add_job_environment(config: DictConfig, environment: dict[str, str], overrides: list[str]) -> None:
    """Give a job config composed before the sweep's parent run existed what composing it with
    ``overrides`` (the parent's ``job_overrides``) gives: ``hydra.job.env_set`` holds
    ``environment``, and ``hydra.overrides.hydra`` records the overrides."""
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.job.env_set.update(environment)
        config.hydra.overrides.hydra.extend(overrides)
