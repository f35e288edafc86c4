"""The Hydra app: ``@hydra.main`` around ``runner.core.run.run_training``.

``run_job`` is one Hydra job. It translates Hydra's state into the core's explicit arguments:
the validated settings, where to track (the job's sweep, from its ``hydra.job.env_set``, or
``tracking.*``), how the job was launched (its overrides, config-group choices and output
folder). Composition is Hydra's, the work is the core's.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import hydra
from hydra.conf import HydraConf
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from engine import EpochReport, Observer
from runner import names
from runner.core.run import Launch, ParentRun, RunRequest, RunResult, run_training
from runner.core.training import default_run_name
from runner.core.validation import validate
from runner.hydra_app.compat import refuse_foreign_callbacks
from runner.hydra_app.help import register_help
from runner.hydra_app.plugins import register_plugins
from runner.hydra_app.progress import ProgressBar
from runner.hydra_app.schemas import register_schemas
from runner.process import interruption
from runner.process.errors import CommandError, CommandExit, DiskFull, RunCrashed, out_of_space
from runner.sweeps.context import JobReport, SweepRun, decoded
from runner.sweeps.naming import job_name
from runner.sweeps.pruning import PrunerSpec, Pruning
from runner.sweeps.stacked_launcher import Stackable, register_stackable
from runner.tracking.destination import Destination, where_to_look

T = TypeVar("T")

# The job's log file (conf/config.yaml: hydra.job_logging), not the terminal, which gets print().
record = logging.getLogger("runner.record")

register_schemas()
register_help()
register_plugins()
refuse_foreign_callbacks()


def run_job(cfg: DictConfig) -> JobReport | None:
    """One job; in a sweep, returns its ``JobReport`` (the objective an optimizing sweeper uses).

    A single run that fails ends the command with one message (``CommandExit``); in a sweep the
    job says in one line what became of it (``[k/N] run name: ...``), the error is raised for the
    sweeper to record, and the other jobs go on."""
    job = start_job(cfg)
    try:
        result = run_training(**vars(job.request))
    except Exception as error:
        return end_job(job, error)
    return end_job(job, result)


@dataclass
class StartedJob:
    """A job between its start and its end: what it trains (``request``) and how it says so."""

    label: JobLabel
    request: RunRequest
    objective: str  # hydra.sweeper.objective, for the job's line and its JobReport
    started: float  # time.monotonic() at its start


def start_job(cfg: DictConfig) -> StartedJob:
    """A job's start, in Hydra's job context: its settings validated, where it is tracked, how it
    was launched, its observers; its start line. Raises as ``run_job`` does."""
    state = HydraConfig.get()
    label = JobLabel(state)
    interruption.test_point("job-start")
    started = time.monotonic()
    try:
        request = _request(cfg, state, label)
    except Exception as error:
        raise _failed(error, label) from None
    objective = str(state.sweeper.get("objective", names.DEFAULT_RANKING_METRIC))
    return StartedJob(label, request, objective, started)


def end_job(job: StartedJob, outcome: RunResult | Exception) -> JobReport | None:
    """A job's end: its line and its ``JobReport``, or its error raised as ``run_job`` raises it."""
    label = job.label
    if isinstance(outcome, Exception):
        raise _failed(outcome, label) from None
    result = outcome
    seconds = time.monotonic() - job.started
    objective = sweep_objective(result.metrics, job.objective)
    record.info("%s", summary(result, in_sweep=False))
    if not label.in_sweep:
        print(summary(result, in_sweep=False))
        # The run ended FINISHED; a signal that came meanwhile still ends bprun.
        interruption.check(f"run {result.run_id or '(untracked)'} had completed all its epochs")
        return None
    logged_as = job.objective if job.objective in result.metrics else job.objective.replace("val_", "train_", 1)
    shown = f" {logged_as}={objective:.6g}" if objective is not None else ""
    where = f" (run {result.run_id})" if result.run_id else ""
    status = "PRUNED" if result.history.stop_reason == "pruned" else "FINISHED"
    print(
        f"{label.label}: {status}{shown} after {result.history.epochs_run} epochs, {seconds:.1f} s{where}", flush=True
    )
    loss = job.request.settings.trainer.loss
    histories = {}
    for key, values in result.history.metrics.items():  # the engine's names, as the run logged them
        split, _, name = key.partition("_")
        histories[names.tracked_metric_name(split, name, loss)] = values
    per_epoch = sweep_objective(histories, job.objective) or []
    return JobReport(
        objective,
        result.run_id,
        label.name,
        "FINISHED",
        result.history.stop_reason,
        result.history.epochs_run,
        seconds,
        tuple(per_epoch),
        logged_as,
    )


