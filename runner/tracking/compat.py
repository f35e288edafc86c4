"""The one place the tracking layer relies on something MLflow does not publish: the layout of
its SQLite store's ``metrics`` and ``latest_metrics`` tables.

Why: ``MlflowClient.log_batch`` builds one ORM object per value and costs about 100 us per value
on SQLite, so a run that logs a dozen values per epoch spends more time there than training
(see the benchmarks doc). ``SqliteMetricWriter`` inserts exactly the rows ``log_batch`` would,
in one transaction per flush, at a few microseconds per value.

Checked against the MLflow versions in ``CHECKED_MLFLOW_VERSIONS``: with any other version, or
tables of another shape, ``SqliteMetricWriter.open`` returns None and runs log through
``log_batch``. ``tests/test_tracking_compat.py`` compares the two on the same inputs (steps out of
order, repeated steps, equal timestamps, the latest-value rule) and fails as soon as the
installed MLflow is not one of these versions.
"""

from __future__ import annotations

import sqlite3
from importlib.metadata import version
from pathlib import Path

CHECKED_MLFLOW_VERSIONS = ("3.17.2",)

# One metric value: (key, value, timestamp in ms, step).
MetricRow = tuple[str, float, int, int]


class SqliteMetricWriter:
    """Writes finite metric values straight into an MLflow SQLite store (see the module docstring)."""

    METRIC_COLUMNS = {"key", "value", "timestamp", "run_uuid", "step", "is_nan"}

    def __init__(self, database: Path) -> None:
        self.database = database
        # Another process (a sweep worker, mlflow ui) may hold the write lock for a moment.
        self.connection = sqlite3.connect(database, timeout=60.0, isolation_level=None)

    @classmethod
    def open(cls, database: Path) -> "SqliteMetricWriter | None":
        """A writer for ``database``, or None where MLflow's own API must be used instead."""
        if version("mlflow") not in CHECKED_MLFLOW_VERSIONS:
            return None
        try:
            writer = cls(database)
            for table in ("metrics", "latest_metrics"):
                columns = {row[1] for row in writer.connection.execute(f"PRAGMA table_info({table})")}
                if columns != cls.METRIC_COLUMNS:
                    writer.close()
                    return None
            return writer
        except sqlite3.Error:
            return None

    def write(self, run_id: str, values: list[MetricRow]) -> None:
        """Store ``values`` (finite) for ``run_id`` in one transaction: all or nothing."""
        rows = [(key, value, timestamp, run_id, step) for key, value, timestamp, step in values]
        latest: dict[str, MetricRow] = {}
        for key, value, timestamp, step in values:
            # MLflow's rule for the latest value: the largest (step, timestamp, value).
            current = latest.get(key)
            if current is None or (step, timestamp, value) > (current[3], current[2], current[1]):
                latest[key] = (key, value, timestamp, step)
        connection = self.connection
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(
                "INSERT OR IGNORE INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
                "VALUES (?, ?, ?, ?, ?, 0)", rows)
            connection.executemany(
                "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
                "VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT (key, run_uuid) DO UPDATE SET "
                "value = excluded.value, timestamp = excluded.timestamp, step = excluded.step, is_nan = 0 "
                "WHERE (excluded.step, excluded.timestamp, excluded.value) > "
                "(latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)",
                [(key, value, timestamp, step, run_id) for key, value, timestamp, step in latest.values()])
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.connection.close()
