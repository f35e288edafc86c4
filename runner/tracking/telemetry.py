"""What a run logs every epoch: its loss metrics and each layer's statistics.

Metric names (``step = epoch``, 0-based; layers are numbered from 1, input side first):

- ``1_loss/train_mse``, ``1_loss/val_mse`` (``1_loss/train_loss``, ``1_loss/val_loss`` when the
  loss is not mse); ``2_accuracy/train_accuracy``, ``2_accuracy/val_accuracy`` for classification
  (``names.logged_metric_name``: the sections put them first in the MLflow UI);
- ``layer<l>/weight_norm``, ``layer<l>/bias_norm``: L2 norms of W and b after the epoch;
- ``layer<l>/grad_weight_norm``, ``layer<l>/grad_bias_norm``: L2 norms of the epoch's gradient
  (the mean of the mini-batch gradients applied during it);
- ``layer<l>/update_ratio``: ||W_after - W_before|| / ||W_after|| over the epoch.

The ``/`` groups a section's charts together in the MLflow UI. The full tensors go to disk
(``runner.tracking.tensors``).
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from engine import MLP, EpochReport, Observer
from runner import names
from runner.names import tracked_metric_name


class MetricLogger(Protocol):
    def log_metrics(self, values: dict[str, float], step: int) -> None: ...


def tracked_metrics(engine_metrics: dict[str, float], split: str, loss: str) -> dict[str, float]:
    """The engine's metrics of one split under their tracked names (``loss`` -> ``train_mse``)."""
    return {tracked_metric_name(split, name, loss): value for name, value in engine_metrics.items()}


def _norm(array: np.ndarray) -> float:
    # vdot of a contiguous view with itself: one BLAS call, no temporary.
    return math.sqrt(float(np.vdot(array, array)))


class EpochMetrics(Observer):
    """Sends each epoch's loss metrics, and every ``layer_stats_every``-th epoch's layer
    statistics (and the last epoch's), to ``sink`` in one batch per epoch; keeps what it sent
    (``series``, by short name, with each series' epochs in ``steps``) for the plots drawn at
    the end."""

    def __init__(self, sink: MetricLogger, loss: str, layer_stats_every: int = 1) -> None:
        self.sink = sink
        self.loss = loss
        self.every = layer_stats_every
        self.wants_gradients = layer_stats_every > 0
        self.series: dict[str, list[float]] = {}
        self.steps: dict[str, list[int]] = {}
        self._held: tuple[int, dict[str, float]] | None = None  # the latest epoch's statistics, not sent yet

    def on_train_begin(self, network: MLP) -> None:
        self._previous_weights = [w.copy() for w in network.weights]
        self._difference = [np.empty_like(w) for w in network.weights]

    def on_epoch_end(self, report: EpochReport) -> None:
        values = tracked_metrics(report.train, "train", self.loss)
        if report.validation is not None:
            values.update(tracked_metrics(report.validation, "val", self.loss))
        if self.every:
            # Computed every epoch: the update ratio needs the weights before each epoch, and the
            # last epoch, whichever it is, is logged too.
            statistics = self._layer_statistics(report)
            if report.epoch % self.every == 0:
                values.update(statistics)
                self._held = None
            else:
                self._held = (report.epoch, statistics)
        self._send(values, report.epoch)

    def on_train_end(self, history: object) -> None:
        if self._held is not None:
            self._send(self._held[1], self._held[0])
            self._held = None

    def _send(self, values: dict[str, float], epoch: int) -> None:
        self.sink.log_metrics({names.logged_metric_name(name): value for name, value in values.items()}, epoch)
        for name, value in values.items():
            self.series.setdefault(name, []).append(value)
            self.steps.setdefault(name, []).append(epoch)

    def _layer_statistics(self, report: EpochReport) -> dict[str, float]:
        # wants_gradients: the engine reports every epoch's gradients to this observer.
        assert report.grad_weights is not None and report.grad_biases is not None
        values: dict[str, float] = {}
        layers = zip(
            report.weights,
            report.biases,
            report.grad_weights,
            report.grad_biases,
            self._previous_weights,
            self._difference,
        )
        for number, (W, b, grad_W, grad_b, previous, difference) in enumerate(layers, start=1):
            weight_norm = _norm(W)
            np.subtract(W, previous, out=difference)
            values[names.layer_metric(number, names.WEIGHT_NORM)] = weight_norm
            values[names.layer_metric(number, names.BIAS_NORM)] = _norm(b)
            values[names.layer_metric(number, names.GRAD_WEIGHT_NORM)] = _norm(grad_W)
            values[names.layer_metric(number, names.GRAD_BIAS_NORM)] = _norm(grad_b)
            values[names.layer_metric(number, names.UPDATE_RATIO)] = (
                _norm(difference) / weight_norm if weight_norm else 0.0
            )
            np.copyto(previous, W)
        return values
