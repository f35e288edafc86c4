"""Uploading runs kept offline (``tracking.offline=true``) to the server they were meant for.

Each offline run carries that server (tag ``bprun.sync_target``). ``sync`` copies every such run
not copied yet: name, params, tags, every metric's full history, artifacts, status and times,
into an experiment of the same name. Parents go first, so that a sweep's jobs stay nested under
their parent's copy. The offline run is then tagged ``bprun.synced_as`` with the copy's id, so
running it again copies nothing twice.
"""

from __future__ import annotations

import tempfile

from mlflow.entities import Metric, Param, Run, RunTag, ViewType
from mlflow.tracking import MlflowClient

from runner.tracking import names
from runner.tracking.destination import Destination, check_store
from runner.tracking.mlflow_run import MAX_METRICS_PER_CALL, MAX_PARAMS_PER_CALL
from runner.tracking.store import ensure_experiment

# Tags MLflow maintains itself on the copy; copying them would contradict the new run.
NOT_COPIED = {names.SYNC_TARGET, names.SYNCED_AS, names.PARENT_RUN, names.RUN_NAME, "mlflow.log-model.history"}


def pending_runs(source: MlflowClient, target: str | None) -> list[Run]:
    """Offline runs of ``source`` meant for ``target`` (any when None) not yet uploaded,
    parents before their children."""
    experiment_ids = [e.experiment_id for e in source.search_experiments(view_type=ViewType.ALL)]
    if not experiment_ids:
        return []
    runs = source.search_runs(experiment_ids, f"tags.`{names.SYNC_TARGET}` != ''", max_results=50000)
    runs = [run for run in runs if names.SYNCED_AS not in run.data.tags
            and (target is None or run.data.tags[names.SYNC_TARGET] == target)]
    return sorted(runs, key=lambda run: (names.PARENT_RUN in run.data.tags, run.info.start_time))


def copy_run(source: MlflowClient, run: Run, target_uri: str, parent_ids: dict[str, str]) -> str:
    """Copy one run to ``target_uri``; return the copy's id."""
    target = MlflowClient(target_uri)
    experiment = source.get_experiment(run.info.experiment_id)
    experiment_id = ensure_experiment(target_uri, experiment.name)
    tags = {key: value for key, value in run.data.tags.items() if key not in NOT_COPIED}
    tags[names.SYNCED_FROM] = run.info.run_id
    parent = run.data.tags.get(names.PARENT_RUN)
    if parent is not None and parent in parent_ids:
        tags[names.PARENT_RUN] = parent_ids[parent]
    copy = target.create_run(experiment_id, start_time=run.info.start_time, tags=tags, run_name=run.info.run_name)
    new_id = copy.info.run_id
    params = [Param(key, value) for key, value in run.data.params.items()]
    for start in range(0, len(params), MAX_PARAMS_PER_CALL):
        target.log_batch(new_id, params=params[start : start + MAX_PARAMS_PER_CALL])
    metrics = [Metric(m.key, m.value, m.timestamp, m.step)
               for key in run.data.metrics for m in source.get_metric_history(run.info.run_id, key)]
    for start in range(0, len(metrics), MAX_METRICS_PER_CALL):
        target.log_batch(new_id, metrics=metrics[start : start + MAX_METRICS_PER_CALL])
    with tempfile.TemporaryDirectory() as directory:
        if source.list_artifacts(run.info.run_id):
            local = source.download_artifacts(run.info.run_id, "", directory)
            target.log_artifacts(new_id, local)
    target.set_terminated(new_id, run.info.status, end_time=run.info.end_time)
    source.log_batch(run.info.run_id, tags=[RunTag(names.SYNCED_AS, f"{target_uri}#{new_id}")])
    return new_id


def sync(source_uri: str, target_uri: str | None = None, timeout_seconds: float = 10.0) -> list[tuple[str, str]]:
    """Copy every pending offline run of ``source_uri``; return ``(offline id, copy id)`` pairs."""
    source = MlflowClient(source_uri)
    copied: list[tuple[str, str]] = []
    parent_ids: dict[str, str] = {}
    checked: set[str] = set()
    for run in pending_runs(source, target_uri):
        destination = target_uri or run.data.tags[names.SYNC_TARGET]
        if destination not in checked:
            check_store(Destination(destination, http_timeout=timeout_seconds, http_retries=2))
            checked.add(destination)
        new_id = copy_run(source, run, destination, parent_ids)
        parent_ids[run.info.run_id] = new_id
        copied.append((run.info.run_id, new_id))
    return copied
