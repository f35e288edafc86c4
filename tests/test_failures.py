"""Failures and bad input (issue 7) through the real CLI, read back from the stores afterwards.

Every case runs ``python -m runner ...`` (or ``runner.doctor`` / ``runner.sync``) in a subprocess,
in a temporary working directory, with ``MLFLOW_TRACKING_URI`` pointing at a temporary SQLite
file, and asserts on what that store holds when the command is over:

1. SIGINT / SIGTERM during a run (real signals): prompt exit 130 / 143, run KILLED, every
   completed epoch's metrics, tensor files finished, plots drawn. Also the signal landing while
   a metric flush waits for the database (another process reading or writing it).
2. SIGINT to the whole process group of a parallel (joblib) sweep, while it runs and while it
   starts (fork server importing, parent run being created); a joblib worker killed by the
   system; the hand-over of the parent run from the process that creates it.
3. Divergence (inf) and saturation (sigmoid + mse, no NaN ever): FAILED with a reason, no
   non-finite metric in the store.
4. A crash inside a job (``BPRUN_TEST_CRASH_AT_EPOCH``), in a sweep and in a single run.
5. Stale runs: SIGKILL, then ``runner.doctor``.
6. Unreachable tracking server (refused, silent), offline mode and ``runner.sync``.
7. Read-only folder or database, full disk.
8. Bad CSVs.
9. Concurrency: a 16-job sweep on 4 joblib workers into a fresh SQLite file, five times.
10. ``_target_`` in configs.

Tests that document a bug carry ``xfail(strict=True, raises=AssertionError, reason="BUG: ...")``;
fixtures raise ``ScenarioError`` (not AssertionError) when a scenario cannot even be set up, so
that an infrastructure problem is never mistaken for the expected failure.

Scenarios are shared through module fixtures and run two or three at a time; the 5 concurrency
sweeps dominate the module's duration.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

pytestmark = pytest.mark.slow

EXPERIMENT = "backprop-runner"
PARENT_TAG = "mlflow.parentRunId"
PROMPT_EXIT_SECONDS = 15  # a signalled process must be gone by then
START_TIMEOUT = 120  # seconds a run may take to log its first epochs on a busy 2-core machine
CLI_TIMEOUT = 300

# A run that would train for hours: it is always stopped by the test.
LONG_RUN = ("trainer.epochs=1000000", "tracking.tensors_every=100")
# The same with slower epochs (~1 ms): a metric flush (~40 ms per 417 epochs) is then a small part
# of each cycle, and the signal is sent just after a flush, so that it lands in training. The
# signal landing *in* a flush has tests of its own (FLUSH_RACE below).
PLAIN_SIGNAL_RUN = (*LONG_RUN, "dataset.n_samples=2000", "model.hidden=[64]")
# Epochs of ~20 ms: flushes happen every 5 s (FLUSH_INTERVAL_SECONDS) with only a few thousand
# values, small enough to stay in SQLite's page cache until COMMIT.
SLOW_EPOCH_RUN = (*LONG_RUN, "dataset.n_samples=100000", "model.hidden=[16]")


class ScenarioError(RuntimeError):
    """A scenario could not be set up or observed (not a finding about the runner)."""


# --- processes -------------------------------------------------------------------------------
def cli_environment(uri: str | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR") and not key.startswith("BPRUN_")}
    environment["PYTHONDONTWRITEBYTECODE"] = "1"
    if uri is not None:
        environment["MLFLOW_TRACKING_URI"] = uri
    environment.update(extra or {})
    return environment


@dataclass
class Finished:
    """A command that ran to its end (or was killed by the test after ``timeout``)."""

    args: tuple[str, ...]
    returncode: int | None  # None: still running when the test gave up waiting, then killed
    seconds: float
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return (f"--- {' '.join(self.args)}\n--- exit {self.returncode} after {self.seconds:.1f} s\n"
                f"--- stdout\n{self.stdout[-4000:]}\n--- stderr\n{self.stderr[-6000:]}")


def cli(*args: str, cwd: Path, uri: str | None = None, env: dict[str, str] | None = None,
        module: str = "runner", timeout: float = CLI_TIMEOUT) -> Finished:
    """Run ``python -m <module> <args>`` in ``cwd`` and wait (at most ``timeout`` s)."""
    cwd.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        result = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=cli_environment(uri, env),
                                capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        return Finished(args, None, time.monotonic() - started, _text(expired.stdout), _text(expired.stderr))
    return Finished(args, result.returncode, time.monotonic() - started, result.stdout, result.stderr)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


class Background:
    """``python -m runner <args>`` started in the background; output goes to files in ``cwd``."""

    def __init__(self, *args: str, cwd: Path, uri: str, label: str = "run", new_session: bool = False,
                 env: dict[str, str] | None = None) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        self.args = args
        self.new_session = new_session
        self._out, self._err = cwd / f"{label}.stdout", cwd / f"{label}.stderr"
        with open(self._out, "w") as out, open(self._err, "w") as err:
            self.popen = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=cwd,
                                          env=cli_environment(uri, env), stdout=out, stderr=err,
                                          start_new_session=new_session)
        self.pid = self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def signal(self, number: int) -> float:
        """Send ``number``; return the monotonic time it was sent."""
        self.popen.send_signal(number)
        return time.monotonic()

    def wait(self, since: float, timeout: float, keep_group: bool = False) -> Finished:
        """Wait for the exit at most ``timeout`` s; kill it (and its group, unless ``keep_group``:
        to see what outlives it) if still running."""
        try:
            returncode: int | None = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            returncode = None
        seconds = time.monotonic() - since
        if returncode is None or not keep_group:
            self.kill()
        return Finished(self.args, returncode, seconds, self._out.read_text(), self._err.read_text())

    def kill(self) -> None:
        if self.new_session:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=30)

    def output_so_far(self) -> str:
        return f"--- stdout\n{self._out.read_text()[-3000:]}\n--- stderr\n{self._err.read_text()[-3000:]}"


def wait_until(condition: Callable[[], Any], timeout: float, what: str, process: Background | None = None,
               interval: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and not process.running():
            raise ScenarioError(f"the process ended while waiting for {what}:\n{process.output_so_far()}")
        time.sleep(interval)
    raise ScenarioError(f"timed out after {timeout} s waiting for {what}"
                        + (f":\n{process.output_so_far()}" if process else ""))


def session_processes(session: int) -> list[str]:
    """Live (non-zombie) processes of session ``session``, as 'pid: command line'."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # After the command name: state ppid pgrp session ...
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(f"{entry.name}: {command}")
    return found


