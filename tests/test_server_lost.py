"""A real MLflow tracking server on loopback, killed while a run or a 2-worker sweep logs to it.

bprun must end within the configured timeout and retries (plus a margin), say in one line per
job what became of each run and where its local files are, and leave the store true: the runs
that existed stay RUNNING (bprun-doctor ends them KILLED once the server is back), none is
created twice, no count is written that the sweep could not know.
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
# A request to a dead server: (retries + 1) attempts, each at most the timeout, with MLflow's
# back-off between them; a sweep makes at most three such calls in a row after the kill.
EXIT_BOUND_SECONDS = 3 * (HTTP_RETRIES + 1) * HTTP_TIMEOUT + 4 + 30
SCENARIOS = {
    "run": ("dataset=digits", "trainer.epochs=100000"),
    "sweep": ("-m", "hydra.launcher.n_jobs=2", "seed=0,1,2,3", "dataset=digits", "trainer.epochs=100000"),
    "run-endpoint": ("dataset=digits", "trainer.epochs=100000"),
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
    staging = cwd / "tmp"
    staging.mkdir(parents=True)
    process = Background(
        *SCENARIOS[name],
        f"tracking.uri={server.uri}",
        f"tracking.http_timeout={HTTP_TIMEOUT}",
        f"tracking.http_retries={HTTP_RETRIES}",
        cwd=cwd,
        uri=None,
        env={"TMPDIR": str(staging)},
    )
    logging_runs = 2 if name == "sweep" else 1
    try:
        wait_until(
            lambda: (
                server.db.exists()
                and query(server.db, "SELECT count(DISTINCT run_uuid) FROM metrics")[0][0] >= logging_runs
            ),
            START_TIMEOUT,
            f"{logging_runs} run(s) logging to the server",
            process,
            interval=0.1,
        )
        killed = server.kill()
        result = process.wait(killed, timeout=EXIT_BOUND_SECONDS + 60)
        leftovers = process.leftovers()
    finally:
        process.kill_everything()
    server.start()  # back, on the same store: read what it holds
    try:
        from mlflow.entities import ViewType
        from mlflow.tracking import MlflowClient

        store = MlflowClient(server.uri)
        ids = [e.experiment_id for e in store.search_experiments(view_type=ViewType.ALL)]
        runs = store.search_runs(ids, run_view_type=ViewType.ALL)
        steps = {
            run.info.run_id: sorted(m.step for m in store.get_metric_history(run.info.run_id, "train_mse"))
            for run in runs
        }
        configs = {}
        for run in runs:
            if "bprun.sweep" not in run.data.tags:
                local = store.download_artifacts(
                    run.info.run_id, "config.yaml", str(cwd / "downloaded" / run.info.run_id)
                )
                configs[run.info.run_id] = Path(local).read_text()
        doctor = cli("--tracking-uri", server.uri, cwd=cwd, module="runner.commands.doctor")
        after_doctor = {run.info.run_id: run.info.status for run in store.search_runs(ids, run_view_type=ViewType.ALL)}
    finally:
        server.kill()
    return {
        "result": result,
        "leftovers": leftovers,
        "runs": runs,
        "steps": steps,
        "configs": configs,
        "server_log": (server.folder / "server.log").read_text(),
        "doctor": doctor,
        "after_doctor": after_doctor,
        "staging": staging,
    }


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


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_bprun_ends_within_the_timeout_in_one_line_per_run(outcomes, name: str) -> None:
    result = outcomes[name]["result"]
    assert result.returncode == 1, result.output
    assert result.seconds < EXIT_BOUND_SECONDS, result.output
    assert "Traceback" not in result.stderr and "Error executing job" not in result.stderr, result.output
    assert "Retrying" not in result.stdout and "View run" not in result.stdout, result.output
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith("bprun: ") for line in lines), result.output
    running = [run for run in outcomes[name]["runs"] if "bprun.sweep" not in run.data.tags]
    lost = [line for line in lines if "lost the MLflow tracking server" in line]
    assert len(lost) == len(running), result.output
    for run in running:
        assert any(run.info.run_id in line for line in lost), (run.info.run_id, result.output)
    if name == "sweep":  # each job one line, and one for the sweep
        assert len(lines) == 4 + 1, result.output
        assert lines[-1].startswith("bprun: the sweep stopped: its tracking server"), result.output
    else:
        assert len(lines) == 1, result.output
    assert outcomes[name]["leftovers"] == []
    if name in WITH_ENDPOINT:  # the run's metrics went to the endpoint until the server died
        assert '"POST /bprun/api/1/metrics HTTP/1.1" 200' in outcomes[name]["server_log"]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_store_holds_each_run_once_and_no_count_it_could_not_know(outcomes, name: str) -> None:
    runs = outcomes[name]["runs"]
    parents = [run for run in runs if run.data.tags.get("bprun.sweep") == "true"]
    children = [run for run in runs if run not in parents]
    if name == "sweep":
        (parent,) = parents
        assert len(children) == 2  # the two jobs running when the server died; none twice
        assert all(child.data.tags[PARENT_TAG] == parent.info.run_id for child in children)
        assert "sweep.jobs" not in parent.data.tags and "sweep.failed_jobs" not in parent.data.tags
    else:
        assert parents == [] and len(children) == 1
    for run in runs:
        assert run.info.status == "RUNNING"  # nothing could be told to the server
    for child in children:
        steps = outcomes[name]["steps"][child.info.run_id]
        assert steps and steps == list(range(len(steps)))
        assert "\ndataset:\n" in outcomes[name]["configs"][child.info.run_id]  # uploaded as the run started
    doctor = outcomes[name]["doctor"]
    assert doctor.returncode == 0, doctor.output
    assert set(outcomes[name]["after_doctor"].values()) == {"KILLED"}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_what_a_lost_run_wrote_is_kept_where_the_message_says(outcomes, name: str) -> None:
    result = outcomes[name]["result"]
    kept = [Path(line.rpartition("kept in ")[2]) for line in result.stderr.splitlines() if "kept in " in line]
    assert kept, result.output
    for folder in kept:
        assert folder.parent == outcomes[name]["staging"]
        assert (folder / "config.yaml").is_file()
        epochs = np.load(folder / "tensors" / "epochs.npy")
        weights = np.load(folder / "tensors" / "layer1.weights.npy")
        assert len(epochs) >= 1 and weights.shape[0] == len(epochs)
        unsent = (folder / "metrics-not-sent.csv").read_text().splitlines()
        assert unsent[0] == "key,value,timestamp,step" and len(unsent) > 1
