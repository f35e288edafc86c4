"""A sweep's parent run: created once before any job starts, ended with the sweep's summary.

The store, the experiment and the parent run are created together, in one process, before any
job runs: parallel first use of a fresh SQLite file can corrupt it, and concurrent
``set_experiment`` calls can drop runs into the Default experiment. The functions here take and
return plain data (``ParentRequest``, ``SweepRun``), so that they can run in a worker process
whose MLflow is already imported.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from runner import names, reports
from runner.process.errors import InvalidInput
from runner.reports.table import by_dataset, format_table, runs_table
from runner.sweeps.context import SweepRun
from runner.sweeps.naming import parent_name
from runner.sweeps.progress import Best
from runner.sweeps.pruning import OtherTrial
from runner.tracking.compat import write_sweep_view
from runner.tracking.destination import Destination, TrackingLost, check_store, http_settings, page_address
from runner.tracking.liveness import process_tags
from runner.tracking.params import log_params
from runner.tracking.search import sweep_children, sweep_jobs
from runner.tracking.server_loss import lost_server
from runner.tracking.store import ensure_experiment

ORPHAN_REASON = (
    "its job's process ended before the run did (killed by a signal, out of memory, or its "
    "worker or node lost); the epochs logged until then are kept"
)


@dataclass(frozen=True)
class ParentRequest:
    """Everything the parent run is made of, worked out in the process that runs the sweeper."""

    destination: Destination
    experiment: str
    run_name: str
    tags: dict[str, str]
    params: dict[str, Any]
    varying: tuple[str, ...] = ()  # the swept keys whose value differs between jobs


@dataclass(frozen=True)
class JobOutcome:
    """A job that failed before its run existed (bad data, say): the summary lists it anyway."""

    overrides: tuple[str, ...]
    reason: str


@dataclass
class SweepSummary:
    """What the end of a sweep reports: how many jobs failed, and the ranked table as text."""

    failed: int
    table: str
    jobs: int = 0
    unrecorded: list[JobOutcome] = field(default_factory=list)
    view: str | None = None  # the address of the sweep's saved view in the MLflow UI


def parent_request(
    destination: Destination,
    experiment: str,
    swept: dict[str, Any],
    sweep_dir: str,
    command: list[str] | None = None,
    jobs: int | None = None,
) -> ParentRequest:
    """The parent run of a sweep of ``jobs`` jobs over ``swept`` (``{key: values}``, or a search
    space's text) tracked at ``destination``."""
    command = command if command is not None else ["bprun", *sys.argv[1:]]
    varying = varying_keys(swept)
    return ParentRequest(
        destination=destination,
        experiment=experiment,
        varying=varying,
        run_name=parent_name(varying, jobs),
        tags={
            **process_tags(),  # bprun-doctor checks whether the sweep still runs
            names.SWEEP: "true",
            names.SWEEP_COMMAND: " ".join(command),
            names.SWEEP_ARGV: json.dumps(command[1:]),
            names.SWEEP_CWD: os.getcwd(),
            names.SWEPT_KEYS: json.dumps(list(swept)),
            names.SWEEP_DIR: sweep_dir,
            **({names.SYNC_TARGET: destination.sync_target} if destination.sync_target else {}),
        },
        params={f"{names.SWEEP_PARAM_PREFIX}{key}": values for key, values in swept.items()},
    )


def varying_keys(swept: dict[str, Any]) -> tuple[str, ...]:
    """The swept keys whose value differs between jobs (``{key: values}``, or a search space's text)."""
    return tuple(
        key
        for key, values in swept.items()
        if not isinstance(values, list) or len({repr(value) for value in values}) > 1
    )


def create_parent(request: ParentRequest) -> SweepRun:
    """Check the store, create it (if new), the experiment (if new) and the parent run."""
    destination = request.destination
    check_store(destination)
    experiment_id = ensure_experiment(destination.uri, request.experiment)
    client = MlflowClient(destination.uri)
    parent = client.create_run(experiment_id, run_name=request.run_name, tags=request.tags)
    log_params(client, parent.info.run_id, request.params)
    http = (
        tuple(http_settings(destination.http_timeout, destination.http_retries).items())
        if destination.is_server
        else ()
    )
    return SweepRun(parent.info.run_id, experiment_id, destination.uri, destination.sync_target, http, request.varying)


@contextmanager
def reaching_server(sweep: SweepRun) -> Iterator[None]:
    """Turn a call's failure to reach the sweep's server into one ``TrackingLost`` that says
    what became of the parent run (it crosses process boundaries intact, unlike MLflow's
    error with its cause)."""
    try:
        yield
    except Exception as error:
        reason = lost_server(error)
        if reason is None:
            raise
        raise TrackingLost(
            f"lost the MLflow tracking server at {sweep.tracking_uri} ({reason}): the sweep's parent "
            f"run {sweep.run_id} stays RUNNING there until bprun-doctor marks it KILLED",
            sweep.run_id,
        ) from None


def sweep_client(sweep: SweepRun) -> MlflowClient:
    """A client on the sweep's store, with the sweep's http timeout and retries in whichever
    process calls it (the environment's own settings win)."""
    for name, value in sweep.http_settings:
        os.environ.setdefault(name, value)
    return MlflowClient(sweep.tracking_uri)


def finish_sweep(
    sweep: SweepRun, unrecorded: list[JobOutcome], objective: str = names.DEFAULT_RANKING_METRIC
) -> SweepSummary:
    """Attach the comparison table and its charts to the parent run (``summary/``), record the
    job counts, and end the parent FINISHED, or FAILED when a job did not finish."""
    with reaching_server(sweep):
        client = sweep_client(sweep)
        parent = client.get_run(sweep.run_id)
        swept_keys = json.loads(parent.data.tags.get(names.SWEPT_KEYS, "[]")) or None
        children = sweep_jobs(client, sweep.run_id)
        orphans = [run.info.run_id for run in children if run.info.status == "RUNNING"]
        for run_id in orphans:  # every job has returned: the process of this one died mid-run
            client.set_tag(run_id, names.FAILURE_REASON, ORPHAN_REASON)
            client.set_terminated(run_id, "FAILED")
        if orphans:
            children = sweep_jobs(client, sweep.run_id)
        # A job whose process died is known to the launcher only by its overrides: its run, if it
        # had one, stands for it.
        launched = {tuple(json.loads(run.data.tags.get(names.JOB_OVERRIDES, "[]"))) for run in children}
        unrecorded = [outcome for outcome in unrecorded if tuple(outcome.overrides) not in launched]
        jobs = len(children) + len(unrecorded)
        failed = sum(run.info.status != "FINISHED" for run in children) + len(unrecorded)
        status = "FAILED" if failed or not jobs else "FINISHED"  # a sweep none of whose jobs ran failed
        try:
            # One table per data set (their metrics are not comparable); the jobs that never had
            # a run are listed with the first.
            groups = by_dataset(children) or {"": []}
            texts = []
            with tempfile.TemporaryDirectory() as directory:
                for number, (dataset, group) in enumerate(groups.items()):
                    table, histories = runs_table(
                        client,
                        group,
                        swept_keys,
                        unrecorded=[(outcome.overrides, outcome.reason) for outcome in unrecorded]
                        if number == 0
                        else [],
                    )
                    folder = Path(directory) / (reports.file_part(dataset) if len(groups) > 1 else "")
                    reports.write_report(table, histories, folder)
                    texts.append((f"data set {dataset}:\n" if len(groups) > 1 else "") + format_table(table))
                client.log_artifacts(sweep.run_id, directory, names.SUMMARY_ARTIFACT)
            client.set_tag(sweep.run_id, names.SWEEP_JOBS, str(jobs))
            client.set_tag(sweep.run_id, names.SWEEP_FAILED_JOBS, str(failed))
            view = _save_view(client, sweep, children, swept_keys or [], objective)
        except Exception as error:
            if lost_server(error) is None:  # the status matters most, if the store still answers
                client.set_terminated(sweep.run_id, status)
            raise
        client.set_terminated(sweep.run_id, status)
    return SweepSummary(failed, "\n\n".join(texts), jobs, unrecorded, view)


def _save_view(
    client: MlflowClient, sweep: SweepRun, children: list[Any], swept_keys: list[str], objective: str
) -> str | None:
    """Save the sweep's view in the MLflow UI (its jobs ranked by the objective, the swept values
    first, the objective's curves first among the charts), link it from the parent run's tags and
    description, and return its address; None where the UI's layout is not one bprun knows."""
    logged = sorted({key for run in children for key in run.data.metrics})
    if not children or not logged:
        return None
    # A sweep without a validation split ranks by the train_ twin.
    key = names.metric_key(logged, objective) or names.metric_key(logged, objective.replace("val_", "train_", 1))
    if key is None:
        return None
    varying = [name for name in swept_keys if name in sweep.swept_keys] or swept_keys
    link = write_sweep_view(
        client, sweep.experiment_id, sweep.run_id, [run.info.run_id for run in children], varying, key, logged
    )
    if link is None:
        return None
    address = page_address(sweep.tracking_uri, link)
    ranked_by = names.short_metric_name(key)
    description = f"A sweep of {len(children)} jobs; its runs ranked by {ranked_by}, with their charts: {address}"
    client.log_batch(sweep.run_id, tags=[RunTag(names.SWEEP_VIEW, link), RunTag(names.DESCRIPTION, description)])
    return address


@dataclass(frozen=True)
class FinishedJob:
    """A job of a stopped sweep whose run finished: it is not run again when the sweep resumes."""

    run_id: str
    config_yaml: str  # what the run executed
    version: str  # bprun's version that ran it
    objective: float | None
    objective_per_epoch: tuple[float, ...]
    stop_reason: str


@dataclass(frozen=True)
class SweepState:
    """What the store holds of a stopped sweep, by each job's overrides."""

    finished: dict[tuple[str, ...], FinishedJob]
    unfinished: dict[tuple[str, ...], list[str]]  # the runs (KILLED, FAILED) a new run supersedes


def load_sweep_state(sweep: SweepRun, objective: str) -> SweepState:
    """The finished and unfinished jobs of the sweep's parent run, read from its store."""
    from runner.tracking.history import metric_history  # (lazy: see the module docstring)

    with reaching_server(sweep):
        client = sweep_client(sweep)
        finished: dict[tuple[str, ...], FinishedJob] = {}
        unfinished: dict[tuple[str, ...], list[str]] = {}
        for run in sweep_jobs(client, sweep.run_id):
            overrides = tuple(json.loads(run.data.tags.get(names.JOB_OVERRIDES, "[]")))
            if run.info.status != "FINISHED":
                unfinished.setdefault(overrides, []).append(run.info.run_id)
                continue
            with tempfile.TemporaryDirectory() as directory:
                config = Path(client.download_artifacts(run.info.run_id, names.CONFIG_ARTIFACT, directory)).read_text()
            logged = objective_key(run.data.metrics, objective)
            history = metric_history(client, run.info.run_id, logged)
            finished[overrides] = FinishedJob(
                run.info.run_id,
                config,
                run.data.tags.get(names.VERSION_TAG_PREFIX + "backprop_runner", ""),
                run.data.metrics.get(logged),
                tuple(float(value) for value in history.values),
                run.data.tags.get(names.STOP_REASON, ""),
            )
    return SweepState(finished, unfinished)


def other_trials(sweep: SweepRun, objective: str) -> list[OtherTrial]:
    """The sweep's Optuna trials that ended (finished or pruned), each with its objective after
    every epoch, for a trial's pruner (``runner.sweeps.pruning``)."""
    from runner.tracking.history import metric_history  # (lazy: see the module docstring)

    with reaching_server(sweep):
        client = sweep_client(sweep)
        trials = []
        for run in sweep_jobs(client, sweep.run_id):
            number = run.data.tags.get(names.TRIAL)
            if run.info.status != "FINISHED" or number is None or not number.isdigit():
                continue
            logged = objective_key(run.data.metrics, objective)
            values = tuple(float(value) for value in metric_history(client, run.info.run_id, logged).values)
            trials.append(OtherTrial(int(number), run.data.tags.get(names.STOP_REASON) == "pruned", values))
    return trials


def objective_key(logged: Collection[str], objective: str) -> str:
    """The key of a job run's ``logged`` metrics that holds the sweep's objective: the objective
    itself, or its train_ twin in a run without a validation split."""
    twin = objective.replace("val_", "train_", 1)
    return names.metric_key(logged, objective) or names.metric_key(logged, twin) or names.logged_metric_name(twin)


def reopen_parent(sweep: SweepRun) -> None:
    """Make a stopped sweep's parent run RUNNING again, in this process (bprun-doctor's tags)."""
    with reaching_server(sweep):
        client = sweep_client(sweep)
        client.log_batch(sweep.run_id, tags=[RunTag(key, value) for key, value in process_tags().items()])
        if names.FAILURE_REASON in client.get_run(sweep.run_id).data.tags:  # why it stopped before
            client.delete_tag(sweep.run_id, names.FAILURE_REASON)
        client.update_run(sweep.run_id, status="RUNNING")


class NotASweep(InvalidInput):
    """bprun-resume was given a run that is not a sweep's parent."""


def existing_sweep(destination: Destination, parent_run_id: str, swept: dict[str, Any]) -> SweepRun:
    """The sweep whose parent run is ``parent_run_id`` in the store at ``destination``, as its
    jobs know it; ``NotASweep`` when that run is not a sweep's parent."""
    client = MlflowClient(destination.uri)
    parent = client.get_run(parent_run_id)
    if parent.data.tags.get(names.SWEEP) != "true":
        raise NotASweep(f"run {parent_run_id} ({parent.info.run_name}) is not a sweep's parent run")
    http = (
        tuple(http_settings(destination.http_timeout, destination.http_retries).items())
        if destination.is_server
        else ()
    )
    return SweepRun(
        parent_run_id, parent.info.experiment_id, destination.uri, destination.sync_target, http, varying_keys(swept)
    )


def end_stopped_sweep(sweep: SweepRun, status: str, reason: str) -> None:
    """End a sweep that stopped before its end: the parent, and any job run still RUNNING (its
    process was stopped with the sweep), ``status`` with ``reason``."""
    with reaching_server(sweep):
        client = sweep_client(sweep)
        for child in sweep_children(client, sweep.run_id):
            if child.info.status == "RUNNING":
                client.set_tag(child.info.run_id, names.FAILURE_REASON, f"its sweep was {reason}")
                client.set_terminated(child.info.run_id, status)
        client.set_tag(sweep.run_id, names.FAILURE_REASON, reason)
        client.set_terminated(sweep.run_id, status)


def log_best(sweep: SweepRun, objective: str, best: Best, jobs_ended: int) -> None:
    """The sweep's best objective so far as the parent's metric ``best_<objective>`` (its step:
    the jobs ended), so that the runs table shows it while the sweep runs; its run as tags."""
    with reaching_server(sweep):
        client = sweep_client(sweep)
        client.log_metric(sweep.run_id, f"{names.BEST_PREFIX}{objective}", best.value, step=jobs_ended)
        tags = [RunTag(names.SWEEP_BEST_RUN, best.run_id or ""), RunTag(names.SWEEP_BEST_RUN_NAME, best.run_name)]
        client.log_batch(sweep.run_id, tags=tags)


def tag_parent(sweep: SweepRun, tags: dict[str, str]) -> None:
    with reaching_server(sweep):
        client = sweep_client(sweep)
        for key, value in tags.items():
            client.set_tag(sweep.run_id, key, value)