def leftover_processes(process: Background, seconds: float = 10.0) -> list[str]:
    """The processes of ``process``'s session still alive ``seconds`` after it exited (its
    workers and helpers get that long to wind down)."""
    deadline = time.monotonic() + seconds
    while (left := session_processes(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def ctrl_c_once(process: Background, ready: Callable[[], Any], what: str, interval: float,
                presses: int = 1) -> Finished:
    """Ctrl-C to ``process``'s whole group (as a terminal sends it) once ``ready()`` holds,
    ``presses`` times in quick succession; it must exit 130 at once, without a traceback, and
    nothing of it may outlive it."""
    try:
        wait_until(ready, START_TIMEOUT, what, process, interval=interval)
        for press in range(presses):
            time.sleep(0.03 if press else 0.0)
            os.killpg(process.pid, signal.SIGINT)
        result = process.wait(time.monotonic(), PROMPT_EXIT_SECONDS, keep_group=True)
        leftover = leftover_processes(process)
    finally:
        process.kill()
    assert result.returncode == 128 + signal.SIGINT, result.output
    assert "Traceback" not in result.output, result.output
    assert leftover == []
    return result


def run_parallel(jobs: dict[str, Callable[[], Any]], workers: int = 2) -> dict[str, Any]:
    with ThreadPoolExecutor(workers) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


# --- stores ----------------------------------------------------------------------------------
def query(db: Path, sql: str, parameters: tuple = ()) -> list[tuple]:
    """Rows of ``sql`` on ``db``, read-only; [] while the database or its tables do not exist."""
    if not db.exists():
        return []
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return connection.execute(sql, parameters).fetchall()
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return []
        raise
    finally:
        connection.close()


def latest_train_mse_step(db: Path) -> int | None:
    rows = query(db, "SELECT max(step) FROM latest_metrics WHERE key = 'train_mse'")
    return rows[0][0] if rows else None


def train_mse_points(db: Path) -> int:
    return query(db, "SELECT count(*) FROM metrics WHERE key = 'train_mse'")[0][0] if db.exists() else 0


def client(store: Any) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(store.uri)


def only_run(store: Any) -> Any:
    found = store.runs()
    assert len(found) == 1, [(run.info.run_id, run.info.run_name, run.info.status) for run in found]
    return found[0]


def history(store: Any, run: Any, key: str = "train_mse") -> list[Any]:
    return sorted(client(store).get_metric_history(run.info.run_id, key), key=lambda metric: metric.step)


def artifact_dir(run: Any) -> Path:
    uri = run.info.artifact_uri
    assert uri.startswith("file://"), uri
    return Path(uri.removeprefix("file://"))


def read_artifact(store: Any, run: Any, name: str, directory: Path) -> str:
    return Path(client(store).download_artifacts(run.info.run_id, name, str(directory))).read_text()


def assert_no_run(store: Any, result: Finished) -> None:
    assert store.runs() == [], result.output


# =============================================================================================
# 1. SIGINT and SIGTERM during a run
# =============================================================================================
@dataclass
class Interruption:
    store: Any
    signal: int
    result: Finished
    logged_before: int  # train_mse points in the store when the signal was sent


def interrupt_run(base: Path, store: Any, overrides: tuple[str, ...], number: int, lock: str | None = None,
                  hold_seconds: float = 1.5) -> Interruption:
    """Start a long run, let it log, send signal ``number``; wait for the exit.

    ``lock`` None: the signal is sent 0.15 s after a metric flush was seen committed (training
    runs then). ``"write"``: the test holds SQLite's write lock (as another writer would) for
    ``hold_seconds`` before the signal and 1 s after it, so the run's next flush waits for it.
    ``"read"``: the test holds a read transaction (as ``mlflow ui`` or a report would), so the
    flush's write cannot complete until it ends.
    """
    process = Background(*overrides, cwd=base, uri=store.uri)
    try:
        wait_until(lambda: latest_train_mse_step(store.db) is not None, START_TIMEOUT, "the first logged epochs",
                   process)
        holder = None
        if lock is None:
            seen = latest_train_mse_step(store.db)
            wait_until(lambda: latest_train_mse_step(store.db) != seen, 60, "a second metric flush", process)
            time.sleep(0.15)
            logged_before = train_mse_points(store.db)
        else:
            # Counted before taking the lock: a new reader would block behind the waiting writer.
            logged_before = train_mse_points(store.db)
            holder = sqlite3.connect(store.db, isolation_level=None, timeout=30)
            if lock == "write":
                holder.execute("BEGIN IMMEDIATE")
            else:
                holder.execute("BEGIN")
                holder.execute("SELECT count(*) FROM metrics").fetchone()
            time.sleep(hold_seconds)
            if not process.running():
                raise ScenarioError(f"the run ended before the signal:\n{process.output_so_far()}")
        sent = process.signal(number)
        if holder is not None:
            time.sleep(1.0)
            holder.execute("ROLLBACK" if lock == "write" else "COMMIT")
            holder.close()
        result = process.wait(sent, PROMPT_EXIT_SECONDS)
    finally:
        process.kill()
    return Interruption(store, number, result, logged_before)


def assert_interrupted_cleanly(interruption: Interruption) -> None:
    """What every interrupted run must look like afterwards."""
    result, store = interruption.result, interruption.store
    assert result.returncode == 128 + interruption.signal, result.output
    assert result.seconds < PROMPT_EXIT_SECONDS, result.output
    assert "interrupted" in result.stderr or "terminated" in result.stderr, result.output
    run = only_run(store)
    assert run.info.status == "KILLED", (run.info.status, run.data.tags.get("failure_reason"), result.output)
    assert run.data.tags.get("failure_reason") == "interrupted"
    steps = [metric.step for metric in history(store, run)]
    assert steps == list(range(len(steps))), "train_mse history is not consecutive from step 0"
    assert len(steps) >= max(interruption.logged_before, 1)

    tensors = artifact_dir(run) / "tensors"
    epochs = np.load(tensors / "epochs.npy")  # header fixed: loads without error
    assert len(epochs) > 0
    assert epochs.tolist() == list(range(0, 100 * len(epochs), 100))
    for path in sorted(tensors.glob("*.npy")):
        assert np.load(path).shape[0] == len(epochs), path.name
    # Every epoch with a tensor snapshot was completed: its metrics must be in the store.
    assert len(steps) >= epochs[-1] + 1, (
        f"{len(steps)} train_mse points (steps 0..{len(steps) - 1}) but tensors were saved up to "
        f"epoch {epochs[-1]}: the metrics of completed epochs were lost")
    plot = artifact_dir(run) / "plots" / "learning_curves.png"
    assert plot.is_file() and plot.stat().st_size > 0


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory, make_store) -> dict[str, Interruption]:
    base = tmp_path_factory.mktemp("signals")
    jobs = {
        name: (lambda name=name, number=number: interrupt_run(base / name, make_store(f"signal-{name}"),
                                                              PLAIN_SIGNAL_RUN, number))
        for name, number in (("SIGINT", signal.SIGINT), ("SIGTERM", signal.SIGTERM))
    }
    return run_parallel(jobs)


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_ends_the_run_killed_with_everything_logged(interrupted: dict[str, Interruption], name: str) -> None:
    assert_interrupted_cleanly(interrupted[name])


# The same signal while a flush of buffered metrics is waiting for the database.
FLUSH_RACE = {
    # Another writer (a sweep worker, a sync) holds the write lock: the flush waits in BEGIN.
    "waiting_for_a_writer": (LONG_RUN, "write", 1.5),
    # A reader (mlflow ui, bprun-report) holds the database: the flush of a full 5004-value
    # batch (fast xor epochs) waits while inserting, once its pages no longer fit in the cache.
    "inserting_behind_a_reader": (LONG_RUN, "read", 1.5),
    # The same reader, with a small batch flushed by the 5 s timer: the flush waits in COMMIT.
    "committing_behind_a_reader": (SLOW_EPOCH_RUN, "read", 6.5),
}


@pytest.fixture(scope="module")
def interrupted_in_a_flush(tmp_path_factory: pytest.TempPathFactory, make_store) -> dict[str, Interruption]:
    base = tmp_path_factory.mktemp("flush-race")
    jobs = {
        name: (lambda name=name, overrides=overrides, lock=lock, hold=hold: interrupt_run(
            base / name, make_store(f"race-{name}"), overrides, signal.SIGINT, lock=lock, hold_seconds=hold))
        for name, (overrides, lock, hold) in FLUSH_RACE.items()
    }
    return run_parallel(jobs, workers=3)


def test_a_signal_while_a_flush_waits_for_another_writer(interrupted_in_a_flush: dict[str, Interruption]) -> None:
    assert_interrupted_cleanly(interrupted_in_a_flush["waiting_for_a_writer"])


def test_a_signal_while_a_flush_inserts_loses_no_metric(interrupted_in_a_flush: dict[str, Interruption]) -> None:
    assert_interrupted_cleanly(interrupted_in_a_flush["inserting_behind_a_reader"])


def test_a_signal_while_a_flush_commits_ends_killed(interrupted_in_a_flush: dict[str, Interruption]) -> None:
    assert_interrupted_cleanly(interrupted_in_a_flush["committing_behind_a_reader"])


# =============================================================================================
# 2. SIGINT to the process group of a parallel sweep
# =============================================================================================
PARALLEL_SWEEP = ("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,2,3", *LONG_RUN)


@dataclass
class InterruptedSweep:
    result: Finished
    statuses: dict[str, tuple[str, str | None]]  # run id -> (status, parent run id), a few s after the exit
    parent_id: str
    metrics_at_exit: tuple[int, int]  # (rows, max timestamp)
    metrics_later: tuple[int, int]
    leftover: list[str]  # processes of the sweep's session still alive after the exit


@pytest.fixture(scope="module")
def interrupted_sweep(tmp_path_factory: pytest.TempPathFactory, make_store) -> InterruptedSweep:
    store = make_store("sweep-interrupt")
    process = Background(*PARALLEL_SWEEP, cwd=tmp_path_factory.mktemp("sweep-interrupt-cwd"), uri=store.uri,
                         new_session=True)
    try:
        wait_until(lambda: (query(store.db, "SELECT count(DISTINCT run_uuid) FROM metrics") or [(0,)])[0][0] >= 2,
                   START_TIMEOUT, "two jobs logging", process, interval=0.2)
        time.sleep(0.5)
        os.killpg(process.pid, signal.SIGINT)
        sent = time.monotonic()
        result = process.wait(sent, PROMPT_EXIT_SECONDS, keep_group=True)

        def statuses() -> dict[str, tuple[str, str | None]]:
            rows = query(store.db, "SELECT r.run_uuid, r.status, t.value FROM runs r LEFT JOIN tags t "
                                   "ON t.run_uuid = r.run_uuid AND t.key = ?", (PARENT_TAG,))
            return {run_id: (status, parent) for run_id, status, parent in rows}

        metric_rows = "SELECT count(*), coalesce(max(timestamp), 0) FROM metrics"
        at_exit = query(store.db, metric_rows)[0]
        # A few seconds for the jobs to end their runs, then nothing more may change.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(status == "RUNNING" for status, _ in statuses().values()):
            time.sleep(0.2)
        final = statuses()
        time.sleep(max(0.0, deadline - time.monotonic()))
        later = query(store.db, metric_rows)[0]
        leftover = leftover_processes(process, 5.0)
    finally:
        process.kill()
    parents = [run_id for run_id, (_, parent) in final.items() if parent is None]
    if len(parents) != 1:
        raise ScenarioError(f"expected one parent run, got {final}\n{result.output}")
    return InterruptedSweep(result, final, parents[0], at_exit, later, leftover)


def test_an_interrupted_parallel_sweep_stops_at_once_and_everywhere(interrupted_sweep: InterruptedSweep) -> None:
    sweep = interrupted_sweep
    assert sweep.result.returncode not in (0, None), sweep.result.output
    assert sweep.result.returncode == 128 + signal.SIGINT, sweep.result.output
    assert sweep.result.seconds < PROMPT_EXIT_SECONDS
    assert sweep.statuses[sweep.parent_id][0] == "KILLED", sweep.statuses
    assert "interrupted; the sweep and its running jobs were ended KILLED" in sweep.result.stderr
    children = {run_id: status for run_id, (status, parent) in sweep.statuses.items() if parent == sweep.parent_id}
    assert len(children) >= 2, sweep.statuses  # the jobs that had started logging
    # Nobody logs after the command is over, and no worker keeps running.
    assert sweep.metrics_later == sweep.metrics_at_exit
    assert sweep.leftover == []


def test_ctrl_c_in_a_basic_sweep_keeps_the_completed_runs_plots(tmp_path: Path, make_store) -> None:
    """The first job completes and its plots go to bprun's helper process; Ctrl-C (to the whole
    process group, as a terminal sends it) then stops the second job. The helper ignores it and
    finishes the first run's plots; the second run draws its own; nothing is left running."""
    store = make_store("basic-sweep-interrupt")
    # Job 0 trains 50 epochs, job 1 a million (the sweep runs them in this order).
    process = Background("-m", "trainer.epochs=50,1000000", "tracking.tensors_every=0", cwd=tmp_path, uri=store.uri,
                         new_session=True)
    result = ctrl_c_once(process, lambda: (query(store.db, "SELECT count(DISTINCT run_uuid) FROM metrics")
                                           or [(0,)])[0][0] >= 2, "the second job logging", interval=0.2)
    children = sorted(store.client().search_runs([store.client().get_experiment_by_name("backprop-runner").experiment_id],
                                                  filter_string="tags.mlflow.parentRunId != ''"),
                      key=lambda run: run.info.start_time)
    assert [(run.info.status, run.data.params["trainer.epochs"]) for run in children] == [
        ("FINISHED", "50"), ("KILLED", "1000000")], result.output
    assert "interrupted; the sweep and its running jobs were ended KILLED" in result.stderr, result.output
    for run in children:
        plots = sorted(path.name for path in (artifact_dir(run) / "plots").iterdir())
        assert plots == ["gradient_norms.png", "learning_curves.png", "weight_norms.png"], (run.info.status, plots)


def test_an_interrupted_parallel_sweep_leaves_no_run_running(interrupted_sweep: InterruptedSweep) -> None:
    sweep = interrupted_sweep
    running = [run_id for run_id, (status, _) in sweep.statuses.items() if status == "RUNNING"]
    assert running == [], sweep.statuses
    children = [status for status, parent in sweep.statuses.values() if parent == sweep.parent_id]
    assert set(children) == {"KILLED"}, sweep.statuses


def test_ctrl_c_while_a_parallel_sweep_starts_leaves_nothing_running(tmp_path: Path, make_store) -> None:
    """Ctrl-C, pressed twice, while the fork server imports and bprun composes the jobs (or waits
    for the process that creates the parent run): no traceback from any process, no run left
    RUNNING, no process left behind."""
    store = make_store("sweep-start-interrupt")
    process = Background(*PARALLEL_SWEEP, cwd=tmp_path, uri=store.uri, new_session=True)
    # The sweeper writes multirun.yaml just before it composes the jobs.
    ctrl_c_once(process, lambda: list(tmp_path.glob("outputs/multirun/*/*/multirun.yaml")), "the sweep starting",
                interval=0.05, presses=2)
    statuses = [status for (status,) in query(store.db, "SELECT status FROM runs")] if store.db.exists() else []
    assert "RUNNING" not in statuses, statuses


def test_a_parallel_sweep_whose_worker_is_killed_ends_failed(tmp_path: Path, make_store) -> None:
    """A joblib worker killed by the system (the OOM killer, say): Hydra stops the sweep on the
    error; the parent and the children still RUNNING end FAILED with a reason; nothing is left."""
    store = make_store("worker-killed")
    process = Background(*PARALLEL_SWEEP, cwd=tmp_path, uri=store.uri, new_session=True)
    try:
        wait_until(lambda: (query(store.db, "SELECT count(DISTINCT run_uuid) FROM metrics") or [(0,)])[0][0] >= 2,
                   START_TIMEOUT, "two jobs logging", process, interval=0.2)

        def parent_of(pid: str) -> int:
            return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])

        pids = [entry.split(":")[0] for entry in session_processes(process.pid)]
        servers = [pid for pid in pids if parent_of(pid) == process.pid and "forkserver" in
                   Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]
        workers = [pid for pid in pids if servers and parent_of(pid) == int(servers[0])]
        assert len(workers) == 2, session_processes(process.pid)
        os.kill(int(workers[0]), signal.SIGKILL)
        result = process.wait(time.monotonic(), PROMPT_EXIT_SECONDS, keep_group=True)
        leftover = leftover_processes(process)
    finally:
        process.kill()
    assert result.returncode == 1, result.output
    assert "TerminatedWorkerError" in result.stderr, result.output
    assert leftover == []
    runs = query(store.db, "SELECT r.status, t.value, p.value FROM runs r LEFT JOIN tags t ON t.run_uuid = r.run_uuid "
                           "AND t.key = 'failure_reason' LEFT JOIN tags p ON p.run_uuid = r.run_uuid AND p.key = ?",
                 (PARENT_TAG,))
    parents = [(status, reason) for status, reason, parent in runs if parent is None]
    assert parents == [("FAILED", "stopped by an error (see bprun's error output)")], runs
    children = [(status, reason) for status, reason, parent in runs if parent is not None]
    assert len(children) >= 2 and {status for status, _ in children} == {"FAILED"}, runs
    assert all(reason.startswith("its sweep was stopped by an error") for _, reason in children), runs


