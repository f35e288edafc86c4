"""Failures and bad input through the real CLI, read back from the stores afterwards.

Every case runs ``python -m runner ...`` (or ``runner.commands.doctor`` / ``runner.commands.sync``)
in a subprocess, in a temporary working directory, with ``MLFLOW_TRACKING_URI`` pointing at a
temporary SQLite file, and asserts on what that store holds when the command is over:

1. Divergence (inf) and saturation (sigmoid + mse, no NaN ever): FAILED with a reason, no
   non-finite metric in the store.
2. A crash inside a job (``BPRUN_TEST_CRASH_AT_EPOCH``), in a sweep and in a single run.
3. Stale runs: SIGKILL, then ``bprun-doctor``.
4. Unreachable tracking server (refused, silent), offline mode and ``bprun-sync``.
5. Read-only folder or database, full disk.
6. Bad CSVs.
7. Concurrency: a 16-job sweep on 4 workers into a fresh SQLite file, twice.
8. ``_target_`` in configs (an override, a preset, a config node), and what only looks like one.

Signals are in ``test_interruption.py``. Fixtures raise ``ScenarioError`` (not AssertionError) when
a scenario cannot even be set up, so that an infrastructure problem is never mistaken for a
finding.
"""

from __future__ import annotations

import collections
import errno
import gzip
import hashlib
import math
import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from guard import dying_with_pytest
from support import (
    CLI_TIMEOUT,
    EXPERIMENT,
    PARENT_TAG,
    PROMPT_EXIT_SECONDS,
    START_TIMEOUT,
    TRAIN_MSE,
    Background,
    Finished,
    artifact_dir,
    cli,
    client,
    history,
    only_run,
    query,
    read_artifact,
    run_parallel,
    wait_until,
)

pytestmark = pytest.mark.slow

# A run that would train for hours: it is always stopped by the test.
LONG_RUN = ("trainer.epochs=1000000", "tracking.tensors_every=100")


def assert_no_run(store: Any, result: Finished) -> None:
    assert store.runs() == [], result.output


# =============================================================================================
# 3. Divergence and saturation
# =============================================================================================
DIVERGING = (
    "model.output_activation=identity",
    "optimizer.lr=1e6",
    "trainer.epochs=100",
    "trainer.divergence_factor=0",
)
# The diverging command of the docs: its loss grows past 100 times its first before it overflows.
GROWING = ("dataset=diabetes", "optimizer.lr=0.5", "model.output_activation=identity", "model.activation=relu")
SATURATING = ("optimizer.lr=1e4", "trainer.epochs=500")


@pytest.fixture(scope="module")
def failed_trainings(tmp_path_factory: pytest.TempPathFactory, make_store) -> dict[str, tuple[Any, Finished]]:
    base = tmp_path_factory.mktemp("diverge")
    stores = {name: make_store(f"diverge-{name}") for name in ("diverging", "saturating", "growing")}
    jobs = {
        name: (
            lambda name=name, overrides=overrides: (
                stores[name],
                cli(*overrides, "tracking.tensors_every=10", cwd=base / name, uri=stores[name].uri),
            )
        )
        for name, overrides in (("diverging", DIVERGING), ("saturating", SATURATING), ("growing", GROWING))
    }
    return run_parallel(jobs)


def assert_every_metric_finite(store: Any, run: Any) -> None:
    for key in run.data.metrics:
        for metric in client(store).get_metric_history(run.info.run_id, key):
            assert math.isfinite(metric.value) and abs(metric.value) < 1.7e308, (key, metric.step, metric.value)
    # And in the raw table (1.797e308 is how MLflow stores inf; is_nan marks NaN).
    bad = query(
        store.db, "SELECT key, step, value FROM metrics WHERE is_nan OR value != value OR abs(value) >= 1.7e308"
    )
    assert bad == []


def test_a_diverging_run_ends_failed_with_the_epoch_and_no_infinite_metric(failed_trainings) -> None:
    store, result = failed_trainings["diverging"]
    assert result.returncode not in (0, None), result.output
    run = only_run(store)
    assert run.info.status == "FAILED"
    reason = run.data.tags.get("failure_reason", "")
    # 'diverged at epoch 17: train_mse is inf' (the growth check is off here).
    match = re.fullmatch(r"diverged at epoch (\d+): train_mse is (inf|nan)", reason)
    assert match, reason
    assert reason in result.stderr, result.output
    steps = [metric.step for metric in history(store, run)]
    assert steps == list(range(len(steps))) and 0 < len(steps) <= int(match.group(1)) + 1
    assert run.data.tags.get("stop_reason") == "diverged"
    assert_every_metric_finite(store, run)


