"""A real MLflow tracking server on loopback, killed while a run or a 2-worker sweep logs to it,
and started again.

The runs that were training go on to their end, keeping what the server did not get in their
output folder; bprun says in one line per job what became of each run, where its files are and
the command that uploads them; jobs not started fail at once. Once the server is back,
``bprun-sync FOLDER`` completes each run: every epoch of every metric, its tensors, model and
status, and a rerun is identical. Nothing is created twice.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from guard import dying_with_pytest
from support import PARENT_TAG, START_TIMEOUT, Background, cli, query, run_parallel, wait_until

pytestmark = pytest.mark.slow

HTTP_TIMEOUT, HTTP_RETRIES = 3, 1
EPOCHS, PAUSE_AT = 600, 400  # the first metric flush (5,000 values) comes before the pause
# After the kill: the running jobs train their last epochs (seconds) and each loses one request
# ((retries + 1) attempts of at most the timeout, with MLflow's back-off); jobs not started fail
# at once, after one such request each.
EXIT_BOUND_SECONDS = 4 * (HTTP_RETRIES + 1) * HTTP_TIMEOUT + 4 + 60
COMMON = ("dataset=digits", f"trainer.epochs={EPOCHS}")
SCENARIOS = {
    "run": COMMON,
    "sweep": ("-m", "hydra.launcher.n_jobs=2", "seed=0,1,2,3", *COMMON),
    "run-endpoint": COMMON,
}
# Served as bprun-server serves: MLflow's server with bprun's app plugin, runs' metrics going to its endpoint.
WITH_ENDPOINT = {"run-endpoint"}


class Server:
    """``mlflow server`` on a free loopback port, with its store and artifacts in ``folder``;
    with ``endpoint``, with bprun's app plugin (``--app-name bprun``), as bprun-server runs it."""

    def __init__(self, folder: Path, endpoint: bool = False) -> None:
        self.folder = folder
        self.endpoint = endpoint
        folder.mkdir(parents=True, exist_ok=True)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.db = folder / "mlflow.db"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        mlflow = Path(sys.executable).with_name("mlflow")
        environment = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        environment.pop("MLFLOW_TRACKING_URI", None)
        with open(self.folder / "server.log", "a") as log:
            self.process = subprocess.Popen(
                [
                    str(mlflow),
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    "1",
                    "--backend-store-uri",
                    f"sqlite:///{self.db}",
                    "--artifacts-destination",
                    str(self.folder / "art"),
                    *(["--app-name", "bprun"] if self.endpoint else []),
                ],
                stdout=log,
                stderr=log,
                env=environment,
                start_new_session=True,
                preexec_fn=dying_with_pytest(signal.SIGTERM),  # the server stops its web workers
            )

        def healthy() -> bool:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2).close()
                return True
            except OSError:
                if self.process.poll() is not None:
                    raise AssertionError((self.folder / "server.log").read_text()[-3000:]) from None
                return False

        wait_until(healthy, START_TIMEOUT, "the MLflow server answering")

    def kill(self) -> float:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        return time.monotonic()


