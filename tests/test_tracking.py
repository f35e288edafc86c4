"""The MLflow run wrapper: batched metrics land exactly as MLflow's own API would store them."""

from __future__ import annotations

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


def schema(database) -> tuple[dict[str, list[str]], str]:
    """A store's tables and indexes (each as the sorted lines of its SQL) and its alembic revision.
    Sorted because MLflow's own migrations list a table's constraints in a different order from
    one process to the next."""
    import sqlite3

    with sqlite3.connect(database) as connection:
        objects = {name: sorted(line.strip().rstrip(",") for line in (sql or "").splitlines())
                   for name, sql in connection.execute("SELECT name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}
        (revision,), = connection.execute("SELECT version_num FROM alembic_version")
    return objects, revision


def test_a_new_store_is_a_copy_of_mlflows_empty_schema(tmp_path, monkeypatch) -> None:
    import mlflow.store.db.utils as mlflow_db
    from mlflow.tracking import MlflowClient

    from runner.tracking import schema_template_path

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # MLflow alone (its own migrations) against bprun's first and second stores (the first one
    # builds the template, the second is a copy of it and runs no migration at all).
    by_mlflow = tmp_path / "mlflow" / "mlflow.db"
    MlflowClient(f"sqlite:///{by_mlflow}").search_experiments()
    first, second = tmp_path / "first" / "mlflow.db", tmp_path / "second" / "mlflow.db"
    ensure_experiment(f"sqlite:///{first}", "template-test")
    assert schema_template_path().is_file()
    migrations = []
    monkeypatch.setattr(mlflow_db, "_initialize_tables", lambda engine: migrations.append(engine))
    experiment_id = ensure_experiment(f"sqlite:///{second}", "template-test")
    assert migrations == []
    assert schema(first) == schema(second) == schema(by_mlflow)

    client = MlflowClient(f"sqlite:///{second}")
    default = client.get_experiment("0")
    assert default.name == "Default" and default.lifecycle_stage == "active"
    experiment = client.get_experiment(experiment_id)
    assert experiment.artifact_location == (second.parent / "mlartifacts").resolve().as_uri()
    with MlflowRun(f"sqlite:///{second}", experiment_id, "run", {"a": 1}, {}) as run:
        run.log_metrics({"train_mse": 0.5}, 0)
    assert client.get_run(run.run_id).data.metrics == {"train_mse": 0.5}
    assert [path.name for path in second.parent.iterdir() if path.name.startswith(".")] == []


def test_without_a_usable_cache_mlflow_creates_the_store(tmp_path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(not_a_folder))
    database = tmp_path / "store" / "mlflow.db"
    experiment_id = ensure_experiment(f"sqlite:///{database}", "no-cache")
    assert MlflowClient(f"sqlite:///{database}").get_experiment(experiment_id).name == "no-cache"
    assert sorted(path.name for path in database.parent.iterdir()) == ["mlflow.db"]


def test_an_existing_store_is_never_replaced(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    database = tmp_path / "mlflow.db"
    first_id = ensure_experiment(f"sqlite:///{database}", "kept")
    ensure_experiment(f"sqlite:///{database}", "second")
    assert ensure_experiment(f"sqlite:///{database}", "kept") == first_id