def test_a_growing_loss_ends_the_run_before_it_wrecks_the_scale_of_every_chart(failed_trainings) -> None:
    store, result = failed_trainings["growing"]
    assert result.returncode == 1, result.output
    run = only_run(store)
    assert run.info.status == "FAILED" and run.data.tags.get("stop_reason") == "diverged"
    reason = run.data.tags["failure_reason"]
    assert re.fullmatch(
        r"diverged at epoch \d+: train_mse grew to \S+, more than 100 times its first value \S+", reason
    )
    assert run.info.run_id in result.stderr, result.output  # the failure line names the run
    losses = [metric.value for metric in history(store, run)]
    assert max(losses) <= 100 * losses[0], (max(losses), losses[0])


def test_a_saturated_run_ends_failed_although_no_value_is_ever_nan(failed_trainings) -> None:
    store, result = failed_trainings["saturating"]
    assert result.returncode not in (0, None), result.output
    run = only_run(store)
    assert run.info.status == "FAILED"
    reason = run.data.tags.get("failure_reason", "")
    assert "saturated" in reason and reason.startswith("diverged at epoch "), reason
    assert int(run.data.tags["epochs_run"]) < 500  # stopped early
    assert_every_metric_finite(store, run)


# =============================================================================================
# 4. A crash inside a job
# =============================================================================================
CRASH = {"BPRUN_TEST_CRASH_AT_EPOCH": "3"}
INJECTED = "RuntimeError: injected failure at epoch 3"


@pytest.fixture(scope="module")
def crashes(tmp_path_factory: pytest.TempPathFactory, make_store) -> dict[str, tuple[Any, Finished]]:
    base = tmp_path_factory.mktemp("crash")
    stores = {name: make_store(f"crash-{name}") for name in ("sweep", "single")}
    common = ("trainer.epochs=50", "tracking.tensors_every=0")
    jobs = {
        "sweep": lambda: (
            stores["sweep"],
            cli("-m", "seed=0,1", *common, cwd=base / "sweep", uri=stores["sweep"].uri, env=CRASH),
        ),
        "single": lambda: (stores["single"], cli(*common, cwd=base / "single", uri=stores["single"].uri, env=CRASH)),
    }
    return run_parallel(jobs)


def assert_crashed_with_traceback(store: Any, run: Any, directory: Path) -> None:
    assert run.info.status == "FAILED", run.info.status
    assert run.data.tags.get("failure_reason", "").startswith(INJECTED), run.data.tags.get("failure_reason")
    traceback_text = read_artifact(store, run, "traceback.txt", directory)
    assert "Traceback" in traceback_text and "injected failure" in traceback_text
    assert [metric.step for metric in history(store, run)] == [0, 1, 2, 3]


def test_a_crash_in_each_job_of_a_sweep_is_recorded_and_the_next_job_starts_clean(crashes, tmp_path: Path) -> None:
    store, result = crashes["sweep"]
    assert result.returncode not in (0, None), result.output
    output = result.stdout + result.stderr
    assert "already active" not in output, result.output
    runs = store.runs()
    parents = [run for run in runs if PARENT_TAG not in run.data.tags]
    assert len(parents) == 1, [(run.info.run_name, run.info.status) for run in runs]
    children = [run for run in runs if run.data.tags.get(PARENT_TAG) == parents[0].info.run_id]
    assert len(children) == 2 and len({run.info.run_id for run in children}) == 2
    assert sorted(run.data.params["seed"] for run in children) == ["0", "1"]
    for number, run in enumerate(children):
        assert_crashed_with_traceback(store, run, tmp_path / str(number))
    assert parents[0].info.status == "FAILED"


def test_a_crash_in_a_single_run_is_failed_with_its_traceback_and_metrics(crashes, tmp_path: Path) -> None:
    store, result = crashes["single"]
    assert result.returncode not in (0, None), result.output
    assert "injected failure" in result.stderr
    assert_crashed_with_traceback(store, only_run(store), tmp_path)


