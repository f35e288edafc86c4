"""PNG charts of a run's per-epoch metric histories, written for MLflow artifacts.

``save_training_plots`` reads the metric names a run logs (``train_mse``,
``val_loss``, ``layer2/grad_weight_norm``, ...) and writes up to three images:

- ``learning_curves.png``: mse, the loss (tracked only when it is not mse) and accuracy, a panel
  each, train solid and validation dashed;
- ``gradient_norms.png``: per-layer norms of the epoch's weight (solid) and bias (dashed)
  gradients, and the update ratio ||Δw|| / ||w||;
- ``weight_norms.png``: per-layer weight (solid) and bias (dashed) norms.

A figure none of whose series has a finite value is not written.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator
from matplotlib.typing import LineStyleType

from runner import names
from runner.plots.style import (
    MARKERS_UP_TO,
    PLOTTABLE_LIMIT,
    LineProperties,
    categorical_colours,
    grid,
    new_figure,
    save_png,
)

LEARNING_CURVES = "learning_curves.png"
GRADIENT_NORMS = "gradient_norms.png"
WEIGHT_NORMS = "weight_norms.png"

# (metric name after the train_/val_ prefix, panel title, y axis label)
LEARNING_PANELS = (
    ("mse", "Mean squared error", "mean squared error"),
    ("loss", "Loss", "loss"),
    ("accuracy", "Accuracy", "accuracy"),
)
SPLITS = (("train", "train", "-"), ("val", "validation", "--"))  # (prefix, legend label, style)
# Within a layer panel the first statistic is drawn solid (weights), the second dashed (biases).
LAYER_STYLES: tuple[LineStyleType, LineStyleType] = ("-", "--")

# Layout, in inches. The margins are fixed rather than computed by constrained or tight layout:
# those measure every tick label in an extra drawing pass (the benchmarks doc says what it
# costs), and these margins fit every label this module produces (y tick labels of up to seven characters,
# like 0.25140, since smaller values switch to scientific notation; see _scale_to).
AXES_WIDTH, AXES_HEIGHT = 4.0, 2.6
LEFT, RIGHT, BOTTOM = 1.0, 0.2, 0.55
TOP, TOP_WITHOUT_AXES_TITLES = 0.65, 0.4  # room for the figure title (and the axes titles)
PANEL_GAP = 1.1  # between two panels: room for the right one's y tick labels and label
LEGEND_GAP, LEGEND_COLUMN_WIDTH, LEGEND_ROWS = 0.15, 1.0, 10
# Log axes over fewer decades than this keep minor ticks, labelled at these leading digits (with
# decade ticks only, they could show a single label); over more, minor ticks add nothing
# readable and their Tick objects are a good part of the drawing time.
MINOR_TICKS_BELOW_DECADES = 2.0
MINOR_LABELS_OVER_A_DECADE = (2, 3, 5)
MINOR_LABELS_WITHIN_A_DECADE = (2, 3, 4, 5, 6, 8)
SUPERSCRIPTS = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


@dataclass
class _Series:
    """One metric's history as plot-ready arrays: non-finite values are NaN (a gap in the line)."""

    epochs: np.ndarray
    values: np.ndarray

    @property
    def finite(self) -> np.ndarray:
        return self.values[np.isfinite(self.values)]


# A layer panel: (layer number, index into LAYER_STYLES, series name) for each line.
LayerPanel = list[tuple[int, int, str]]
# The epochs of the values: one list for every series, or a list per series.
Steps = Sequence[int] | Mapping[str, Sequence[int]]


def save_training_plots(
    metrics: Mapping[str, Sequence[float]], directory: Path, steps: Steps | None = None
) -> list[Path]:
    """Write the charts of ``metrics`` into ``directory`` (created if needed) and return the
    paths written, in the order learning curves, gradient norms, weight norms.

    ``metrics[name][i]`` is the value at epoch ``steps[i]``, or ``steps[name][i]`` when ``steps``
    gives each series its own epochs (default: epoch ``i``). A series may be shorter than its
    steps (a run that failed part way), not longer. NaN and inf are left out
    of the lines; names this module does not know are ignored.
    """
    series = load_series(metrics, steps)
    layers = layer_numbers(series)
    layer_colour = dict(zip(layers, layer_colours(len(layers))))
    figures = (
        (LEARNING_CURVES, learning_curves_figure(series)),
        (GRADIENT_NORMS, gradient_norms_figure(series, layers, layer_colour)),
        (WEIGHT_NORMS, weight_norms_figure(series, layers, layer_colour)),
    )
    directory = Path(directory)
    written = []
    for file_name, figure in figures:
        if figure is None:
            continue
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / file_name
        save_png(figure, path)
        written.append(path)
    return written


# --- data ------------------------------------------------------------------------------------