def play(name: str, base: Path) -> dict[str, Any]:
    cwd = base / name
    server = Server(base / f"{name}-server", endpoint=name in WITH_ENDPOINT)
    server.start()
    pauses = cwd / "pauses"
    pauses.mkdir(parents=True)
    process = Background(
        *SCENARIOS[name],
        f"tracking.uri={server.uri}",
        f"tracking.http_timeout={HTTP_TIMEOUT}",
        f"tracking.http_retries={HTTP_RETRIES}",
        cwd=cwd,
        uri=None,
        env={"BPRUN_TEST_PAUSE_AT_EPOCH": str(PAUSE_AT), "BPRUN_TEST_PAUSE_FOLDER": str(pauses)},
    )
    running = 2 if name == "sweep" else 1
    try:
        # Every running job paused after epoch PAUSE_AT, its first metrics on the server.
        wait_until(
            lambda: (
                len(list(pauses.glob("*.paused"))) == running
                and server.db.exists()
                and query(server.db, "SELECT count(DISTINCT run_uuid) FROM metrics")[0][0] >= running
            ),
            START_TIMEOUT,
            f"{running} run(s) paused at epoch {PAUSE_AT} with metrics on the server",
            process,
            interval=0.1,
        )
        killed = server.kill()
        for marker in pauses.glob("*.paused"):
            marker.unlink()
        result = process.wait(killed, timeout=EXIT_BOUND_SECONDS + 60)
        leftovers = process.leftovers()
    finally:
        process.kill_everything()
    server.start()  # back, on the same store
    try:
        before = read_store(server.uri, cwd / "before")
        kept = [Path(line.rpartition("bprun-sync ")[2]) for line in result.stderr.splitlines() if "bprun-sync " in line]
        syncs = [cli(str(folder), cwd=cwd, uri=None, module="runner.commands.sync") for folder in kept]
        after = read_store(server.uri, cwd / "after")
        reruns = {}
        if name != "sweep":
            for run_id in after["runs"]:
                reruns[run_id] = cli(run_id, "--tracking-uri", server.uri, cwd=cwd, module="runner.commands.rerun")
        doctor = cli("--tracking-uri", server.uri, cwd=cwd, module="runner.commands.doctor")
    finally:
        server.kill()
    return {
        "result": result,
        "leftovers": leftovers,
        "before": before,
        "kept": kept,
        "syncs": syncs,
        "after": after,
        "reruns": reruns,
        "doctor": doctor,
        "server_log": (server.folder / "server.log").read_text(),
        "cwd": cwd,
    }