def test_a_parent_run_bprun_did_not_take_over_is_ended_killed(tmp_path: Path, make_store) -> None:
    """The process that creates a joblib sweep's parent run hands it over to bprun; if bprun is
    gone before it took the run over (Ctrl-C, SIGTERM), that process ends the run KILLED."""
    import multiprocessing

    from runner.sweep import ParentRunRequest, _create_parent_run_for

    store = make_store("handover")
    request = ParentRunRequest(configured_uri=store.uri, offline=False, start_dir=str(tmp_path), http_timeout=5.0,
                               http_retries=0, experiment="handover", run_name="sweep", tags={}, params={})
    spawn = multiprocessing.get_context("spawn")
    statuses = {}
    for bprun_takes_it_over in (True, False):
        ours, theirs = spawn.Pipe()
        child = spawn.Process(target=_create_parent_run_for, args=(request, theirs))
        child.start()
        theirs.close()
        outcome, context = ours.recv()
        assert outcome == "ok", context
        if bprun_takes_it_over:
            ours.send("announced")
        ours.close()
        child.join(60)
        assert child.exitcode == 0
        run = store.client().get_run(context.parent_run_id)
        statuses[bprun_takes_it_over] = (run.info.status, run.data.tags.get("failure_reason"))
    assert statuses == {True: ("RUNNING", None), False: ("KILLED", "interrupted")}


