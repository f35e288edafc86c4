"""``bprun-report``: compare the runs of one sweep, or of a whole experiment, side by side.

The runs come from MLflow: a sweep is a parent run tagged ``bprun.sweep=true`` whose jobs are
its children (tag ``mlflow.parentRunId``). ``runs_table`` turns runs into one DataFrame row per
run: the swept values, final and best ``train_mse``/``val_mse``, epochs run, stop reason,
duration, status and failure reason. ``write_report`` ranks the rows by a metric and writes

- ``runs.csv`` and ``runs.md`` (the ranked table),
- ``learning_curves.png``: every run's history of the metric, overlaid, coloured by a swept key,
- ``final_<metric>_vs_<key>.png`` for each numeric swept key.

A run without a validation split has no ``val_<x>``: wherever the report ranks or draws
``val_<x>`` it falls back to that run's ``train_<x>`` (the objective a sweep minimizes, see
``runner.app.sweep_objective``), and the plots draw those runs dashed.

mlflow, pandas and matplotlib are imported inside the functions (together about 3 s): the
command's ``--help`` and its argument errors stay instant. Plots use matplotlib's object-oriented
API on an Agg canvas, as ``runner.plots`` does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from runner.plots import PNG_OPTIONS

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

DEFAULT_EXPERIMENT = "backprop-runner"
DEFAULT_METRIC = "val_mse"
SWEEP_TAG = "bprun.sweep"
PARENT_TAG = "mlflow.parentRunId"
SWEPT_KEYS_TAG = "sweep.swept_keys"
COMMAND_TAG = "sweep.command"
# Written by runner.sweep.record_failed_job for a job that failed before its run had params.
JOB_OVERRIDES_TAG = "job.overrides"
CHOICE_PREFIX = "choice."

# Every table has final_/best_ columns for these, whether or not any run logged them.
SUMMARY_METRICS = ("train_mse", "val_mse")
UNSUCCESSFUL = ("FAILED", "KILLED")

# Whole-experiment reports show the params that differ between runs, except where a run was
# tracked and a restatement of model.hidden plus the data set's shape.
IGNORED_PARAM_PREFIXES = ("tracking.",)
DERIVED_PARAMS = ("model.layer_sizes",)

RUNS_CSV = "runs.csv"
RUNS_MARKDOWN = "runs.md"
LEARNING_CURVES = "learning_curves.png"

DPI = 100
LEARNING_CURVES_SIZE = (9.0, 5.4)  # inches: 900 x 540 pixels at DPI
FINAL_VS_KEY_SIZE = (7.5, 4.8)
# Lines this short also get markers, so that a one-epoch run still shows a point.
MARKERS_UP_TO = 25
# More values than this get a plain colour bar (and no per-value legend or ticks).
LABELLED_VALUES_UP_TO = 10
# A swept value gets its own tick label only this far (a fraction of the axis, on its scale) from
# the last one labelled: an Optuna search puts trials close together (0.224, 0.229).
X_LABEL_GAP = 0.1  # the x axis of a final-vs-key chart: room for a label like 0.0891
COLOUR_BAR_LABEL_GAP = 0.05  # the vertical colour bar: room for a line of text
FAILED_STYLE = dict(marker="x", color="#d62728", markersize=9, markeredgewidth=2.2, linestyle="none")
FAILURE_REASON_WIDTH = 60  # characters of failure_reason shown in the terminal and in Markdown

# MLflow stores an infinite metric as the largest double; read it back as what it was.
_STORED_INFINITY = 1.7e308


class ReportError(Exception):
    """Nothing to report: no store, no experiment, no such run, no runs, an unknown metric."""


@dataclass
class MetricHistory:
    """One metric of one run: ``values[i]`` was logged at ``steps[i]`` (epochs, ascending)."""

    steps: np.ndarray
    values: np.ndarray

    @property
    def final(self) -> float:
        return float(self.values[-1]) if self.values.size else math.nan

    def best(self, higher_is_better: bool = False) -> float:
        finite = self.values[np.isfinite(self.values)]
        if finite.size == 0:
            return math.nan
        return float(finite.max() if higher_is_better else finite.min())


# run id -> metric name -> history
Histories = dict[str, dict[str, MetricHistory]]


# --- finding runs ----------------------------------------------------------------------------

def _search_all(client: "MlflowClient", experiment_ids: Sequence[str], filter_string: str = "",
                order_by: Sequence[str] = ("attributes.start_time ASC",)) -> list["Run"]:
    """Every active run matching ``filter_string``, across result pages."""
    runs: list[Run] = []
    page_token = None
    while True:
        page = client.search_runs(list(experiment_ids), filter_string, max_results=1000,
                                  order_by=list(order_by), page_token=page_token)
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


def find_latest_sweep(client: "MlflowClient", experiment_ids: Sequence[str]) -> "Run | None":
    """The most recently started sweep parent run (tag ``bprun.sweep=true``), or None."""
    found = client.search_runs(list(experiment_ids), f"tags.`{SWEEP_TAG}` = 'true'", max_results=1,
                               order_by=["attributes.start_time DESC"])
    return found[0] if found else None


def sweep_children(client: "MlflowClient", parent_run_id: str) -> list["Run"]:
    """The job runs of a sweep (tag ``mlflow.parentRunId``), oldest first."""
    # Run ids are hex (uuid4); refuse anything else rather than quote it into a filter.
    if not re.fullmatch(r"[0-9A-Za-z-]+", parent_run_id):
        raise ValueError(f"not a run id: {parent_run_id!r}")
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    return _search_all(client, [experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'")


def experiment_runs(client: "MlflowClient", experiment_id: str) -> list["Run"]:
    """Every run of an experiment except sweep parents, oldest first."""
    # A filter cannot select runs *without* a tag, so the parents are dropped here.
    return [run for run in _search_all(client, [experiment_id])
            if run.data.tags.get(SWEEP_TAG) != "true"]


# --- the table -------------------------------------------------------------------------------

def fallback_metric(metric: str) -> str | None:
    """``train_<x>`` for ``val_<x>``: what a run without a validation split has instead."""
    return "train_" + metric[len("val_"):] if metric.startswith("val_") else None


def higher_is_better(metric: str) -> bool:
    return metric.endswith("accuracy")


def table_metrics(metrics: Iterable[str] = ()) -> list[str]:
    """The metrics a table has columns for: the summary ones, ``metrics``, and their fallbacks."""
    names: list[str] = []
    for metric in (*SUMMARY_METRICS, *metrics):
        for name in (fallback_metric(metric), metric):
            if name and name not in names:
                names.append(name)
    return names


def fetch_histories(client: "MlflowClient", runs: Sequence["Run"], metrics: Iterable[str],
                    histories: Histories | None = None) -> Histories:
    """The histories of ``metrics`` for ``runs``: one ``get_metric_history`` call per run and
    metric the run actually logged (its latest values list them), none for histories already in
    ``histories``, which is filled in and returned."""
    histories = {} if histories is None else histories
    metrics = list(metrics)
    for run in runs:
        run_histories = histories.setdefault(run.info.run_id, {})
        for metric in metrics:
            if metric in run_histories or metric not in run.data.metrics:
                continue
            run_histories[metric] = _to_history(client.get_metric_history(run.info.run_id, metric))
    return histories


def _to_history(measurements: Sequence[Any]) -> MetricHistory:
    """Steps ascending; a step logged twice keeps its latest value."""
    by_step: dict[int, float] = {}
    for measurement in sorted(measurements, key=lambda m: (m.step, m.timestamp)):
        by_step[measurement.step] = measurement.value
    values = np.array(list(by_step.values()), dtype=float)
    stored_infinity = np.abs(values) >= _STORED_INFINITY
    values[stored_infinity] = np.copysign(np.inf, values[stored_infinity])
    return MetricHistory(np.array(list(by_step), dtype=float), values)


def runs_table(client: "MlflowClient", runs: Sequence["Run"], swept_keys: Sequence[str] | None = None,
               metrics: Iterable[str] = (), histories: Histories | None = None
               ) -> tuple["pd.DataFrame", Histories]:
    """One row per run, in the order given, and the metric histories read to build it.

    Columns: ``run_id``, ``run_name``, ``status``; one per swept key (``swept_keys`` as typed,
    without a leading ``+``/``~``; with None, every param that differs between the runs, see
    ``differing_params``); ``final_<m>`` and ``best_<m>`` for ``train_mse``, ``val_mse``, each of
    ``metrics`` and their train fallbacks (NaN where a run did not log ``m``); ``epochs_run``,
    ``stop_reason``, ``duration_s`` (NaN while running), ``failure_reason``.

    A swept key ``k`` reads param ``k``, else ``choice.k`` (the option of config group ``k``),
    else ``k.name``, else the job's own override (a job that failed before logging params). A
    column whose values all parse as numbers holds floats, otherwise strings.

    ``histories`` (run id -> metric -> ``MetricHistory``), when given, is used as a cache and
    filled in; the histories are returned for ``write_report``'s plots.
    """
    import pandas as pd

    names = table_metrics(metrics)
    histories = fetch_histories(client, runs, names, histories)
    if swept_keys is None:
        swept = differing_params(runs)
    else:
        swept = {_clean_key(key): [_swept_value(run, _clean_key(key)) for run in runs] for key in swept_keys}

    columns: dict[str, Any] = {
        "run_id": [run.info.run_id for run in runs],
        "run_name": [run.info.run_name for run in runs],
        "status": [run.info.status for run in runs],
    }
    for key, raw in swept.items():
        columns[key] = _parse_values(raw)
    for name in names:
        run_histories = [histories.get(run.info.run_id, {}).get(name) for run in runs]
        columns[f"final_{name}"] = [h.final if h else math.nan for h in run_histories]
        columns[f"best_{name}"] = [h.best(higher_is_better(name)) if h else math.nan for h in run_histories]
    columns["epochs_run"] = pd.array([_epochs_run(run, histories) for run in runs], dtype="Int64")
    columns["stop_reason"] = [run.data.tags.get("stop_reason") for run in runs]
    columns["duration_s"] = [(run.info.end_time - run.info.start_time) / 1000
                             if run.info.end_time and run.info.start_time else math.nan for run in runs]
    columns["failure_reason"] = [run.data.tags.get("failure_reason") for run in runs]
    table = pd.DataFrame(columns)
    for name in ("run_name", "stop_reason", "failure_reason"):
        table[name] = table[name].astype("str")  # also when every value is missing
    return table, histories


def _clean_key(key: str) -> str:
    """A swept key without Hydra's add/delete prefixes (``+key``, ``++key``, ``~key``)."""
    return key.lstrip("+~")