# =============================================================================================
# 5. Stale runs
# =============================================================================================
def test_doctor_marks_runs_of_dead_processes_killed_and_nothing_else(tmp_path: Path, make_store) -> None:
    store = make_store("stale")
    # Create the store first: parallel first use of a fresh SQLite file can corrupt it.
    client(store).search_experiments()
    cwd = tmp_path / "cwd"
    dead = Background(*LONG_RUN, "tracking.tensors_every=0", cwd=cwd, uri=store.uri, label="dead")
    alive = Background(*LONG_RUN, "tracking.tensors_every=0", "seed=1", cwd=cwd, uri=store.uri, label="alive")
    try:

        def logging_runs() -> dict[str, int]:
            rows = query(
                store.db,
                "SELECT r.run_uuid, t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                "AND t.key = 'bprun.pid' JOIN latest_metrics m ON m.run_uuid = r.run_uuid "
                "AND m.key = '1_loss/train_mse'",
            )
            return {run_id: int(pid) for run_id, pid in rows}

        pids = wait_until(
            lambda: len(logging_runs()) == 2 and logging_runs(), START_TIMEOUT, "both runs logging", interval=0.2
        )
        by_pid = {pid: run_id for run_id, pid in pids.items()}
        dead_id, alive_id = by_pid[dead.pid], by_pid[alive.pid]
        dead.popen.send_signal(signal.SIGKILL)
        dead.popen.wait(timeout=30)
        assert alive.running()

        def status(run_id: str) -> str:
            return client(store).get_run(run_id).info.status

        assert status(dead_id) == "RUNNING"  # what MLflow leaves behind

        dry = cli("--tracking-uri", store.uri, "--dry-run", cwd=cwd, module="runner.commands.doctor", timeout=120)
        assert dry.returncode == 0, dry.output
        assert re.search(rf"stale\s+{dead_id}\b.*would mark KILLED", dry.stdout), dry.output
        assert re.search(rf"running\s+{alive_id}\b", dry.stdout), dry.output
        assert (status(dead_id), status(alive_id)) == ("RUNNING", "RUNNING")

        fixed = cli("--tracking-uri", store.uri, cwd=cwd, module="runner.commands.doctor", timeout=120)
        assert fixed.returncode == 0, fixed.output
        assert re.search(rf"stale\s+{dead_id}\b.*marked KILLED", fixed.stdout), fixed.output
        assert alive_id not in [line.split()[1] for line in fixed.stdout.splitlines() if line.startswith("stale")]
        dead_run = client(store).get_run(dead_id)
        assert dead_run.info.status == "KILLED"
        assert dead_run.info.end_time is not None
        assert "bprun-doctor" in dead_run.data.tags.get("failure_reason", "")
        assert status(alive_id) == "RUNNING" and alive.running()
    finally:
        dead.kill_everything()
        if alive.running():
            alive.wait(alive.signal(signal.SIGINT), PROMPT_EXIT_SECONDS)


def test_sigkill_leaves_tensors_that_load_and_the_doctor_ends_them_with_the_metrics(tmp_path: Path, make_store) -> None:
    """SIGKILL mid-training: every tensor file loads as it is (its header counts only records
    written), holds at least the epochs whose metrics were flushed, and after bprun-doctor ends
    exactly where the metrics end."""
    store = make_store("sigkill-tensors")
    process = Background(
        "dataset=digits", "trainer.epochs=1000000", "tracking.tensors_every=1", cwd=tmp_path / "cwd", uri=store.uri
    )
    try:
        wait_until(
            lambda: (query(store.db, f"SELECT count(*) FROM metrics WHERE key = '{TRAIN_MSE}'") or [(0,)])[0][0] >= 2,
            START_TIMEOUT,
            "metrics flushed",
            process,
            interval=0.1,
        )
        process.popen.send_signal(signal.SIGKILL)
        process.popen.wait(timeout=30)
    finally:
        process.kill_everything()
    run = only_run(store)
    assert run.info.status == "RUNNING"
    tensors = artifact_dir(run) / "tensors"
    loaded = {path.name: np.load(path) for path in sorted(tensors.glob("*.npy"))}  # no repair needed
    assert len({array.shape[0] for array in loaded.values()}) == 1, {name: a.shape for name, a in loaded.items()}
    steps = [metric.step for metric in history(store, run)]
    assert steps == list(range(len(steps))) and len(loaded["epochs.npy"]) >= len(steps)

    doctor = cli("--tracking-uri", store.uri, cwd=tmp_path, module="runner.commands.doctor", timeout=120)
    assert doctor.returncode == 0, doctor.output
    run = client(store).get_run(run.info.run_id)
    assert run.info.status == "KILLED" and run.data.tags["epochs_run"] == str(len(steps))
    assert np.load(tensors / "epochs.npy").tolist() == steps
    for path in tensors.glob("layer*.npy"):
        assert np.load(path).shape[0] == len(steps), path.name


# =============================================================================================
# 6. Unreachable store, offline mode and sync
# =============================================================================================
@pytest.fixture(scope="module")
def unreachable(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Finished]]:
    base = tmp_path_factory.mktemp("unreachable")
    # A port nobody listens on: connections are refused at once.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    refused_port = probe.getsockname()[1]
    probe.close()
    # A socket that accepts connections (the kernel's backlog) but never answers.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    ports = {"refused": refused_port, "silent": silent.getsockname()[1]}
    cases = {(name, how): ["-m", "seed=0,1"] if how == "sweep" else [] for name in ports for how in ("run", "sweep")}
    try:
        return run_parallel(
            {
                case: (
                    lambda case=case: (
                        base / "-".join(case),
                        cli(
                            *cases[case],
                            f"tracking.uri=http://127.0.0.1:{ports[case[0]]}",
                            "trainer.epochs=5",
                            cwd=base / "-".join(case),
                            timeout=60,
                        ),
                    )
                )
                for case in cases
            }
        )
    finally:
        silent.close()


