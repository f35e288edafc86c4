"""The metrics an epoch reports besides the loss, and one-pass evaluation of a network."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from engine._checks import check_choice
from engine.losses import member_dots
from engine.network import MLP, StackedMLP, Workspace

METRICS = ("mse", "accuracy")


def check_metrics(metrics: Sequence[str]) -> None:
    """Raise unless every name of ``metrics`` is one of ``METRICS``."""
    for metric in metrics:
        check_choice("metrics", metric, dict.fromkeys(METRICS))


class MetricSums:
    """Sums the loss and the requested metrics over batches, weighted by batch size.

    ``names`` is ``['loss', *metrics]``; ``means()`` gives each sum over the rows added.
    """

    def __init__(self, loss: str, metrics: Sequence[str]) -> None:
        self.names = ["loss", *metrics]
        self.mse_is_loss = loss == "mse"
        self.mse = "mse" in metrics
        self.accuracy = "accuracy" in metrics
        self.reset()

    def reset(self) -> None:
        self.sums = dict.fromkeys(self.names, 0.0)
        self.count = 0

    def add(self, loss_value: float, a: np.ndarray, y: np.ndarray, scratch: np.ndarray) -> None:
        """Add one batch: its loss, output ``a`` and targets ``y`` (both ``(rows, n_outputs)``);
        ``scratch`` is a buffer of that shape."""
        rows = a.shape[0]
        self.count += rows
        self.sums["loss"] += loss_value * rows
        if self.mse:
            if self.mse_is_loss:
                self.sums["mse"] += loss_value * rows
            else:
                np.subtract(a, y, out=scratch)
                self.sums["mse"] += float(np.vdot(scratch, scratch)) / a.shape[1]
        if self.accuracy:
            self.sums["accuracy"] += count_correct(a, y)

    def means(self) -> dict[str, float]:
        return {name: total / self.count for name, total in self.sums.items()}


class StackedMetricSums(MetricSums):
    """``MetricSums`` of stacked members (``engine.stacked``): ``add`` takes each member's loss
    (shape ``(M,)``) and outputs of shape ``(M, rows, n_outputs)``, and ``means()`` gives arrays of
    one value per member. It mirrors ``MetricSums.add`` operation for operation, so each member's
    sums are the ones it gets alone."""

    def reset(self) -> None:
        self.member_sums: dict[str, float | np.ndarray] = dict.fromkeys(self.names, 0.0)
        self.count = 0

    def add(self, loss_value: float | np.ndarray, a: np.ndarray, y: np.ndarray, scratch: np.ndarray) -> None:
        sums = self.member_sums
        rows = a.shape[-2]
        self.count += rows
        sums["loss"] += loss_value * rows
        if self.mse:
            if self.mse_is_loss:
                sums["mse"] += loss_value * rows
            else:
                np.subtract(a, y, out=scratch)
                sums["mse"] += member_dots(scratch, scratch) / a.shape[-1]
        if self.accuracy:
            sums["accuracy"] += members_correct(a, y)

    def means(self) -> dict[str, npt.NDArray[np.float64]]:  # type: ignore[override]  # one value per member
        return {name: np.asarray(total) / self.count for name, total in self.member_sums.items()}


def count_correct(a: np.ndarray, y: np.ndarray) -> int:
    """Correct class predictions: argmax per row, or a 0.5 threshold for a single output."""
    if a.shape[1] == 1:
        return int(np.count_nonzero((a > 0.5) == (y > 0.5)))
    return int(np.count_nonzero(a.argmax(axis=1) == y.argmax(axis=1)))


def members_correct(a: np.ndarray, y: np.ndarray) -> npt.NDArray[np.intp]:
    """``count_correct`` of every member of stacked outputs ``(M, rows, n_outputs)`` (``y`` of that
    shape or ``(rows, n_outputs)``), as an integer array of shape ``(M,)``."""
    if a.shape[-1] == 1:
        counts: npt.NDArray[np.intp] = np.count_nonzero((a > 0.5) == (y > 0.5), axis=(-2, -1))
    else:
        counts = np.count_nonzero(a.argmax(axis=-1) == y.argmax(axis=-1), axis=-1)
    return counts


def evaluate(
    network: MLP,
    X: np.ndarray,
    Y: np.ndarray,
    loss: str,
    metrics: Sequence[str] = (),
    workspace: Workspace | None = None,
) -> dict[str, float]:
    """Loss and ``metrics`` of ``network`` on ``X`` ``(n_samples, n_inputs)`` and ``Y``
    ``(n_samples, n_outputs)``, in one forward pass over all rows (of each member's rows for a
    ``StackedMLP``, whose values are arrays of one value per member)."""
    check_metrics(metrics)
    output_delta = network.output_delta(loss)
    workspace = workspace or network.workspace(X.shape[0])
    a = network.forward(X, workspace)
    sums = StackedMetricSums(loss, metrics) if isinstance(network, StackedMLP) else MetricSums(loss, metrics)
    value = output_delta(a, Y, workspace.deltas[-1], workspace.scratch[-1])
    sums.add(value, a, Y, workspace.scratch[-1])
    return sums.means()