def _swept_value(run: "Run", key: str) -> str | None:
    params = run.data.params
    for name in (key, f"{CHOICE_PREFIX}{key}", f"{key}.name"):
        if name in params:
            return params[name]
    return _override_value(run.data.tags.get(JOB_OVERRIDES_TAG), key)


def _override_value(overrides_json: str | None, key: str) -> str | None:
    """``key``'s value in a job's override list, formatted as its param would be (lists as JSON
    with ``, ``, so that ``[8,8]`` and the logged ``[8, 8]`` are one value)."""
    try:
        overrides = json.loads(overrides_json) if overrides_json else []
    except ValueError:
        return None
    for override in overrides:
        name, equals, value = str(override).partition("=")
        if equals and _clean_key(name) == key:
            try:
                parsed = json.loads(value)
            except ValueError:
                return value
            return value if isinstance(parsed, (int, float, str)) else json.dumps(parsed)
    return None


def differing_params(runs: Sequence["Run"]) -> dict[str, list[str | None]]:
    """The params whose values differ between ``runs``, as ``{column: [raw value per run]}``.

    ``tracking.*`` and ``model.layer_sizes`` never count. A config group's selector
    (``choice.<group>``, named ``<group>`` in the table; else ``<group>.name``) explains the other
    params of that group when they are a function of it: different options of a group come with
    different defaults, which are not separate dimensions of the comparison.
    """
    names = sorted({name for run in runs for name in run.data.params})
    values = {name: [run.data.params.get(name) for run in runs] for name in names
              if not name.startswith(IGNORED_PARAM_PREFIXES) and name not in DERIVED_PARAMS}
    differing = {name: column for name, column in values.items() if len(set(column)) > 1}
    selectors: dict[str, str] = {}
    for name in differing:
        if name.startswith(CHOICE_PREFIX):
            selectors[name[len(CHOICE_PREFIX):]] = name
    for name in differing:
        group, _, rest = name.partition(".")
        if rest == "name":
            selectors.setdefault(group, name)
    columns: dict[str, list[str | None]] = {}
    for name, column in differing.items():
        if name.startswith(CHOICE_PREFIX):
            columns[name[len(CHOICE_PREFIX):]] = column
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


