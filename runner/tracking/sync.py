"""Uploading runs kept offline (``tracking.offline=true``) to the server they were meant for.

Each offline run carries that server (tag ``bprun.sync_target``). ``sync`` copies every such run
not copied yet: name, params, tags, every metric's full history, artifacts, status and times,
into an experiment of the same name, with parents first so that a sweep's jobs nest under their
parent's copy.

A run is uploaded once and completely, however often sync is stopped and started again:

- only ended runs are copied; a RUNNING run (still training, or left so by a process that died)
  is skipped with the reason, and so are the jobs of a sweep whose parent is skipped;
- a copy is created RUNNING, tagged ``bprun.synced_from`` with the offline run's id, and gets its
  final status last: a copy that is not RUNNING is complete;
- before copying a run, sync looks for its copies in the target: a complete one is adopted, a
  partial one (a sync stopped half way) is deleted and the run copied again;
- the offline run is then tagged ``bprun.synced_as`` (``<server>#<copy id>``), which is where
  its jobs find their parent's copy in later syncs.

Interruption is cooperative: a Ctrl-C lets the run being copied finish, then sync stops.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from mlflow.entities import Metric, Param, Run, RunStatus, RunTag, ViewType
from mlflow.tracking import MlflowClient

from runner import names
from runner.process import interruption
from runner.tracking.destination import Destination, check_store
from runner.tracking.liveness import is_stale
from runner.tracking.metric_sinks import MAX_METRICS_PER_CALL
from runner.tracking.params import MAX_PARAMS_PER_CALL
from runner.tracking.store import ensure_experiment

# Tags MLflow maintains itself on the copy; copying them would contradict the new run.
NOT_COPIED = {names.SYNC_TARGET, names.SYNCED_AS, names.PARENT_RUN, names.RUN_NAME, "mlflow.log-model.history"}
RUNNING = RunStatus.to_string(RunStatus.RUNNING)


class UploadFailed(Exception):
    """Copying a run failed half way (the server went away, say); the next sync replaces the
    partial copy."""


@dataclass
class SyncResult:
    """What one sync did: ``(offline id, copy id)`` of each run uploaded now, of each run whose
    complete copy an earlier, interrupted sync had left, and ``(offline id, reason)`` of each
    run not uploaded."""

    uploaded: list[tuple[str, str]] = field(default_factory=list)
    adopted: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def pending_runs(source: MlflowClient, target: str | None) -> list[Run]:
    """Offline runs of ``source`` meant for ``target`` (any when None) not yet uploaded,
    parents before their children."""
    experiment_ids = [e.experiment_id for e in source.search_experiments(view_type=ViewType.ALL)]
    if not experiment_ids:
        return []
    found = source.search_runs(experiment_ids, f"tags.`{names.SYNC_TARGET}` != ''", max_results=50000)
    runs = [
        run
        for run in found
        if names.SYNCED_AS not in run.data.tags and (target is None or run.data.tags[names.SYNC_TARGET] == target)
    ]
    return sorted(runs, key=lambda run: (names.PARENT_RUN in run.data.tags, run.info.start_time))


def why_not_yet(run: Run) -> str | None:
    """Why ``run`` cannot be uploaded now (it has not ended), or None."""
    if run.info.status != RUNNING:
        return None
    if is_stale(run.data.tags):
        return (
            "RUNNING, but its process is gone: bprun-doctor --tracking-uri <the offline store> "
            "marks it KILLED, then it can be uploaded"
        )
    return "still RUNNING: it is uploaded by a sync after it ends"


def copies_in_target(target: MlflowClient, experiment_id: str, offline_id: str) -> list[Run]:
    return list(
        target.search_runs(
            [experiment_id],
            f"tags.`{names.SYNCED_FROM}` = '{offline_id}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
        )
    )


def copy_run(source: MlflowClient, run: Run, target_uri: str, parent_copy: str | None) -> tuple[str, bool]:
    """Bring ``run`` to ``target_uri`` under ``parent_copy``; return the copy's id and whether
    an earlier sync had already copied it completely."""
    target = MlflowClient(target_uri)
    experiment_id = ensure_experiment(target_uri, source.get_experiment(run.info.experiment_id).name)
    complete = None
    for copy in copies_in_target(target, experiment_id, run.info.run_id):
        if copy.info.status != RUNNING and complete is None:
            complete = copy.info.run_id
        else:  # left half way by a sync that was stopped, or a second copy
            target.delete_run(copy.info.run_id)
    if complete is not None:
        _mark_synced(source, run, target_uri, complete)
        return complete, True

    tags = {key: value for key, value in run.data.tags.items() if key not in NOT_COPIED}
    tags[names.SYNCED_FROM] = run.info.run_id
    if parent_copy is not None:
        tags[names.PARENT_RUN] = parent_copy
    copy = target.create_run(experiment_id, start_time=run.info.start_time, tags=tags, run_name=run.info.run_name)
    new_id = copy.info.run_id
    params = [Param(key, value) for key, value in run.data.params.items()]
    for start in range(0, len(params), MAX_PARAMS_PER_CALL):
        target.log_batch(new_id, params=params[start : start + MAX_PARAMS_PER_CALL])
    metrics = [
        Metric(m.key, m.value, m.timestamp, m.step)
        for key in run.data.metrics
        for m in source.get_metric_history(run.info.run_id, key)
    ]
    for start in range(0, len(metrics), MAX_METRICS_PER_CALL):
        target.log_batch(new_id, metrics=metrics[start : start + MAX_METRICS_PER_CALL])
    with tempfile.TemporaryDirectory() as directory:
        if source.list_artifacts(run.info.run_id):
            local = source.download_artifacts(run.info.run_id, "", directory)
            target.log_artifacts(new_id, local)
    interruption.test_point("sync-copying")
    # Last: from here on the copy counts as complete.
    target.set_terminated(new_id, run.info.status, end_time=run.info.end_time)
    interruption.test_point("sync-copied")
    _mark_synced(source, run, target_uri, new_id)
    return new_id, False


def _mark_synced(source: MlflowClient, run: Run, target_uri: str, copy_id: str) -> None:
    source.log_batch(run.info.run_id, tags=[RunTag(names.SYNCED_AS, f"{target_uri}#{copy_id}")])


def _copy_of(source: MlflowClient, offline_id: str) -> str | None:
    """The id of an offline run's complete copy, from its ``bprun.synced_as`` tag."""
    synced_as = source.get_run(offline_id).data.tags.get(names.SYNCED_AS)
    return synced_as.rpartition("#")[2] if synced_as else None


