"""The charts of a comparison report: every run's learning curve, and the final metric
against each numeric swept key."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, NullLocator

from runner.plots.style import MARKERS_UP_TO, SEQUENTIAL, LineProperties, categorical_colours, grid, new_figure
from runner.reports.table import (
    UNSUCCESSFUL,
    Histories,
    fallback_metric,
    higher_is_better,
    is_numeric,
    ranking_values,
    swept_columns,
    uses_fallback,
)
from runner.tracking.history import MetricHistory

LEARNING_CURVES_SIZE = (9.0, 5.4)  # inches: 900 x 540 pixels
FINAL_VS_KEY_SIZE = (7.5, 4.8)
# More values than this get a plain colour bar (and no per-value legend or ticks).
LABELLED_VALUES_UP_TO = 10
# A swept value gets its own tick label only this far (a fraction of the axis, on its scale) from
# the last one labelled: an Optuna search puts trials close together (0.224, 0.229).
X_LABEL_GAP = 0.1  # the x axis of a final-vs-key chart: room for a label like 0.0891
COLOUR_BAR_LABEL_GAP = 0.05  # the vertical colour bar: room for a line of text
FAILED_STYLE: LineProperties = {
    "marker": "x",
    "color": "#d62728",
    "markersize": 9,
    "markeredgewidth": 2.2,
    "linestyle": "none",
}


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


def _colouring(ranked: pd.DataFrame, key: str | None) -> _Colouring:

    if key is None:  # no swept key: one colour per run, named in the legend
        names = ranked["run_name"].astype(str).tolist()
        colours = categorical_colours(len(names))
        handles = [Line2D([], [], color=colour, label=name) for colour, name in zip(colours, names)]
        return _Colouring(colours, handles=handles, title="run")
    column = ranked[key]
    if is_numeric(ranked, key) and column.notna().any():
        values = column.to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        low, high = float(finite.min()), float(finite.max())
        if low == high:
            low, high = low - 0.5 if low <= 0 else low / 2, high + 0.5 if high <= 0 else high * 2
        norm = LogNorm(low, high) if _wants_log(key, finite) else Normalize(low, high)
        colours = [SEQUENTIAL(norm(value)) if np.isfinite(value) else "0.6" for value in values]
        distinct = sorted(set(finite.tolist()))
        ticks = (
            _labelled_values(distinct, isinstance(norm, LogNorm), COLOUR_BAR_LABEL_GAP)
            if len(distinct) <= LABELLED_VALUES_UP_TO
            else None
        )
        return _Colouring(colours, mappable=ScalarMappable(norm, SEQUENTIAL), ticks=ticks, title=key)
    labels = [
        "(none)" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
        for value in column
    ]
    categories = sorted(set(labels))
    palette = dict(zip(categories, categorical_colours(len(categories))))
    handles = [Line2D([], [], color=palette[category], label=category) for category in categories]
    return _Colouring([palette[label] for label in labels], handles=handles, title=key)


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


Curve = tuple[int, Any, bool, bool]  # (position in the ranking, history, drawn as the train fallback, failed)


def learning_curves_figure(ranked: pd.DataFrame, histories: Histories, metric: str, color_key: str | None) -> Figure:
    figure = new_figure(LEARNING_CURVES_SIZE, layout="constrained")
    ax = figure.subplots()
    colouring = _colouring(ranked, color_key)
    curves: list[Curve] = []
    for position in range(len(ranked)):
        history, fallback = _curve(histories, ranked["run_id"].iloc[position], metric)
        if history is not None:
            curves.append((position, history, fallback, ranked["status"].iloc[position] in UNSUCCESSFUL))
    # When no run has a validation split, every line is the train metric: the chart is named
    # after it and drawn solid (dashes mark a run's fallback only among runs that have one).
    all_fallback = bool(curves) and all(fallback for _, _, fallback, _ in curves)
    shown = metric
    if all_fallback:
        train_metric = fallback_metric(metric)
        assert train_metric is not None  # _curve draws a fallback only for a metric that has one
        shown = train_metric
    # Accuracies stay linear: they live in [0, 1] and their interesting part is near 1.
    limits = _curve_limits([(history, failed) for _, history, _, failed in curves], log=not higher_is_better(metric))

    _draw_curves(ax, curves, colouring, limits, all_fallback)
    if limits is not None:
        if limits.log:
            ax.set_yscale("log")
        ax.set_ylim(limits.low, limits.high)
    ax.set_xlabel("epoch")
    ax.set_ylabel(shown)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    grid(ax)
    title = f"Learning curves: {shown}, {len(ranked)} run{'' if len(ranked) == 1 else 's'}"
    if all_fallback:
        title += " (no validation split)"
    if color_key:
        title += f", coloured by {color_key}"
    ax.set_title(title)

    _add_legends(figure, ax, ranked, curves, colouring, metric, all_fallback)
    return figure


def _draw_curves(ax: Any, curves: list[Curve], colouring: Any, limits: Any, all_fallback: bool) -> None:
    # Worst first, so that the best runs are drawn on top; the best one a little thicker.
    for position, history, fallback, failed in reversed(curves):
        values = np.where(np.isfinite(history.values), history.values, np.nan)
        if limits is not None:
            # A diverged run leaves the chart at the top instead of stretching the axis over
            # 300 decades (which also overflows the log transform).
            values = np.minimum(values, limits.clip)
        style = {"marker": "o", "markersize": 3} if values.size <= MARKERS_UP_TO else {}
        dashed = fallback and not all_fallback
        ax.plot(
            history.steps,
            values,
            color=colouring.colours[position],
            linestyle="--" if dashed else "-",
            linewidth=2.6 if position == 0 else 1.4,
            alpha=0.9,
            zorder=3 if position == 0 else 2,
            **style,
        )
        if failed:
            last = np.flatnonzero(np.isfinite(values))[-1]
            if limits is not None and values[last] > limits.high:
                # x in data coordinates, y in axes coordinates: on the top edge.
                ax.plot(history.steps[last], 0.97, transform=ax.get_xaxis_transform(), zorder=4, **FAILED_STYLE)
            else:
                ax.plot(history.steps[last], values[last], zorder=4, **FAILED_STYLE)


def _add_legends(
    figure: Figure,
    ax: Any,
    ranked: pd.DataFrame,
    curves: list[Curve],
    colouring: Any,
    metric: str,
    all_fallback: bool,
) -> None:
    # What line styles and markers mean, then the colours.
    style_handles = []
    if len(ranked):
        style_handles.append(
            Line2D([], [], color="0.3", linewidth=2.6, label=f"best: {_shorten(str(ranked['run_name'].iloc[0]), 28)}")
        )
    if any(fallback for _, _, fallback, _ in curves) and not all_fallback:
        style_handles.append(
            Line2D([], [], color="0.3", linestyle="--", label=f"{fallback_metric(metric)} (no validation split)")
        )
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
        figure.legend(
            handles=handles, loc="outside right upper", fontsize="small", title=colouring.title, title_fontsize="small"
        )
    # Inside the axes, bottom left: curves start high and fall later, so that corner is usually
    # empty (the top edge holds the crosses of runs that diverged).
    ax.legend(handles=style_handles, loc="lower left", fontsize="small", framealpha=0.85)


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


def final_vs_key_figure(ranked: pd.DataFrame, metric: str, key: str) -> Figure:
    """The final metric against one numeric swept key: a line per combination of the other swept
    keys (while there are few), failed runs as red crosses along the top edge."""

    figure = new_figure(FINAL_VS_KEY_SIZE, layout="constrained")
    ax = figure.subplots()
    x = ranked[key].to_numpy(dtype=float)
    y = ranking_values(ranked, metric).to_numpy(dtype=float)
    failed = ranked["status"].isin(UNSUCCESSFUL).to_numpy() | ~np.isfinite(y)
    usable = ~failed & np.isfinite(x)

    others = _distinguishing_keys(ranked, [column for column in swept_columns(ranked) if column != key])
    # The legend's title names the other keys; each entry lists their values.
    group_labels = [", ".join(display_value(ranked[column].iloc[i]) for column in others) for i in range(len(ranked))]
    groups = sorted({label for label, keep in zip(group_labels, usable) if keep})
    if len(groups) > LABELLED_VALUES_UP_TO:  # too many lines to tell apart: one line through all
        groups, group_labels = [""], [""] * len(ranked)
    colours = dict(zip(groups, categorical_colours(len(groups))))
    for group in groups:
        members = usable & (np.array(group_labels) == group)
        if not members.any():
            continue
        colour = colours[group] if group else "#1f77b4"
        # A line through the mean at each x (repeats, e.g. seeds, stay visible as points).
        xs = np.unique(x[members])
        means = np.array([y[members & (x == value)].mean() for value in xs])
        ax.plot(xs, means, color=colour, linewidth=1.4, marker="o", markersize=6, alpha=0.85, label=group or None)
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
        ax.plot(
            x[marks],
            np.full(marks.sum(), 0.97),
            transform=ax.get_xaxis_transform(),
            label=f"failed / no value ({int(marks.sum())})",
            zorder=4,
            **FAILED_STYLE,
        )
    if not usable.any():
        ax.text(0.5, 0.5, "no finished run has a value", transform=ax.transAxes, ha="center", color="0.4")

    y_label = f"final {metric}"
    if uses_fallback(ranked, metric):
        y_label += f"\n({fallback_metric(metric)} without a validation split)"
    ax.set_xlabel(key)
    ax.set_ylabel(y_label)
    ax.set_title(f"Final {metric} vs {key}")
    grid(ax)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        figure.legend(loc="outside right upper", fontsize="small", title=_keys_title(others), title_fontsize="small")
    return figure


def _keys_title(keys: list[str]) -> str | None:
    """The legend title naming ``keys``: on one line while it is short."""
    one_line = ", ".join(keys)
    return (one_line if len(one_line) <= 30 else "\n".join(keys)) or None


def _distinguishing_keys(ranked: pd.DataFrame, keys: list[str]) -> list[str]:
    """The fewest of ``keys`` (greedily, in order) that tell apart every combination of them:
    in a whole-experiment report a data set brings its own epochs and activations, and naming
    them all in every legend entry would say the same thing several times."""
    chosen: list[str] = []
    combinations = 1
    for key in keys:
        # Display text, not astype(str): pandas keeps a missing value missing (NaN) there.
        count = len({tuple(map(display_value, row)) for row in ranked[[*chosen, key]].itertuples(index=False)})
        if count > combinations:
            chosen.append(key)
            combinations = count
    return chosen


def display_value(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.6g}"
    return "-" if value is None else str(value)
