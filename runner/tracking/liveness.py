"""Which process runs a run, so that a run left RUNNING by a process that died can be found.

MLflow never sets KILLED by itself: a run whose process got SIGKILL (or lost power) stays
RUNNING forever and looks alive in every dashboard. Each bprun run records the host, the pid and
the pid's start time (``bprun.host``, ``bprun.pid``, ``bprun.process_start``); the run is stale
when it is RUNNING, was started on this host, and no process with that pid and start time
exists any more (``bprun-doctor``). Runs from other hosts cannot be checked from here.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import unquote, urlparse

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from runner import names

STOPPED_KILLED = "killed"  # the stop_reason of a run ended because its process was gone


def process_start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), None if it is gone.
    With the pid it identifies a process even after the pid has been reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; the fields after it are plain.
    return stat.rpartition(")")[2].split()[19]


def process_tags() -> dict[str, str]:
    """Tags that tell later whether this process still runs."""
    pid = os.getpid()
    return {names.HOST: socket.gethostname(), names.PID: str(pid), names.PROCESS_START: process_start_time(pid) or ""}


def is_stale(tags: dict[str, str]) -> bool | None:
    """True when the run's process is gone, False when it still runs, None when that cannot be
    told from this host."""
    if tags.get(names.HOST) != socket.gethostname() or not tags.get(names.PID, "").isdigit():
        return None
    started = process_start_time(int(tags[names.PID]))
    return started is None or started != tags.get(names.PROCESS_START)


def end_stale_run(client: MlflowClient, run: Run, found_by: str = "bprun-doctor") -> None:
    """End a stale run KILLED (``stop_reason=killed``), with its epochs and its tensors cut to
    where its metrics end."""
    from runner.tracking.history import metric_history  # (lazy: tensors import MLflow's artifacts)
    from runner.tracking.tensors import repair_tensors

    if run.data.tags.get(names.SWEEP) != "true":  # a job's or a single run: it has epochs
        loss_key = names.metric_key(run.data.metrics, "train_mse") or "train_mse"
        steps = metric_history(client, run.info.run_id, loss_key).steps
        epochs = int(steps.max()) + 1 if steps.size else 0
        artifacts = urlparse(run.info.artifact_uri)
        tensors = Path(unquote(artifacts.path)) / names.TENSORS_ARTIFACT
        if artifacts.scheme == "file" and tensors.is_dir():
            repair_tensors(tensors, epochs - 1)
        client.set_tag(run.info.run_id, names.EPOCHS_RUN, str(epochs))
        client.set_tag(run.info.run_id, names.STOP_REASON, STOPPED_KILLED)
    client.set_tag(
        run.info.run_id, names.FAILURE_REASON, f"its process ended without closing the run (found by {found_by})"
    )
    client.set_terminated(run.info.run_id, "KILLED")