# =============================================================================================
# 3. Divergence and saturation
# =============================================================================================
DIVERGING = ("model.output_activation=identity", "optimizer.lr=1e6", "trainer.epochs=100")
SATURATING = ("optimizer.lr=1e4", "trainer.epochs=500")


@pytest.fixture(scope="module")
def failed_trainings(tmp_path_factory: pytest.TempPathFactory, make_store) -> dict[str, tuple[Any, Finished]]:
    base = tmp_path_factory.mktemp("diverge")
    stores = {name: make_store(f"diverge-{name}") for name in ("diverging", "saturating")}
    jobs = {name: (lambda name=name, overrides=overrides: (stores[name], cli(*overrides, "tracking.tensors_every=10",
                                                                               cwd=base / name, uri=stores[name].uri)))
            for name, overrides in (("diverging", DIVERGING), ("saturating", SATURATING))}
    return run_parallel(jobs)


def assert_every_metric_finite(store: Any, run: Any) -> None:
    for key in run.data.metrics:
        for metric in client(store).get_metric_history(run.info.run_id, key):
            assert math.isfinite(metric.value) and abs(metric.value) < 1.7e308, (key, metric.step, metric.value)
    # And in the raw table (1.797e308 is how MLflow stores inf; is_nan marks NaN).
    bad = query(store.db, "SELECT key, step, value FROM metrics WHERE is_nan OR value != value "
                          "OR abs(value) >= 1.7e308")
    assert bad == []


