"""``bprun-report``: compare the runs of one sweep (the latest by default), or of a whole
experiment, side by side: a ranked table in the terminal, and ``runs.csv``, ``runs.md`` and charts
in ``reports/<parent run id or experiment>/`` (``runner.reports``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runner import names
from runner.commands.common import quiet_mlflow
from runner.core.schema import TrackingConfig
from runner.process.errors import EXIT_INVALID, InvalidInput
from runner.tracking.destination import resolve_tracking_uri

DEFAULT_EXPERIMENT = TrackingConfig.experiment
DEFAULT_METRIC = names.DEFAULT_RANKING_METRIC


class NothingToReport(InvalidInput):
    """No store, no experiment, no such run, no runs, an unknown metric."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bprun-report",
        description="Compare the runs of a sweep (the latest one by default) or of a whole experiment: "
        "a ranked table, CSV, Markdown and plots.",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--parent", metavar="RUN_ID", help="the sweep's parent run id")
    which.add_argument(
        "--experiment",
        metavar="NAME",
        help=f"the experiment whose latest sweep to report (default: {DEFAULT_EXPERIMENT})",
    )
    parser.add_argument(
        "--all-runs", action="store_true", help="report every run of the experiment, not only its latest sweep"
    )
    parser.add_argument(
        "--metric",
        default=DEFAULT_METRIC,
        help="metric to rank and plot by (default: %(default)s; train_<x> stands in "
        "for val_<x> where a run has no validation split)",
    )
    parser.add_argument("--top-k", type=_positive_int, metavar="N", help="keep only the N best runs")
    parser.add_argument(
        "--color-by", metavar="KEY", help="swept key that colours the learning curves (default: the first swept key)"
    )
    parser.add_argument(
        "--output", metavar="DIR", type=Path, help="output folder (default: reports/<parent run id or experiment name>)"
    )
    parser.add_argument(
        "--tracking-uri", metavar="URI", help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)"
    )
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """The ``bprun-report`` command. Returns 0, or 2 when there is nothing to report."""
    args = _parser().parse_args(argv)
    if args.all_runs and args.parent:
        print("bprun-report: error: --all-runs reports an experiment, not a sweep (drop --parent)", file=sys.stderr)
        return EXIT_INVALID
    uri = args.tracking_uri or resolve_tracking_uri(None, os.getcwd())
    quiet_mlflow()
    from mlflow.exceptions import MlflowException  # (lazy: --help and argument errors answer at once)

    try:
        _report(args, uri)
    except InvalidInput as error:
        print(f"bprun-report: error: {error}", file=sys.stderr)
        return EXIT_INVALID
    except MlflowException as error:  # an unreadable store: an old schema, a server that refuses
        print(f"bprun-report: error: cannot read the MLflow store {uri}: {error.message}", file=sys.stderr)
        return EXIT_INVALID
    return 0


def _report(args: argparse.Namespace, uri: str) -> None:
    # (lazy: MLflow, pandas and matplotlib, seconds of imports, once there is something to report)
    from runner import reports
    from runner.reports.table import by_dataset, clean_key, format_table, ranking_values, runs_table, swept_columns
    from runner.tracking.store import open_store

    client = open_store(uri)
    runs, heading, output_name, swept_keys = _chosen_runs(args, client, uri)
    groups = by_dataset(runs)
    tables = {
        dataset: runs_table(client, group, swept_keys, metrics=[args.metric]) for dataset, group in groups.items()
    }
    if all(ranking_values(table, args.metric).isna().all() for table, _ in tables.values()):
        logged = sorted(
            {names.short_metric_name(key) for run in runs for key in run.data.metrics if names.layer_of(key) is None}
        )
        raise NothingToReport(f"no run has a value of {args.metric!r}; logged: {', '.join(logged) or 'nothing'}")
    keys = sorted({key for table, _ in tables.values() for key in swept_columns(table)})
    if args.color_by and clean_key(args.color_by) not in keys:
        raise NothingToReport(
            f"--color-by {args.color_by!r} is not a swept key; choose one of {', '.join(keys) or '(none)'}"
        )

    output = args.output if args.output is not None else Path("reports") / reports.file_part(output_name)
    print(heading)
    written = []
    for dataset, (table, histories) in tables.items():
        # One section per data set: their metrics are not comparable.
        folder = output if len(tables) == 1 else output / reports.file_part(dataset)
        color_by = args.color_by if args.color_by and clean_key(args.color_by) in swept_columns(table) else None
        written += reports.write_report(
            table, histories, folder, metric=args.metric, color_by=color_by, top_k=args.top_k
        )
        print()
        if len(tables) > 1:
            print(f"data set {dataset}:")
        print(format_table(table, args.metric, args.top_k))
    print()
    print(f"wrote {len(written)} files to {output}:")
    for path in written:
        print(f"  {path}")


def _chosen_runs(args: argparse.Namespace, client: Any, uri: str) -> tuple[list[Any], str, str, list[str] | None]:
    """The runs to compare, a heading, the name of the output folder and the sweep's swept keys
    (None outside a sweep): a sweep's jobs (``--parent``, else the latest sweep), or with
    ``--all-runs`` every run of the experiment."""
    # (lazy: see _report)
    from mlflow.exceptions import MlflowException

    from runner.tracking.search import experiment_runs, find_latest_sweep, sweep_jobs

    name = args.experiment or DEFAULT_EXPERIMENT
    if args.parent:
        try:
            parent = client.get_run(args.parent)
        except MlflowException:
            raise NothingToReport(f"no run {args.parent!r} in {uri}") from None
    else:
        experiment = client.get_experiment_by_name(name)
        if experiment is None or experiment.lifecycle_stage != "active":
            known = ", ".join(repr(e.name) for e in client.search_experiments()) or "none"
            raise NothingToReport(f"no experiment {name!r} in {uri} (experiments: {known})")
        if args.all_runs:
            runs = experiment_runs(client, experiment.experiment_id)
            if not runs:
                raise NothingToReport(f"experiment {name!r} holds no runs")
            return runs, f"All {len(runs)} runs of experiment {name!r}", name, None
        parent = find_latest_sweep(client, [experiment.experiment_id])
        if parent is None:
            raise NothingToReport(f"no sweep in experiment {name!r} in {uri} (--all-runs reports its runs one by one)")
    runs = sweep_jobs(client, parent.info.run_id)
    if not runs:
        raise NothingToReport(f"the sweep {parent.info.run_id} has no job runs")
    swept_keys = _parse_swept_keys(parent.data.tags.get(names.SWEPT_KEYS))
    return runs, _sweep_heading(client, parent), parent.info.run_id, swept_keys


def _parse_swept_keys(text: str | None) -> list[str] | None:
    """The parent's swept keys; None (compare whatever differs) when absent, empty or unreadable."""
    try:
        keys = json.loads(text) if text else None
    except ValueError:
        return None
    return [str(key) for key in keys] if isinstance(keys, list) and keys else None


def _sweep_heading(client: Any, parent: Any) -> str:
    experiment = client.get_experiment(parent.info.experiment_id)
    command = parent.data.tags.get(names.SWEEP_COMMAND)
    lines = [
        f"Sweep {parent.info.run_id} ({parent.info.run_name}, {parent.info.status}) in experiment {experiment.name!r}"
    ]
    if command:
        lines.append(f"  {command}")
    view = parent.data.tags.get(names.SWEEP_VIEW)
    if view:
        from runner.tracking.destination import page_address  # (lazy: see _report)

        lines.append(f"  in the MLflow UI, ranked with their charts: {page_address(client.tracking_uri, view)}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
