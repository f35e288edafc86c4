"""tests/postgres.py: the session's PostgreSQL database is empty, writable, and MLflow's store
works on it (MLflow makes its tables there on first use)."""

from __future__ import annotations

import pytest
from postgres import postgres_uri  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow


def test_the_database_is_empty_and_mlflow_logs_and_reads_back_metrics(postgres_uri: str) -> None:  # noqa: F811
    import psycopg
    from mlflow.tracking import MlflowClient

    with psycopg.connect(postgres_uri) as connection:
        tables = connection.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()[0]
    assert tables == 0

    client = MlflowClient(postgres_uri)
    experiment_id = client.create_experiment("postgres-fixture")
    run_id = client.create_run(experiment_id).info.run_id
    points = [(0, 0.5), (1, 0.25), (2, 0.125)]
    for step, value in points:
        client.log_metric(run_id, "train_mse", value, step=step)
    client.set_terminated(run_id)

    history = client.get_metric_history(run_id, "train_mse")
    assert sorted((metric.step, metric.value) for metric in history) == points
    assert client.get_run(run_id).info.status == "FINISHED"