def test_a_diverging_run_ends_failed_with_the_epoch_and_no_infinite_metric(failed_trainings) -> None:
    store, result = failed_trainings["diverging"]
    assert result.returncode not in (0, None), result.output
    run = only_run(store)
    assert run.info.status == "FAILED"
    reason = run.data.tags.get("failure_reason", "")
    # As in the example, 'diverged at epoch 17: train_mse is inf'.
    match = re.fullmatch(r"diverged at epoch (\d+): train_mse is (inf|nan)", reason)
    assert match, reason
    assert reason in result.stderr, result.output
    steps = [metric.step for metric in history(store, run)]
    assert steps == list(range(len(steps))) and 0 < len(steps) <= int(match.group(1)) + 1
    assert run.data.tags.get("stop_reason") == "diverged"
    assert_every_metric_finite(store, run)


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
        "sweep": lambda: (stores["sweep"], cli("-m", "seed=0,1", *common, cwd=base / "sweep",
                                               uri=stores["sweep"].uri, env=CRASH)),
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
    # Create the store first: parallel first use of a fresh SQLite file is unsafe (PITFALLS).
    client(store).search_experiments()
    cwd = tmp_path / "cwd"
    dead = Background(*LONG_RUN, "tracking.tensors_every=0", cwd=cwd, uri=store.uri, label="dead")
    alive = Background(*LONG_RUN, "tracking.tensors_every=0", "seed=1", cwd=cwd, uri=store.uri, label="alive")
    try:
        def logging_runs() -> dict[str, int]:
            rows = query(store.db, "SELECT r.run_uuid, t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                                   "AND t.key = 'bprun.pid' JOIN latest_metrics m ON m.run_uuid = r.run_uuid "
                                   "AND m.key = 'train_mse'")
            return {run_id: int(pid) for run_id, pid in rows}

        pids = wait_until(lambda: len(logging_runs()) == 2 and logging_runs(), START_TIMEOUT,
                          "both runs logging", interval=0.2)
        by_pid = {pid: run_id for run_id, pid in pids.items()}
        dead_id, alive_id = by_pid[dead.pid], by_pid[alive.pid]
        dead.popen.send_signal(signal.SIGKILL)
        dead.popen.wait(timeout=30)
        assert alive.running()

        def status(run_id: str) -> str:
            return client(store).get_run(run_id).info.status

        assert status(dead_id) == "RUNNING"  # what MLflow leaves behind

        dry = cli("--tracking-uri", store.uri, "--dry-run", cwd=cwd, module="runner.doctor", timeout=120)
        assert dry.returncode == 0, dry.output
        assert re.search(rf"stale\s+{dead_id}\b.*would mark KILLED", dry.stdout), dry.output
        assert re.search(rf"running\s+{alive_id}\b", dry.stdout), dry.output
        assert (status(dead_id), status(alive_id)) == ("RUNNING", "RUNNING")

        fixed = cli("--tracking-uri", store.uri, cwd=cwd, module="runner.doctor", timeout=120)
        assert fixed.returncode == 0, fixed.output
        assert re.search(rf"stale\s+{dead_id}\b.*marked KILLED", fixed.stdout), fixed.output
        assert alive_id not in [line.split()[1] for line in fixed.stdout.splitlines() if line.startswith("stale")]
        dead_run = client(store).get_run(dead_id)
        assert dead_run.info.status == "KILLED"
        assert dead_run.info.end_time is not None
        assert "bprun-doctor" in dead_run.data.tags.get("failure_reason", "")
        assert status(alive_id) == "RUNNING" and alive.running()
    finally:
        dead.kill()
        if alive.running():
            alive.wait(alive.signal(signal.SIGINT), PROMPT_EXIT_SECONDS)


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
    try:
        return run_parallel({name: (lambda name=name: (base / name, cli(
            f"tracking.uri=http://127.0.0.1:{ports[name]}", "trainer.epochs=5", cwd=base / name, timeout=60)))
            for name in ports})
    finally:
        silent.close()


