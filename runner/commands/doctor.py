"""``bprun-doctor``: find runs left RUNNING by a process that no longer exists and mark them
KILLED (``runner.tracking.liveness`` says how a run's process is recognised). ``--dry-run``
only lists them."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from runner.commands.common import quiet_mlflow
from runner.process.errors import EXIT_INVALID, InvalidInput
from runner.tracking import names
from runner.tracking.destination import resolve_tracking_uri


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bprun-doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", help="store to check (default: MLFLOW_TRACKING_URI, "
                        "else sqlite:///<current directory>/mlflow.db)")
    parser.add_argument("--dry-run", action="store_true", help="only list stale runs, change nothing")
    arguments = parser.parse_args(argv)
    uri = arguments.tracking_uri or resolve_tracking_uri(None, os.getcwd())
    quiet_mlflow()
    # (lazy: --help and argument errors answer at once, without MLflow's second of imports)
    from mlflow.entities import ViewType

    from runner.tracking.liveness import is_stale
    from runner.tracking.store import open_store

    try:
        client = open_store(uri)
    except InvalidInput as error:
        print(f"bprun-doctor: {error}", file=sys.stderr)
        return EXIT_INVALID
    experiment_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    running = client.search_runs(experiment_ids, "attributes.status = 'RUNNING'", run_view_type=ViewType.ALL,
                                 max_results=50000) if experiment_ids else []
    marked = unknown = 0
    for run in running:
        stale = is_stale(run.data.tags)
        name = f"{run.info.run_id} ({run.info.run_name})"
        if stale is None:
            unknown += 1
            print(f"unknown  {name}: started on {run.data.tags.get(names.HOST, 'an unknown host')}, "
                  "cannot check its process from here")
        elif stale:
            marked += 1
            action = "would mark KILLED" if arguments.dry_run else "marked KILLED"
            print(f"stale    {name}: process {run.data.tags.get(names.PID)} is gone; {action}")
            if not arguments.dry_run:
                client.set_tag(run.info.run_id, names.FAILURE_REASON,
                               "its process ended without closing the run (found by bprun-doctor)")
                client.set_terminated(run.info.run_id, "KILLED")
        else:
            print(f"running  {name}: process {run.data.tags.get(names.PID)} is alive")
    print(f"bprun-doctor: {len(running)} RUNNING run(s) in {uri}: {marked} stale, {unknown} unknown")
    return 0


if __name__ == "__main__":
    sys.exit(main())