def _epochs_run(run: "Run", histories: Histories) -> int | None:
    """The ``epochs_run`` tag, else the epochs of the train history (a run that crashed)."""
    tag = run.data.tags.get("epochs_run")
    if tag is not None and tag.isdigit():
        return int(tag)
    for name, history in histories.get(run.info.run_id, {}).items():
        if name.startswith("train_") and history.steps.size:
            return int(history.steps.max()) + 1
    return None


# --- ranking ---------------------------------------------------------------------------------

_FIXED_COLUMNS = ("run_id", "run_name", "status", "epochs_run", "stop_reason", "duration_s", "failure_reason")


def swept_columns(table: "pd.DataFrame") -> list[str]:
    """The table's swept-key columns (everything but the fixed and the metric columns)."""
    return [column for column in table.columns
            if column not in _FIXED_COLUMNS and not column.startswith(("final_", "best_"))]


def _final_values(table: "pd.DataFrame", metric: str) -> "pd.Series":
    """The ``final_<metric>`` column as floats; all NaN when the table has no such column."""
    import pandas as pd

    if f"final_{metric}" in table:
        return table[f"final_{metric}"].astype(float)
    return pd.Series(math.nan, index=table.index)


def ranking_values(table: "pd.DataFrame", metric: str) -> "pd.Series":
    """The final ``metric`` of each row; ``train_<x>`` where a row has no ``val_<x>``."""
    fallback = fallback_metric(metric)
    values = _final_values(table, metric)
    return values.fillna(_final_values(table, fallback)) if fallback else values


def uses_fallback(table: "pd.DataFrame", metric: str) -> bool:
    """Whether some row is ranked by its train metric for want of ``metric``."""
    fallback = fallback_metric(metric)
    if fallback is None:
        return False
    return bool((_final_values(table, metric).isna() & _final_values(table, fallback).notna()).any())


def rank_runs(table: "pd.DataFrame", metric: str = DEFAULT_METRIC, top_k: int | None = None) -> "pd.DataFrame":
    """The rows best first by the final ``metric`` (lowest, or highest for accuracies); failed and
    killed runs and runs without a value come last. Ties keep their order. ``top_k`` keeps only
    the first rows."""
    values = ranking_values(table, metric).to_numpy(dtype=float)
    last = np.isnan(values) | table["status"].isin(UNSUCCESSFUL).to_numpy()
    order_value = np.where(last, 0.0, -values if higher_is_better(metric) else values)
    order = np.lexsort((order_value, last))  # the last key sorts first; lexsort is stable
    ranked = table.iloc[order].reset_index(drop=True)
    return ranked if top_k is None else ranked.head(top_k)


def sort_description(table: "pd.DataFrame", metric: str) -> str:
    """How the rows are ranked, in words."""
    direction = "highest" if higher_is_better(metric) else "lowest"
    text = f"final {metric}, {direction} first"
    if uses_fallback(table, metric):
        text += f" ({fallback_metric(metric)} for runs without a validation split)"
    return text + "; failed runs last"


