"""The comparison table of a sweep's (or an experiment's) runs: one pandas row per run, ranked.

``runs_table`` turns runs into one DataFrame row per run: the swept values, final and best
``train_mse``/``val_mse``, epochs run, stop reason, duration, status and failure reason.
``rank_runs`` orders the rows by a metric; ``format_table`` and ``markdown_table`` print them.

A run without a validation split has no ``val_<x>``: wherever a table ranks ``val_<x>`` it falls
back to that run's ``train_<x>`` (the objective a sweep minimizes when there is no validation
split).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from pandas.api.types import is_numeric_dtype

from runner import names
from runner.tracking.history import MetricHistory, metric_history

DEFAULT_METRIC = names.DEFAULT_RANKING_METRIC
# Every table has final_/best_ columns for these, whether or not any run logged them.
SUMMARY_METRICS = ("train_mse", "val_mse")
UNSUCCESSFUL = ("FAILED", "KILLED")
# A run a pruner stopped early (stop_reason=pruned): FINISHED in MLflow, shown apart and not ranked
# with the runs that trained in full, whose final values it cannot be compared with.
PRUNED = "PRUNED"
UNRANKED = (*UNSUCCESSFUL, PRUNED)
# Whole-experiment reports show the params that differ between runs, except where a run was
# tracked and a restatement of model.hidden plus the data set's shape.
IGNORED_PARAM_PREFIXES = ("tracking.",)
DERIVED_PARAMS = ("model.layer_sizes",)
FAILURE_REASON_WIDTH = 60  # characters of failure_reason shown in the terminal and in Markdown

# run id -> metric name -> history
Histories = dict[str, dict[str, MetricHistory]]


# --- the table -------------------------------------------------------------------------------


def fallback_metric(metric: str) -> str | None:
    """``train_<x>`` for ``val_<x>``: what a run without a validation split has instead."""
    return "train_" + metric[len("val_") :] if metric.startswith("val_") else None


def higher_is_better(metric: str) -> bool:
    return metric.endswith("accuracy")


def table_metrics(metrics: Iterable[str] = ()) -> list[str]:
    """The metrics a table has columns for: the summary ones, ``metrics``, and their fallbacks."""
    metric_names: list[str] = []
    for metric in (*SUMMARY_METRICS, *metrics):
        for name in (fallback_metric(metric), metric):
            if name and name not in metric_names:
                metric_names.append(name)
    return metric_names


def fetch_histories(
    client: MlflowClient, runs: Sequence[Run], metrics: Iterable[str], histories: Histories | None = None
) -> Histories:
    """The histories of ``metrics`` for ``runs``: one ``get_metric_history`` call per run and
    metric the run actually logged (its latest values list them), none for histories already in
    ``histories``, which is filled in and returned."""
    histories = {} if histories is None else histories
    metrics = list(metrics)
    for run in runs:
        run_histories = histories.setdefault(run.info.run_id, {})
        for metric in metrics:
            key = names.metric_key(run.data.metrics, metric)
            if metric in run_histories or key is None:
                continue
            run_histories[metric] = metric_history(client, run.info.run_id, key)
    return histories


def runs_table(
    client: MlflowClient,
    runs: Sequence[Run],
    swept_keys: Sequence[str] | None = None,
    metrics: Iterable[str] = (),
    histories: Histories | None = None,
    unrecorded: Sequence[tuple[Sequence[str], str]] = (),
) -> tuple[pd.DataFrame, Histories]:
    """One row per run, in the order given, and the metric histories read to build it.

    Columns: ``run_id``, ``run_name``, ``status``; one per swept key (``swept_keys`` as typed,
    without a leading ``+``/``~``; with None, every param that differs between the runs, see
    ``differing_params``); ``final_<m>`` and ``best_<m>`` for ``train_mse``, ``val_mse``, each of
    ``metrics`` and their train fallbacks (NaN where a run did not log ``m``); ``epochs_run``,
    ``stop_reason``, ``duration_s`` (NaN while running), ``failure_reason``.

    A swept key ``k`` reads param ``k``, else ``choice.k`` (the option of config group ``k``),
    else ``k.name``. A column whose values all parse as numbers holds floats, otherwise strings.
    ``unrecorded`` adds a FAILED row for each job that failed before it had a run: its
    ``(overrides, reason)``, the swept values read from its overrides.

    ``histories`` (run id -> metric -> ``MetricHistory``), when given, is used as a cache and
    filled in; the histories are returned for ``write_report``'s plots.
    """
    metric_names = table_metrics(metrics)
    histories = fetch_histories(client, runs, metric_names, histories)
    if swept_keys is None:
        swept = differing_params(runs)
    else:
        swept = {
            clean_key(key): [_swept_value(run, clean_key(key)) for run in runs]
            + [_override_value(overrides, clean_key(key)) for overrides, _ in unrecorded]
            for key in swept_keys
        }
    missing = [None] * len(unrecorded)
    columns: dict[str, Any] = {
        "run_id": [run.info.run_id for run in runs] + [""] * len(unrecorded),
        "run_name": [run.info.run_name for run in runs] + [" ".join(overrides) for overrides, _ in unrecorded],
        "status": [_status(run) for run in runs] + ["FAILED"] * len(unrecorded),
    }
    for key, raw in swept.items():
        columns[key] = _parse_values([*raw, *missing] if swept_keys is None else raw)
    for name in metric_names:
        run_histories = [histories.get(run.info.run_id, {}).get(name) for run in runs] + missing
        columns[f"final_{name}"] = [h.final if h else math.nan for h in run_histories]
        columns[f"best_{name}"] = [h.best(higher_is_better(name)) if h else math.nan for h in run_histories]
    columns["epochs_run"] = pd.array([_epochs_run(run, histories) for run in runs] + missing, dtype="Int64")
    columns["stop_reason"] = [run.data.tags.get(names.STOP_REASON) for run in runs] + missing
    columns["duration_s"] = [
        (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time and run.info.start_time else math.nan
        for run in runs
    ] + [math.nan] * len(unrecorded)
    columns["failure_reason"] = [run.data.tags.get(names.FAILURE_REASON) for run in runs] + [
        reason for _, reason in unrecorded
    ]
    table = pd.DataFrame(columns)
    for name in ("run_name", "stop_reason", "failure_reason"):
        table[name] = table[name].astype("str")  # also when every value is missing
    return table, histories


def by_dataset(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """``runs`` grouped by the data set they trained on (tag ``dataset``, else param
    ``dataset.name``), in order of first appearance: runs of different data sets are never
    ranked against each other."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        dataset = run.data.tags.get(names.DATASET) or run.data.params.get("dataset.name") or "unknown"
        groups.setdefault(dataset, []).append(run)
    return groups


