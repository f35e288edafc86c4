"""Helpers for tests that run the real commands as processes: start them, wait for events
(a file, a row in the store), signal them, and see what they and their children leave behind.

Nothing here waits a fixed time for a process to reach a state: ``wait_until`` polls for the
event with a generous deadline, so tests pass on a busy machine. The commands started here die
with pytest, however pytest ends (``guard.py``).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guard import dying_with_pytest

EXPERIMENT = "backprop-runner"
PARENT_TAG = "mlflow.parentRunId"
# Generous: a signalled process must be gone by then even on a loaded 2-core machine.
PROMPT_EXIT_SECONDS = 60
START_TIMEOUT = 180  # seconds a command may take to log its first epochs on a busy 2-core machine
CLI_TIMEOUT = 300
# How long the processes of a command may outlive it (workers finishing their runs' end).
LEFTOVER_SECONDS = 5.0


class ScenarioError(RuntimeError):
    """A scenario could not be set up or observed (not a finding about the runner)."""


def cli_environment(uri: str | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR") and not key.startswith("BPRUN_")
    }
    environment["PYTHONDONTWRITEBYTECODE"] = "1"
    if uri is not None:
        environment["MLFLOW_TRACKING_URI"] = uri
    environment.update(extra or {})
    return environment


@dataclass
class Finished:
    """A command that ran to its end (or was killed by the test after its deadline)."""

    args: tuple[str, ...]
    returncode: int | None  # None: still running when the test gave up waiting, then killed
    seconds: float
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return (
            f"--- {' '.join(self.args)}\n--- exit {self.returncode} after {self.seconds:.1f} s\n"
            f"--- stdout\n{self.stdout[-4000:]}\n--- stderr\n{self.stderr[-6000:]}"
        )


def cli(
    *args: str,
    cwd: Path,
    uri: str | None = None,
    env: dict[str, str] | None = None,
    module: str = "runner",
    timeout: float = CLI_TIMEOUT,
) -> Finished:
    """Run ``python -m <module> <args>`` in ``cwd`` and wait (at most ``timeout`` s)."""
    cwd.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            env=cli_environment(uri, env),
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=dying_with_pytest(),
        )
    except subprocess.TimeoutExpired as expired:
        return Finished(args, None, time.monotonic() - started, _text(expired.stdout), _text(expired.stderr))
    return Finished(args, result.returncode, time.monotonic() - started, result.stdout, result.stderr)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


class Background:
    """``python -m runner <args>`` started in the background, in a session of its own (as a
    terminal's foreground job is a process group of its own); output goes to files in ``cwd``."""

    def __init__(
        self,
        *args: str,
        cwd: Path,
        uri: str | None,
        label: str = "run",
        env: dict[str, str] | None = None,
        module: str = "runner",
    ) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        self.args = args
        self._out, self._err = cwd / f"{label}.stdout", cwd / f"{label}.stderr"
        with open(self._out, "w") as out, open(self._err, "w") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                cwd=cwd,
                env=cli_environment(uri, env),
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=dying_with_pytest(),
            )
        self.pid = self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def signal(self, number: int, group: bool = False) -> float:
        """Send ``number`` to the command (or its whole group, as a terminal's Ctrl-C does);
        return the monotonic time it was sent."""
        if group:
            os.killpg(self.pid, number)
        else:
            self.popen.send_signal(number)
        return time.monotonic()

    def wait(self, since: float, timeout: float = PROMPT_EXIT_SECONDS) -> Finished:
        """Wait for the exit at most ``timeout`` s (the command is killed after that)."""
        try:
            returncode: int | None = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            returncode = None
            self.popen.kill()
            self.popen.wait(timeout=30)
        return Finished(self.args, returncode, time.monotonic() - since, self._out.read_text(), self._err.read_text())

    def leftovers(self, seconds: float = LEFTOVER_SECONDS) -> list[str]:
        """The processes of the command's session still alive ``seconds`` after it exited."""
        deadline = time.monotonic() + seconds
        while (left := session_processes(self.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        return left

    def kill_everything(self) -> None:
        """Whatever a failed test left running."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for entry in session_processes(self.pid):
            try:
                os.kill(int(entry.partition(":")[0]), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=30)

    def stderr_so_far(self) -> str:
        return self._err.read_text()

    def stdout_so_far(self) -> str:
        return self._out.read_text()

    def output_so_far(self) -> str:
        return f"--- stdout\n{self._out.read_text()[-3000:]}\n--- stderr\n{self._err.read_text()[-3000:]}"


def wait_until(
    condition: Callable[[], Any], timeout: float, what: str, process: Background | None = None, interval: float = 0.02
) -> Any:
    """Poll ``condition`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and not process.running():
            raise ScenarioError(f"the process ended while waiting for {what}:\n{process.output_so_far()}")
        time.sleep(interval)
    raise ScenarioError(
        f"timed out after {timeout} s waiting for {what}" + (f":\n{process.output_so_far()}" if process else "")
    )


def session_processes(session: int) -> list[str]:
    """Live (not zombie) processes of session ``session``, as 'pid: command line'. A child that
    left the session would escape this; bprun's never do (they are started, not daemonized)."""
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


def run_parallel(jobs: dict[str, Callable[[], Any]], workers: int = 2) -> dict[str, Any]:
    with ThreadPoolExecutor(workers) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


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


def runs_logging(db: Path) -> int:
    """How many job runs have logged a metric (a sweep's parent logs its best_<objective> too)."""
    rows = query(
        db,
        "SELECT count(DISTINCT run_uuid) FROM metrics WHERE run_uuid NOT IN "
        "(SELECT run_uuid FROM tags WHERE key = 'bprun.sweep' AND value = 'true')",
    )
    return rows[0][0] if rows else 0


def client(store: Any) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(store.uri)


def only_run(store: Any) -> Any:
    found = store.runs()
    assert len(found) == 1, [(run.info.run_id, run.info.run_name, run.info.status) for run in found]
    return found[0]


# The names runs log their loss and accuracy under (runner.names.logged_metric_name).
TRAIN_MSE, VAL_MSE = "1_loss/train_mse", "1_loss/val_mse"


def history(store: Any, run: Any, key: str = TRAIN_MSE) -> list[Any]:
    return sorted(client(store).get_metric_history(run.info.run_id, key), key=lambda metric: metric.step)


def artifact_dir(run: Any) -> Path:
    uri = run.info.artifact_uri
    assert uri.startswith("file://"), uri
    return Path(uri.removeprefix("file://"))


def read_artifact(store: Any, run: Any, name: str, directory: Path) -> str:
    return Path(client(store).download_artifacts(run.info.run_id, name, str(directory))).read_text()