def sync(
    source_uri: str,
    target_uri: str | None = None,
    timeout_seconds: float = 10.0,
    report: Callable[[str], None] = lambda line: None,
) -> SyncResult:
    """Copy every pending offline run of ``source_uri`` that has ended, saying what it does
    through ``report``. Stops between two runs when interrupted (``runner.process.interruption``),
    raising ``Interrupted`` with what is done so far."""
    source = MlflowClient(source_uri)
    result = SyncResult()
    copies: dict[str, str] = {}  # offline run id -> its copy's id
    not_uploaded: set[str] = set()
    checked: set[str] = set()
    for run in pending_runs(source, target_uri):
        interruption.check(
            ended=f"{len(result.uploaded)} run(s) uploaded before it stopped; "
            "bprun-sync uploads the rest when run again"
        )
        offline_id, label = run.info.run_id, f"{run.info.run_id} ({run.info.run_name})"
        parent = run.data.tags.get(names.PARENT_RUN)
        parent_copy = None
        if parent is not None:
            parent_copy = copies.get(parent) or (None if parent in not_uploaded else _copy_of(source, parent))
        reason = (
            f"its sweep's parent run {parent} is not uploaded yet"
            if parent is not None and parent_copy is None
            else why_not_yet(run)
        )
        if reason is not None:
            result.skipped.append((offline_id, reason))
            not_uploaded.add(offline_id)
            report(f"skipped  {label}: {reason}")
            continue
        destination = target_uri or run.data.tags[names.SYNC_TARGET]
        if destination not in checked:
            check_store(
                Destination(destination, http_timeout=timeout_seconds, http_retries=2),
                server_advice="start it (or pass --to another server) and run bprun-sync again",
            )
            checked.add(destination)
        try:
            copy_id, adopted = copy_run(source, run, destination, parent_copy)
        except Exception as error:
            first_line = (str(error).strip().splitlines() or [""])[0]
            raise UploadFailed(
                f"uploading {label} to {destination} failed: {type(error).__name__}: {first_line}; "
                f"{len(result.uploaded)} run(s) uploaded before; bprun-sync replaces the "
                "partial copy when run again"
            ) from error
        copies[offline_id] = copy_id
        (result.adopted if adopted else result.uploaded).append((offline_id, copy_id))
        report(
            f"{'found' if adopted else 'uploaded'} {label} as {copy_id}"
            + (" (copied completely by an earlier sync)" if adopted else "")
        )
    return result
