"""MLflow tracking: where runs go, one run's lifecycle, and batched metric logging.

MLflow is imported only inside these functions (an ``import mlflow`` costs about a second),
so commands that do not track never pay for it.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

# On SQLite every call costs milliseconds whatever its size, so metrics are buffered and sent
# in batches of at most MLflow's own per-call limit.
MAX_METRICS_PER_CALL = 1000
MAX_PARAMS_PER_CALL = 100
# Flush at least this often so a dashboard shows a long run's progress while it trains.
FLUSH_INTERVAL_SECONDS = 5.0


def resolve_tracking_uri(configured: str | None, start_dir: str) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``configured``, else a SQLite file in ``start_dir``."""
    from_environment = os.environ.get("MLFLOW_TRACKING_URI")
    if from_environment:
        return from_environment
    if configured:
        return configured
    return f"sqlite:///{Path(start_dir, 'mlflow.db').resolve()}"


OFFLINE_DATABASE = "mlflow-offline.db"
SYNC_TARGET_TAG = "bprun.sync_target"


def run_destination(configured: str | None, offline: bool, start_dir: str) -> tuple[str, str | None]:
    """``(uri runs are written to, server they belong to when offline else None)``.

    Offline runs go to ``mlflow-offline.db`` in ``start_dir`` and carry the server they were
    meant for, so that ``bprun-sync`` can upload them later.
    """
    target = resolve_tracking_uri(configured, start_dir)
    if not offline:
        return target, None
    return f"sqlite:///{Path(start_dir, OFFLINE_DATABASE).resolve()}", target


class StoreUnavailable(RuntimeError):
    """The tracking store cannot be reached or written; nothing has been trained or logged."""


# Below this much free disk space a run could fill the disk half way through writing the store.
MIN_FREE_BYTES = 50 * 1024 * 1024


def check_store(uri: str, timeout_seconds: float, retries: int) -> None:
    """Fail fast, with a message that says what to do, when runs cannot go to ``uri``.

    An http(s) server must answer within ``timeout_seconds`` (MLflow's own client would retry for
    minutes); MLflow's later calls get the same timeout and ``retries``. A SQLite file's folder
    must be writable and have room.
    """
    if uri.startswith(("http://", "https://")):
        _check_server(uri, timeout_seconds)
        # MLflow reads these at every request; keep an explicit setting of the user's.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(timeout_seconds))))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries))
        return
    database = sqlite_path(uri)
    if database is not None:
        _check_writable(database)


def _check_server(uri: str, timeout_seconds: float) -> None:
    import socket
    import urllib.error
    import urllib.request

    advice = ("start the server, point tracking.uri or MLFLOW_TRACKING_URI elsewhere, or train with "
              "tracking.offline=true and upload later with bprun-sync")
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_seconds).close()
    except urllib.error.HTTPError:
        return  # it answered: reachable, whatever it thinks of /health
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, (socket.timeout, TimeoutError)):
            reason = f"no answer within {timeout_seconds:g} s"
        raise StoreUnavailable(f"cannot reach the MLflow tracking server at {uri}: {reason}; {advice}") from None


def _check_writable(database: Path) -> None:
    import errno

    folder = database.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # A real write, not os.access: root passes access checks on read-only mounts.
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".bprun-write-check-"):
            pass
        if database.exists():
            with open(database, "r+b"):
                pass
        free = shutil.disk_usage(folder).free
    except OSError as error:
        what = "the disk is full" if error.errno == errno.ENOSPC else error.strerror
        raise StoreUnavailable(f"cannot write the MLflow store {database}: {what}") from None
    if free < MIN_FREE_BYTES:
        raise StoreUnavailable(f"cannot write the MLflow store {database}: only {free // 1024**2} MB free "
                               f"on its disk (at least {MIN_FREE_BYTES // 1024**2} MB needed)")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix):]) if uri.startswith(prefix) else None


