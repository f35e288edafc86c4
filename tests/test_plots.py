"""Training plots: the PNGs are written, readable and non-trivial; scales follow the data;
missing, empty, zero, single-epoch and partial histories are handled."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from runner.plots import training as plots
from runner.plots.training import GRADIENT_NORMS, LEARNING_CURVES, WEIGHT_NORMS, save_training_plots

LAYERS = 3


def _history(epochs: int = 200, layers: int = LAYERS, classification: bool = True) -> dict[str, list[float]]:
    """Decaying losses and gradients, growing norms: what a healthy run logs."""
    e = np.arange(epochs, dtype=float)
    metrics = {"train_mse": 0.25 * np.exp(-e / 30) + 1e-3, "val_mse": 0.25 * np.exp(-e / 35) + 3e-3}
    if classification:
        metrics |= {
            "train_loss": 0.7 * np.exp(-e / 40) + 0.02,
            "val_loss": 0.7 * np.exp(-e / 45) + 0.05,
            "train_accuracy": 1 - 0.5 * np.exp(-e / 20),
            "val_accuracy": 0.95 - 0.45 * np.exp(-e / 25),
        }
    for layer in range(1, layers + 1):
        metrics[f"layer{layer}/weight_norm"] = 2 + layer + 0.3 * layer * np.log1p(e)
        metrics[f"layer{layer}/bias_norm"] = 0.1 * layer * np.log1p(e + 1)
        metrics[f"layer{layer}/grad_weight_norm"] = 0.5 / layer * np.exp(-e / 50) + 1e-4
        metrics[f"layer{layer}/grad_bias_norm"] = 0.2 / layer * np.exp(-e / 50) + 1e-5
        metrics[f"layer{layer}/update_ratio"] = 0.05 / layer * np.exp(-e / 60)
    return {name: values.tolist() for name, values in metrics.items()}


def _read_rgb(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    image = imread(path)  # (height, width, 4) floats in [0, 1]
    return np.round(image[..., :3] * 255).astype(np.uint8)


def _has_colour(rgb: np.ndarray, colour: tuple[float, ...], tolerance: int = 6) -> bool:
    target = np.round(np.array(colour[:3]) * 255)
    return bool(np.any(np.all(np.abs(rgb.astype(int) - target) <= tolerance, axis=-1)))


def _written_names(directory: Path) -> set[str]:
    return {path.name for path in directory.glob("*.png")}


# ---------------------------------------------------------------------------------------------
# A full run
# ---------------------------------------------------------------------------------------------


def test_full_history_writes_three_non_trivial_pngs(tmp_path):
    written = save_training_plots(_history(), tmp_path / "plots")

    assert written == [tmp_path / "plots" / name for name in (LEARNING_CURVES, GRADIENT_NORMS, WEIGHT_NORMS)]
    for path in written:
        assert path.stat().st_size > 20_000, path.name
        rgb = _read_rgb(path)
        height, width, _ = rgb.shape
        assert 300 <= height <= 600 and height < width <= 2000, (path.name, rgb.shape)
        distinct = np.unique(rgb.reshape(-1, 3), axis=0)
        assert len(distinct) > 100, path.name  # lines, antialiased text, grid: not a flat image
        not_white = np.any(rgb < 250, axis=-1).mean()
        assert 0.02 < not_white < 0.5, (path.name, not_white)


def test_each_layer_has_its_own_colour_in_both_layer_figures(tmp_path):
    from matplotlib import colormaps

    written = save_training_plots(_history(), tmp_path)
    tab10 = colormaps["tab10"]
    for path in written[1:]:
        rgb = _read_rgb(path)
        for layer in range(LAYERS):
            assert _has_colour(rgb, tab10(layer)), (path.name, layer + 1)
        assert not _has_colour(rgb, tab10(LAYERS)), path.name  # no fourth layer drawn


def test_learning_curve_panels_scales_and_labels():
    figure = plots.learning_curves_figure(plots.load_series(_history(), None))
    mse, loss, accuracy = figure.axes
    assert [ax.get_title() for ax in figure.axes] == ["Mean squared error", "Loss", "Accuracy"]
    assert mse.get_ylabel() == "mean squared error" and mse.get_xlabel() == "epoch"
    # mse falls 2.3 decades, the loss 1.4: both log; accuracy is linear on [0, 1].
    assert (mse.get_yscale(), loss.get_yscale(), accuracy.get_yscale()) == ("log", "log", "linear")
    low, high = accuracy.get_ylim()
    assert low <= 0 and 1 <= high < 1.1
    assert [text.get_text() for text in mse.get_legend().get_texts()] == ["train", "validation"]


def test_layer_figures_plot_every_layer_solid_and_dashed():
    series = plots.load_series(_history(), None)
    layers = plots.layer_numbers(series)
    colours = dict(zip(layers, plots.layer_colours(len(layers))))

    gradients, ratios = plots.gradient_norms_figure(series, layers, colours).axes
    assert [line.get_linestyle() for line in gradients.get_lines()] == ["-", "--"] * LAYERS
    assert len(ratios.get_lines()) == LAYERS
    assert gradients.get_yscale() == ratios.get_yscale() == "log"

    (norms,) = plots.weight_norms_figure(series, layers, colours).axes
    assert [line.get_linestyle() for line in norms.get_lines()] == ["-", "--"] * LAYERS
    legend = plots.weight_norms_figure(series, layers, colours).legends[0]
    assert [text.get_text() for text in legend.get_texts()] == ["layer 1", "layer 2", "layer 3", "weights", "biases"]


def test_layers_sort_by_number_not_by_name():
    metrics = {f"layer{layer}/weight_norm": [1.0, 2.0] for layer in (10, 2, 1, 9)}
    metrics |= {"layerx/weight_norm": [1.0], "layer3": [1.0], "train_mse": [1.0]}
    assert plots.layer_numbers(plots.load_series(metrics, None)) == [1, 2, 9, 10]


def test_regression_run_has_only_the_mse_panel(tmp_path):
    figure = plots.learning_curves_figure(plots.load_series(_history(classification=False), None))
    assert [ax.get_title() for ax in figure.axes] == ["Mean squared error"]


def test_plain_text_tick_labels():
    assert plots.power_of_ten_label(1e-3) == "10⁻³"
    assert plots.power_of_ten_label(10.0) == "10¹"
    assert plots.power_of_ten_label(0.0) == "0"
    assert plots.power_of_ten_label(0.2) == "0.2"
    assert plots.plain_label(0.03) == "0.03"
    assert plots.plain_label(0.03, None, (2, 5)) == ""
    assert plots.plain_label(0.05, None, (2, 5)) == "0.05"
    assert plots.plain_label(3e-7) == "3×10⁻⁷"
    assert plots.plain_label(-1e-5) == "−10⁻⁵"


# ---------------------------------------------------------------------------------------------
# Missing series: the figure is skipped
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        (("train_mse", "val_mse"), {LEARNING_CURVES}),
        (("train_accuracy",), {LEARNING_CURVES}),
        (("layer2/grad_weight_norm",), {GRADIENT_NORMS}),
        (("layer1/update_ratio",), {GRADIENT_NORMS}),
        (("layer3/bias_norm",), {WEIGHT_NORMS}),
        (("layer1/weight_norm", "val_loss"), {LEARNING_CURVES, WEIGHT_NORMS}),
        (("unrelated_metric",), set()),
    ],
)
def test_a_figure_without_series_is_not_written(tmp_path, keep, expected):
    history = _history() | {"unrelated_metric": [1.0, 2.0]}
    written = save_training_plots({name: history[name] for name in keep}, tmp_path)
    assert {path.name for path in written} == expected == _written_names(tmp_path)


def test_gradient_figure_without_update_ratios_has_one_panel():
    metrics = {name: values for name, values in _history().items() if not name.endswith("update_ratio")}
    series = plots.load_series(metrics, None)
    layers = plots.layer_numbers(series)
    figure = plots.gradient_norms_figure(series, layers, dict(zip(layers, plots.layer_colours(len(layers)))))
    assert [ax.get_title() for ax in figure.axes] == ["Gradient L2 norm"]


# ---------------------------------------------------------------------------------------------
# Degenerate histories
# ---------------------------------------------------------------------------------------------


def test_empty_series_write_nothing(tmp_path):
    assert save_training_plots({name: [] for name in _history()}, tmp_path / "plots") == []
    assert save_training_plots({}, tmp_path / "plots") == []
    assert not (tmp_path / "plots").exists()


def test_single_epoch_shows_points_at_epoch_zero(tmp_path):
    history = _history(epochs=1)
    written = save_training_plots(history, tmp_path)
    assert len(written) == 3

    figure = plots.learning_curves_figure(plots.load_series(history, None))
    for ax in figure.axes:
        (train, _validation) = ax.get_lines()
        assert train.get_marker() == "o" and list(train.get_xdata()) == [0.0]
        ticks = [tick for tick in ax.get_xticks() if ax.get_xlim()[0] <= tick <= ax.get_xlim()[1]]
        assert ticks == [0.0]  # whole epochs only, not ±0.05
    assert _has_colour(_read_rgb(written[0]), (0.12, 0.47, 0.71))  # tab10 blue: the train point


def test_zero_values_fall_back_from_log(tmp_path):
    history = _history()
    for layer in range(1, LAYERS + 1):
        history[f"layer{layer}/grad_bias_norm"] = [0.0] * 200  # e.g. biases frozen
    history["layer2/grad_weight_norm"][50:] = [0.0] * 150  # a layer that died
    history["layer1/update_ratio"] = [0.0] * 200
    history["layer2/update_ratio"] = [0.0] * 200
    history["layer3/update_ratio"] = [0.0] * 200
    history["train_mse"] = [0.0] * 200

    written = save_training_plots(history, tmp_path)
    assert {path.name for path in written} == {LEARNING_CURVES, GRADIENT_NORMS, WEIGHT_NORMS}

    series = plots.load_series(history, None)
    layers = plots.layer_numbers(series)
    gradients, ratios = plots.gradient_norms_figure(series, layers, dict(zip(layers, plots.layer_colours(3)))).axes
    assert gradients.get_yscale() == "symlog"  # zeros beside values spanning decades
    assert ratios.get_yscale() == "linear"  # nothing positive
    # val_mse spans 1.9 decades but train_mse is all zero: no log axis can show both.
    assert plots.learning_curves_figure(series).axes[0].get_yscale() == "symlog"


def test_partial_history_with_steps(tmp_path):
    """A run that failed at its 37th logged epoch, logging every second epoch, with a NaN and an
    inf where it diverged."""
    history = {name: values[:37] for name, values in _history().items()}
    history["val_mse"] = history["val_mse"][:36]
    history["train_mse"][-1] = math.inf
    history["train_loss"][-1] = math.nan
    steps = list(range(0, 400, 2))

    written = save_training_plots(history, tmp_path, steps=steps)
    assert len(written) == 3

    mse = plots.learning_curves_figure(plots.load_series(history, steps)).axes[0]
    train, validation = mse.get_lines()
    assert train.get_xdata()[-1] == 72 and validation.get_xdata()[-1] == 70
    assert np.isnan(train.get_ydata()[-1])  # the inf is a gap, not an axis stretched to infinity
    assert mse.get_ylim()[1] < 1


def test_series_longer_than_steps_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="train_mse"):
        save_training_plots({"train_mse": [1.0, 0.5, 0.2]}, tmp_path, steps=[0, 5])


def test_many_layers_get_distinct_colours_and_a_legend_that_fits(tmp_path):
    history = _history(epochs=30, layers=12)
    series = plots.load_series(history, None)
    layers = plots.layer_numbers(series)
    colours = plots.layer_colours(len(layers))
    assert len({tuple(np.round(colour, 3)) for colour in colours}) == 12

    figure = plots.weight_norms_figure(series, layers, dict(zip(layers, colours)))
    figure.canvas.draw()
    legend_box = figure.legends[0].get_window_extent()
    figure_box = figure.bbox
    assert figure_box.x0 <= legend_box.x0 and legend_box.x1 <= figure_box.x1
    assert figure_box.y0 <= legend_box.y0 and legend_box.y1 <= figure_box.y1
    assert legend_box.x0 >= figure.axes[0].get_window_extent().x1  # beside the axes, not on them
    assert len(save_training_plots(history, tmp_path)) == 3


# ---------------------------------------------------------------------------------------------
# Layout: the fixed margins must hold whatever the tick labels turn out to be
# ---------------------------------------------------------------------------------------------


def _awkward_history() -> dict[str, list[float]]:
    """Values whose tick labels are as wide as they get: five decimals on a linear axis (mse
    barely moving), tiny values, norms in the thousands."""
    history = _history(epochs=50)
    history["train_mse"] = np.linspace(0.2513, 0.2511, 50).tolist()
    history["val_mse"] = np.linspace(0.2514, 0.2512, 50).tolist()
    history["train_loss"] = np.linspace(3.2e-5, 1.1e-5, 50).tolist()
    history["val_loss"] = np.linspace(3.9e-5, 1.5e-5, 50).tolist()
    for layer in range(1, LAYERS + 1):
        history[f"layer{layer}/weight_norm"] = np.linspace(1234.5, 1789.0, 50).tolist()
        history[f"layer{layer}/update_ratio"] = np.linspace(3e-7, 2e-7, 50).tolist()
    return history


def _drawn_tick_labels(axis, renderer) -> list:
    """The extents of the tick labels drawn on ``axis``: matplotlib keeps Tick objects beyond
    the view limits around, undrawn."""
    low, high = sorted(axis.get_view_interval())
    slack = 1e-9 * (high - low)
    boxes = []
    for locations, ticks in (
        (axis.get_majorticklocs(), axis.get_major_ticks()),
        (axis.get_minorticklocs(), axis.get_minor_ticks()),
    ):
        for location, tick in zip(locations, ticks):
            if low - slack <= location <= high + slack and tick.label1.get_visible() and tick.label1.get_text():
                boxes.append(tick.label1.get_window_extent(renderer))
    return boxes


@pytest.mark.parametrize(
    "history", [_history(), _history(epochs=1), _awkward_history()], ids=["decaying", "single-epoch", "awkward"]
)
def test_no_text_leaves_the_figure_or_overlaps(history):
    series = plots.load_series(history, None)
    layers = plots.layer_numbers(series)
    colours = dict(zip(layers, plots.layer_colours(len(layers))))
    figures = [
        plots.learning_curves_figure(series),
        plots.gradient_norms_figure(series, layers, colours),
        plots.weight_norms_figure(series, layers, colours),
    ]
    for figure in figures:
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        inside = figure.bbox
        previous_axes_box = None
        for ax in figure.axes:
            ylabel = ax.yaxis.label.get_window_extent(renderer)
            tick_labels = _drawn_tick_labels(ax.yaxis, renderer)
            offset = ax.yaxis.get_offset_text()
            texts = [ylabel, ax.xaxis.label.get_window_extent(renderer), *tick_labels]
            if offset.get_text():
                texts.append(offset.get_window_extent(renderer))
            for box in texts:
                assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
            assert not any(ylabel.overlaps(box) for box in tick_labels), ax.get_title()
            if previous_axes_box is not None:
                assert not any(previous_axes_box.overlaps(box) for box in (ylabel, *tick_labels))
            previous_axes_box = ax.get_window_extent(renderer)
        for legend in figure.legends:
            box = legend.get_window_extent(renderer)
            assert box.x1 <= inside.x1 and box.x0 >= previous_axes_box.x1
        title = figure._suptitle.get_window_extent(renderer)
        assert title.y1 <= inside.y1 and not any(
            title.overlaps(ax.title.get_window_extent(renderer)) for ax in figure.axes if ax.get_title()
        )


# --- the helper process bprun draws completed runs' plots in ---------------------------------


def _other_history(epochs: int) -> dict[str, list[float]]:
    """Same layout as _history() but data that wants other scales: flat losses (linear), zero
    bias gradients (symlog), norms over many decades."""
    e = np.arange(epochs, dtype=float)
    metrics = _history(epochs)
    metrics |= {"train_mse": 0.2 + 0.001 * np.sin(e), "val_mse": 0.21 + 0.001 * np.cos(e)}
    for layer in range(1, LAYERS + 1):
        metrics[f"layer{layer}/grad_bias_norm"] = np.where(e % 7 == 0, 0.0, 1e-3 * np.exp(-e / 5))
        metrics[f"layer{layer}/grad_weight_norm"] = 10.0 ** (-e / 10)
    return metrics


@pytest.mark.parametrize(
    "first, second",
    [(_history(200), _other_history(60)), (_other_history(60), _history(200)), (_history(200), _history(1))],
)
def test_a_reused_figure_draws_what_a_new_one_draws(tmp_path: Path, first, second) -> None:
    plots.forget_figures()
    save_training_plots(first, tmp_path / "first")
    reused = save_training_plots(second, tmp_path / "reused")
    plots.forget_figures()
    fresh = save_training_plots(second, tmp_path / "fresh")
    assert [path.name for path in reused] == [path.name for path in fresh]
    for reused_path, fresh_path in zip(reused, fresh):
        assert reused_path.read_bytes() == fresh_path.read_bytes(), reused_path.name


def test_figures_are_kept_for_reuse_within_a_bound() -> None:
    plots.forget_figures()
    for layers in range(1, plots.FIGURE_CACHE_SIZE + 3):
        series = plots.load_series(_history(30, layers=layers), None)
        numbers = plots.layer_numbers(series)
        colours = dict(zip(numbers, plots.layer_colours(len(numbers))))
        first = plots.weight_norms_figure(series, numbers, colours)
        assert plots.weight_norms_figure(series, numbers, colours) is first  # same layout: same figure
    assert plots.kept_figures() == plots.FIGURE_CACHE_SIZE
