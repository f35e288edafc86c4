"""Contract tests of the one MLflow-private thing the tracking layer relies on: the direct metric
writers (the run's SQLite writer, bprun-server's SQL writer on SQLite and PostgreSQL) must store
exactly what MLflow's own ``log_batch`` stores, on the same inputs.

They fail loudly when MLflow is upgraded (``CHECKED_MLFLOW_VERSIONS``): run them against the new
version, and add it there only once they pass.
"""

from __future__ import annotations

import math
import sqlite3
from importlib.metadata import version

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from postgres import postgres_uri  # noqa: F401  (the session's PostgreSQL database, a fixture)

from runner.tracking.compat import CHECKED_MLFLOW_VERSIONS, SqliteMetricWriter, SqlMetricWriter
from runner.tracking.destination import sqlite_path
from runner.tracking.mlflow_run import TrackedRun
from runner.tracking.store import ensure_experiment

# (key, value, timestamp ms, step): what one flush writes.
CASES = {
    "steps in order": [("m", 1.0 / (step + 1), 1000 + step, step) for step in range(2500)],
    "steps out of order": [("m", 0.5, 1000, 3), ("m", 0.7, 1001, 1), ("m", 0.2, 1002, 2), ("m", 0.9, 1003, 0)],
    "a step repeated, later time": [("m", 0.5, 1000, 1), ("m", 0.4, 2000, 1), ("m", 0.6, 1500, 0)],
    "a step repeated, equal time": [("m", 0.5, 1000, 1), ("m", 0.7, 1000, 1), ("m", 0.3, 1000, 1)],
    "equal timestamps, many keys": [(key, float(step), 5000, step) for step in range(3) for key in ("a", "b/c", "d e")],
    "latest step smaller value": [("m", 9.0, 1000, 5), ("m", 1.0, 1000, 6), ("m", 100.0, 999, 4)],
}


def test_the_installed_mlflow_is_one_the_writer_was_checked_against() -> None:
    assert version("mlflow") in CHECKED_MLFLOW_VERSIONS, (
        f"MLflow {version('mlflow')} is installed but the direct SQLite writer was checked against "
        f"{CHECKED_MLFLOW_VERSIONS}: run these tests against it, then add it to CHECKED_MLFLOW_VERSIONS"
    )


def _new_run(uri: str, name: str) -> str:
    client = MlflowClient(uri)
    return client.create_run(ensure_experiment(uri, "contract"), run_name=name).info.run_id


def _stored(database, run_id: str) -> tuple[list[tuple], list[tuple]]:
    with sqlite3.connect(database) as connection:
        metrics = sorted(
            connection.execute("SELECT key, value, timestamp, step, is_nan FROM metrics WHERE run_uuid = ?", (run_id,))
        )
        latest = sorted(
            connection.execute(
                "SELECT key, value, timestamp, step, is_nan FROM latest_metrics WHERE run_uuid = ?", (run_id,)
            )
        )
    return metrics, latest


@pytest.mark.parametrize("case", sorted(CASES))
def test_direct_writes_store_the_rows_mlflows_log_batch_stores(case: str, store) -> None:
    rows = CASES[case]
    by_mlflow, direct = _new_run(store.uri, "log_batch"), _new_run(store.uri, "direct")
    client = MlflowClient(store.uri)
    for start in range(0, len(rows), 1000):
        client.log_batch(by_mlflow, metrics=[Metric(*row) for row in rows[start : start + 1000]])
    writer = SqliteMetricWriter.open(store.db)
    assert writer is not None
    writer.write({direct: rows})
    writer.close()
    assert _stored(store.db, direct) == _stored(store.db, by_mlflow)
    # and MLflow reads both back alike
    assert client.get_run(direct).data.metrics == client.get_run(by_mlflow).data.metrics


def test_two_flushes_keep_the_latest_value_by_mlflows_rule(store) -> None:
    by_mlflow, direct = _new_run(store.uri, "log_batch"), _new_run(store.uri, "direct")
    first, second = [("m", 0.5, 1000, 7)], [("m", 0.1, 1000, 6), ("m", 0.6, 1000, 7)]
    client = MlflowClient(store.uri)
    writer = SqliteMetricWriter.open(store.db)
    for rows in (first, second):
        client.log_batch(by_mlflow, metrics=[Metric(*row) for row in rows])
        writer.write({direct: rows})
    writer.close()
    assert _stored(store.db, direct) == _stored(store.db, by_mlflow)


def _stored_sql(uri: str, run_id: str) -> tuple[list[tuple], list[tuple]]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.connect() as connection:
            return tuple(
                sorted(
                    tuple(row)
                    for row in connection.execute(
                        sqlalchemy.text(
                            f"SELECT key, value, timestamp, step, is_nan FROM {table} WHERE run_uuid = :run"
                        ),
                        {"run": run_id},
                    )
                )
                for table in ("metrics", "latest_metrics")
            )
    finally:
        engine.dispose()