def clean_key(key: str) -> str:
    """A swept key without Hydra's add/delete prefixes (``+key``, ``++key``, ``~key``)."""
    return key.lstrip("+~")


def _swept_value(run: Run, key: str) -> str | None:
    params = run.data.params
    for name in (key, f"{names.CHOICE_PARAM_PREFIX}{key}", f"{key}.name"):
        if name in params:
            return params[name]
    return None


def _override_value(overrides: Sequence[str], key: str) -> str | None:
    """``key``'s value in a job's override list, formatted as its param would be (lists as JSON
    with ``, ``, so that ``[8,8]`` and the logged ``[8, 8]`` are one value)."""
    for override in overrides:
        name, equals, value = str(override).partition("=")
        if equals and clean_key(name) == key:
            try:
                parsed = json.loads(value)
            except ValueError:
                return value
            return value if isinstance(parsed, (int, float, str)) else json.dumps(parsed)
    return None


def differing_params(runs: Sequence[Run]) -> dict[str, list[str | None]]:
    """The params whose values differ between ``runs``, as ``{column: [raw value per run]}``.

    ``tracking.*`` and ``model.layer_sizes`` never count. A config group's selector
    (``choice.<group>``, named ``<group>`` in the table; else ``<group>.name``) explains the other
    params of that group when they are a function of it: different options of a group come with
    different defaults, which are not separate dimensions of the comparison.
    """
    param_names = sorted({name for run in runs for name in run.data.params})
    values = {
        name: [run.data.params.get(name) for run in runs]
        for name in param_names
        if not name.startswith(IGNORED_PARAM_PREFIXES) and name not in DERIVED_PARAMS
    }
    differing = {name: column for name, column in values.items() if len(set(column)) > 1}
    selectors: dict[str, str] = {}
    for name in differing:
        if name.startswith(names.CHOICE_PARAM_PREFIX):
            selectors[name[len(names.CHOICE_PARAM_PREFIX) :]] = name
    for name in differing:
        group, _, rest = name.partition(".")
        if rest == "name":
            selectors.setdefault(group, name)
    columns: dict[str, list[str | None]] = {}
    for name, column in differing.items():
        if name.startswith(names.CHOICE_PARAM_PREFIX):
            columns[name[len(names.CHOICE_PARAM_PREFIX) :]] = column
            continue
        selector = selectors.get(name.partition(".")[0])
        if selector and selector != name and _is_function_of(differing[selector], column):
            continue
        columns[name] = column
    return columns