# --- text ------------------------------------------------------------------------------------

def _format_cell(column: str, value: Any) -> str:
    """Compact text for one value: metrics to 5 significant digits, durations to 0.1 s."""
    import pandas as pd

    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (float, np.floating)):
        if column == "duration_s":
            return f"{value:.1f}"
        if column.startswith(("final_", "best_")):
            return f"{value:.5g}"
        return f"{value:.6g}"
    return " ".join(str(value).split())  # one line whatever the text


def _display_table(table: "pd.DataFrame", columns: Sequence[str]) -> list[list[str]]:
    rows = []
    for record in table[list(columns)].itertuples(index=False):
        cells = [_format_cell(column, value) for column, value in zip(columns, record)]
        rows.append([cell if column != "failure_reason" or len(cell) <= FAILURE_REASON_WIDTH
                     else cell[: FAILURE_REASON_WIDTH - 1] + "…" for column, cell in zip(columns, cells)])
    return rows


def _is_numeric(table: "pd.DataFrame", column: str) -> bool:
    from pandas.api.types import is_numeric_dtype

    return is_numeric_dtype(table[column].dtype)


def _present_columns(table: "pd.DataFrame", metric: str, compact: bool) -> list[str]:
    """The columns worth showing: metric columns only where some run has a value, the ranked
    metric first. ``compact`` (for a terminal) drops the run id, and the best values of the
    metrics the table is not ranked by."""
    ranked_by = {metric, fallback_metric(metric)}
    metric_columns = [column for column in table.columns if column.startswith(("final_", "best_"))]
    # The ranked metric, its fallback, then the others in table order (the sort is stable).
    metric_columns.sort(key=lambda column: {metric: 0, fallback_metric(metric): 1}.get(column.split("_", 1)[1], 2))
    shown = [column for column in metric_columns if table[column].notna().any()
             and not (compact and column.startswith("best_") and column[len("best_"):] not in ranked_by)]
    return ([*([] if compact else ["run_id"]), "run_name", "status", *swept_columns(table), *shown,
             "epochs_run", "stop_reason", "duration_s", "failure_reason"])


def format_table(table: "pd.DataFrame", metric: str = DEFAULT_METRIC, top_k: int | None = None) -> str:
    """The ranked table as fixed-width text for a terminal: a rank column, numbers right-aligned,
    ``-`` for missing values, long failure reasons cut."""
    ranked = rank_runs(table, metric, top_k)
    columns = _present_columns(ranked, metric, compact=True)
    header = ["#", *columns]
    rows = [[str(rank), *cells] for rank, cells in enumerate(_display_table(ranked, columns), start=1)]
    right = [True, *(_is_numeric(ranked, column) for column in columns)]
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.rjust(width) if align else cell.ljust(width)
                         for cell, width, align in zip(cells, widths, right)).rstrip()

    shown = f"top {len(ranked)} of {len(table)}" if top_k is not None and top_k < len(table) else f"{len(table)}"
    lines = [f"{shown} run{'' if len(table) == 1 else 's'}, ranked by {sort_description(table, metric)}", line(header),
             line(["-" * width for width in widths]), *map(line, rows)]
    return "\n".join(lines)


def markdown_table(ranked: "pd.DataFrame", metric: str = DEFAULT_METRIC) -> str:
    """``ranked`` (already in order) as a GitHub-flavoured Markdown table, numbers right-aligned."""
    columns = _present_columns(ranked, metric, compact=False)
    right = [_is_numeric(ranked, column) for column in columns]

    def escape(cell: str) -> str:
        return cell.replace("\\", "\\\\").replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---:" if align else "---" for align in right) + "|"]
    lines += ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in _display_table(ranked, columns)]
    return "\n".join(lines)


# --- files -----------------------------------------------------------------------------------

def write_report(table: "pd.DataFrame", histories: Histories, output_dir: str | os.PathLike,
                 metric: str = DEFAULT_METRIC, color_by: str | None = None,
                 top_k: int | None = None) -> list[Path]:
    """Rank ``table`` by ``metric`` (see ``rank_runs``), keep ``top_k`` rows, and write into
    ``output_dir`` (created if needed): ``runs.csv``, ``runs.md``, ``learning_curves.png`` and
    one ``final_<metric>_vs_<key>.png`` per numeric swept key with at least two values.

    ``color_by`` is the swept key that colours the learning curves (default: the first swept key
    with more than one value). Returns the paths written.
    """
    ranked = rank_runs(table, metric, top_k)
    keys = swept_columns(ranked)
    color_key = _clean_key(color_by) if color_by else next(
        (key for key in keys if ranked[key].nunique() > 1), None)
    if color_key is not None and color_key not in keys:
        raise ValueError(f"color_by={color_by!r} is not a swept key; choose one of {', '.join(keys) or '(none)'}")

    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    written = []

    csv_path = directory / RUNS_CSV
    ranked.to_csv(csv_path, index=False)
    written.append(csv_path)

    markdown_path = directory / RUNS_MARKDOWN
    markdown_path.write_text(f"Runs ranked by {sort_description(ranked, metric)}.\n\n"
                             f"{markdown_table(ranked, metric)}\n")
    written.append(markdown_path)

    figures = [(LEARNING_CURVES, _learning_curves_figure(ranked, histories, metric, color_key))]
    for key in keys:
        if _is_numeric(ranked, key) and ranked[key].nunique() > 1:
            figures.append((f"final_{_file_part(metric)}_vs_{_file_part(key)}.png",
                            _final_vs_key_figure(ranked, metric, key)))
    for file_name, figure in figures:
        path = directory / file_name
        figure.savefig(path, dpi=DPI, pil_kwargs=PNG_OPTIONS)
        written.append(path)
    return written