class JobLabel:
    """How a job is named in the lines it prints: ``[k/N] <run name>`` in a sweep (k counts from
    1, N the sweep's size when its sweeper knows it)."""

    def __init__(self, state: HydraConf) -> None:
        self.in_sweep = state.mode == RunMode.MULTIRUN
        position = state.job.env_set.get(names.ENV_JOB_POSITION)
        self.number = int(position) if position else (int(state.job.num) + 1 if self.in_sweep else 0)
        size = state.job.env_set.get(names.ENV_SWEEP_SIZE)
        self.prefix = f"[{self.number}/{size}]" if size else f"[{self.number}]"
        self.name = ""

    @property
    def label(self) -> str:
        return f"{self.prefix} {self.name}" if self.name else f"{self.prefix} job"

    def started(self, name: str) -> None:
        self.name = name
        if self.in_sweep:
            print(f"{self.label}: started", flush=True)


def _failed(error: Exception, job: JobLabel) -> BaseException:
    """What a job's error ends as: in a sweep the error itself, said in one line; for a single
    run one line for the command (``CommandExit``), or the error when it is a bug of bprun's."""
    message = str(error) if isinstance(error, CommandError) else f"{type(error).__name__}: {error}"
    record.error("failed: %s", message)
    if job.in_sweep:
        print(f"bprun: {job.label}: FAILED {message}", file=sys.stderr, flush=True)
        return error
    if isinstance(error, CommandError) and not isinstance(error, RunCrashed):
        return CommandExit(error)  # a refusal or a failure, said in one line
    if out_of_space(error):
        return CommandExit(
            DiskFull(
                "training stopped: No space left on device (or the store's disk is full); the database is intact "
                "and keeps what was logged; bprun-doctor marks the run KILLED if its status could not be "
                "written"
            )
        )
    if isinstance(error, RunCrashed):
        return CommandExit(error)
    return error


def _request(cfg: DictConfig, state: HydraConf, job: JobLabel) -> RunRequest:
    """What the job trains, from its config and Hydra's state (see the module docstring)."""
    settings = validate(cfg)
    sweep = SweepRun.from_job_environment(state.job.env_set)
    tracking = settings.tracking
    target: Destination | None = None
    parent = None
    if tracking.enabled and sweep is not None:
        target = Destination(sweep.tracking_uri, sweep.sync_target, tracking.http_timeout, tracking.http_retries)
        parent = ParentRun(sweep.run_id, sweep.experiment_id)
    elif tracking.enabled:
        target = Destination.configured(tracking, state.runtime.cwd)
    choices = {
        group: str(option)
        for group, option in state.runtime.choices.items()
        if not group.startswith(("hydra/", "schema/")) and option is not None
    }
    digits = (sweep.name_digits if sweep is not None else None) or 15
    run_name = tracking.run_name or default_run_name(settings, digits)
    if sweep is not None and sweep.swept_keys and not tracking.run_name:
        values = {
            key: choices[key] if key in choices else OmegaConf.select(cfg, key.lstrip("+~")) for key in sweep.swept_keys
        }
        run_name = job_name(run_name, values, digits)
    job.started(run_name)
    requeue_of = state.job.env_set.get(names.ENV_REQUEUE_OF)  # set by a cluster launcher that requeued the job
    launch = Launch(
        overrides=tuple(state.overrides.task),
        choices=choices,
        run_name=run_name,
        output_dir=Path(state.runtime.output_dir),
        start_dir=state.runtime.cwd,
        tags={names.REQUEUE_OF: str(requeue_of)} if requeue_of else {},
        supersedes=tuple(filter(None, str(state.job.env_set.get(names.ENV_SUPERSEDES, "")).split(","))),
    )
    observers: list[Observer] = []
    if os.environ.get(names.ENV_CRASH_AT_EPOCH):
        observers.append(_CrashAt(int(os.environ[names.ENV_CRASH_AT_EPOCH])))
    if os.environ.get(names.ENV_PAUSE_AT_EPOCH):
        observers.append(_PauseAt(int(os.environ[names.ENV_PAUSE_AT_EPOCH]), Path(os.environ[names.ENV_PAUSE_FOLDER])))
    pruner = state.job.env_set.get(names.ENV_PRUNER)
    if pruner and sweep is not None:  # an Optuna trial whose pruner may stop it
        spec = PrunerSpec.from_environment(decoded(str(pruner)))
        observers.append(_pruning(sweep, spec, settings.trainer.loss))
        launch = dataclasses.replace(launch, tags={**launch.tags, names.TRIAL: str(spec.trial)})
    if sys.stderr.isatty() and not job.in_sweep:  # a person watching one run, not a log or a sweep
        observers.append(ProgressBar(settings.trainer.epochs, settings.trainer.loss))
    return RunRequest(settings, target, parent, launch, observers)