def _compare_sql_writer(uri: str) -> None:
    """Every case, and two flushes where the second holds an older step, through
    ``SqlMetricWriter`` and through ``log_batch``, on the store at ``uri``."""
    client = MlflowClient(uri)
    client.search_experiments()  # MLflow makes its tables
    writer = SqlMetricWriter.open(uri)
    assert writer is not None
    try:
        for case, rows in sorted(CASES.items()):
            by_mlflow, direct = _new_run(uri, f"log_batch {case}"), _new_run(uri, f"direct {case}")
            for start in range(0, len(rows), 1000):
                client.log_batch(by_mlflow, metrics=[Metric(*row) for row in rows[start : start + 1000]])
            writer.write({direct: rows})
            writer.write({direct: rows[:3]})  # values stored already are left alone, as log_batch does
            writer.write({direct: []})
            assert _stored_sql(uri, direct) == _stored_sql(uri, by_mlflow), case
            assert client.get_run(direct).data.metrics == client.get_run(by_mlflow).data.metrics
        by_mlflow, direct = _new_run(uri, "log_batch twice"), _new_run(uri, "direct twice")
        for rows in ([("m", 0.5, 1000, 7)], [("m", 0.1, 1000, 6), ("m", 0.6, 1000, 7)]):
            client.log_batch(by_mlflow, metrics=[Metric(*row) for row in rows])
            writer.write({direct: rows})
        assert _stored_sql(uri, direct) == _stored_sql(uri, by_mlflow)
        assert writer.lifecycle_stage(direct) == "active"
        client.delete_run(direct)
        assert writer.lifecycle_stage(direct) == "deleted"
        assert writer.lifecycle_stage("no-such-run") is None
    finally:
        writer.close()


def test_the_servers_writer_stores_what_log_batch_stores_on_sqlite(store) -> None:
    _compare_sql_writer(store.uri)


@pytest.mark.slow
def test_the_servers_writer_stores_what_log_batch_stores_on_postgresql(postgres_uri: str) -> None:  # noqa: F811
    _compare_sql_writer(postgres_uri)


def test_a_run_never_sends_a_non_finite_value(store) -> None:
    uri = store.uri
    with TrackedRun(uri, ensure_experiment(uri, "contract"), "run", {}, {}) as run:
        run.log_metrics({"ok": 1.0, "nan": math.nan, "inf": math.inf, "-inf": -math.inf}, 0)
    metrics, _ = _stored(store.db, run.run_id)
    assert [row[0] for row in metrics] == ["ok"]


def test_the_writer_is_used_only_on_mlflows_schema(tmp_path) -> None:
    database = tmp_path / "other.db"
    sqlite3.connect(database).execute("CREATE TABLE metrics (key TEXT, value REAL)")
    assert SqliteMetricWriter.open(database) is None
    assert SqlMetricWriter.open(f"sqlite:///{database}") is None
    assert sqlite_path("sqlite:////x/y.db").as_posix() == "/x/y.db"
    assert sqlite_path("http://localhost:5000") is None


def test_mlflows_server_and_client_names_are_where_the_compat_module_expects() -> None:
    from runner.tracking import compat

    flask_app, app = compat.server_apps()
    assert callable(flask_app.add_url_rule) and app is not None
    assert compat.server_store_uri() == ""  # outside an MLflow server process
    client = compat.RestClient("http://127.0.0.1:1")
    assert callable(client.get_json) and callable(client.post_json)


def _contents(database) -> dict[str, object]:
    """A store's schema and every row, the experiments' times left out. A table's definition is
    compared as its set of lines (a column or a constraint each): MLflow's own migrations list
    the ``runs`` table's constraints in an order that varies from one build to the next."""
    connection = sqlite3.connect(database)
    try:
        schema = sorted(
            (kind, name, sorted(line.strip().rstrip(",") for line in (sql or "").splitlines()))
            for kind, name, sql in connection.execute("SELECT type, name, sql FROM sqlite_master")
        )
        rows = {}
        for (table,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            columns = [row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')]
            kept = [column for column in columns if not (table == "experiments" and column.endswith("_time"))]
            selected = ", ".join(f'"{column}"' for column in kept)
            rows[table] = sorted(connection.execute(f'SELECT {selected} FROM "{table}"'), key=repr)
        return {"schema": schema, "rows": rows}
    finally:
        connection.close()


def test_a_store_made_from_the_template_holds_what_mlflow_builds(tmp_path, monkeypatch) -> None:
    """A new store is a copy of a template (a store MLflow built, without its experiments) once
    there is one: the same tables, indexes, schema version and rows as MLflow's own, with MLflow's
    Default experiment where MLflow puts it."""
    from runner.tracking import compat
    from runner.tracking.store import create_sqlite_store

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # MLflow's Default experiment keeps its artifacts under the cwd
    built = tmp_path / "built" / "mlflow.db"
    built.parent.mkdir()
    MlflowClient(f"sqlite:///{built}").search_experiments()  # MLflow's migrations, as MLflow runs them
    template = compat.store_template()
    assert template is not None and not template.exists()
    copy_store_template, copied_from_template = compat.copy_store_template, []

    def recorded(target):
        copied_from_template.append(copy_store_template(target))
        return copied_from_template[-1]

    monkeypatch.setattr(compat, "copy_store_template", recorded)
    create_sqlite_store(tmp_path / "first" / "mlflow.db")  # built by MLflow, then kept as the template
    assert template.is_file()
    copied = tmp_path / "copied" / "mlflow.db"
    create_sqlite_store(copied)
    assert copied_from_template == [False, True]
    assert _contents(copied) == _contents(built)
    experiments = MlflowClient(f"sqlite:///{copied}").search_experiments()
    assert [(e.experiment_id, e.name) for e in experiments] == [("0", "Default")]


def test_a_store_with_more_than_a_new_one_holds_is_not_kept_as_the_template(tmp_path, monkeypatch) -> None:
    from runner.tracking import compat

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    database = tmp_path / "mlflow.db"
    MlflowClient(f"sqlite:///{database}").create_experiment("more")
    compat.keep_store_template(database)
    assert compat.store_template() is not None and not compat.store_template().exists()
    assert not compat.copy_store_template(tmp_path / "target.db")
    monkeypatch.setattr(compat, "CHECKED_MLFLOW_VERSIONS", ())
    assert compat.store_template() is None  # another MLflow: its own migrations, always
