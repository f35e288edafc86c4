"""A run's config as MLflow params: dotted keys, values as text."""

from __future__ import annotations

import json
from typing import Any

from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from runner.names import flatten

__all__ = ["MAX_PARAMS_PER_CALL", "flatten", "format_param", "log_params"]

MAX_PARAMS_PER_CALL = 100  # MLflow's own limit per log_batch call


def format_param(value: Any) -> str:
    """A config value as an MLflow param: lists, dicts and None as JSON, floats to 15 digits."""
    if isinstance(value, float):
        return format(value, ".15g")
    if isinstance(value, (list, dict)) or value is None:
        return json.dumps(value)
    return str(value)


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log ``params`` (formatted with ``format_param``) in as few calls as MLflow allows."""
    entries = [Param(key, format_param(value)) for key, value in params.items()]
    for start in range(0, len(entries), MAX_PARAMS_PER_CALL):
        client.log_batch(run_id, params=entries[start : start + MAX_PARAMS_PER_CALL])