def load_series(metrics: Mapping[str, Sequence[float]], steps: Steps | None) -> dict[str, _Series]:
    """Every series with at least one finite value, as float arrays with their epochs."""
    loaded = {}
    for name, raw in metrics.items():
        values = np.asarray(raw, dtype=float).ravel()
        own = steps.get(name) if isinstance(steps, Mapping) else steps
        all_epochs = None if own is None else np.asarray(own, dtype=float).ravel()
        if all_epochs is None:
            epochs = np.arange(values.size, dtype=float)
        elif values.size > all_epochs.size:
            raise ValueError(f"metric {name!r} has {values.size} values but steps has only {all_epochs.size}")
        else:
            epochs = all_epochs[: values.size]
        # inf becomes a gap like NaN: left in, it would stretch the axis limits to nothing. So do
        # finite values past PLOTTABLE_LIMIT (a diverging run reaches 1e300): matplotlib's scale
        # transforms overflow on them.
        values = np.where(np.isfinite(values) & (np.abs(values) < PLOTTABLE_LIMIT), values, np.nan)
        if np.isfinite(values).any():
            loaded[name] = _Series(epochs, values)
    return loaded


def layer_numbers(series: dict[str, _Series]) -> list[int]:
    """The layer numbers of the ``layer<l>/<statistic>`` keys, ascending (so 10 follows 9)."""
    return sorted({layer for name in series if (layer := names.layer_of(name)) is not None})


def layer_colours(count: int) -> list[Any]:
    """A distinct colour per layer, so that a layer has the same colour in every figure."""
    return categorical_colours(count) if count else []


def _layer_panel(series: dict[str, _Series], layers: list[int], statistics: tuple[str, ...]) -> LayerPanel:
    return [
        (layer, index, names.layer_metric(layer, statistic))
        for layer in layers
        for index, statistic in enumerate(statistics)
        if names.layer_metric(layer, statistic) in series
    ]


# --- figures ---------------------------------------------------------------------------------
#
# A figure is described by _Panels (everything but the data) and drawn by _figure, which keeps
# the last few figures it built, keyed by that description: a sweep's runs share their layout, so
# from the second run on only the lines' data, the scales and the limits change. Building a
# figure (axes, tick objects, texts) was about half of the drawing time.

FIGURE_CACHE_SIZE = 8


@dataclass(frozen=True)
class _Line:
    series: str  # key into the series dict
    style: tuple[tuple[str, Any], ...]  # Line2D properties, as sorted (name, value) pairs


@dataclass(frozen=True)
class _Panel:
    title: str
    ylabel: str
    lines: tuple[_Line, ...]
    legend: bool = False  # an axes legend of the lines' labels
    ylim: tuple[float, float] | None = None  # fixed y limits (accuracy); else scaled to the data
    log_from_decades: float = 1.0  # see _set_y_scale


@dataclass(frozen=True)
class _Layout:
    title: str
    panels: tuple[_Panel, ...]
    legend_entries: tuple[tuple[str, Any, LineStyleType], ...] = ()  # figure legend: (label, colour, linestyle)
    axes_titles: bool = True
    markers: bool = False  # lines this short also get markers


@dataclass
class _Built:
    figure: Figure
    axes: list[Axes]
    lines: list[list[Any]]  # Line2D per panel, in _Panel.lines order


_built: OrderedDict[_Layout, _Built] = OrderedDict()


def forget_figures() -> None:
    """Drop the figures kept for reuse: the next charts are drawn on new ones."""
    _built.clear()


def kept_figures() -> int:
    """How many figures are kept for reuse (at most ``FIGURE_CACHE_SIZE``)."""
    return len(_built)


def _line(series: str, **style: Any) -> _Line:
    return _Line(series, tuple(sorted((name, _hashable(value)) for name, value in style.items())))


def _hashable(value: Any) -> Any:
    return tuple(float(v) for v in value) if isinstance(value, (list, np.ndarray)) else value


def learning_curves_figure(series: dict[str, _Series]) -> Figure | None:
    panels = []
    for metric, title, label in LEARNING_PANELS:
        lines = tuple(
            _line(f"{prefix}_{metric}", label=split_label, linestyle=style)
            for prefix, split_label, style in SPLITS
            if f"{prefix}_{metric}" in series
        )
        if lines:
            # An explicit "best" legend location also keeps matplotlib from warning that it is slow.
            panels.append(
                _Panel(
                    title,
                    label,
                    lines,
                    legend=True,
                    ylim=(-0.02, 1.02) if metric == "accuracy" else None,
                    log_from_decades=1.0,
                )
            )
    return _figure(_Layout("Learning curves", tuple(panels), markers=_short(series)), series) if panels else None