def _file_part(name: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", name)


# --- plots -----------------------------------------------------------------------------------

def _new_figure(size: tuple[float, float]) -> tuple["Figure", "Axes"]:
    """One axes on a figure with its own Agg canvas (no pyplot: no global figure registry)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


def _wants_log(key: str, values: np.ndarray) -> bool:
    """Log scale for learning rates and for positive values spanning more than a decade."""
    finite = values[np.isfinite(values)]
    if finite.size == 0 or (finite <= 0).any():
        return False
    return key.endswith("lr") or finite.max() / finite.min() > 10


def _value_label(value: float) -> str:
    return f"{value:.3g}"


def _labelled_values(distinct: list[float], log: bool, gap: float) -> list[float]:
    """Which of the sorted ``distinct`` swept values get a tick label: the smallest and the
    largest, and between them each one at least ``gap`` of the span (in log10 if ``log``) from
    the last one kept, so that no two labels overlap."""
    positions = np.log10(distinct) if log else np.asarray(distinct, dtype=float)
    span = positions[-1] - positions[0]
    kept = [0]
    for index in range(1, len(distinct)):
        if positions[index] - positions[kept[-1]] >= gap * span:
            kept.append(index)
    # The largest, if too close to the last one kept, takes its place (that one is never the
    # smallest: the largest is a whole span away from it).
    kept[-1] = len(distinct) - 1
    return [distinct[index] for index in kept]


@dataclass
class _Colouring:
    """A colour per row, and how to explain it: a colour bar (numeric key) or legend handles."""

    colours: list[Any]
    mappable: Any = None
    ticks: list[float] | None = None
    handles: list[Any] | None = None
    title: str | None = None


def _colouring(ranked: "pd.DataFrame", key: str | None) -> _Colouring:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, LogNorm, Normalize
    from matplotlib.lines import Line2D

    # viridis without its palest yellows, which vanish on white.
    sequential = ListedColormap(colormaps["viridis"](np.linspace(0.0, 0.88, 256)))
    if key is None:  # no swept key: one colour per run, named in the legend
        names = ranked["run_name"].astype(str).tolist()
        colours = _categorical_colours(len(names))
        handles = [Line2D([], [], color=colour, label=name) for colour, name in zip(colours, names)]
        return _Colouring(colours, handles=handles, title="run")
    column = ranked[key]
    if _is_numeric(ranked, key) and column.notna().any():
        values = column.to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        low, high = float(finite.min()), float(finite.max())
        if low == high:
            low, high = low - 0.5 if low <= 0 else low / 2, high + 0.5 if high <= 0 else high * 2
        norm = LogNorm(low, high) if _wants_log(key, finite) else Normalize(low, high)
        colours = [sequential(norm(value)) if np.isfinite(value) else "0.6" for value in values]
        distinct = sorted(set(finite.tolist()))
        ticks = (_labelled_values(distinct, isinstance(norm, LogNorm), COLOUR_BAR_LABEL_GAP)
                 if len(distinct) <= LABELLED_VALUES_UP_TO else None)
        return _Colouring(colours, mappable=ScalarMappable(norm, sequential), ticks=ticks, title=key)
    labels = ["(none)" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
              for value in column]
    categories = sorted(set(labels))
    palette = dict(zip(categories, _categorical_colours(len(categories))))
    handles = [Line2D([], [], color=palette[category], label=category) for category in categories]
    return _Colouring([palette[label] for label in labels], handles=handles, title=key)


def _categorical_colours(count: int) -> list[Any]:
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](index) for index in range(count)]
    if count <= 20:
        return [colormaps["tab20"](index) for index in range(count)]
    return list(colormaps["viridis"](np.linspace(0.0, 0.88, count)))


def _curve(histories: Histories, run_id: str, metric: str) -> tuple[MetricHistory | None, bool]:
    """The run's history of ``metric``, else of its train fallback (then True), else None."""
    run_histories = histories.get(run_id, {})
    history = run_histories.get(metric)
    if history is not None and np.isfinite(history.values).any():
        return history, False
    fallback = fallback_metric(metric)
    history = run_histories.get(fallback) if fallback else None
    if history is not None and np.isfinite(history.values).any():
        return history, True
    return None, False


def _learning_curves_figure(ranked: "pd.DataFrame", histories: Histories, metric: str,
                            color_key: str | None) -> "Figure":
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    figure, ax = _new_figure(LEARNING_CURVES_SIZE)
    colouring = _colouring(ranked, color_key)
    curves = []  # (position, history, drawn as the train fallback, failed)
    for position in range(len(ranked)):
        history, fallback = _curve(histories, ranked["run_id"].iloc[position], metric)
        if history is not None:
            curves.append((position, history, fallback, ranked["status"].iloc[position] in UNSUCCESSFUL))
    # When no run has a validation split, every line is the train metric: the chart is named
    # after it and drawn solid (dashes mark a run's fallback only among runs that have one).
    all_fallback = bool(curves) and all(fallback for _, _, fallback, _ in curves)
    shown = fallback_metric(metric) if all_fallback else metric
    # Accuracies stay linear: they live in [0, 1] and their interesting part is near 1.
    limits = _curve_limits([(history, failed) for _, history, _, failed in curves],
                           log=not higher_is_better(metric))

    # Worst first, so that the best runs are drawn on top; the best one a little thicker.
    for position, history, fallback, failed in reversed(curves):
        values = np.where(np.isfinite(history.values), history.values, np.nan)
        if limits is not None:
            # A diverged run leaves the chart at the top instead of stretching the axis over
            # 300 decades (which also overflows the log transform).
            values = np.minimum(values, limits.clip)
        style = dict(marker="o", markersize=3) if values.size <= MARKERS_UP_TO else {}
        dashed = fallback and not all_fallback
        ax.plot(history.steps, values, color=colouring.colours[position], linestyle="--" if dashed else "-",
                linewidth=2.6 if position == 0 else 1.4, alpha=0.9, zorder=3 if position == 0 else 2, **style)
        if failed:
            last = np.flatnonzero(np.isfinite(values))[-1]
            if limits is not None and values[last] > limits.high:
                # x in data coordinates, y in axes coordinates: on the top edge.
                ax.plot(history.steps[last], 0.97, transform=ax.get_xaxis_transform(), zorder=4, **FAILED_STYLE)
            else:
                ax.plot(history.steps[last], values[last], zorder=4, **FAILED_STYLE)

    if limits is not None:
        if limits.log:
            ax.set_yscale("log")
        ax.set_ylim(limits.low, limits.high)
    ax.set_xlabel("epoch")
    ax.set_ylabel(shown)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.15)
    title = f"Learning curves: {shown}, {len(ranked)} run{'' if len(ranked) == 1 else 's'}"
    if all_fallback:
        title += " (no validation split)"
    if color_key:
        title += f", coloured by {color_key}"
    ax.set_title(title)

    # What line styles and markers mean, then the colours.
    style_handles = []
    if len(ranked):
        style_handles.append(Line2D([], [], color="0.3", linewidth=2.6,
                                    label=f"best: {_shorten(str(ranked['run_name'].iloc[0]), 28)}"))
    if any(fallback for _, _, fallback, _ in curves) and not all_fallback:
        style_handles.append(Line2D([], [], color="0.3", linestyle="--",
                                    label=f"{fallback_metric(metric)} (no validation split)"))
    if any(failed for _, _, _, failed in curves):
        style_handles.append(Line2D([], [], label="failed (last epoch)", **FAILED_STYLE))
    if colouring.mappable is not None:
        colour_bar = figure.colorbar(colouring.mappable, ax=ax, label=colouring.title, pad=0.02)
        if colouring.ticks:
            colour_bar.set_ticks(colouring.ticks, labels=[_value_label(tick) for tick in colouring.ticks])
            colour_bar.ax.minorticks_off()
    else:
        handles = list(colouring.handles or [])
        room = 2 * LABELLED_VALUES_UP_TO  # legend entries that fit beside the axes
        if len(handles) > room:
            more = Line2D([], [], linestyle="none", label=f"... {len(handles) - room + 1} more")
            handles = [*handles[: room - 1], more]
        figure.legend(handles=handles, loc="outside right upper", fontsize="small", title=colouring.title,
                      title_fontsize="small")
    # Inside the axes, bottom left: curves start high and fall later, so that corner is usually
    # empty (the top edge holds the crosses of runs that diverged).
    ax.legend(handles=style_handles, loc="lower left", fontsize="small", framealpha=0.85)
    return figure