def dashboard_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store."""
    return f"mlflow ui --backend-store-uri {uri}"


def ensure_experiment(uri: str, name: str) -> str:
    """Create the store (schema migration) and the experiment if needed; return its id.

    With a SQLite store the experiment's artifacts go to ``mlartifacts/`` beside the database,
    not to ``./mlruns`` in whatever directory the process happens to run in.
    """
    from mlflow.tracking import MlflowClient

    database = sqlite_path(uri)
    if database is not None:
        create_sqlite_store(database)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = (database.parent / "mlartifacts").resolve().as_uri() if database else None
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:
        # Another process created it between our lookup and create: use theirs.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def create_sqlite_store(database: Path) -> None:
    """Create a missing SQLite store from a copy of an empty one with MLflow's current schema.

    MLflow creates a store by replaying every schema migration since its first release, about a
    second of SQLAlchemy and alembic work, paid by every new store (each sweep in a fresh folder,
    each test). The migrations are replayed once per machine and MLflow version into
    ``schema_template_path()``; new stores start as a copy, which MLflow then opens like any store
    of its version (it checks the schema revision and adds the Default experiment). Anything
    unusual (an existing or empty file, no cache folder, no hard links) leaves the creation to
    MLflow itself.
    """
    if database.exists():
        return
    staged = database.with_name(f".{database.name}.{os.getpid()}.new")
    try:
        template = schema_template_path()
        if not template.exists():
            _build_schema_template(template)
        database.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, staged)
        # The store appears complete or not at all; one another process created first is kept.
        os.link(staged, database)
    except FileExistsError:
        pass
    except Exception as error:  # never worse than without the template: MLflow creates the store
        logging.getLogger(__name__).debug("creating %s without the schema template: %s", database, error)
    finally:
        staged.unlink(missing_ok=True)


def schema_template_path() -> Path:
    """Where the empty store of the installed MLflow version is kept (``$XDG_CACHE_HOME/bprun``)."""
    from importlib.metadata import version

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bprun"
    return cache / f"mlflow-{version('mlflow')}-empty-store.db"


def _build_schema_template(template: Path) -> None:
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables  # what MLflow's store runs on an empty database

    template.parent.mkdir(parents=True, exist_ok=True)
    staged = template.with_name(f".{template.name}.{os.getpid()}.new")
    engine = sqlalchemy.create_engine(f"sqlite:///{staged}")
    try:
        _initialize_tables(engine)
        engine.dispose()
        os.replace(staged, template)  # concurrent builders each publish a complete file
    finally:
        engine.dispose()
        staged.unlink(missing_ok=True)


def format_param(value: Any) -> str:
    """A config value as an MLflow param: lists/dicts/None as JSON, floats as typed (15 digits)."""
    import json

    if isinstance(value, float):
        return format(value, ".15g")
    if isinstance(value, (list, dict)) or value is None:
        return json.dumps(value)
    return str(value)


def log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    """Log ``params`` (formatted with ``format_param``) in as few calls as MLflow allows."""
    from mlflow.entities import Param

    entries = [Param(key, format_param(value)) for key, value in params.items()]
    for start in range(0, len(entries), MAX_PARAMS_PER_CALL):
        client.log_batch(run_id, params=entries[start : start + MAX_PARAMS_PER_CALL])


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys for a nested dict: ``{'optimizer': {'lr': 1}}`` -> ``{'optimizer.lr': 1}``.
    Lists stay values."""
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


# The direct SQLite path costs little per call, so it can flush more often (the UI sees more).
SQLITE_FLUSH_SIZE = 5000


class SqliteMetricWriter:
    """Writes metric values straight into an MLflow SQLite store's ``metrics`` and
    ``latest_metrics`` tables.

    Why: ``MlflowClient.log_batch`` builds one ORM object per value and costs about 100 us per
    value on SQLite; a run logging a dozen values per epoch spends more time there than in
    training. This inserts exactly the rows MLflow's own ``log_batch`` would (a test compares the
    two), in one transaction per flush, at a few microseconds per value. It is used only when the
    tables have the columns it expects (checked on open) and otherwise MLflow's API is used.
    """

    METRIC_COLUMNS = {"key", "value", "timestamp", "run_uuid", "step", "is_nan"}

    def __init__(self, database: Path) -> None:
        import sqlite3

        self.database = database
        # Another process (a sweep worker, mlflow ui) may hold the write lock for a moment.
        self.connection = sqlite3.connect(database, timeout=60.0, isolation_level=None)

    @classmethod
    def open(cls, database: Path) -> "SqliteMetricWriter | None":
        import sqlite3

        try:
            writer = cls(database)
            for table in ("metrics", "latest_metrics"):
                columns = {row[1] for row in writer.connection.execute(f"PRAGMA table_info({table})")}
                if columns != cls.METRIC_COLUMNS:
                    writer.connection.close()
                    return None
            return writer
        except sqlite3.Error:
            return None

    def write(self, run_id: str, values: list[tuple[str, float, int, int]]) -> None:
        rows = [(key, value, timestamp, run_id, step) for key, value, timestamp, step in values]
        latest: dict[str, tuple[str, float, int, int]] = {}
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
            # Also on Ctrl-C: an open transaction would hold the lock MLflow needs to end the run.
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.connection.close()