@pytest.mark.parametrize(("name", "message"), [("refused", "cannot reach"), ("silent", "no answer")])
def test_an_unreachable_server_fails_fast_before_training(unreachable, name: str, message: str) -> None:
    cwd, result = unreachable[name]
    assert result.returncode not in (0, None), result.output
    assert result.seconds < 10, result.output
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

    trained = cli("tracking.offline=true", f"tracking.uri={server_uri}", "trainer.epochs=30", "tracking.tensors_every=10",
                  cwd=cwd, timeout=CLI_TIMEOUT)
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

    synced = cli(cwd=cwd, module="runner.sync", timeout=120)
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
        return {key: sorted((m.step, m.timestamp, m.value) for m in store_client.get_metric_history(run.info.run_id, key))
                for key in run.data.metrics}

    source_histories = histories(source_client, source)
    assert len(source_histories["train_mse"]) == 30
    assert histories(copy_client, copy) == source_histories

    def files(store_client: Any, run: Any, directory: Path) -> dict[str, str]:
        local = Path(store_client.download_artifacts(run.info.run_id, "", str(directory)))
        return {str(path.relative_to(local)): hashlib.sha256(path.read_bytes()).hexdigest()
                for path in sorted(local.rglob("*")) if path.is_file()}

    source_files = files(source_client, source, tmp_path / "a")
    assert "tensors/epochs.npy" in source_files and "plots/learning_curves.png" in source_files
    assert files(copy_client, copy, tmp_path / "b") == source_files

    again = cli(cwd=cwd, module="runner.sync", timeout=120)
    assert again.returncode == 0, again.output
    assert "0 run(s) uploaded" in again.stdout, again.output
    assert len(all_runs(server_uri)) == 1