def gradient_norms_figure(series: dict[str, _Series], layers: list[int], layer_colour: dict[int, Any]) -> Figure | None:
    candidates = (
        ((names.GRAD_WEIGHT_NORM, names.GRAD_BIAS_NORM), "Gradient L2 norm", "L2 norm of the epoch's gradient"),
        ((names.UPDATE_RATIO,), "Update ratio ‖Δw‖ / ‖w‖", "‖Δw‖ / ‖w‖ over the epoch"),
    )
    panels = [
        (panel, title, label)
        for statistics, title, label in candidates
        if (panel := _layer_panel(series, layers, statistics))
    ]
    if not panels:
        return None
    entries = _layer_legend_entries([line for panel, _, _ in panels for line in panel], layer_colour)
    layout = _Layout(
        "Gradients and updates per layer",
        tuple(_layer_axes(panel, title, label, layer_colour) for panel, title, label in panels),
        entries,
        markers=_short(series),
    )
    return _figure(layout, series)


def weight_norms_figure(series: dict[str, _Series], layers: list[int], layer_colour: dict[int, Any]) -> Figure | None:
    panel = _layer_panel(series, layers, (names.WEIGHT_NORM, names.BIAS_NORM))
    if not panel:
        return None
    layout = _Layout(
        "Parameter norms per layer",
        (_layer_axes(panel, "", "L2 norm after the epoch", layer_colour),),
        _layer_legend_entries(panel, layer_colour),
        axes_titles=False,
        markers=_short(series),
    )
    return _figure(layout, series)


def _layer_axes(panel: LayerPanel, title: str, ylabel: str, layer_colour: dict[int, Any]) -> _Panel:
    # Norms and ratios are positive and move over decades: log whenever the data allow it.
    lines = tuple(_line(name, color=layer_colour[layer], linestyle=LAYER_STYLES[index]) for layer, index, name in panel)
    return _Panel(title, ylabel, lines, log_from_decades=0.0)


def _layer_legend_entries(
    panel: LayerPanel, layer_colour: dict[int, Any]
) -> tuple[tuple[str, Any, LineStyleType], ...]:
    """A colour per layer, then what solid and dashed mean: n + 2 entries instead of 2n."""
    layers = sorted({layer for layer, _, _ in panel})
    entries: list[tuple[str, Any, LineStyleType]] = [
        (f"layer {layer}", _hashable(layer_colour[layer]), "-") for layer in layers
    ]
    if any(index == 1 for _, index, _ in panel):
        entries += [("weights", "0.3", LAYER_STYLES[0]), ("biases", "0.3", LAYER_STYLES[1])]
    return tuple(entries)


def _short(series: dict[str, _Series]) -> bool:
    return any(line.values.size <= MARKERS_UP_TO for line in series.values())


def _figure(layout: _Layout, series: dict[str, _Series]) -> Figure:
    """``layout`` drawn with the data of ``series``, on a figure built for that layout before if
    one is kept, else on a new one."""
    built = _built.pop(layout, None) or _build(layout)
    _built[layout] = built  # most recently used last
    while len(_built) > FIGURE_CACHE_SIZE:
        _built.popitem(last=False)
    for panel, ax, lines in zip(layout.panels, built.axes, built.lines):
        data = [series[line.series] for line in panel.lines]
        for line, values in zip(lines, data):
            line.set_data(values.epochs, values.values)
        _scale_to(ax, panel, data)
    return built.figure


def _build(layout: _Layout) -> _Built:
    handles = [
        Line2D([], [], color=colour, linestyle=style, label=label) for label, colour, style in layout.legend_entries
    ]
    figure, axes = _new_figure(len(layout.panels), layout.title, handles, layout.axes_titles)
    lines = []
    markers: LineProperties = {"marker": "o", "markersize": 3} if layout.markers else {}
    for ax, panel in zip(axes, layout.panels):
        lines.append([ax.plot([], [], linewidth=1.4, **dict(line.style), **markers)[0] for line in panel.lines])
        # An explicit y skips matplotlib's search for top tick labels to clear, which it makes
        # even for an empty title; these axes have none.
        ax.set_title(panel.title, fontsize="medium", y=1.0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(panel.ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1, steps=[1, 2, 5, 10]))
        grid(ax)
        if panel.legend:
            ax.legend(loc="best", fontsize="small")
    return _Built(figure, axes, lines)


def _scale_to(ax: Axes, panel: _Panel, data: list[_Series]) -> None:
    """Limits and scales for this data (the axes may hold another run's settings)."""
    ax.set_autoscale_on(True)
    ax.set_yscale("linear")
    ax.relim()
    ax.autoscale_view()
    if panel.ylim is not None:
        ax.set_ylim(*panel.ylim)
    else:
        _set_y_scale(ax, data, panel.log_from_decades)
    first, last = ax.dataLim.intervalx
    if last - first < 1:
        # One epoch: matplotlib would widen the view by ±0.05 and tick fractions of an epoch.
        ax.set_xlim(first - 0.5, last + 0.5)
    if ax.get_yscale() == "linear":
        # Scientific notation below 10⁻³ keeps tick labels within the left margin.
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))


