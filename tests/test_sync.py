"""``bprun-sync`` uploads each offline run once and completely, with its nesting, however often
it is stopped (SIGKILL, Ctrl-C) and started again, and never uploads a run that has not ended.

The target is a second SQLite store standing in for the server: sync talks to both through
``MlflowClient`` alone, so the bookkeeping tested here is the same for a server.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from support import PARENT_TAG, START_TIMEOUT, Background, cli, run_parallel, wait_until

SYNC = "runner.commands.sync"
SWEEP_JOBS = 3
EPOCHS = 20


def all_runs(uri: str, active_only: bool = True) -> list[Any]:
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    view = ViewType.ACTIVE_ONLY if active_only else ViewType.ALL
    store = MlflowClient(uri)
    ids = [e.experiment_id for e in store.search_experiments(view_type=ViewType.ALL)]
    return list(store.search_runs(ids, run_view_type=view, max_results=1000)) if ids else []


def histories(uri: str, run: Any) -> dict[str, list[tuple]]:
    from mlflow.tracking import MlflowClient

    store = MlflowClient(uri)
    return {
        key: sorted((m.step, m.timestamp, m.value) for m in store.get_metric_history(run.info.run_id, key))
        for key in run.data.metrics
    }


def assert_synced_once_and_completely(offline_uri: str, server_uri: str) -> None:
    """Every offline run has exactly one live copy: same status, params and metric histories,
    and the copy of a job nests under the copy of its parent."""
    sources = {run.info.run_id: run for run in all_runs(offline_uri)}
    copies = all_runs(server_uri)
    by_source = {}
    for copy in copies:
        origin = copy.data.tags["bprun.synced_from"]
        assert origin not in by_source, f"{origin} uploaded twice"
        by_source[origin] = copy
    assert set(by_source) == set(sources)
    for origin, copy in by_source.items():
        source = sources[origin]
        assert copy.info.status == source.info.status
        assert copy.data.params == source.data.params
        assert histories(server_uri, copy) == histories(offline_uri, source)
        assert source.data.tags["bprun.synced_as"] == f"{server_uri}#{copy.info.run_id}"
        parent = source.data.tags.get(PARENT_TAG)
        assert copy.data.tags.get(PARENT_TAG) == (by_source[parent].info.run_id if parent else None)


def offline_sweep(cwd: Path, server_uri: str) -> str:
    """An offline sweep of a parent and ``SWEEP_JOBS`` jobs meant for ``server_uri``."""
    done = cli(
        "-m",
        f"seed={','.join(map(str, range(SWEEP_JOBS)))}",
        "tracking.offline=true",
        f"tracking.uri={server_uri}",
        f"trainer.epochs={EPOCHS}",
        "tracking.tensors_every=5",
        cwd=cwd,
    )
    assert done.returncode == 0, done.output
    offline_uri = f"sqlite:///{cwd.resolve() / 'mlflow-offline.db'}"
    assert len(all_runs(offline_uri)) == SWEEP_JOBS + 1
    return offline_uri


def stopped_sync(name: str, base: Path, point: str, number: int) -> dict[str, Any]:
    """An offline sweep, a sync stopped by ``number`` at ``point`` (the first run copied, the
    parent), then a second, full sync."""
    cwd = base / name
    (base / name / "server").mkdir(parents=True)
    server_uri = f"sqlite:///{(base / name / 'server' / 'mlflow.db').resolve()}"
    offline_uri = offline_sweep(cwd, server_uri)
    marker = cwd / "at-the-point"
    first = Background(
        cwd=cwd,
        uri=None,
        label="first-sync",
        module=SYNC,
        env={"BPRUN_TEST_SIGNAL_POINT": point, "BPRUN_TEST_SIGNAL_MARKER": str(marker)},
    )
    try:
        wait_until(marker.exists, START_TIMEOUT, f"the point {point}", first)
        stopped = first.wait(first.signal(number))
    finally:
        first.kill_everything()
    after_first = all_runs(server_uri, active_only=False)
    second = cli(cwd=cwd, module=SYNC)
    return {
        "offline": offline_uri,
        "server": server_uri,
        "first": stopped,
        "after_first": after_first,
        "second": second,
        "third": cli(cwd=cwd, module=SYNC),
    }


STOPS = {
    "sigkill-copying": ("sync-copying", signal.SIGKILL),
    "sigkill-copied": ("sync-copied", signal.SIGKILL),
    "ctrl-c-copying": ("sync-copying", signal.SIGINT),
}


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    base = tmp_path_factory.mktemp("sync")
    return run_parallel({name: (lambda name=name: stopped_sync(name, base, *STOPS[name])) for name in STOPS})


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STOPS))
def test_a_stopped_sync_then_a_second_one_upload_every_run_once_with_its_parent(stopped, name: str) -> None:
    outcome = stopped[name]
    assert outcome["second"].returncode == 0, outcome["second"].output
    assert_synced_once_and_completely(outcome["offline"], outcome["server"])
    third = outcome["third"]
    assert third.returncode == 0 and "bprun-sync: 0 run(s) uploaded" in third.stdout, third.output
    assert len(all_runs(outcome["server"])) == SWEEP_JOBS + 1


@pytest.mark.slow
def test_sigkill_half_way_through_a_copy_leaves_a_partial_copy_that_the_next_sync_replaces(stopped) -> None:
    outcome = stopped["sigkill-copying"]
    assert outcome["first"].returncode == -signal.SIGKILL
    (partial,) = outcome["after_first"]
    assert partial.info.status == "RUNNING"
    second = outcome["second"]
    assert f"bprun-sync: {SWEEP_JOBS + 1} run(s) uploaded" in second.stdout, second.output
    # The partial copy is gone from every view of the store but MLflow's trash.
    live = {run.info.run_id for run in all_runs(outcome["server"])}
    assert partial.info.run_id not in live


@pytest.mark.slow
def test_sigkill_after_a_copy_is_complete_adopts_that_copy(stopped) -> None:
    outcome = stopped["sigkill-copied"]
    (complete,) = outcome["after_first"]
    assert complete.info.status == "FINISHED"
    second = outcome["second"]
    assert f"found {complete.data.tags['bprun.synced_from']}" in second.stdout, second.output
    assert f"bprun-sync: {SWEEP_JOBS} run(s) uploaded, 1 found already copied" in second.stdout, second.output
    assert complete.info.run_id in {run.info.run_id for run in all_runs(outcome["server"])}


@pytest.mark.slow
def test_ctrl_c_lets_the_run_being_copied_finish_then_stops(stopped) -> None:
    outcome = stopped["ctrl-c-copying"]
    first = outcome["first"]
    assert first.returncode == 130, first.output
    assert first.stderr.strip().splitlines()[-1].startswith("bprun-sync: interrupted; 1 run(s) uploaded"), first.output
    assert "Traceback" not in first.stderr
    (copy,) = outcome["after_first"]
    assert copy.info.status == "FINISHED"
    assert f"bprun-sync: {SWEEP_JOBS} run(s) uploaded" in outcome["second"].stdout, outcome["second"].output


def test_runs_that_have_not_ended_are_skipped_with_the_reason_and_uploaded_once_ended(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from runner.tracking.liveness import process_tags

    (tmp_path / "server").mkdir()
    server_uri = f"sqlite:///{(tmp_path / 'server' / 'mlflow.db').resolve()}"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    offline_uri = f"sqlite:///{cwd / 'mlflow-offline.db'}"
    offline = MlflowClient(offline_uri)
    experiment = offline.create_experiment("offline")
    meant_for = {"bprun.sync_target": server_uri}
    # A run still training (this process), a run whose process died, a finished job of the first.
    training = offline.create_run(experiment, run_name="training", tags={**meant_for, **process_tags()})
    dead = offline.create_run(
        experiment,
        run_name="dead",
        tags={**meant_for, "bprun.host": os.uname().nodename, "bprun.pid": "999999999", "bprun.process_start": "1"},
    )
    job = offline.create_run(experiment, run_name="job", tags={**meant_for, PARENT_TAG: training.info.run_id})
    for step in range(5):
        offline.log_metric(job.info.run_id, "train_mse", 1.0 / (step + 1), step=step)
    offline.set_terminated(job.info.run_id, "FINISHED")

    first = cli(cwd=cwd, module=SYNC)
    assert first.returncode == 0, first.output
    lines = first.stdout.splitlines()
    assert f"skipped  {training.info.run_id} (training): still RUNNING: it is uploaded by a sync after it ends" in lines
    assert any(
        line.startswith(f"skipped  {dead.info.run_id} (dead): RUNNING, but its process is gone: bprun-doctor")
        for line in lines
    ), first.output
    assert (
        f"skipped  {job.info.run_id} (job): its sweep's parent run {training.info.run_id} is not uploaded yet" in lines
    ), first.output
    assert "bprun-sync: 0 run(s) uploaded, 3 skipped" in first.stdout
    assert not (tmp_path / "server" / "mlflow.db").exists() or all_runs(server_uri) == []

    offline.set_terminated(training.info.run_id, "FINISHED")
    second = cli(cwd=cwd, module=SYNC)
    assert second.returncode == 0, second.output
    assert "bprun-sync: 2 run(s) uploaded, 1 skipped" in second.stdout, second.output
    copies = {run.data.tags["bprun.synced_from"]: run for run in all_runs(server_uri)}
    assert set(copies) == {training.info.run_id, job.info.run_id}
    assert copies[job.info.run_id].data.tags[PARENT_TAG] == copies[training.info.run_id].info.run_id
    assert len(histories(server_uri, copies[job.info.run_id])["train_mse"]) == 5


def test_two_syncs_of_one_store_never_run_at_once(tmp_path: Path) -> None:
    import fcntl

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "mlflow-offline.db").touch()
    with open(cwd / "mlflow-offline.db.sync-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        refused = cli(cwd=cwd, module=SYNC)
    assert refused.returncode == 2, refused.output
    assert "another bprun-sync is uploading from" in refused.stderr