# =============================================================================================
# 7. Read-only folder or database, full disk
# =============================================================================================
def mount(*arguments: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", *arguments], capture_output=True, timeout=60).returncode == 0


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=60)


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


def test_a_read_only_store_folder_is_refused_before_anything_is_written(readonly_folder: Path, tmp_path: Path) -> None:
    database = readonly_folder / "mlflow.db"
    result = cli(f"tracking.uri=sqlite:///{database}", "trainer.epochs=5", cwd=tmp_path / "cwd", timeout=120)
    assert result.returncode == 2, result.output
    assert "cannot write the MLflow store" in result.stderr, result.output
    assert "Traceback" not in result.stderr
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


@pytest.mark.parametrize("how", ["write fails with ENOSPC", "1 MB free"])
def test_a_full_disk_is_refused_before_the_database_is_created(how: str, tmp_path: Path, compose,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
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
        result = cli("model.hidden=[512,512]", "trainer.epochs=200", "tracking.tensors_every=1",
                     cwd=tmp_path / "cwd", uri=f"sqlite:///{database}", timeout=180)
        integrity = query(database, "PRAGMA integrity_check")
        statuses = [row[0] for row in query(database, "SELECT status FROM runs")]
    finally:
        unmount(disk)
    assert result.returncode not in (0, None), result.output
    assert integrity == [("ok",)]  # no half-written database
    # MLflow logs its own database error above; what bprun says last is one clear line.
    assert result.stderr.strip().splitlines()[-1].startswith("bprun: training stopped: No space left"), \
        result.output
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
]


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
        store = make_store(f"bad-data-{index}")
        overrides = ("dataset=csv", f"dataset.path={path}", "dataset.targets=[y]", "trainer.epochs=3")
        jobs[name] = (lambda store=store, overrides=overrides, index=index:
                      (store, cli(*overrides, cwd=base / f"cwd{index}", uri=store.uri, timeout=120)))
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


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "BUG (message only, the data is refused): pandas turns a 'NaN' cell and the cells missing from a short "
    "row into NaN before runner.datasets._numeric sees them, so both are reported as 'blank' "
    "(the commit meant non-finite cells to be quoted as written; inf is)"))
