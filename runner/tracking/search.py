"""Finding runs: a sweep's jobs, the latest sweep, every run of an experiment."""

from __future__ import annotations

import re
from collections.abc import Sequence

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from runner import names

PAGE_SIZE = 1000


def search_all(
    client: MlflowClient,
    experiment_ids: Sequence[str],
    filter_string: str = "",
    order_by: Sequence[str] = ("attributes.start_time ASC",),
) -> list[Run]:
    """Every active run matching ``filter_string``, across result pages."""
    runs: list[Run] = []
    page_token = None
    while True:
        page = client.search_runs(
            list(experiment_ids), filter_string, max_results=PAGE_SIZE, order_by=list(order_by), page_token=page_token
        )
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


def find_latest_sweep(client: MlflowClient, experiment_ids: Sequence[str]) -> Run | None:
    """The most recently started sweep parent run, or None."""
    found = client.search_runs(
        list(experiment_ids), f"tags.`{names.SWEEP}` = 'true'", max_results=1, order_by=["attributes.start_time DESC"]
    )
    return found[0] if found else None


def sweep_children(client: MlflowClient, parent_run_id: str) -> list[Run]:
    """The job runs of a sweep, oldest first."""
    # Run ids are hex (uuid4); refuse anything else rather than quote it into a filter.
    if not re.fullmatch(r"[0-9A-Za-z-]+", parent_run_id):
        raise ValueError(f"not a run id: {parent_run_id!r}")
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    return search_all(client, [experiment_id], f"tags.`{names.PARENT_RUN}` = '{parent_run_id}'")


def sweep_jobs(client: MlflowClient, parent_run_id: str) -> list[Run]:
    """The runs of a sweep's jobs, one per job, oldest first: a run a cluster stopped and
    requeued, or one a resumed sweep ran again, is left out for the run that stands for its job."""
    return [
        run
        for run in sweep_children(client, parent_run_id)
        if run.data.tags.get(names.REQUEUED) != "true" and names.SUPERSEDED_BY not in run.data.tags
    ]


def experiment_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    """Every run of an experiment except sweep parents, oldest first."""
    # A filter cannot select runs *without* a tag, so the parents are dropped here.
    return [run for run in search_all(client, [experiment_id]) if run.data.tags.get(names.SWEEP) != "true"]