def _is_function_of(keys: list[Any], values: list[Any]) -> bool:
    seen: dict[Any, Any] = {}
    return all(seen.setdefault(key, value) == value for key, value in zip(keys, values))


def _parse_values(raw: list[str | None]) -> list[Any]:
    """Floats when every present value parses as a number (``null`` is missing), else strings."""
    present = [value for value in raw if value is not None and value != "null"]
    if present and all(_is_number(value) for value in present):
        return [float(value) if value is not None and value != "null" else math.nan for value in raw]
    return list(raw)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _epochs_run(run: Run, histories: Histories) -> int | None:
    """The ``epochs_run`` tag, else the epochs of the train history (a run that crashed)."""
    tag = run.data.tags.get(names.EPOCHS_RUN)
    if tag is not None and tag.isdigit():
        return int(tag)
    for name, history in histories.get(run.info.run_id, {}).items():
        if name.startswith("train_") and history.steps.size:
            return int(history.steps.max()) + 1
    return None


# --- ranking ---------------------------------------------------------------------------------

_FIXED_COLUMNS = ("run_id", "run_name", "status", "epochs_run", "stop_reason", "duration_s", "failure_reason")


def swept_columns(table: pd.DataFrame) -> list[str]:
    """The table's swept-key columns (everything but the fixed and the metric columns)."""
    return [
        column
        for column in table.columns
        if column not in _FIXED_COLUMNS and not column.startswith(("final_", "best_"))
    ]


def _final_values(table: pd.DataFrame, metric: str) -> pd.Series:
    """The ``final_<metric>`` column as floats; all NaN when the table has no such column."""
    if f"final_{metric}" in table:
        return table[f"final_{metric}"].astype(float)
    return pd.Series(math.nan, index=table.index)


def ranking_values(table: pd.DataFrame, metric: str) -> pd.Series:
    """The final ``metric`` of each row; ``train_<x>`` where a row has no ``val_<x>``."""
    fallback = fallback_metric(metric)
    values = _final_values(table, metric)
    return values.fillna(_final_values(table, fallback)) if fallback else values


def uses_fallback(table: pd.DataFrame, metric: str) -> bool:
    """Whether some row is ranked by its train metric for want of ``metric``."""
    fallback = fallback_metric(metric)
    if fallback is None:
        return False
    return bool((_final_values(table, metric).isna() & _final_values(table, fallback).notna()).any())


def _status(run: Any) -> str:
    """The run's status as the tables show it: MLflow's, or PRUNED for a run a pruner stopped."""
    return PRUNED if run.data.tags.get(names.STOP_REASON) == "pruned" else str(run.info.status)


def rank_runs(table: pd.DataFrame, metric: str = DEFAULT_METRIC, top_k: int | None = None) -> pd.DataFrame:
    """The rows best first by the final ``metric`` (lowest, or highest for accuracies); failed and
    killed runs and runs without a value come last. Ties keep their order. ``top_k`` keeps only
    the first rows."""
    values = ranking_values(table, metric).to_numpy(dtype=float)
    last = np.isnan(values) | table["status"].isin(UNRANKED).to_numpy()
    order_value = np.where(last, 0.0, -values if higher_is_better(metric) else values)
    order = np.lexsort((order_value, last))  # the last key sorts first; lexsort is stable
    ranked = table.iloc[order].reset_index(drop=True)
    return ranked if top_k is None else ranked.head(top_k)