@dataclass
class _Limits:
    low: float
    high: float
    log: bool

    @property
    def clip(self) -> float:
        """Where values off the top of the chart are cut (out of sight, but finite for the
        transform: 1e306 on a log axis overflows it)."""
        return self.high + 10 * (self.high - self.low) if not self.log else self.high * 1e3


def _curve_limits(curves: list[tuple[MetricHistory, bool]], log: bool) -> _Limits | None:
    """y limits that show every run that did not fail, and where the failed ones started: the
    values of a diverging run reach 1e306 before it stops. Log scale if ``log`` and every value
    is positive."""
    kept = [history.values for history, failed in curves if not failed]
    kept += [history.values[:1] for history, failed in curves if failed]
    shown = np.concatenate(kept) if kept else np.empty(0)
    shown = shown[np.isfinite(shown)]
    if shown.size == 0:
        return None
    everything = np.concatenate([history.values for history, _ in curves])
    low, high = float(shown.min()), float(shown.max())
    if log and (everything[np.isfinite(everything)] > 0).all():
        span = max(math.log10(high / low), 0.3)  # a margin of a few percent of the decades shown
        return _Limits(low / 10 ** (0.04 * span), high * 10 ** (0.04 * span), log=True)
    margin = max(0.05 * (high - low), 1e-3 * max(abs(high), 1e-12))
    return _Limits(low - margin, high + margin, log=False)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _final_vs_key_figure(ranked: "pd.DataFrame", metric: str, key: str) -> "Figure":
    """The final metric against one numeric swept key: a line per combination of the other swept
    keys (while there are few), failed runs as red crosses along the top edge."""
    from matplotlib.ticker import NullLocator

    figure, ax = _new_figure(FINAL_VS_KEY_SIZE)
    x = ranked[key].to_numpy(dtype=float)
    y = ranking_values(ranked, metric).to_numpy(dtype=float)
    failed = ranked["status"].isin(UNSUCCESSFUL).to_numpy() | ~np.isfinite(y)
    usable = ~failed & np.isfinite(x)

    others = _distinguishing_keys(ranked, [column for column in swept_columns(ranked) if column != key])
    # The legend's title names the other keys; each entry lists their values.
    group_labels = [", ".join(_display_value(ranked[column].iloc[i]) for column in others)
                    for i in range(len(ranked))]
    groups = sorted(set(label for label, keep in zip(group_labels, usable) if keep))
    if len(groups) > LABELLED_VALUES_UP_TO:  # too many lines to tell apart: one line through all
        groups, group_labels = [""], [""] * len(ranked)
    colours = dict(zip(groups, _categorical_colours(len(groups))))
    for group in groups:
        members = usable & (np.array(group_labels) == group)
        if not members.any():
            continue
        colour = colours[group] if group else "#1f77b4"
        # A line through the mean at each x (repeats, e.g. seeds, stay visible as points).
        xs = np.unique(x[members])
        means = np.array([y[members & (x == value)].mean() for value in xs])
        ax.plot(xs, means, color=colour, linewidth=1.4, marker="o", markersize=6, alpha=0.85,
                label=group or None)
        if members.sum() > xs.size:
            ax.plot(x[members], y[members], color=colour, marker="o", markersize=4, alpha=0.5, linestyle="none")

    log_x = _wants_log(key, x)
    if log_x:
        ax.set_xscale("log")
    shown = y[usable]
    if shown.size and (shown > 0).all() and shown.max() / shown.min() >= 10:
        ax.set_yscale("log")
    distinct = sorted(set(x[np.isfinite(x)].tolist()))
    if len(distinct) <= LABELLED_VALUES_UP_TO:
        labelled = _labelled_values(distinct, log_x, X_LABEL_GAP)
        ax.set_xticks(labelled, labels=[_value_label(value) for value in labelled])
        ax.xaxis.set_minor_locator(NullLocator())
    marks = failed & np.isfinite(x)  # a run without a value of the key has no place on this axis
    if marks.any():
        # x in data coordinates, y in axes coordinates: the top edge whatever the y scale.
        ax.plot(x[marks], np.full(marks.sum(), 0.97), transform=ax.get_xaxis_transform(),
                label=f"failed / no value ({int(marks.sum())})", zorder=4, **FAILED_STYLE)
    if not usable.any():
        ax.text(0.5, 0.5, "no finished run has a value", transform=ax.transAxes, ha="center", color="0.4")

    y_label = f"final {metric}"
    if uses_fallback(ranked, metric):
        y_label += f"\n({fallback_metric(metric)} without a validation split)"
    ax.set_xlabel(key)
    ax.set_ylabel(y_label)
    ax.set_title(f"Final {metric} vs {key}")
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.15)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        figure.legend(loc="outside right upper", fontsize="small", title=_keys_title(others),
                      title_fontsize="small")
    return figure


