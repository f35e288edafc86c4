"""A team's tracking server: ``bprun-server`` on a PostgreSQL store, and sweeps and runs from
several processes at once logging to it over http, artifacts uploaded through the server.

Everything is read back through the server, as a teammate on another machine would: runs,
nesting, every metric point, tensors, plots and models, and a rerun compared from there.
"""

from __future__ import annotations

import contextlib
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from postgres import postgres_uri  # noqa: F401  (the session's PostgreSQL database, a fixture)
from support import PARENT_TAG, START_TIMEOUT, Background, cli, run_parallel, wait_until

pytestmark = pytest.mark.slow

SWEEP_EPOCHS = 30
SEEDS = range(8)
# The files of one job of the sweep (xor, two layers).
ARTIFACT_FILES = {
    "config.yaml",
    "overrides.yaml",
    "weights.npz",
    *(
        f"model/{name}"
        for name in (
            "MLmodel",
            "conda.yaml",
            "input_example.json",
            "python_env.yaml",
            "python_model.pkl",
            "requirements.txt",
            "serving_input_example.json",
        )
    ),
    *(f"plots/{name}.png" for name in ("gradient_norms", "learning_curves", "weight_norms")),
    "tensors/epochs.npy",
    *(
        f"tensors/layer{layer}.{kind}.npy"
        for layer in (1, 2)
        for kind in ("weights", "biases", "grad_weights", "grad_biases")
    ),
}


def free_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


