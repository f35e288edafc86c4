"""``bprun-sync``: upload runs kept offline (``tracking.offline=true``) to their tracking server.

Each offline run carries the server it was meant for (tag ``bprun.sync_target``). A sync copies
every such run that has not been copied yet: name, params, tags, every metric's full history,
artifacts, status and times, into an experiment of the same name. Parents go first so that
sweep children stay nested under their parent's copy. The offline run is then tagged
``bprun.synced_as`` with the new run's id, so running the command again copies nothing twice.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from runner.tracking import (MAX_METRICS_PER_CALL, OFFLINE_DATABASE, SYNC_TARGET_TAG, check_store,
                             ensure_experiment, sqlite_path)

SYNCED_TAG = "bprun.synced_as"
PARENT_TAG = "mlflow.parentRunId"
# Tags MLflow maintains itself on the copy; copying them would contradict the new run.
NOT_COPIED = {SYNC_TARGET_TAG, SYNCED_TAG, PARENT_TAG, "mlflow.runName", "mlflow.log-model.history"}


def pending_runs(source, target: str | None) -> list:
    """Offline runs of ``source`` meant for ``target`` (any target when None) not yet synced,
    parents before their children."""
    from mlflow.entities import ViewType

    experiment_ids = [e.experiment_id for e in source.search_experiments(view_type=ViewType.ALL)]
    if not experiment_ids:
        return []
    runs = source.search_runs(experiment_ids, f"tags.`{SYNC_TARGET_TAG}` != ''", max_results=50000)
    runs = [run for run in runs if SYNCED_TAG not in run.data.tags
            and (target is None or run.data.tags[SYNC_TARGET_TAG] == target)]
    return sorted(runs, key=lambda run: (PARENT_TAG in run.data.tags, run.info.start_time))


def copy_run(source, run, target_uri: str, parent_ids: dict[str, str]) -> str:
    """Copy one run to ``target_uri``; return the new run's id."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    target = MlflowClient(target_uri)
    experiment = source.get_experiment(run.info.experiment_id)
    experiment_id = ensure_experiment(target_uri, experiment.name)
    tags = {key: value for key, value in run.data.tags.items() if key not in NOT_COPIED}
    tags["bprun.synced_from"] = run.info.run_id
    parent = run.data.tags.get(PARENT_TAG)
    if parent is not None and parent in parent_ids:
        tags[PARENT_TAG] = parent_ids[parent]
    copy = target.create_run(experiment_id, start_time=run.info.start_time, tags=tags,
                             run_name=run.info.run_name)
    new_id = copy.info.run_id
    params = [Param(key, value) for key, value in run.data.params.items()]
    for start in range(0, len(params), 100):
        target.log_batch(new_id, params=params[start : start + 100])
    metrics = [Metric(m.key, m.value, m.timestamp, m.step)
               for key in run.data.metrics for m in source.get_metric_history(run.info.run_id, key)]
    for start in range(0, len(metrics), MAX_METRICS_PER_CALL):
        target.log_batch(new_id, metrics=metrics[start : start + MAX_METRICS_PER_CALL])
    with tempfile.TemporaryDirectory() as directory:
        if source.list_artifacts(run.info.run_id):
            local = source.download_artifacts(run.info.run_id, "", directory)
            target.log_artifacts(new_id, local)
    target.set_terminated(new_id, run.info.status, end_time=run.info.end_time)
    source.log_batch(run.info.run_id, tags=[RunTag(SYNCED_TAG, f"{target_uri}#{new_id}")])
    return new_id


def sync(source_uri: str, target_uri: str | None = None, timeout_seconds: float = 10.0) -> list[tuple[str, str]]:
    """Copy every pending offline run; return ``(offline id, new id)`` pairs."""
    from mlflow.tracking import MlflowClient

    source = MlflowClient(source_uri)
    copied: list[tuple[str, str]] = []
    parent_ids: dict[str, str] = {}
    checked: set[str] = set()
    for run in pending_runs(source, target_uri):
        destination = target_uri or run.data.tags[SYNC_TARGET_TAG]
        if destination not in checked:
            check_store(destination, timeout_seconds, retries=2)
            checked.add(destination)
        new_id = copy_run(source, run, destination, parent_ids)
        parent_ids[run.info.run_id] = new_id
        copied.append((run.info.run_id, new_id))
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bprun-sync", description=__doc__.split("\n\n")[0])
    parser.add_argument("--offline-store", default=f"sqlite:///{Path(os.getcwd(), OFFLINE_DATABASE)}",
                        help=f"the offline store (default: ./{OFFLINE_DATABASE})")
    parser.add_argument("--to", dest="target", help="upload only the runs meant for this tracking URI "
                        "(default: every pending run, each to the server it was meant for)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds the server may take to answer")
    arguments = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    from runner.tracking import StoreUnavailable

    database = sqlite_path(arguments.offline_store)
    if database is not None and not database.is_file():
        print(f"bprun-sync: no offline store at {database}", file=sys.stderr)
        return 2
    try:
        copied = sync(arguments.offline_store, arguments.target, arguments.timeout)
    except StoreUnavailable as error:
        print(f"bprun-sync: {error}; nothing more was uploaded (run it again later)", file=sys.stderr)
        return 1
    for offline_id, new_id in copied:
        print(f"uploaded {offline_id} as {new_id}")
    print(f"bprun-sync: {len(copied)} run(s) uploaded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