def _keys_title(keys: list[str]) -> str | None:
    """The legend title naming ``keys``: on one line while it is short."""
    one_line = ", ".join(keys)
    return (one_line if len(one_line) <= 30 else "\n".join(keys)) or None


def _distinguishing_keys(ranked: "pd.DataFrame", keys: list[str]) -> list[str]:
    """The fewest of ``keys`` (greedily, in order) that tell apart every combination of them:
    in a whole-experiment report a data set brings its own epochs and activations, and naming
    them all in every legend entry would say the same thing several times."""
    chosen: list[str] = []
    combinations = 1
    for key in keys:
        # Display text, not astype(str): pandas keeps a missing value missing (NaN) there.
        count = len({tuple(map(_display_value, row)) for row in ranked[[*chosen, key]].itertuples(index=False)})
        if count > combinations:
            chosen.append(key)
            combinations = count
    return chosen


def _display_value(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.6g}"
    return "-" if value is None else str(value)


# --- command line ----------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bprun-report",
        description="Compare the runs of a sweep (the latest one by default) or of a whole experiment: "
                    "a ranked table, CSV, Markdown and plots.")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--parent", metavar="RUN_ID", help="the sweep's parent run id")
    which.add_argument("--experiment", metavar="NAME",
                       help=f"the experiment whose latest sweep to report (default: {DEFAULT_EXPERIMENT})")
    parser.add_argument("--all-runs", action="store_true",
                        help="report every run of the experiment, not only its latest sweep")
    parser.add_argument("--metric", default=DEFAULT_METRIC,
                        help="metric to rank and plot by (default: %(default)s; train_<x> stands in "
                             "for val_<x> where a run has no validation split)")
    parser.add_argument("--top-k", type=_positive_int, metavar="N", help="keep only the N best runs")
    parser.add_argument("--color-by", metavar="KEY", help="swept key that colours the learning curves "
                                                          "(default: the first swept key)")
    parser.add_argument("--output", metavar="DIR", type=Path,
                        help="output folder (default: reports/<parent run id or experiment name>)")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """The ``bprun-report`` command. Returns 0, or 2 when there is nothing to report."""
    from runner.tracking import resolve_tracking_uri

    args = _parser().parse_args(argv)
    if args.all_runs and args.parent:
        print("bprun-report: error: --all-runs reports an experiment, not a sweep (drop --parent)",
              file=sys.stderr)
        return 2
    uri = args.tracking_uri or resolve_tracking_uri(None, os.getcwd())
    from mlflow.exceptions import MlflowException

    try:
        _report(args, uri)
    except ReportError as error:
        print(f"bprun-report: error: {error}", file=sys.stderr)
        return 2
    except MlflowException as error:  # an unreadable store: an old schema, a server that refuses
        print(f"bprun-report: error: cannot read the MLflow store {uri}: {error.message}", file=sys.stderr)
        return 2
    return 0


