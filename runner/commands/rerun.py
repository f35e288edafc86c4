"""``bprun-rerun RUN_ID_OR_FOLDER [--tolerance X] [--tracking-uri URI]``: re-execute a tracked
run from its MLflow record and check that it repeats (``runner.reports.rerun``).

Exit codes: 0 identical, 1 different or no verdict (an artifact could not be fetched), 2 cannot
rerun or refused (nothing was trained), 3 rerun done but nothing to compare (an untracked run's
folder), 130/143 interrupted.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from runner.commands.common import command_logging, quiet_mlflow
from runner.process import interruption
from runner.process.errors import CommandError


def _tolerance(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r}: it must be a finite number >= 0")
    return value


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bprun-rerun",
        description="Re-execute a tracked bprun run from its MLflow record and check that it gives the same "
        "metrics and weights. Exit 0 identical, 1 different (or an artifact could not be fetched), 2 cannot "
        "rerun (or the data changed), 3 nothing to compare (an untracked run's folder).",
    )
    parser.add_argument(
        "source",
        metavar="RUN_ID_OR_FOLDER",
        help="an MLflow run id, or a Hydra output folder (outputs/<date>/<time>, its .hydra, or a multirun job folder)",
    )
    parser.add_argument(
        "--tolerance",
        type=_tolerance,
        default=0.0,
        help="values differ when |a - b| > TOLERANCE (default 0: bit for bit)",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="the store holding the run (default: the folder's mlflow_run.json, else "
        "MLFLOW_TRACKING_URI, else sqlite:///<current directory>/mlflow.db)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command; returns its exit code."""
    arguments = parser().parse_args(argv)
    interruption.install(report=True)
    from runner.reports import rerun as reruns  # (lazy: --help and argument errors answer at once)

    quiet_mlflow()
    try:
        with command_logging("bprun-rerun", reruns.log):
            report = reruns.rerun(arguments.source, tracking_uri=arguments.tracking_uri, tolerance=arguments.tolerance)
    except CommandError as error:  # cannot rerun or refused (2), an artifact not fetched (1)
        print(f"bprun-rerun: {error}", file=sys.stderr)
        return error.exit_code
    except interruption.Interrupted as stop:
        print(f"bprun-rerun: {stop.verb}; {stop.ended or 'nothing was rerun'}", file=sys.stderr)
        return stop.exit_code
    print(report.summary())
    if isinstance(report, reruns.SweepRerun):
        return report.exit_code
    if report.rerun_run_id:
        print(
            f"  run {report.original_run_id} rerun as {report.rerun_run_id} in {report.tracking_uri} "
            f"(experiment {report.experiment!r})"
        )
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
