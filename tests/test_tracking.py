"""The MLflow run wrapper: batched metrics land exactly as MLflow's own API would store them."""

from __future__ import annotations

import pytest

from runner.tracking import MlflowRun, SqliteMetricWriter, ensure_experiment, sqlite_path


def log_through(uri: str, use_fast_path: bool, values_per_step: list[dict[str, float]]) -> str:
    experiment_id = ensure_experiment(uri, "tracking-test")
    with MlflowRun(uri, experiment_id, "run", {"a": 1}, {}) as run:
        if not use_fast_path:
            run._sqlite_writer = None  # MLflow's log_batch
        for step, values in enumerate(values_per_step):
            run.log_metrics(values, step)
    return run.run_id


def test_direct_sqlite_writes_equal_mlflows_own(store) -> None:
    from mlflow.tracking import MlflowClient

    # Steps out of order and a repeated step: the latest value is MLflow's largest (step, time, value).
    values = [{"train_mse": 1.0 / (step + 1), "layer1/weight_norm": float(step), "nan": float("nan")}
              for step in range(2500)]
    fast = log_through(store.uri, True, values)
    slow = log_through(store.uri, False, values)
    client = MlflowClient(store.uri)
    for key in ("train_mse", "layer1/weight_norm"):
        history = lambda run_id: sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key))
        fast_history, slow_history = history(fast), history(slow)
        assert [(s, v) for s, v, _ in fast_history] == [(s, v) for s, v, _ in slow_history]
        assert len(fast_history) == 2500
    fast_run, slow_run = client.get_run(fast), client.get_run(slow)
    assert fast_run.data.metrics == slow_run.data.metrics
    assert "nan" not in fast_run.data.metrics  # non-finite values are never sent
    assert fast_run.info.status == slow_run.info.status == "FINISHED"


def test_the_fast_path_is_used_only_on_mlflows_schema(tmp_path) -> None:
    import sqlite3

    database = tmp_path / "other.db"
    sqlite3.connect(database).execute("CREATE TABLE metrics (key TEXT, value REAL)")
    assert SqliteMetricWriter.open(database) is None
    assert sqlite_path("sqlite:////x/y.db").as_posix() == "/x/y.db"
    assert sqlite_path("http://localhost:5000") is None