def sort_description(table: pd.DataFrame, metric: str) -> str:
    """How the rows are ranked, in words."""
    direction = "highest" if higher_is_better(metric) else "lowest"
    text = f"final {metric}, {direction} first"
    if uses_fallback(table, metric):
        text += f" ({fallback_metric(metric)} for runs without a validation split)"
    return text + "; failed runs last"


# --- text ------------------------------------------------------------------------------------


def _format_cell(column: str, value: Any) -> str:
    """Compact text for one value: metrics to 5 significant digits, durations to 0.1 s."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (float, np.floating)):
        if column == "duration_s":
            return f"{value:.1f}"
        if column.startswith(("final_", "best_")):
            return f"{value:.5g}"
        return f"{value:.6g}"
    return " ".join(str(value).split())  # one line whatever the text


def _display_table(table: pd.DataFrame, columns: Sequence[str]) -> list[list[str]]:
    rows = []
    for record in table[list(columns)].itertuples(index=False):
        cells = [_format_cell(column, value) for column, value in zip(columns, record)]
        rows.append(
            [
                cell
                if column != "failure_reason" or len(cell) <= FAILURE_REASON_WIDTH
                else cell[: FAILURE_REASON_WIDTH - 1] + "…"
                for column, cell in zip(columns, cells)
            ]
        )
    return rows


def is_numeric(table: pd.DataFrame, column: str) -> bool:
    return is_numeric_dtype(table[column].dtype)


def _present_columns(table: pd.DataFrame, metric: str, compact: bool) -> list[str]:
    """The columns worth showing: metric columns only where some run has a value, the ranked
    metric first. ``compact`` (for a terminal) drops the run id, and the best values of the
    metrics the table is not ranked by."""
    ranked_by = {metric, fallback_metric(metric)}
    metric_columns = [column for column in table.columns if column.startswith(("final_", "best_"))]
    # The ranked metric, its fallback, then the others in table order (the sort is stable).
    metric_columns.sort(key=lambda column: {metric: 0, fallback_metric(metric): 1}.get(column.split("_", 1)[1], 2))
    shown = [
        column
        for column in metric_columns
        if table[column].notna().any()
        and not (compact and column.startswith("best_") and column[len("best_") :] not in ranked_by)
    ]
    return [
        *([] if compact else ["run_id"]),
        "run_name",
        "status",
        *swept_columns(table),
        *shown,
        "epochs_run",
        "stop_reason",
        "duration_s",
        "failure_reason",
    ]


def format_table(table: pd.DataFrame, metric: str = DEFAULT_METRIC, top_k: int | None = None) -> str:
    """The ranked table as fixed-width text for a terminal: a rank column, numbers right-aligned,
    ``-`` for missing values, long failure reasons cut."""
    ranked = rank_runs(table, metric, top_k)
    columns = _present_columns(ranked, metric, compact=True)
    header = ["#", *columns]
    # Runs without the metric (or failed) are listed after the ranked ones, without a rank.
    unranked = (ranking_values(ranked, metric).isna() | ranked["status"].isin(UNRANKED)).to_numpy()
    rows = [
        ["-" if unranked[index] else str(index + 1), *cells]
        for index, cells in enumerate(_display_table(ranked, columns))
    ]
    right = [True, *(is_numeric(ranked, column) for column in columns)]
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.rjust(width) if align else cell.ljust(width) for cell, width, align in zip(cells, widths, right)
        ).rstrip()

    shown = f"top {len(ranked)} of {len(table)}" if top_k is not None and top_k < len(table) else f"{len(table)}"
    lines = [
        f"{shown} run{'' if len(table) == 1 else 's'}, ranked by {sort_description(table, metric)}",
        line(header),
        line(["-" * width for width in widths]),
        *map(line, rows),
    ]
    return "\n".join(lines)


def markdown_table(ranked: pd.DataFrame, metric: str = DEFAULT_METRIC) -> str:
    """``ranked`` (already in order) as a GitHub-flavoured Markdown table, numbers right-aligned."""
    columns = _present_columns(ranked, metric, compact=False)
    right = [is_numeric(ranked, column) for column in columns]

    def escape(cell: str) -> str:
        return cell.replace("\\", "\\\\").replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---:" if align else "---" for align in right) + "|"]
    lines += ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in _display_table(ranked, columns)]
    return "\n".join(lines)