@pytest.fixture(scope="module")
def server(postgres_uri: str, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    folder = tmp_path_factory.mktemp("team-server")
    port = free_port()
    process = Background(
        "--store",
        postgres_uri,
        "--artifacts",
        str(folder / "artifacts"),
        "--port",
        str(port),
        cwd=folder,
        uri=None,
        label="server",
        module="runner.commands.server",
    )
    try:
        wait_until(
            lambda: "bprun-server: serving" in process.output_so_far(),
            START_TIMEOUT,
            "bprun-server serving",
            process,
            interval=0.1,
        )
        yield f"http://127.0.0.1:{port}", process, folder
    finally:
        process.kill_everything()


def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def experiment_runs(uri: str, name: str) -> list[Any]:
    from mlflow.entities import ViewType

    experiment = client(uri).get_experiment_by_name(name)
    assert experiment is not None, name
    return list(client(uri).search_runs([experiment.experiment_id], run_view_type=ViewType.ALL, max_results=1000))


@pytest.fixture(scope="module")
def team_sweep(server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    uri, _, _ = server
    cwd = tmp_path_factory.mktemp("team-sweep")
    result = cli(
        "-m",
        "hydra.launcher.n_jobs=2",
        f"seed={','.join(map(str, SEEDS))}",
        f"trainer.epochs={SWEEP_EPOCHS}",
        "tracking=server",
        f"tracking.uri={uri}",
        "tracking.experiment=team-sweep",
        cwd=cwd,
    )
    return {"result": result, "runs": experiment_runs(uri, "team-sweep"), "cwd": cwd}


def test_the_server_creates_the_experiment_for_training_runs(server) -> None:
    uri, process, _ = server
    experiment = client(uri).get_experiment_by_name("backprop-runner")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert f"export MLFLOW_TRACKING_URI={uri}" in process.output_so_far()
    assert f"{uri}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning" in process.output_so_far()


def test_an_8_job_sweep_on_2_workers_lands_whole_on_the_postgresql_server(team_sweep, server, tmp_path: Path) -> None:
    uri, _, _ = server
    result = team_sweep["result"]
    assert result.returncode == 0, result.output
    runs = team_sweep["runs"]
    parents = [run for run in runs if run.data.tags.get("bprun.sweep") == "true"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [run for run in runs if run not in parents]
    assert len(children) == len(SEEDS)
    assert all(child.data.tags[PARENT_TAG] == parents[0].info.run_id for child in children)
    assert Counter(child.info.status for child in children) == {"FINISHED": len(SEEDS)}
    # Every metric point of every job: each metric of each run has one value per epoch.
    points = 0
    for child in children:
        assert child.info.artifact_uri.startswith("mlflow-artifacts:"), child.info.artifact_uri
        for key in child.data.metrics:
            steps = sorted(metric.step for metric in client(uri).get_metric_history(child.info.run_id, key))
            assert steps == list(range(SWEEP_EPOCHS)), key
            points += len(steps)
    assert points == len(SEEDS) * SWEEP_EPOCHS * len(children[0].data.metrics)
    # Every file of every job comes back through the server; the tensors load.
    for child in children:
        folder = Path(client(uri).download_artifacts(child.info.run_id, "", str(tmp_path / child.info.run_id)))
        files = {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}
        files.discard("git_diff.patch")  # there when the project's checkout has uncommitted changes
        assert files == ARTIFACT_FILES, files ^ ARTIFACT_FILES
        snapshots = len(np.load(folder / "tensors" / "epochs.npy"))
        assert np.load(folder / "tensors" / "layer2.weights.npy").shape[0] == snapshots
    # Tensors, plots and the model come back through the server.
    child = children[0]
    local = tmp_path / child.info.run_id
    assert np.load(local / "tensors" / "epochs.npy").tolist() == list(range(SWEEP_EPOCHS))
    assert (local / "plots" / "learning_curves.png").stat().st_size > 5000
    assert (local / "model" / "MLmodel").is_file() and (local / "weights.npz").is_file()


def test_the_server_takes_the_runs_metrics_through_its_endpoint(team_sweep, server) -> None:
    import requests

    uri, process, _ = server
    # The sweep's metrics went to bprun-server's endpoint (the server's access log).
    access_log = process.stdout_so_far() + process.stderr_so_far()
    assert access_log.count('"POST /bprun/api/1/metrics HTTP/1.1" 200') >= len(SEEDS)
    child = next(run for run in team_sweep["runs"] if run.data.tags.get("bprun.sweep") != "true")
    endpoint = f"{uri}/bprun/api/1/metrics"
    assert requests.get(endpoint, timeout=30).json() == {"available": True, "max_values": 10000}
    bad = {"run_id": child.info.run_id, "keys": ["train_mse"], "values": ["high"], "timestamps": [1], "steps": [99]}
    refused = requests.post(endpoint, json=bad, timeout=30)
    assert refused.status_code == 400 and refused.json() == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "metric train_mse: value 'high' is not a finite number",
    }
    missing = requests.post(endpoint, json={**bad, "run_id": "0" * 32, "values": [1.0]}, timeout=30)
    assert missing.status_code == 404 and missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    steps = [metric.step for metric in client(uri).get_metric_history(child.info.run_id, "1_loss/train_mse")]
    assert sorted(steps) == list(range(SWEEP_EPOCHS))  # nothing refused was stored


def test_a_job_of_the_sweep_reruns_identical_from_the_server(team_sweep, server, tmp_path: Path) -> None:
    uri, _, _ = server
    child = next(run for run in team_sweep["runs"] if run.data.tags.get("bprun.sweep") != "true")
    rerun = cli(child.info.run_id, cwd=tmp_path, uri=uri, module="runner.commands.rerun")
    assert rerun.returncode == 0, rerun.output
    assert f"identical ({SWEEP_EPOCHS} epoch(s) and the final weights compared)" in rerun.stdout, rerun.output


def test_sweeps_and_runs_from_several_processes_at_once_lose_nothing(server, tmp_path: Path) -> None:
    uri, _, _ = server
    commands = {
        "sweep-a": ("-m", "seed=0,1,2", "trainer.epochs=20", "tracking.experiment=team-a"),
        "sweep-b": ("-m", "hydra.launcher.n_jobs=2", "seed=0,1,2,3", "trainer.epochs=20", "tracking.experiment=team-b"),
        # Stacked: the members' metrics of a flush go to the server together; their plots asked for.
        "sweep-stacked": (
            "-m",
            "hydra/launcher=stacked",
            "optimizer.lr=0.5,1,2",
            "trainer.epochs=20",
            "tracking.plots=true",
            "tracking.experiment=team-d",
        ),
        **{
            f"run-{number}": (f"seed={number}", "trainer.epochs=20", "tracking.experiment=team-c")
            for number in range(3)
        },
    }
    results = run_parallel(
        {
            name: (
                lambda name=name: cli(*commands[name], "tracking=server", f"tracking.uri={uri}", cwd=tmp_path / name)
            )
            for name in commands
        },
        workers=5,
    )
    for name, result in results.items():
        assert result.returncode == 0, (name, result.output)
    expected = {"team-a": (1, 3), "team-b": (1, 4), "team-c": (0, 3), "team-d": (1, 3)}  # (parents, jobs or runs)
    for experiment, (parents, jobs) in expected.items():
        runs = experiment_runs(uri, experiment)
        sweep_parents = [run for run in runs if run.data.tags.get("bprun.sweep") == "true"]
        others = [run for run in runs if run not in sweep_parents]
        assert (len(sweep_parents), len(others)) == (parents, jobs), experiment
        for run in others:
            assert run.info.status == "FINISHED"
            assert len(client(uri).get_metric_history(run.info.run_id, "1_loss/train_mse")) == 20
            # sweep-a's jobs run in bprun's process, their plots drawn by its plot helper
            plots = {artifact.path for artifact in client(uri).list_artifacts(run.info.run_id, "plots")}
            assert "plots/learning_curves.png" in plots, (experiment, plots)
            if parents:
                assert run.data.tags[PARENT_TAG] == sweep_parents[0].info.run_id
            if experiment == "team-d":
                assert run.data.tags["bprun.launcher"] == "stacked"
                models = {artifact.path for artifact in client(uri).list_artifacts(run.info.run_id, "model")}
                assert "model/MLmodel" in models


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--store", "mysql://db/mlflow"], "--store mysql://db/mlflow: not a store this command runs"),
        (["--port", "70000"], "--port 70000: it must be between 1 and 65535"),
    ],
)
def test_bprun_server_refuses_what_it_cannot_serve(arguments: list[str], message: str, tmp_path: Path) -> None:
    result = cli(*arguments, cwd=tmp_path, module="runner.commands.server")
    assert result.returncode == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bprun-server: {message}"), result.output
    assert not (tmp_path / "bprun-server").exists()