def _pruning(sweep: SweepRun, spec: PrunerSpec, loss: str) -> Pruning:
    """A trial's pruner, with what the store holds of the sweep's other trials."""
    from runner.sweeps.parent import other_trials  # (lazy: MLflow, in a tracked trial's process)

    return Pruning(spec, loss, other_trials(sweep, spec.objective))


def summary(result: RunResult, in_sweep: bool) -> str:
    """A few lines for the terminal: final metrics, the run, and (single runs; a sweep says it
    once) where to see it."""
    shown = ", ".join(f"{name}={value:.6g}" for name, value in sorted(result.metrics.items()))
    lines = [f"bprun: {result.history.message}: {shown}"]
    if result.run_id:
        assert result.tracking_uri is not None  # a tracked run's result names its store with its id
        size = f" ({_megabytes(result.artifact_bytes)} of artifacts)" if result.artifact_bytes is not None else ""
        lines.append(f"  MLflow run {result.run_id} in {result.tracking_uri}{size}")
        if not in_sweep and result.tracking_uri is not None:
            lines.append(f"  see it: {where_to_look(result.tracking_uri, result.experiment_id, result.run_id)}")
    return "\n".join(lines)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.0f} kB"


def sweep_objective(metrics: Mapping[str, T], name: str = names.DEFAULT_RANKING_METRIC) -> T | None:
    """What a sweep optimizes: the final value (or the values) of metric ``name``; a val_ metric
    falls back to its train_ twin when the data set has no validation split (xor)."""
    if name in metrics:
        return metrics[name]
    return metrics.get(name.replace("val_", "train_", 1)) if name.startswith("val_") else None


class _PauseAt(Observer):
    """The pause test hook (``BPRUN_TEST_PAUSE_AT_EPOCH``): after that epoch, wait until the test
    removes the marker file (at most ``PAUSE_SECONDS``)."""

    PAUSE_SECONDS = 300.0

    def __init__(self, epoch: int, folder: Path) -> None:
        self.epoch, self.marker = epoch, folder / f"{os.getpid()}.paused"

    def on_epoch_end(self, report: EpochReport) -> None:
        if report.epoch == self.epoch:
            self.marker.touch()
            deadline = time.monotonic() + self.PAUSE_SECONDS
            while self.marker.exists() and time.monotonic() < deadline and not interruption.requested():
                time.sleep(0.01)


class _CrashAt(Observer):
    """The crash test hook (``BPRUN_TEST_CRASH_AT_EPOCH``): raise at that epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, report: EpochReport) -> None:
        if report.epoch == self.epoch:
            raise RuntimeError(f"injected failure at epoch {self.epoch} ({names.ENV_CRASH_AT_EPOCH})")


def _request_of(job: StartedJob) -> RunRequest:
    return job.request


# hydra/launcher=stacked starts and ends the jobs it trains together as run_job does.
register_stackable(run_job, Stackable(start_job, _request_of, end_job))

main = hydra.main(version_base="1.3", config_path="pkg://runner.conf", config_name="config")(run_job)