@pytest.mark.parametrize(("name", "written"), [("NaN cell", "'NaN'"), ("ragged row, too few cells", None)])
def test_bad_cells_are_described_as_written(bad_data, name: str, written: str | None) -> None:
    _, result = bad_data[name]
    assert result.returncode == 2, result.output
    message = result.stderr.strip().splitlines()[-1].partition(".csv:")[2]  # after the file name
    assert "blank" not in message, message
    if written is not None:
        assert written in message, message


# =============================================================================================
# 9. Concurrency: 4 workers, 16 jobs, one fresh SQLite file, five times
# =============================================================================================
CONCURRENCY_EPOCHS = 200
CONCURRENT_SWEEP = ("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "optimizer.lr=0.5,1,2,4",
                    "seed=0,1,2,3", f"trainer.epochs={CONCURRENCY_EPOCHS}", "tracking.tensors_every=0")


# Not strict: the bug shows up in some sweeps only (3 of 26 on this machine; 0, 1 or 2 of the five
# here), so a strict xfail would fail whenever all five happen to pass. Remove the mark once fixed.
@pytest.mark.parametrize("attempt", range(1, 6))
def test_four_workers_lose_no_run_and_no_metric_point(attempt: int, tmp_path: Path, store_at) -> None:
    store = store_at(tmp_path / "store")
    assert not store.db.exists()
    result = cli(*CONCURRENT_SWEEP, cwd=tmp_path / "cwd", uri=store.uri, timeout=CLI_TIMEOUT)
    runs = store.runs()
    not_finished = {run.info.run_id: (run.info.status, run.data.tags.get("failure_reason", "")[:300])
                    for run in runs if run.info.status != "FINISHED"}
    assert result.returncode == 0, (not_finished, result.output)
    parents = [run for run in runs if PARENT_TAG not in run.data.tags]
    assert len(parents) == 1, [(run.info.run_name, run.info.status) for run in runs]
    parent = parents[0]
    children = [run for run in runs if run.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert len(runs) == 17 and len(children) == 16
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert {(run.data.params["optimizer.lr"], run.data.params["seed"]) for run in children} == {
        (lr, seed) for lr in ("0.5", "1", "2", "4") for seed in ("0", "1", "2", "3")}
    experiment = client(store).get_experiment_by_name(EXPERIMENT)
    assert {run.info.experiment_id for run in runs} == {experiment.experiment_id}
    assert client(store).search_runs(["0"]) == []  # nothing in Default
    for run in children:
        steps = [metric.step for metric in history(store, run)]
        assert steps == list(range(CONCURRENCY_EPOCHS)), (run.info.run_id, len(steps))
    # The raw table agrees: 16 x 200 train_mse rows, no duplicate.
    assert query(store.db, "SELECT count(*), count(DISTINCT run_uuid || ':' || step) FROM metrics "
                           "WHERE key = 'train_mse'") == [(16 * CONCURRENCY_EPOCHS, 16 * CONCURRENCY_EPOCHS)]


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
        f"      _target_: os.makedirs\n      _args_: ['{markers['preset hydra callback']}']\n")
    cases["preset hydra callback"] = ("--config-dir", str(base / "presets"), "experiment=shared")
    stores = {name: make_store(f"untrusted-{index}") for index, name in enumerate(cases)}
    jobs = {name: (lambda name=name: (stores[name], cli(*cases[name], "trainer.epochs=3", cwd=base / re.sub(r"\W", "_", name),
                                                         uri=stores[name].uri, timeout=120), markers[name]))
            for name in cases}
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