def _new_figure(
    panels: int, title: str, legend_handles: list[Any] | None = None, axes_titles: bool = True
) -> tuple[Figure, list[Axes]]:
    """A figure of ``panels`` side-by-side axes on its own Agg canvas, with the figure legend
    ``legend_handles`` (if any) right of the axes."""
    legend_columns = math.ceil(len(legend_handles) / LEGEND_ROWS) if legend_handles else 0
    axes_right = LEFT + panels * AXES_WIDTH + (panels - 1) * PANEL_GAP
    width = axes_right + RIGHT + (LEGEND_GAP + legend_columns * LEGEND_COLUMN_WIDTH if legend_columns else 0.0)
    height = BOTTOM + AXES_HEIGHT + (TOP if axes_titles else TOP_WITHOUT_AXES_TITLES)
    figure = new_figure((width, height))
    axes = list(figure.subplots(1, panels, squeeze=False)[0])
    figure.subplots_adjust(
        left=LEFT / width,
        right=axes_right / width,
        bottom=BOTTOM / height,
        top=(BOTTOM + AXES_HEIGHT) / height,
        wspace=PANEL_GAP / AXES_WIDTH,
    )
    figure.suptitle(title, y=1 - 0.06 / height, va="top", fontsize="large")
    if legend_handles:
        figure.legend(
            handles=legend_handles,
            loc="upper left",
            ncols=legend_columns,
            fontsize="small",
            bbox_to_anchor=((axes_right + LEGEND_GAP) / width, (BOTTOM + AXES_HEIGHT) / height),
            borderaxespad=0.0,
        )
    return figure, axes


# --- axes ------------------------------------------------------------------------------------


def _set_y_scale(ax: Axes, lines: list[_Series], log_from_decades: float) -> None:
    """Log y when every value is positive and they span at least ``log_from_decades``. When some
    are <= 0 (a zero gradient, zero-initialised biases): symlog, linear up to the decade below
    the smallest positive value, if the positive ones span at least a decade. Otherwise linear.

    Tick labels are plain text ("10⁻³", "0.2"): matplotlib's default log labels are mathtext,
    parsed anew for every label.
    """
    finite = np.concatenate([line.finite for line in lines])
    positive = finite[finite > 0]
    if positive.size == 0:
        return
    decades = math.log10(positive.max() / positive.min())
    all_positive = positive.size == finite.size
    if all_positive and decades >= log_from_decades:
        ax.set_yscale("log")
    elif not all_positive and decades >= 1.0:
        ax.set_yscale("symlog", linthresh=10.0 ** math.floor(math.log10(positive.min())))
    else:
        return
    if all_positive and decades < MINOR_TICKS_BELOW_DECADES:
        mantissas = MINOR_LABELS_OVER_A_DECADE if decades >= 1.0 else MINOR_LABELS_WITHIN_A_DECADE
        ax.yaxis.set_major_formatter(FuncFormatter(plain_label))
        ax.yaxis.set_minor_formatter(FuncFormatter(functools.partial(plain_label, mantissas=mantissas)))
        return
    ax.yaxis.set_major_formatter(FuncFormatter(power_of_ten_label))
    if decades >= MINOR_TICKS_BELOW_DECADES:
        ax.yaxis.set_minor_locator(NullLocator())


def power_of_ten_label(value: float, _position: int | None = None) -> str:
    """``0.001`` -> ``"10⁻³"``; zero and other values as plain numbers."""
    if value == 0:
        return "0"
    exponent = round(math.log10(abs(value)))
    if not math.isclose(abs(value), 10.0**exponent, rel_tol=1e-9):
        return plain_label(value)
    return ("−" if value < 0 else "") + "10" + str(exponent).translate(SUPERSCRIPTS)


def plain_label(value: float, _position: int | None = None, mantissas: tuple[int, ...] | None = None) -> str:
    """``value`` as ``0.03`` or, below 10⁻⁴, ``3×10⁻⁷``; "" unless its leading digit is one of
    ``mantissas`` (if given)."""
    if mantissas is not None and value != 0:
        leading_digit = round(abs(value) / 10.0 ** math.floor(math.log10(abs(value)) + 1e-9))
        if leading_digit not in mantissas:
            return ""
    text = f"{value:g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        power = "10" + str(int(exponent)).translate(SUPERSCRIPTS)
        text = {"1": power, "-1": "-" + power}.get(mantissa, f"{mantissa}×{power}")
    return text.replace("-", "−")