@pytest.mark.parametrize("how", ["run", "sweep"])
@pytest.mark.parametrize(("name", "message"), [("refused", "cannot reach"), ("silent", "no answer")])
def test_an_unreachable_server_fails_fast_before_training(unreachable, name: str, message: str, how: str) -> None:
    cwd, result = unreachable[name, how]
    assert result.returncode == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.output
    assert result.seconds < 45, result.output  # MLflow's own retries would take minutes
    assert message in result.stderr, result.output
    assert "cannot reach" in result.stderr
    assert "completed" not in result.stdout and "MLflow run" not in result.stdout, result.output
    assert "Traceback" not in result.stderr
    # Nothing trained, nothing written beside it.
    assert not (cwd / "mlflow.db").exists() and not (cwd / "mlflow-offline.db").exists()


def test_offline_runs_sync_to_the_server_once_and_completely(tmp_path: Path, store_at) -> None:
    cwd = tmp_path / "cwd"
    server = store_at(tmp_path / "server")
    server_uri = f"sqlite:///{server.directory / 'server.db'}"
    offline_uri = f"sqlite:///{cwd.resolve() / 'mlflow-offline.db'}"

    trained = cli(
        "tracking.offline=true",
        f"tracking.uri={server_uri}",
        "trainer.epochs=30",
        "tracking.tensors_every=10",
        cwd=cwd,
        timeout=CLI_TIMEOUT,
    )
    assert trained.returncode == 0, trained.output
    assert (cwd / "mlflow-offline.db").is_file()
    assert not (server.directory / "server.db").exists()

    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    def all_runs(uri: str) -> list[Any]:
        store_client = MlflowClient(uri)
        ids = [e.experiment_id for e in store_client.search_experiments(view_type=ViewType.ALL)]
        return list(store_client.search_runs(ids, run_view_type=ViewType.ALL)) if ids else []

    (source,) = all_runs(offline_uri)
    assert source.info.status == "FINISHED"
    assert source.data.tags.get("bprun.sync_target") == server_uri

    synced = cli(cwd=cwd, module="runner.commands.sync", timeout=120)
    assert synced.returncode == 0, synced.output
    assert "1 run(s) uploaded" in synced.stdout, synced.output
    (copy,) = all_runs(server_uri)
    assert copy.info.status == source.info.status
    assert copy.info.run_name == source.info.run_name
    assert copy.data.params == source.data.params
    assert copy.data.tags.get("bprun.synced_from") == source.info.run_id
    assert MlflowClient(server_uri).get_experiment(copy.info.experiment_id).name == EXPERIMENT

    source_client, copy_client = MlflowClient(offline_uri), MlflowClient(server_uri)
    assert set(copy.data.metrics) == set(source.data.metrics)

    def histories(store_client: Any, run: Any) -> dict[str, list[tuple]]:
        return {
            key: sorted((m.step, m.timestamp, m.value) for m in store_client.get_metric_history(run.info.run_id, key))
            for key in run.data.metrics
        }

    source_histories = histories(source_client, source)
    assert len(source_histories["1_loss/train_mse"]) == 30
    assert histories(copy_client, copy) == source_histories

    def files(store_client: Any, run: Any, directory: Path) -> dict[str, str]:
        local = Path(store_client.download_artifacts(run.info.run_id, "", str(directory)))
        return {
            str(path.relative_to(local)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(local.rglob("*"))
            if path.is_file()
        }

    source_files = files(source_client, source, tmp_path / "a")
    assert "tensors/epochs.npy" in source_files and "plots/learning_curves.png" in source_files
    assert files(copy_client, copy, tmp_path / "b") == source_files

    again = cli(cwd=cwd, module="runner.commands.sync", timeout=120)
    assert again.returncode == 0, again.output
    assert "0 run(s) uploaded" in again.stdout, again.output
    assert len(all_runs(server_uri)) == 1


# =============================================================================================
# 7. Read-only folder or database, full disk
# =============================================================================================
def mount(*arguments: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    mounted = subprocess.run(["mount", *arguments], capture_output=True, timeout=60, preexec_fn=dying_with_pytest())
    return mounted.returncode == 0


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=60, preexec_fn=dying_with_pytest())


@pytest.fixture
def readonly_folder(tmp_path: Path):
    """A read-only folder: a read-only tmpfs when this process may mount (root), else /proc."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    if mount("-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)):
        yield folder
        unmount(folder)
    else:
        yield Path("/proc/bprun-test")


@pytest.mark.parametrize("sweep", [[], ["-m", "seed=0,1"]], ids=["run", "sweep"])
def test_a_read_only_store_folder_is_refused_before_anything_is_written(
    readonly_folder: Path, tmp_path: Path, sweep: list[str]
) -> None:
    database = readonly_folder / "mlflow.db"
    result = cli(*sweep, f"tracking.uri=sqlite:///{database}", "trainer.epochs=5", cwd=tmp_path / "cwd", timeout=120)
    assert result.returncode == 2, result.output
    assert "cannot write the MLflow store" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.output
    assert "completed" not in result.stdout
    assert not database.exists()
    assert not (tmp_path / "cwd" / "mlflow.db").exists()


def test_a_read_only_existing_database_is_refused_and_left_as_it_was(tmp_path: Path, store_at) -> None:
    store = store_at(tmp_path / "store")
    client(store).search_experiments()  # an existing MLflow database
    before = hashlib.sha256(store.db.read_bytes()).hexdigest()
    if not mount("--bind", str(store.directory), str(store.directory)):
        pytest.skip("cannot bind-mount here (needs root)")
    try:
        if not mount("-o", "remount,ro,bind", str(store.directory)):
            pytest.skip("cannot remount read-only here")
        result = cli("trainer.epochs=5", cwd=tmp_path / "cwd", uri=store.uri, timeout=120)
    finally:
        unmount(store.directory)
    assert result.returncode == 2, result.output
    assert "cannot write the MLflow store" in result.stderr, result.output
    assert "completed" not in result.stdout
    assert hashlib.sha256(store.db.read_bytes()).hexdigest() == before


@pytest.mark.parametrize("damage", ["not a database", "a damaged schema"])
def test_a_damaged_database_is_refused_in_one_line_by_every_command(damage: str, tmp_path: Path, store_at) -> None:
    store = store_at(tmp_path / "store")
    if damage == "not a database":
        store.db.write_bytes(bytes(range(256)) * 64)
        expected = "file is not a database"
    else:
        client(store).search_experiments()  # a real MLflow database, its schema page then overwritten
        with open(store.db, "r+b") as database:
            database.seek(100)
            database.write(b"\xff" * 3000)
        expected = "malformed"
    before = hashlib.sha256(store.db.read_bytes()).hexdigest()
    for command, arguments in [
        (None, ["trainer.epochs=5"]),
        (None, ["-m", "seed=0,1", "trainer.epochs=5"]),
        ("runner.commands.doctor", []),
        ("runner.commands.report", ["--all-runs"]),
    ]:
        result = cli(*arguments, cwd=tmp_path / "cwd", uri=store.uri, timeout=120, module=command or "runner")
        assert result.returncode == 2, (command, result.output)
        assert expected in result.stderr, (command, result.output)
        assert len(result.stderr.strip().splitlines()) == 1, (command, result.output)
        assert "completed" not in result.stdout
    assert hashlib.sha256(store.db.read_bytes()).hexdigest() == before
    assert not (tmp_path / "cwd" / "mlflow.db").exists()


@pytest.mark.parametrize("how", ["write fails with ENOSPC", "1 MB free"])
def test_a_full_disk_is_refused_before_the_database_is_created(
    how: str, tmp_path: Path, compose, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from runner.core.run import run
    from runner.tracking.destination import StoreUnavailable

    if how == "1 MB free":
        usage = collections.namedtuple("usage", "total used free")
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**10, 10**10 - 2**20, 2**20))
        expected = r"only 1 MB free"
    else:

        def no_space(*args: Any, **kwargs: Any) -> Any:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(tempfile, "NamedTemporaryFile", no_space)
        expected = r"the disk is full"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    database = tmp_path / "store" / "mlflow.db"
    database.parent.mkdir()
    with pytest.raises(StoreUnavailable, match=expected) as raised:
        run(compose(["trainer.epochs=3"]), start_dir=str(tmp_path), tracking_uri=f"sqlite:///{database}")
    assert "cannot write the MLflow store" in str(raised.value)
    assert not database.exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_a_disk_filling_up_during_a_run_gives_a_clear_error(tmp_path: Path) -> None:
    disk = tmp_path / "small-disk"
    disk.mkdir()
    # 60 MB: passes the 50 MB free-space check, then tensors of a 512x512 net fill it in a few epochs.
    if not mount("-t", "tmpfs", "-o", "size=60m", "tmpfs", str(disk)):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        database = disk / "mlflow.db"
        result = cli(
            "model.hidden=[512,512]",
            "trainer.epochs=200",
            "tracking.tensors_every=1",
            cwd=tmp_path / "cwd",
            uri=f"sqlite:///{database}",
            timeout=180,
        )
        integrity = query(database, "PRAGMA integrity_check")
        statuses = [row[0] for row in query(database, "SELECT status FROM runs")]
        # Every tensor file the run got to write loads, and they all hold the same epochs.
        lengths = {path.name: np.load(path).shape[0] for path in disk.rglob("tensors/*.npy")}
    finally:
        unmount(disk)
    assert lengths and len(set(lengths.values())) == 1, lengths
    assert result.returncode not in (0, None), result.output
    assert integrity == [("ok",)]  # no half-written database
    # One clear line, nothing before it (no raw database error).
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.output
    assert result.stderr.startswith("bprun: training stopped: No space left"), result.output
    # KNOWN LIMIT: with the store's own disk full, SQLite may not be able to write the final status
    # either; the run then shows RUNNING until bprun-doctor marks it KILLED (README).
    assert len(statuses) == 1, statuses


# =============================================================================================
# 8. Bad data
# =============================================================================================
# (name, file name, content or None for no file, fragments the message must contain)
BAD_CSVS = [
    ("missing file", "missing.csv", None, []),
    ("empty file", "empty.csv", "", ["empty"]),
    ("header only", "header_only.csv", "a,b,y\n", []),
    ("ragged row, too many cells", "too_many_cells.csv", "a,b,y\n1,2,3\n4,5,6,7\n8,9,10\n", ["line 3"]),
    ("ragged row, too few cells", "too_few_cells.csv", "a,b,y\n1,2,3\n4,5\n8,9,10\n", ["row 2"]),
    ("non-numeric cell", "non_numeric.csv", "a,b,y\n1,2,3\n4,abc,6\n8,9,10\n", ["row 2", "'b'", "abc"]),
    ("NaN cell", "nan_cell.csv", "a,b,y\n1,2,3\n4,5,6\n8,NaN,10\n", ["row 3", "'b'"]),
    ("inf cell", "inf_cell.csv", "a,b,y\n1,2,3\n4,5,-inf\n8,9,10\n", ["row 2", "'y'", "inf"]),
    ("blank cell", "blank_cell.csv", "a,b,y\n1,2,3\n4,,6\n8,9,10\n", ["row 2", "'b'", "blank"]),
    ("missing target column", "no_target.csv", "a,b,z\n1,2,3\n4,5,6\n7,8,9\n", ["'y'"]),
    ("too few samples to split", "one_sample.csv", "a,b,y\n1,2,3\n", ["1 sample", "val_fraction"]),
    # Standardizing 1e308 overflows: refused as too large, not a FAILED run after a NaN.
    (
        "huge feature value",
        "huge_feature.csv",
        "a,b,y\n1,2,3\n1e308,5,6\n7,8,9\n4,5,6\n",
        ["row 2", "'a'", "too large"],
    ),
    ("huge target value", "huge_target.csv", "a,b,y\n1,2,3\n4,5,-1e300\n7,8,9\n4,5,6\n", ["row 2", "'y'", "too large"]),
    ("gzip bytes under a .csv name", "compressed.csv", None, ["gzip-compressed"]),
    ("latin-1 text", "latin1.csv", None, ["not UTF-8", "0xe9"]),
]
# Written as bytes: (file name, content).
BINARY_CSVS = {
    "compressed.csv": gzip.compress(b"a,b,y\n1,2,3\n4,5,6\n7,8,9\n"),
    "latin1.csv": "a,b,y\n1,2,3\nd\u00e9j\u00e0,5,6\n7,8,9\n".encode("latin-1"),
}


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory: pytest.TempPathFactory, make_store) -> dict[str, tuple[Any, Finished]]:
    base = tmp_path_factory.mktemp("bad-data")
    data = base / "data"
    data.mkdir()
    jobs = {}
    for index, (name, filename, content, _) in enumerate(BAD_CSVS):
        path = data / filename
        if content is not None:
            path.write_text(content)
        elif filename in BINARY_CSVS:
            path.write_bytes(BINARY_CSVS[filename])
        store = make_store(f"bad-data-{index}")
        overrides = ("dataset=csv", f"dataset.path={path}", "dataset.targets=[y]", "trainer.epochs=3")
        jobs[name] = lambda store=store, overrides=overrides, index=index: (
            store,
            cli(*overrides, cwd=base / f"cwd{index}", uri=store.uri, timeout=120),
        )
    return run_parallel(jobs)


@pytest.mark.parametrize("case", BAD_CSVS, ids=[case[0] for case in BAD_CSVS])
def test_bad_data_is_refused_before_any_run_naming_file_row_and_column(bad_data, case) -> None:
    name, filename, _, fragments = case
    store, result = bad_data[name]
    assert result.returncode == 2, result.output
    message = result.stderr
    for fragment in [filename, *fragments]:
        assert fragment in message, (fragment, result.output)
    assert "Traceback" not in message
    assert "completed" not in result.stdout and "MLflow run" not in result.stdout
    assert_no_run(store, result)
    assert not store.db.exists()


@pytest.mark.parametrize(("name", "written"), [("NaN cell", "'NaN'"), ("ragged row, too few cells", None)])
def test_bad_cells_are_described_as_written(bad_data, name: str, written: str | None) -> None:
    _, result = bad_data[name]
    assert result.returncode == 2, result.output
    message = result.stderr.strip().splitlines()[-1].partition(".csv:")[2]  # after the file name
    assert "blank" not in message, message
    if written is not None:
        assert written in message, message


# =============================================================================================
# 9. Concurrency: 4 workers, 16 jobs, one fresh SQLite file, twice
# =============================================================================================
CONCURRENCY_EPOCHS = 200
CONCURRENT_SWEEP = (
    "-m",
    "hydra.launcher.n_jobs=4",
    "optimizer.lr=0.5,1,2,4",
    "seed=0,1,2,3",
    f"trainer.epochs={CONCURRENCY_EPOCHS}",
    "tracking.tensors_every=0",
)


# Twice, each on a fresh store: the races of four writers on a new SQLite file show up in some
# sweeps only.
@pytest.mark.parametrize("attempt", range(1, 3))
def test_four_workers_lose_no_run_and_no_metric_point(attempt: int, tmp_path: Path, store_at) -> None:
    store = store_at(tmp_path / "store")
    assert not store.db.exists()
    result = cli(*CONCURRENT_SWEEP, cwd=tmp_path / "cwd", uri=store.uri, timeout=CLI_TIMEOUT)
    runs = store.runs()
    not_finished = {
        run.info.run_id: (run.info.status, run.data.tags.get("failure_reason", "")[:300])
        for run in runs
        if run.info.status != "FINISHED"
    }
    assert result.returncode == 0, (not_finished, result.output)
    parents = [run for run in runs if PARENT_TAG not in run.data.tags]
    assert len(parents) == 1, [(run.info.run_name, run.info.status) for run in runs]
    parent = parents[0]
    children = [run for run in runs if run.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert len(runs) == 17 and len(children) == 16
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert {(run.data.params["optimizer.lr"], run.data.params["seed"]) for run in children} == {
        (lr, seed) for lr in ("0.5", "1", "2", "4") for seed in ("0", "1", "2", "3")
    }
    experiment = client(store).get_experiment_by_name(EXPERIMENT)
    assert {run.info.experiment_id for run in runs} == {experiment.experiment_id}
    assert client(store).search_runs(["0"]) == []  # nothing in Default
    for run in children:
        steps = [metric.step for metric in history(store, run)]
        assert steps == list(range(CONCURRENCY_EPOCHS)), (run.info.run_id, len(steps))
    # The raw table agrees: 16 x 200 train_mse rows, no duplicate.
    assert query(
        store.db, "SELECT count(*), count(DISTINCT run_uuid || ':' || step) FROM metrics WHERE key = '1_loss/train_mse'"
    ) == [(16 * CONCURRENCY_EPOCHS, 16 * CONCURRENCY_EPOCHS)]


# =============================================================================================
# 10. Untrusted configs
# =============================================================================================
@pytest.fixture(scope="module")
def untrusted(tmp_path_factory: pytest.TempPathFactory, make_store) -> dict[str, tuple[Any, Finished, Path]]:
    base = tmp_path_factory.mktemp("untrusted")
    presets = base / "presets" / "experiment"
    presets.mkdir(parents=True)
    cases: dict[str, tuple[str, ...]] = {}
    markers: dict[str, Path] = {}
    for name, prefix in (("in a group", "+optimizer."), ("at the top", "+")):
        markers[name] = base / f"marker-{len(markers)}"
        # If instantiated, os.makedirs(marker) would leave the marker behind.
        cases[name] = (f"{prefix}_target_=os.makedirs", f"{prefix}_args_=['{markers[name]}']")
    # A shared preset file that smuggles a _target_ in through Hydra's own callbacks.
    markers["preset hydra callback"] = base / "marker-callback"
    (presets / "shared.yaml").write_text(
        "# @package _global_\n"
        "trainer:\n  epochs: 3\n"
        "hydra:\n  callbacks:\n    shared:\n"
        f"      _target_: os.makedirs\n      _args_: ['{markers['preset hydra callback']}']\n"
    )
    cases["preset hydra callback"] = ("--config-dir", str(base / "presets"), "experiment=shared")
    stores = {name: make_store(f"untrusted-{index}") for index, name in enumerate(cases)}
    jobs = {
        name: (
            lambda name=name: (
                stores[name],
                cli(
                    *cases[name],
                    "trainer.epochs=3",
                    cwd=base / re.sub(r"\W", "_", name),
                    uri=stores[name].uri,
                    timeout=120,
                ),
                markers[name],
            )
        )
        for name in cases
    }
    return run_parallel(jobs)


@pytest.mark.parametrize(("name", "key"), [("in a group", "optimizer._target_"), ("at the top", "_target_")])
def test_a_target_override_is_rejected_and_never_instantiated(untrusted, name: str, key: str) -> None:
    store, result, marker = untrusted[name]
    assert result.returncode == 2, result.output
    assert key in result.stderr, result.output
    assert "Traceback" not in result.stderr
    assert not marker.exists(), "the _target_ was instantiated"
    assert_no_run(store, result)


def test_a_preset_smuggling_a_target_into_hydra_callbacks_is_rejected(untrusted) -> None:
    store, result, marker = untrusted["preset hydra callback"]
    assert not marker.exists(), "the _target_ was instantiated"
    assert result.returncode not in (0, None), result.output
    assert "_target_" in result.stderr, result.output
    assert_no_run(store, result)


@pytest.mark.parametrize(
    ("argument", "refused"),
    [
        ("foo._target_=x", True),
        ("+a._target_=b", True),
        ("++a._target_=b", True),
        ("_target_=os.system", True),
        ("hydra.callbacks.x._target_=os.system", True),
        ("+optimizer={_target_:os.system}", True),
        ("hydra.callbacks={x: {a: 1, _target_: os.system}}", True),
        ("+hydra/callbacks@hydra.callbacks._target_=x", True),
        # A value that merely contains the text, a key that only looks like it, not an override.
        ("tracking.run_name=my_target_run", False),
        ("tracking.experiment=_target_", False),
        ("model._target_x=1", False),
        ("x_target_=1", False),
        ("~hydra.callbacks.bprun._target_", False),
        ("--config-dir=/tmp/_target_=1", False),
        ("/tmp/a_target_", False),
    ],
)
def test_only_a_target_key_asks_for_instantiation(argument: str, refused: bool) -> None:
    from runner.core.plain_data import refused_overrides

    assert refused_overrides(["trainer.epochs=2", argument]) == ([argument] if refused else [])


def test_a_config_carrying_a_target_anywhere_is_refused_by_validation(compose) -> None:
    from omegaconf import OmegaConf

    from runner.core.validation import ConfigError, validate

    config = OmegaConf.to_container(compose(["tracking.run_name=my_target_run"]))
    assert validate(config).tracking.run_name == "my_target_run"
    config["optimizer"]["schedule"]["_target_"] = "os.system"
    config["dataset"]["extra"] = [{"_target_": "os.system"}]
    with pytest.raises(ConfigError) as refused:
        validate(config)
    assert str(refused.value) == (
        "refusing optimizer.schedule._target_, dataset.extra[0]._target_: configs are plain data and are never "
        "instantiated; remove '_target_'"
    )


@pytest.mark.parametrize("argument", ["+model._target_=os.system", "hydra.callbacks.x._target_=os.system"])
def test_a_target_override_is_refused_in_one_line(argument: str, tmp_path: Path, store) -> None:
    result = cli(argument, "trainer.epochs=2", cwd=tmp_path / "cwd", uri=store.uri)
    assert result.returncode == 2, result.output
    assert result.stderr.splitlines() == [
        f"bprun: refusing {argument}: configs are plain data and are never instantiated; remove '_target_'"
    ]
    assert_no_run(store, result)


def test_a_run_name_containing_target_is_not_refused(tmp_path: Path, store) -> None:
    untracked = cli("tracking.run_name=my_target_run", "tracking=none", "trainer.epochs=2", cwd=tmp_path / "none")
    assert untracked.returncode == 0, untracked.output
    assert not (tmp_path / "none" / "mlflow.db").exists()
    tracked = cli("tracking.run_name=my_target_run", "trainer.epochs=2", cwd=tmp_path / "local", uri=store.uri)
    assert tracked.returncode == 0, tracked.output
    assert query(store.db, "SELECT name, status FROM runs") == [("my_target_run", "FINISHED")]
    assert only_run(store).data.tags["mlflow.runName"] == "my_target_run"


def test_a_new_store_appears_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow builds a new store's schema in many transactions; a process killed half way must
    not leave a half-built ``mlflow.db`` that every later command refuses."""
    from mlflow.tracking import MlflowClient

    from runner.tracking import store as stores

    database = tmp_path / "mlflow.db"

    class DiesHalfWay:
        def __init__(self, uri: str) -> None:
            self.uri = uri

        def search_experiments(self, **_: Any) -> None:
            Path(self.uri.removeprefix("sqlite:///")).write_bytes(b"SQLite format 3\0 half a schema")
            raise KeyboardInterrupt  # as a process killed there would stop

    monkeypatch.setattr(stores, "MlflowClient", DiesHalfWay)
    with pytest.raises(KeyboardInterrupt):
        stores.create_sqlite_store(database)
    assert not database.exists()
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(stores, "MlflowClient", MlflowClient)
    experiment_id = stores.ensure_experiment(f"sqlite:///{database}", "whole")
    assert MlflowClient(f"sqlite:///{database}").get_experiment(experiment_id).name == "whole"
    assert [path.name for path in tmp_path.iterdir()] == ["mlflow.db"]


def test_doctor_on_a_full_disk_says_so_in_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "small"
    folder.mkdir()
    if not mount("-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        from mlflow.tracking import MlflowClient

        uri = f"sqlite:///{folder / 'mlflow.db'}"
        store = MlflowClient(uri)
        experiment = store.create_experiment("stale")
        gone = {"bprun.host": socket.gethostname(), "bprun.pid": "999999999", "bprun.process_start": "1"}
        stale = store.create_run(experiment, tags=gone)
        store.log_metric(stale.info.run_id, "train_mse", 1.0, step=0)
        with open(folder / "filler", "wb") as filler:  # the rest of the disk
            try:
                while True:
                    filler.write(b"\0" * 2**20)
            except OSError:
                pass
        result = cli("--tracking-uri", uri, cwd=tmp_path / "cwd", module="runner.commands.doctor")
        assert result.returncode == 1, result.output
        assert result.stderr.strip().splitlines() == [
            f"bprun-doctor: could not mark {stale.info.run_id} ({stale.info.run_name}) KILLED: the disk is full"
        ]
        assert "marked KILLED" not in result.stdout
        (folder / "filler").unlink()
        assert store.get_run(stale.info.run_id).info.status == "RUNNING"
    finally:
        unmount(folder)
