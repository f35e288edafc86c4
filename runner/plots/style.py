"""What every chart bprun draws shares: resolution, PNG encoding, colours, markers, canvases."""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.typing import ColorType, LineStyleType, MarkerType

DPI = 100
# zlib level 1 instead of Pillow's 6: slightly larger files, encoded in a fraction of the time.
PNG_OPTIONS = {"compress_level": 1}
# Lines with at most this many points also get markers, so that a one-epoch run shows its point.
MARKERS_UP_TO = 25
# Values beyond this are left out of a chart: matplotlib's scale transforms overflow on them
# (a diverging run reaches 1e300).
PLOTTABLE_LIMIT = 1e100
# viridis without its palest yellows, which vanish on white.
SEQUENTIAL = ListedColormap(colormaps["viridis"](np.linspace(0.0, 0.88, 256)))
GRID_ALPHA = {"major": 0.4, "minor": 0.15}


class LineProperties(TypedDict, total=False):
    """Line properties a chart keeps to pass as keyword arguments (``**style``), typed as
    matplotlib's ``plot`` and ``Line2D`` take them."""

    color: ColorType
    linestyle: LineStyleType
    marker: MarkerType
    markersize: float
    markeredgewidth: float


def categorical_colours(count: int) -> list[Any]:
    """``count`` colours that tell categories (layers, runs, options) apart."""
    if count <= 10:
        return [colormaps["tab10"](index) for index in range(count)]
    if count <= 20:
        return [colormaps["tab20"](index) for index in range(count)]
    return list(SEQUENTIAL(np.linspace(0.0, 1.0, count)))


def new_figure(size: tuple[float, float], **options: Any) -> Figure:
    """A figure with its own Agg canvas (no pyplot: no global figure registry)."""
    figure = Figure(figsize=size, dpi=DPI, **options)
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: Any) -> None:
    figure.savefig(path, dpi=DPI, pil_kwargs=PNG_OPTIONS)


def grid(ax: Any) -> None:
    for which, alpha in GRID_ALPHA.items():
        ax.grid(True, which=which, alpha=alpha)