def read_store(uri: str, downloads: Path) -> dict[str, Any]:
    """Every run of the server: status, tags, each metric's steps, and its artifacts' files."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    store = MlflowClient(uri)
    ids = [e.experiment_id for e in store.search_experiments(view_type=ViewType.ALL)]
    runs = {}
    for run in store.search_runs(ids, run_view_type=ViewType.ALL):
        run_id = run.info.run_id
        steps = {key: sorted(m.step for m in store.get_metric_history(run_id, key)) for key in run.data.metrics}
        files = []
        if "bprun.sweep" not in run.data.tags:
            local = Path(store.download_artifacts(run_id, "", str(downloads / run_id)))
            files = sorted(str(path.relative_to(local)) for path in local.rglob("*") if path.is_file())
        runs[run_id] = {
            "status": run.info.status,
            "tags": run.data.tags,
            "steps": steps,
            "files": files,
            "folder": downloads / run_id,
        }
    return {"runs": runs}


def test_a_run_logs_every_value_to_mlflows_own_server_which_has_no_metrics_endpoint(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    server = Server(tmp_path / "server")
    server.start()
    try:
        result = cli("trainer.epochs=30", f"tracking.uri={server.uri}", cwd=tmp_path / "run", uri=None)
        assert result.returncode == 0, result.output
        store = MlflowClient(server.uri)
        run = store.search_runs([store.get_experiment_by_name("backprop-runner").experiment_id])[0]
        assert run.info.status == "FINISHED"
        for key in run.data.metrics:
            assert sorted(m.step for m in store.get_metric_history(run.info.run_id, key)) == list(range(30)), key
    finally:
        server.kill()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    if shutil.which("mlflow", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("the mlflow command is not installed beside this Python")
    base = tmp_path_factory.mktemp("server-lost")
    return run_parallel({name: (lambda name=name: play(name, base)) for name in SCENARIOS})


def jobs(runs: dict[str, Any]) -> dict[str, Any]:
    return {run_id: run for run_id, run in runs.items() if "bprun.sweep" not in run["tags"]}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_lost_run_trains_to_its_end_and_says_in_one_line_how_to_upload_it(outcomes, name: str) -> None:
    result = outcomes[name]["result"]
    assert result.returncode == 1, result.output
    assert result.seconds < EXIT_BOUND_SECONDS, result.output
    assert "Traceback" not in result.stderr and "Error executing job" not in result.stderr, result.output
    assert "Retrying" not in result.stdout and "View run" not in result.stdout, result.output
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith("bprun: ") for line in lines), result.output
    lost = [line for line in lines if "lost the MLflow tracking server" in line]
    running = jobs(outcomes[name]["before"]["runs"])
    assert len(lost) == len(running), result.output
    for run_id in running:
        (line,) = [line for line in lost if run_id in line]
        assert "ended FINISHED here and stays RUNNING there" in line, line
        folder = Path(line.rpartition("bprun-sync ")[2])
        # In the run's Hydra output folder, beside its .hydra/ and bprun.log.
        assert folder.parent.name == "mlflow-unsent" and (folder.parent.parent / ".hydra").is_dir(), line
    if name == "sweep":  # the two jobs not started fail at once, then one line for the sweep
        assert len(lines) == 2 + 2 + 1, result.output
        assert lines[-1].startswith("bprun: the sweep stopped: its tracking server"), result.output
    else:
        assert len(lines) == 1, result.output
    assert outcomes[name]["leftovers"] == []
    if name in WITH_ENDPOINT:  # the run's metrics went to the endpoint until the server died
        assert '"POST /bprun/api/1/metrics HTTP/1.1" 200' in outcomes[name]["server_log"]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_server_holds_part_of_each_lost_run_and_no_count_it_could_not_know(outcomes, name: str) -> None:
    runs = outcomes[name]["before"]["runs"]
    parents = {run_id: run for run_id, run in runs.items() if run["tags"].get("bprun.sweep") == "true"}
    children = jobs(runs)
    if name == "sweep":
        ((parent_id, parent),) = parents.items()
        assert len(children) == 2  # the two jobs running when the server died; none twice
        assert all(child["tags"][PARENT_TAG] == parent_id for child in children.values())
        assert "sweep.jobs" not in parent["tags"] and "sweep.failed_jobs" not in parent["tags"]
    else:
        assert parents == {} and len(children) == 1
    for run in runs.values():
        assert run["status"] == "RUNNING"  # nothing could be told to the server
    for child in children.values():
        steps = child["steps"]["1_loss/train_mse"]
        assert steps == list(range(len(steps))) and 0 < len(steps) <= PAUSE_AT + 1
        assert "config.yaml" in child["files"]  # uploaded as the run started


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_after_bprun_sync_each_run_holds_every_epoch_its_tensors_model_and_status(outcomes, name: str) -> None:
    for sync in outcomes[name]["syncs"]:
        assert sync.returncode == 0, sync.output
        assert "uploaded" in sync.stdout and "ended FINISHED" in sync.stdout, sync.output
    for folder in outcomes[name]["kept"]:
        assert not folder.exists(), folder  # uploaded, then removed
    after = jobs(outcomes[name]["after"]["runs"])
    assert set(after) == set(jobs(outcomes[name]["before"]["runs"]))  # the same runs, completed
    for run_id, run in after.items():
        assert run["status"] == "FINISHED", run_id
        assert run["tags"]["stop_reason"] == "completed" and run["tags"]["epochs_run"] == str(EPOCHS)
        for key, steps in run["steps"].items():
            assert steps == list(range(EPOCHS)), (key, len(steps))
        for file in ("weights.npz", "model/MLmodel", "tensors/epochs.npy", "plots/learning_curves.png"):
            assert file in run["files"], (file, run["files"])
        epochs = np.load(run["folder"] / "tensors" / "epochs.npy")
        weights = np.load(run["folder"] / "tensors" / "layer1.weights.npy")
        assert epochs[-1] == EPOCHS - 1 and weights.shape[0] == len(epochs)


@pytest.mark.parametrize("name", sorted(set(SCENARIOS) - {"sweep"}))
def test_a_run_completed_by_bprun_sync_reruns_identical(outcomes, name: str) -> None:
    (rerun,) = outcomes[name]["reruns"].values()
    assert rerun.returncode == 0, rerun.output
    assert "identical" in rerun.stdout, rerun.output


def test_bprun_doctor_ends_what_the_lost_sweep_left_running(outcomes) -> None:
    doctor = outcomes["sweep"]["doctor"]
    assert doctor.returncode == 0, doctor.output
