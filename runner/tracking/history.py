"""Reading a run's metric history back: one rule for every reader (reports, reruns, tests)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from mlflow.tracking import MlflowClient

# MLflow stores an infinite metric as the largest double; read it back as what it was.
STORED_INFINITY = 1.7e308


@dataclass
class MetricHistory:
    """One metric of one run: ``values[i]`` was logged at step ``steps[i]`` (epochs, ascending)."""

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

    def as_dict(self) -> dict[int, float]:
        return {int(step): float(value) for step, value in zip(self.steps, self.values)}


def to_history(measurements: Sequence[Any]) -> MetricHistory:
    """Steps ascending; a step logged more than once keeps its latest value (the largest
    timestamp), as the MLflow UI shows it."""
    by_step: dict[int, float] = {}
    for measurement in sorted(measurements, key=lambda m: (m.step, m.timestamp)):
        by_step[measurement.step] = measurement.value
    values = np.array(list(by_step.values()), dtype=float)
    stored_infinity = np.abs(values) >= STORED_INFINITY
    values[stored_infinity] = np.copysign(np.inf, values[stored_infinity])
    return MetricHistory(np.array(list(by_step), dtype=np.int64), values)


def metric_history(client: MlflowClient, run_id: str, key: str) -> MetricHistory:
    """The history of metric ``key`` of run ``run_id`` (empty when the run never logged it)."""
    return to_history(client.get_metric_history(run_id, key))
