"""The one place the tracking layer relies on what MLflow does not publish: the layout of its
store's ``metrics`` and ``latest_metrics`` tables (SQLite and PostgreSQL alike), and the
undocumented modules behind its server and its http client (``mlflow.server``, ``mlflow.utils``).

Why the tables: MLflow's store builds one ORM object per value in ``log_batch``, so a run that
logs a dozen values per epoch spends more time there than training, and a team server spends
most of its CPU there (the benchmarks doc has the figures). The writers here insert exactly the
rows ``log_batch`` would, in one transaction per call: ``SqliteMetricWriter`` in the run's
process on a SQLite file, ``SqlMetricWriter`` in bprun-server's metrics endpoint
(``runner.tracking.metrics_endpoint``) on its store.

Checked against the MLflow versions in ``CHECKED_MLFLOW_VERSIONS``: with any other version, or
tables of another shape, ``open`` returns None and runs log through ``log_batch``.
``tests/test_tracking_compat.py`` compares them with ``log_batch`` on the same inputs (steps out
of order, repeated steps, equal timestamps, the latest-value rule) on SQLite and PostgreSQL, and
fails as soon as the installed MLflow is not one of these versions; it also checks that the
server and client names below are still there.
"""

from __future__ import annotations

import os
import sqlite3
import warnings
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

CHECKED_MLFLOW_VERSIONS = ("3.17.2",)


# --- MLflow's server and its http client ----------------------------------------------------------
# bprun-server's metrics endpoint is an MLflow app plugin (``mlflow server --app-name``): it adds a
# route to MLflow's own app and writes to the store MLflow's server was started with; a run asks the
# endpoint with MLflow's own http helper, so that its requests carry the same credentials, TLS
# settings, timeout and retries as MLflow's. None of these names is in MLflow's documented API.


def server_apps() -> tuple[Any, Any]:
    """MLflow server's Flask app (routes are added to it) and the app the server runs."""
    # MLflow's server imports Starlette's WSGI bridge, which warns that it is deprecated: MLflow's
    # concern, not its users'.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*starlette.middleware.wsgi is deprecated")
        # (lazy: MLflow's server and its web stack, in bprun-server only)
        from mlflow.server import app as flask_app
        from mlflow.server.fastapi_app import app

    return flask_app, app


def server_store_uri() -> str:
    """The backend store URI of the MLflow server this process runs, "" outside one."""
    from mlflow.server.constants import BACKEND_STORE_URI_ENV_VAR  # (lazy: see server_apps)

    return os.environ.get(BACKEND_STORE_URI_ENV_VAR, "")


def metric_name_problem(name: str) -> str | None:
    """What MLflow's own check of a metric name (the one its ``log-batch`` handler runs) says is
    wrong with ``name``, None when it accepts it."""
    from mlflow.exceptions import MlflowException  # (lazy: see server_apps)
    from mlflow.utils.validation import _validate_metric  # (lazy: see server_apps)

    try:
        _validate_metric(name, 0.0, 0, 0)
    except MlflowException as error:
        return str(error.message)
    return None


class RestClient:
    """Requests to the MLflow server at ``uri`` through MLflow's own http helper."""

    def __init__(self, uri: str) -> None:
        from mlflow.utils.credentials import get_default_host_creds  # (lazy: runs on a server only)

        self._credentials = get_default_host_creds(uri)

    def get_json(self, path: str) -> dict[str, Any] | None:
        """The JSON answer to a GET of ``path``; None unless it answers 200 with JSON (other
        servers answer 404, a proxy anything). A server that cannot be reached raises."""
        from mlflow.utils.rest_utils import http_request  # (lazy: as in __init__)

        response = http_request(self._credentials, path, "GET", raise_on_status=False)
        is_json = response.headers.get("Content-Type", "").startswith("application/json")
        return response.json() if response.status_code == 200 and is_json else None

    def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """The JSON answer to a POST of ``body``; MLflow's ``MlflowException`` for an error
        answer, as MLflow's own calls raise."""
        from mlflow.utils.rest_utils import http_request, verify_rest_response  # (lazy: as in __init__)

        return verify_rest_response(http_request(self._credentials, path, "POST", json=body), path).json()


# --- the metrics tables ---------------------------------------------------------------------------

# One metric value: (key, value, timestamp in ms, step).
MetricRow = tuple[str, float, int, int]

METRIC_COLUMNS = {"key", "value", "timestamp", "run_uuid", "step", "is_nan"}

# Portable SQL (SQLite >= 3.24, PostgreSQL): a value already stored is left alone, as
# log_batch does; the latest value per key follows MLflow's rule (the largest (step, timestamp, value)).
INSERT_METRICS = (
    "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
    "VALUES ({key}, {value}, {timestamp}, {run_uuid}, {step}, false) ON CONFLICT DO NOTHING"
)
UPSERT_LATEST = (
    "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
    "VALUES ({key}, {value}, {timestamp}, {step}, false, {run_uuid}) ON CONFLICT (key, run_uuid) DO UPDATE SET "
    "value = excluded.value, timestamp = excluded.timestamp, step = excluded.step, is_nan = false "
    "WHERE (excluded.step, excluded.timestamp, excluded.value) > "
    "(latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)"
)


def latest_values(values: Sequence[MetricRow]) -> list[MetricRow]:
    """Per key, the value MLflow keeps as the latest: the largest (step, timestamp, value)."""
    latest: dict[str, MetricRow] = {}
    for key, value, timestamp, step in values:
        current = latest.get(key)
        if current is None or (step, timestamp, value) > (current[3], current[2], current[1]):
            latest[key] = (key, value, timestamp, step)
    return [latest[key] for key in sorted(latest)]  # one lock order for every writer of a run