class MlflowRun:
    """One MLflow run, driven through ``MlflowClient`` (no global active run to leak).

    Use as a context manager: leaving normally ends the run FINISHED, a KeyboardInterrupt
    KILLED, any other exception FAILED with the error as the ``failure_reason`` tag.
    """

    def __init__(self, uri: str, experiment_id: str, run_name: str, params: dict[str, Any],
                 tags: dict[str, str]) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(uri)
        self.experiment_id = experiment_id
        self._params = params
        self._tags = tags
        self._run_name = run_name
        self._pending: list[tuple[str, float, int, int]] = []  # (key, value, timestamp ms, step)
        database = sqlite_path(uri)
        self._sqlite_writer = SqliteMetricWriter.open(database) if database is not None else None
        self._flush_size = SQLITE_FLUSH_SIZE if self._sqlite_writer else MAX_METRICS_PER_CALL
        self._last_flush = time.monotonic()
        self._failure: str | None = None
        self.run_id = ""

    def __enter__(self) -> "MlflowRun":
        from runner.doctor import process_tags

        run = self.client.create_run(self.experiment_id, run_name=self._run_name,
                                     tags={**self._tags, **process_tags()})
        self.run_id = run.info.run_id
        local = urlparse(run.info.artifact_uri)
        if local.scheme == "file":
            self._artifact_dir, self._staging = Path(unquote(local.path)), None
        else:
            self._staging = tempfile.TemporaryDirectory(prefix="bprun-artifacts-")
            self._artifact_dir = Path(self._staging.name)
        self._artifact_dir.mkdir(parents=True, exist_ok=True)
        log_params(self.client, self.run_id, self._params)
        return self

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        """Buffer one step's metrics; non-finite values are never sent (MLflow stores inf as
        1.8e308 and NaN breaks its run page)."""
        timestamp = int(time.time() * 1000)
        self._pending.extend(
            (key, value, timestamp, step) for key, value in values.items() if math.isfinite(value)
        )
        if len(self._pending) >= self._flush_size or time.monotonic() - self._last_flush > FLUSH_INTERVAL_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Send every buffered metric. The buffer is emptied only once they are stored, so a write
        cut short (Ctrl-C) is repeated by the run's final flush; rows already stored are ignored."""
        pending = self._pending
        if not pending:
            return
        if self._sqlite_writer is not None:
            self._sqlite_writer.write(self.run_id, pending)
        else:
            from mlflow.entities import Metric

            metrics = [Metric(*values) for values in pending]
            for start in range(0, len(metrics), MAX_METRICS_PER_CALL):
                self.client.log_batch(self.run_id, metrics=metrics[start : start + MAX_METRICS_PER_CALL])
        self._pending = []
        self._last_flush = time.monotonic()

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    @property
    def artifact_dir(self) -> Path:
        """A local directory whose files become the run's artifacts.

        With a local artifact store this *is* the run's artifact directory, so large files
        (tensors) are written once, in place, with nothing to copy at the end. Otherwise it is a
        staging directory uploaded when the run ends.
        """
        return self._artifact_dir

    @property
    def writes_artifacts_in_place(self) -> bool:
        """Whether ``artifact_dir`` is the run's own artifact folder (nothing is uploaded at the end)."""
        return self._staging is None

    def write_text_artifacts(self, files: dict[str, str]) -> None:
        """Write small text artifacts given as ``{relative path: content}``."""
        for name, content in files.items():
            path = self._artifact_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)

    def log_dataset(self, dataset: Any, fingerprint: str) -> None:
        """Record the training data as the run's MLflow input (name, digest, schema, source)."""
        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag

        # No source argument: MLflow cannot tell a path string from other kinds of source and
        # warns; where the data came from is the run's data_source tag.
        data = mlflow.data.from_numpy(dataset.X_train, targets=dataset.Y_train, name=dataset.name,
                                      digest=fingerprint[:32])
        context = InputTag(key="mlflow.data.context", value="training")
        inputs = [DatasetInput(data._to_mlflow_entity(), tags=[context])]
        try:
            self.client.log_inputs(self.run_id, datasets=inputs)
        except Exception:
            # MLflow checks for the data set's row and then inserts it without a lock: parallel
            # jobs logging the same data set at once can collide (UNIQUE constraint). The row
            # exists by then, so once more links this run to it.
            time.sleep(0.2)
            self.client.log_inputs(self.run_id, datasets=inputs)

    def fail(self, reason: str) -> None:
        """End the run FAILED with ``reason`` as its ``failure_reason`` tag (on exit)."""
        self._failure = reason

    def __exit__(self, exc_type, exc, traceback) -> None:
        status = "FINISHED"
        if exc_type is not None:
            # Whoever catches the error can tell that a run already holds it.
            exc.tracked_run_id = self.run_id
            status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
            self._failure = self._failure or (
                "interrupted" if status == "KILLED" else f"{exc_type.__name__}: {exc}"
            )
        elif self._failure:
            status = "FAILED"
        try:
            if status == "FAILED" and exc is not None:
                import traceback as traceback_module

                try:
                    self.write_text_artifacts({"traceback.txt": "".join(
                        traceback_module.format_exception(exc_type, exc, traceback))})
                except OSError:  # a full disk may be why the run failed; the status matters more
                    pass
            self.flush()
            if self._failure:
                self.set_tags({"failure_reason": self._failure[:5000]})
            if self._staging is not None:
                self.client.log_artifacts(self.run_id, self._staging.name)
                self._staging.cleanup()
        finally:
            if self._sqlite_writer is not None:
                self._sqlite_writer.close()
            self.client.set_terminated(self.run_id, status)