def processes_serving(port: int) -> list[str]:
    """Live processes whose command line serves ``port`` (the MLflow server and its workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if f"--port {port} " in command and state != "Z" and "runner.commands.server" not in command:
            found.append(f"{entry.name}: {command}")
    return found


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_the_server_ends_with_bprun_server_however_it_ends(how: str, tmp_path: Path) -> None:
    import signal

    port = free_port()
    process = Background("--port", str(port), cwd=tmp_path, uri=None, label="server", module="runner.commands.server")
    try:
        wait_until(
            lambda: "bprun-server: serving" in process.output_so_far(),
            START_TIMEOUT,
            "bprun-server serving",
            process,
            interval=0.1,
        )
        assert processes_serving(port)
        sent = process.signal(getattr(signal, how))
        finished = process.wait(sent)
        assert finished.returncode == (130 if how == "SIGINT" else -signal.SIGKILL), finished.output
        # Nothing serves the port a little after (the server stops its web workers first).
        wait_until(lambda: not processes_serving(port), 60, f"the server on port {port} to end")
    finally:
        process.kill_everything()


def test_report_doctor_and_load_tensors_read_the_server(team_sweep, server, tmp_path: Path) -> None:
    from runner.tracking.tensors import load_tensors

    uri, _, _ = server
    report = cli(
        "--experiment",
        "team-sweep",
        "--tracking-uri",
        uri,
        "--output",
        str(tmp_path / "report"),
        cwd=tmp_path,
        module="runner.commands.report",
    )
    assert report.returncode == 0, report.output
    jobs = [run for run in team_sweep["runs"] if run.data.tags.get("bprun.sweep") != "true"]
    assert all(job.info.run_name in report.stdout for job in jobs), report.output
    assert (tmp_path / "report" / "runs.csv").read_text().count("\n") == len(jobs) + 1
    doctor = cli("--tracking-uri", uri, cwd=tmp_path, module="runner.commands.doctor")
    assert doctor.returncode == 0 and "0 RUNNING run(s)" in doctor.stdout, doctor.output
    tensors = load_tensors(jobs[0].info.run_id, uri)
    assert tensors["epochs"].tolist() == list(range(SWEEP_EPOCHS))
    assert tensors["layer1.weights"].shape[0] == SWEEP_EPOCHS


# --- the metrics route is as strict as MLflow -------------------------------------------------------
def _post(uri: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{uri}/bprun/api/1/metrics", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _metrics_body(run_id: str, keys: list[str], steps: list[int]) -> bytes:
    import json

    count = len(keys)
    return json.dumps(
        {"run_id": run_id, "keys": keys, "values": [0.5] * count, "timestamps": [1000] * count, "steps": steps}
    ).encode()


def _server_memory(process: Background) -> int:
    """Resident memory of the server's processes (bprun-server, MLflow's server, its web workers)."""
    from support import session_processes

    total = 0
    for entry in session_processes(process.pid):
        pid = entry.partition(":")[0]
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS")), 0)
    return total


def test_the_metrics_route_refuses_what_mlflow_refuses_and_bodies_over_the_limit(server) -> None:
    uri, process, _ = server
    mlflow_client = client(uri)
    experiment_id = mlflow_client.create_experiment("strict-route")
    run_id = mlflow_client.create_run(experiment_id).info.run_id
    json_header = {"Content-Type": "application/json"}

    status, answer = _post(uri, _metrics_body(run_id, ["../../etc"], [0]), json_header)
    assert (status, answer["error_code"]) == (400, "INVALID_PARAMETER_VALUE"), answer
    assert "would resolve to '../../etc'" in answer["message"]
    assert mlflow_client.get_run(run_id).data.metrics == {}

    # A 60 MB body: refused by its declared length, before a byte of it is read.
    before = _server_memory(process)
    host, port = uri.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as connection:
        connection.sendall(
            f"POST /bprun/api/1/metrics HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {60 * 1024 * 1024}\r\n\r\n".encode()
            + b"{" * 65536
        )
        # The server closes the connection after its answer, which may come in several packets.
        # A close with the unread body pending may arrive as a reset after the answer.
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := connection.recv(65536):
                received += chunk
        reply = received.decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413"), reply
    assert '"error_code": "REQUEST_LIMIT_EXCEEDED"' in reply and "at most" in reply, reply
    assert _server_memory(process) - before < 20 * 1024 * 1024, (before, _server_memory(process))


def test_forty_concurrent_writers_of_five_thousand_values_are_all_stored(server) -> None:
    uri, _, _ = server
    mlflow_client = client(uri)
    experiment_id = mlflow_client.create_experiment("forty-writers")
    runs = [mlflow_client.create_run(experiment_id).info.run_id for _ in range(8)]
    header = {"Content-Type": "application/json"}

    def writer(number: int) -> int:
        # Five writers per run, each its own 5,000 steps of two metrics.
        steps = [number * 2500 + step for step in range(2500) for _ in range(2)]
        keys = ["train_mse", "val_mse"] * 2500
        status, answer = _post(uri, _metrics_body(runs[number % 8], keys, steps), header)
        assert status == 200, answer
        return status

    results = run_parallel({str(number): (lambda number=number: writer(number)) for number in range(40)}, workers=40)
    assert set(results.values()) == {200}
    for run_id in runs:
        for key in ("train_mse", "val_mse"):
            history = mlflow_client.get_metric_history(run_id, key)
            assert len(history) == 5 * 2500, (run_id, key, len(history))