class SqliteMetricWriter:
    """Writes finite metric values straight into an MLflow SQLite store (see the module docstring)."""

    def __init__(self, database: Path) -> None:
        self.database = database
        # Another process (a sweep worker, mlflow ui) may hold the write lock for a moment.
        self.connection = sqlite3.connect(database, timeout=60.0, isolation_level=None)

    @classmethod
    def open(cls, database: Path) -> SqliteMetricWriter | None:
        """A writer for ``database``, or None where MLflow's own API must be used instead."""
        if version("mlflow") not in CHECKED_MLFLOW_VERSIONS:
            return None
        try:
            writer = cls(database)
            for table in ("metrics", "latest_metrics"):
                columns = {row[1] for row in writer.connection.execute(f"PRAGMA table_info({table})")}
                if columns != METRIC_COLUMNS:
                    writer.close()
                    return None
            return writer
        except sqlite3.Error:
            return None

    def write(self, values: Mapping[str, Sequence[MetricRow]]) -> None:
        """Store ``{run id: values}`` (finite) in one transaction: all or nothing."""
        rows = [
            (key, value, timestamp, run_id, step)
            for run_id, run_values in values.items()
            for key, value, timestamp, step in run_values
        ]
        latest = [
            (key, value, timestamp, step, run_id)
            for run_id, run_values in values.items()
            for key, value, timestamp, step in latest_values(run_values)
        ]
        if not rows:
            return
        connection = self.connection
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(_SQLITE_INSERT_METRICS, rows)
            connection.executemany(_SQLITE_UPSERT_LATEST, latest)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.connection.close()


_SQLITE_INSERT_METRICS = INSERT_METRICS.format(key="?", value="?", timestamp="?", run_uuid="?", step="?")
_SQLITE_UPSERT_LATEST = UPSERT_LATEST.format(key="?", value="?", timestamp="?", step="?", run_uuid="?")
_NAMED = {name: f":{name}" for name in ("key", "value", "timestamp", "run_uuid", "step")}
# PostgreSQL: the values as arrays in one statement rather than one statement per value, which
# the server parses and plans once (the benchmarks doc has the gain).
_POSTGRES_INSERT_METRICS = (
    "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) SELECT k, v, t, r, s, false "
    "FROM unnest(CAST(:run_uuids AS text[]), CAST(:keys AS text[]), CAST(:values AS double precision[]), "
    "CAST(:timestamps AS bigint[]), CAST(:steps AS bigint[])) AS given(r, k, v, t, s) ON CONFLICT DO NOTHING"
)


class SqlMetricWriter:
    """Writes finite metric values straight into an MLflow store through SQLAlchemy (the
    server's PostgreSQL or SQLite store; see the module docstring)."""

    def __init__(self, engine: Any) -> None:
        import sqlalchemy  # (lazy: a run's process never needs it for this)

        self.engine = engine
        self._arrays = engine.dialect.name == "postgresql"
        self._insert = sqlalchemy.text(_POSTGRES_INSERT_METRICS if self._arrays else INSERT_METRICS.format(**_NAMED))
        self._upsert = sqlalchemy.text(UPSERT_LATEST.format(**_NAMED))
        self._run = sqlalchemy.text("SELECT lifecycle_stage FROM runs WHERE run_uuid = :run_uuid")

    @classmethod
    def open(cls, store_uri: str) -> SqlMetricWriter | None:
        """A writer for the store at ``store_uri`` (a SQLAlchemy URI), or None where MLflow's
        own API must be used instead."""
        import sqlalchemy  # (lazy: only bprun-server's endpoint writes through SQLAlchemy)

        if version("mlflow") not in CHECKED_MLFLOW_VERSIONS:
            return None
        try:
            engine = sqlalchemy.create_engine(store_uri, pool_pre_ping=True)
            inspector = sqlalchemy.inspect(engine)
            for table in ("metrics", "latest_metrics"):
                if {column["name"] for column in inspector.get_columns(table)} != METRIC_COLUMNS:
                    engine.dispose()
                    return None
        except sqlalchemy.exc.SQLAlchemyError:
            return None
        return cls(engine)

    def lifecycle_stage(self, run_id: str) -> str | None:
        """The run's lifecycle stage (``active``, ``deleted``), None when there is no such run."""
        with self.engine.connect() as connection:
            return connection.execute(self._run, {"run_uuid": run_id}).scalar()

    def write(self, values: Mapping[str, Sequence[MetricRow]]) -> None:
        """Store ``{run id: values}`` (finite) in one transaction: all or nothing."""
        values = {run_id: run_values for run_id, run_values in values.items() if run_values}
        if not values:
            return
        if self._arrays:
            columns = [(run_id, *row) for run_id, run_values in values.items() for row in run_values]
            run_ids, keys, numbers, timestamps, steps = (list(column) for column in zip(*columns))
            rows: Any = {
                "run_uuids": run_ids,
                "keys": keys,
                "values": numbers,
                "timestamps": timestamps,
                "steps": steps,
            }
        else:
            rows = [
                {"key": key, "value": value, "timestamp": timestamp, "run_uuid": run_id, "step": step}
                for run_id, run_values in values.items()
                for key, value, timestamp, step in run_values
            ]
        latest = [
            {"key": key, "value": value, "timestamp": timestamp, "run_uuid": run_id, "step": step}
            for run_id, run_values in values.items()
            for key, value, timestamp, step in latest_values(list(run_values))
        ]
        with self.engine.begin() as connection:
            connection.execute(self._insert, rows)
            connection.execute(self._upsert, latest)

    def close(self) -> None:
        self.engine.dispose()
