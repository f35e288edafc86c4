"""``bprun-resume [PARENT_RUN_ID] [--tracking-uri URI] [--experiment NAME]``: continue a stopped
sweep (Ctrl-C, SIGTERM, SIGKILL of bprun, a machine that went away, failed jobs) where it stopped.

The sweep's own command line runs again, in the folder it was started in, with its parent run
and its output folder: the jobs whose run finished are not run again; the others run as new runs,
each marking its earlier run superseded; the parent run ends as any sweep's does
(``runner.sweeps.sweeper``: ``resume_state``). Refused, before anything runs, when the sweep still
runs, another resume of it runs, the run is not a sweep's parent, or a finished job's config or
bprun's version changed. Runs the stopped sweep left RUNNING are ended KILLED first, as
``bprun-doctor`` would.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runner import names
from runner.commands.common import quiet_mlflow
from runner.process import interruption
from runner.process.errors import EXIT_INVALID, InvalidInput
from runner.process.locks import exclusive_lock
from runner.tracking.destination import resolve_tracking_uri

DEFAULT_EXPERIMENT = "backprop-runner"
LOCK_FILE = ".bprun-resume.lock"


class CannotResume(InvalidInput):
    pass


def parser() -> argparse.ArgumentParser:
    arguments = argparse.ArgumentParser(prog="bprun-resume", description=__doc__.split("\n\n")[0])
    arguments.add_argument(
        "parent", nargs="?", metavar="PARENT_RUN_ID", help="the sweep's parent run (default: the latest sweep)"
    )
    arguments.add_argument(
        "--tracking-uri", help="the store (default: MLFLOW_TRACKING_URI, else sqlite:///<current directory>/mlflow.db)"
    )
    arguments.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="where to look for the latest sweep")
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    interruption.install(report=True)
    quiet_mlflow()
    uri = arguments.tracking_uri or resolve_tracking_uri(None, os.getcwd())
    try:
        parent = _stopped_sweep(uri, arguments.parent, arguments.experiment)
        command = json.loads(parent.data.tags[names.SWEEP_ARGV])
        start_dir = Path(parent.data.tags.get(names.SWEEP_CWD, os.getcwd()))
        sweep_dir = (start_dir / parent.data.tags[names.SWEEP_DIR]).resolve()
        with _only_resume_of(sweep_dir) as other:
            if other:
                raise CannotResume(f"another bprun-resume of the sweep {parent.info.run_id} is running")
            _end_left_running(uri, parent.info.run_id)
            return _run_again(command, start_dir, sweep_dir, uri, parent.info.run_id)
    except InvalidInput as error:
        print(f"bprun-resume: {error}", file=sys.stderr)
        return EXIT_INVALID


def _stopped_sweep(uri: str, parent_id: str | None, experiment: str) -> Any:
    """The sweep's parent run, once it is known that it can be resumed."""
    # (lazy: --help and argument errors answer at once, without MLflow's imports)
    from mlflow.exceptions import MlflowException

    from runner.tracking.liveness import is_stale
    from runner.tracking.search import find_latest_sweep
    from runner.tracking.store import open_store

    client = open_store(uri)
    if parent_id is None:
        found = client.get_experiment_by_name(experiment)
        parent = find_latest_sweep(client, [found.experiment_id]) if found is not None else None
        if parent is None:
            raise CannotResume(f"no sweep in experiment {experiment!r} of {uri}")
    else:
        try:
            parent = client.get_run(parent_id)
        except MlflowException:
            raise CannotResume(
                f"no run {parent_id!r} in {uri} (is the sweep in another store? --tracking-uri)"
            ) from None
    label = f"{parent.info.run_id} ({parent.info.run_name})"
    if parent.data.tags.get(names.SWEEP) != "true":
        raise CannotResume(f"run {label} is not a sweep's parent run; bprun-rerun reruns a single run")
    if names.SWEEP_ARGV not in parent.data.tags:
        raise CannotResume(f"the sweep {label} was started by a bprun that did not record its command line")
    if parent.info.status == "RUNNING" and is_stale(parent.data.tags) is not True:
        raise CannotResume(
            f"the sweep {label} is still running (process {parent.data.tags.get(names.PID)} on "
            f"{parent.data.tags.get(names.HOST)}); stop it first"
        )
    return parent


def _end_left_running(uri: str, parent_id: str) -> None:
    """End KILLED the job runs the stopped sweep left RUNNING (their processes are gone)."""
    from mlflow.tracking import MlflowClient  # (lazy: see _stopped_sweep)

    from runner.tracking.liveness import end_stale_run, is_stale
    from runner.tracking.search import sweep_children

    client = MlflowClient(uri)
    for run in sweep_children(client, parent_id):
        if run.info.status == "RUNNING" and is_stale(run.data.tags) is not False:
            end_stale_run(client, run, found_by="bprun-resume")


def _run_again(command: list[str], start_dir: Path, sweep_dir: Path, uri: str, parent_id: str) -> int:
    """The sweep's command line again, in its folder, continuing its parent run and output folder."""
    from runner.commands import bprun  # (lazy: Hydra, once the sweep is known to resume)

    if start_dir.is_dir():
        os.chdir(start_dir)
    os.environ[names.ENV_TRACKING_URI] = uri
    os.environ[names.ENV_RESUME_PARENT] = parent_id
    print(f"bprun-resume: bprun {' '.join(command)} (in {start_dir})", flush=True)
    # Its own folder, whatever the command line said (or a new time stamp would give).
    command = [argument for argument in command if not argument.lstrip("+").startswith("hydra.sweep.dir=")]
    return bprun.run([*command, f"hydra.sweep.dir={sweep_dir}"])


@contextmanager
def _only_resume_of(sweep_dir: Path) -> Iterator[bool]:
    """Hold a lock in the sweep's folder while resuming it; yield True if another resume holds it."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(sweep_dir / LOCK_FILE) as taken:
        yield taken


if __name__ == "__main__":
    sys.exit(main())
