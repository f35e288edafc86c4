"""``bprun-doctor``: find runs left RUNNING by a process that no longer exists, mark them KILLED.

MLflow never sets KILLED by itself: a run whose process got SIGKILL (or lost power) stays
RUNNING forever and looks alive in every dashboard. Each bprun run records the host, the pid
and the pid's start time (``bprun.host``, ``bprun.pid``, ``bprun.process_start``); a run is
stale when it is RUNNING, was started on this host, and no process with that pid and start time
exists any more. Runs from other hosts cannot be checked from here and are only listed.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

HOST_TAG, PID_TAG, START_TAG = "bprun.host", "bprun.pid", "bprun.process_start"


def process_start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), None if it is gone.

    With the pid this identifies a process even after the pid has been reused.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; fields after it are plain.
    return stat.rpartition(")")[2].split()[19]


def process_tags() -> dict[str, str]:
    """Tags that let ``bprun-doctor`` tell later whether this process still runs."""
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), START_TAG: process_start_time(pid) or ""}


def is_stale(tags: dict[str, str]) -> bool | None:
    """True when the run's process is gone, False when it still runs, None when unknowable here."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return None
    started = process_start_time(int(tags[PID_TAG]))
    return started is None or started != tags.get(START_TAG)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bprun-doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", help="store to check (default: MLFLOW_TRACKING_URI, "
                        "else sqlite:///<current directory>/mlflow.db)")
    parser.add_argument("--dry-run", action="store_true", help="only list stale runs, change nothing")
    arguments = parser.parse_args(argv)

    from runner.tracking import resolve_tracking_uri, sqlite_path

    uri = arguments.tracking_uri or resolve_tracking_uri(None, os.getcwd())
    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        print(f"bprun-doctor: no MLflow store at {database}", file=sys.stderr)
        return 2
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    running = client.search_runs(experiment_ids, "attributes.status = 'RUNNING'", run_view_type=ViewType.ALL,
                                 max_results=50000) if experiment_ids else []
    marked = unknown = 0
    for run in running:
        stale = is_stale(run.data.tags)
        name = f"{run.info.run_id} ({run.info.run_name})"
        if stale is None:
            unknown += 1
            print(f"unknown  {name}: started on {run.data.tags.get(HOST_TAG, 'an unknown host')}, "
                  "cannot check its process from here")
        elif stale:
            marked += 1
            action = "would mark KILLED" if arguments.dry_run else "marked KILLED"
            print(f"stale    {name}: process {run.data.tags.get(PID_TAG)} is gone; {action}")
            if not arguments.dry_run:
                client.set_tag(run.info.run_id, "failure_reason",
                               "its process ended without closing the run (found by bprun-doctor)")
                client.set_terminated(run.info.run_id, "KILLED")
        else:
            print(f"running  {name}: process {run.data.tags.get(PID_TAG)} is alive")
    print(f"bprun-doctor: {len(running)} RUNNING run(s) in {uri}: {marked} stale, {unknown} unknown")
    return 0


if __name__ == "__main__":
    sys.exit(main())