def _check_store(uri: str) -> None:
    """Refuse a local store that is not there. MLflow would create one: a new SQLite file, or
    its tables in any SQLite file that lacks them, so that is checked read-only first."""
    import sqlite3
    from contextlib import closing
    from urllib.parse import urlparse

    from runner.tracking import sqlite_path

    database = sqlite_path(uri)
    if database is not None:
        if not database.is_file():
            raise ReportError(f"no MLflow store at {database} (run a sweep first, or pass --tracking-uri "
                              f"or set MLFLOW_TRACKING_URI)")
        try:
            with closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)) as connection:
                tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as error:
            raise ReportError(f"{database} is not an MLflow store ({error})") from None
        if not {"experiments", "runs"} <= tables:
            raise ReportError(f"{database} is not an MLflow store (it has no runs table)")
        return
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") and not Path(parsed.path if parsed.scheme else uri).exists():
        raise ReportError(f"no MLflow store at {uri}")


def _report(args: argparse.Namespace, uri: str) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    _check_store(uri)
    client = MlflowClient(uri)
    swept_keys: list[str] | None = None
    if args.parent:
        try:
            parent = client.get_run(args.parent)
        except MlflowException:
            raise ReportError(f"no run {args.parent!r} in {uri}") from None
        runs = sweep_children(client, parent.info.run_id)
        heading = _sweep_heading(client, parent)
        output_name = parent.info.run_id
    else:
        name = args.experiment or DEFAULT_EXPERIMENT
        experiment = client.get_experiment_by_name(name)
        if experiment is None or experiment.lifecycle_stage != "active":
            names = ", ".join(repr(e.name) for e in client.search_experiments()) or "none"
            raise ReportError(f"no experiment {name!r} in {uri} (experiments: {names})")
        if args.all_runs:
            runs = experiment_runs(client, experiment.experiment_id)
            heading = f"All {len(runs)} runs of experiment {name!r}"
            output_name = name
            parent = None
        else:
            parent = find_latest_sweep(client, [experiment.experiment_id])
            if parent is None:
                raise ReportError(f"no sweep in experiment {name!r} in {uri} "
                                  f"(--all-runs reports its runs one by one)")
            runs = sweep_children(client, parent.info.run_id)
            heading = _sweep_heading(client, parent)
            output_name = parent.info.run_id
    if parent is not None:
        swept_keys = _parse_swept_keys(parent.data.tags.get(SWEPT_KEYS_TAG))
        if not runs:
            raise ReportError(f"the sweep {parent.info.run_id} has no job runs")
    if not runs:
        raise ReportError(f"experiment {args.experiment or DEFAULT_EXPERIMENT!r} holds no runs")

    table, histories = runs_table(client, runs, swept_keys, metrics=[args.metric])
    if ranking_values(table, args.metric).isna().all():
        logged = sorted({name for run in runs for name in run.data.metrics if "/" not in name})
        raise ReportError(f"no run has a value of {args.metric!r}; logged: {', '.join(logged) or 'nothing'}")
    keys = swept_columns(table)
    if args.color_by and _clean_key(args.color_by) not in keys:
        raise ReportError(f"--color-by {args.color_by!r} is not a swept key; choose one of "
                          f"{', '.join(keys) or '(none)'}")

    output = args.output if args.output is not None else Path("reports") / _file_part(output_name)
    written = write_report(table, histories, output, metric=args.metric, color_by=args.color_by,
                           top_k=args.top_k)
    print(heading)
    print()
    print(format_table(table, args.metric, args.top_k))
    print()
    print(f"wrote {len(written)} files to {output}:")
    for path in written:
        print(f"  {path}")


def _parse_swept_keys(text: str | None) -> list[str] | None:
    """The parent's swept keys; None (compare whatever differs) when absent, empty or unreadable."""
    try:
        keys = json.loads(text) if text else None
    except ValueError:
        return None
    return [str(key) for key in keys] if isinstance(keys, list) and keys else None


def _sweep_heading(client: "MlflowClient", parent: "Run") -> str:
    experiment = client.get_experiment(parent.info.experiment_id)
    command = parent.data.tags.get(COMMAND_TAG)
    lines = [f"Sweep {parent.info.run_id} ({parent.info.run_name}, {parent.info.status}) "
             f"in experiment {experiment.name!r}"]
    if command:
        lines.append(f"  {command}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
