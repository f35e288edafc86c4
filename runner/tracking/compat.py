"""The one place the tracking layer relies on what MLflow does not publish: the layout of its
store's ``metrics`` and ``latest_metrics`` tables (SQLite and PostgreSQL alike), what a new
SQLite store holds (to make one from a template), and the undocumented modules behind its server
and its http client (``mlflow.server``, ``mlflow.utils``).

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

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import time
import warnings
import zlib
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from runner import names

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


# --- a new SQLite store from a template -------------------------------------------------------------
# MLflow builds a new SQLite store by running every migration of its schema; copying a store it
# built costs a small part of that (the benchmarks doc has both). The template is a store MLflow
# built, kept once per MLflow version without its experiments: MLflow creates its "Default"
# experiment itself in a store that has none, as it does in a new one, so a store made from the
# template holds what a store MLflow builds holds (``tests/test_tracking_compat.py`` compares
# the two). A new store's rows are MLflow's schema version, its default workspace and that
# experiment; a store with any other row is not kept as a template.
TEMPLATE_ROWS = {"alembic_version": 1, "workspaces": 1, "experiments": 1}


def store_template() -> Path | None:
    """Where the template of a new SQLite store is kept (the user's cache folder), or None when
    the installed MLflow is not one this was checked against."""
    installed = version("mlflow")
    if installed not in CHECKED_MLFLOW_VERSIONS:
        return None
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "bprun" / f"mlflow-{installed}-new-store.db"


def copy_store_template(target: Path) -> bool:
    """Fill the file ``target`` with the template; False when there is none to copy."""
    template = store_template()
    if template is None or not template.is_file():
        return False
    try:
        shutil.copyfile(template, target)
    except OSError:
        with contextlib.suppress(OSError):
            target.write_bytes(b"")  # as it was: MLflow builds the store from nothing
        return False
    return True


def keep_store_template(new_store: Path) -> None:
    """Keep ``new_store``, which MLflow has just built, as the template, if it holds only what a
    new store holds. Best effort: a cache folder that cannot be written means no template."""
    template = store_template()
    if template is None:
        return
    scratch = template.with_name(f".{template.name}.{os.getpid()}-{secrets.token_hex(4)}")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(new_store, scratch)
        connection = sqlite3.connect(scratch, isolation_level=None)
        try:
            tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            rows = {table: connection.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] for table in tables}
            if {table: count for table, count in rows.items() if count} != TEMPLATE_ROWS:
                return
            connection.execute("DELETE FROM experiment_tags")
            connection.execute("DELETE FROM experiments")
            connection.execute("VACUUM")
        finally:
            connection.close()
        os.replace(scratch, template)  # atomic: a process copying the template gets all of one
    except (OSError, sqlite3.Error):
        pass
    finally:
        scratch.unlink(missing_ok=True)


# --- MLflow UI: a saved view of a sweep -----------------------------------------------------------
# The experiment page's Views menu saves what a person arranged (columns, sort, filter, grouping,
# charts) as an experiment tag, and a link naming the tag's key opens the runs page arranged that
# way. Neither the tag nor the state inside it is documented: the layout here is the one MLflow's UI
# bundle writes and reads in the versions of ``SAVED_VIEW_MLFLOW_VERSIONS`` (a view saved by hand,
# decoded; the bundle's loader), checked in a browser by ``tests/test_views.py``. The UI reading the
# tag is the server's: a server of another version may ignore or refuse such a view.

SAVED_VIEW_MLFLOW_VERSIONS = ("3.17.2",)
SAVED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
# The UI refuses to save a larger view, and MLflow's store refuses a larger experiment tag.
MAX_SAVED_VIEW_CHARS = 20_000
# The UI's own keys and chart ids: milliseconds since the epoch, then 8 characters of [0-9a-z].
_KEY_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_SECTION_MODEL = "Model metrics"  # the UI's section of the metrics whose names have no "/"
_PARENT_TAG = "mlflow.parentRunId"


def saved_view_key(now_ms: int | None = None) -> str:
    """A new key as the UI makes them (``1796654253765dri64ehk``): unique per call."""
    milliseconds = int(time.time() * 1000) if now_ms is None else now_ms
    return f"{milliseconds}{''.join(secrets.choice(_KEY_ALPHABET) for _ in range(8))}"


def saved_view_link(experiment_id: str, key: str, charts: bool = False) -> str:
    """The page a saved view opens on, as the part of a URL after the server's address.

    The UI's own links name the runs tab and ``compareRunsMode`` (TABLE, CHART); the bare
    experiment page drops the key. ``workflowType`` keeps the model-training sidebar, as the links
    ``runner.tracking.destination`` prints do. Any search setting in the query (``orderByKey``...)
    would make the UI ignore the view, so there is none."""
    mode = "CHART" if charts else "TABLE"
    query = f"viewStateShareKey={key}&compareRunsMode={mode}&workflowType=machine_learning"
    return f"#/experiments/{experiment_id}/runs?{query}"


def encode_view_state(state: Mapping[str, Any]) -> str:
    """The tag's ``state`` field: ``deflate;`` and the base64 of the zlib-deflated JSON (the UI
    inflates it with pako, which reads zlib's format)."""
    packed = zlib.compress(json.dumps(state, separators=(",", ":")).encode())
    return "deflate;" + base64.b64encode(packed).decode()


def decode_view_state(value: str) -> dict[str, Any]:
    """The state inside a ``mlflow.sharedViewState.<key>`` tag's value (deflated or plain JSON,
    both of which the UI reads)."""
    state = json.loads(value)["state"]
    if state.startswith("deflate;"):
        state = zlib.decompress(base64.b64decode(state[len("deflate;") :])).decode()
    return dict(json.loads(state))


def sweep_view_state(
    parent_run_id: str,
    swept_keys: Sequence[str],
    objective: str,
    metrics: Sequence[str],
    lower_is_better: bool = True,
) -> dict[str, Any]:
    """The state of a view of one sweep's jobs, as the UI saves it.

    The runs table: the jobs of ``parent_run_id`` grouped under a row that stands for the sweep
    and shows its best ``objective`` (a view cannot expand a parent run: the UI drops
    ``runsExpanded`` when it saves or loads a view, and nests children only in start-time
    order), sorted by ``objective``, the swept params and the objective (with its ``train_``
    twin) as the first columns. The charts: the objective and its twin over epochs, the objective
    against each swept param and all of them on parallel coordinates, the other metrics without
    a ``/``; then a collapsed section per prefix (``layer1``...). ``metrics`` names every other
    metric the jobs log: the UI adds a chart of its own, where it chooses, for any it has none of.
    """
    if not re.fullmatch(r"[0-9A-Za-z-]+", parent_run_id):
        raise ValueError(f"not a run id: {parent_run_id!r}")
    twin = _train_twin(objective, metrics)
    shown = [objective, *([twin] if twin else [])]
    columns = [_column("params", key) for key in swept_keys] + [_column("metrics", name) for name in shown]
    sections, charts = _sweep_charts(swept_keys, objective, twin, metrics)
    return {
        # The search settings (the page's URL carries the same ones).
        "searchFilter": f"tags.`{_PARENT_TAG}` = '{parent_run_id}'",
        "orderByKey": _column("metrics", objective),
        "orderByAsc": lower_is_better,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        # The table: the name and start-time columns stay first whatever the order says.
        "selectedColumns": columns,
        "columnOrder": ["attributes.`Run Name`", "runDateAndNestInfo", *columns, "duration"],
        "columnWidths": {column: 140 for column in columns if column.startswith("metrics.")},
        "groupBy": {
            "aggregateFunction": "min" if lower_is_better else "max",
            "groupByKeys": [{"mode": "tag", "groupByData": _PARENT_TAG}],
        },
        "groupsExpanded": {f"tag.{_PARENT_TAG}.{parent_run_id}": True},
        # Every job is drawn (the UI's default hides all but the first 10), one curve per job.
        "runsHiddenMode": "SHOW_ALL",
        "useGroupedValuesInCharts": False,
        "compareRunCharts": charts,
        "compareRunSections": sections,
        # Sections keep this order: unordered ones are sorted by name when a new metric appears.
        "isAccordionReordered": True,
        "hideEmptyCharts": True,
        "viewMaximized": False,
        "runListHidden": False,
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }


def write_sweep_view(
    client: Any,
    experiment_id: str,
    parent_run_id: str,
    child_run_ids: Sequence[str],
    swept_keys: Sequence[str],
    objective: str,
    metrics: Sequence[str],
    name: str | None = None,
    lower_is_better: bool = True,
) -> str | None:
    """Save ``sweep_view_state`` as a view of the experiment (``client``: an ``MlflowClient``),
    named ``name`` (by default after the sweep, its number of jobs and its objective; a view of
    the same name, in any case, is replaced), and return the link that opens it
    (``saved_view_link``); None when the installed MLflow is not one the layout was checked
    against. The view shows every run whose parent is the sweep: ``child_run_ids`` only counts
    them for the name."""
    if version("mlflow") not in SAVED_VIEW_MLFLOW_VERSIONS:
        return None
    if not child_run_ids:
        raise ValueError(f"sweep {parent_run_id} has no jobs to show")
    state = sweep_view_state(parent_run_id, swept_keys, objective, metrics, lower_is_better)
    name = name or f"sweep {parent_run_id[:8]} ({len(child_run_ids)} jobs) by {objective}"
    now = int(time.time() * 1000)
    key, created = _saved_view_named(client, experiment_id, name) or (saved_view_key(now), now)
    # The envelope the UI writes, its fields in its order.
    value = json.dumps({"name": name, "createdAt": created, "updatedAt": now, "state": encode_view_state(state)})
    if len(value) > MAX_SAVED_VIEW_CHARS:
        raise ValueError(
            f"the view of sweep {parent_run_id} takes {len(value)} characters, over the UI's {MAX_SAVED_VIEW_CHARS}"
        )
    client.set_experiment_tag(experiment_id, SAVED_VIEW_TAG_PREFIX + key, value)
    return saved_view_link(experiment_id, key)


def _saved_view_named(client: Any, experiment_id: str, name: str) -> tuple[str, int] | None:
    """The key and creation time of the experiment's saved view called ``name`` (the UI compares
    names without case), None when there is none."""
    for tag, value in client.get_experiment(experiment_id).tags.items():
        if not tag.startswith(SAVED_VIEW_TAG_PREFIX):
            continue
        try:
            envelope = json.loads(value)
            if envelope["name"].strip().lower() == name.strip().lower():
                return tag[len(SAVED_VIEW_TAG_PREFIX) :], int(envelope["createdAt"])
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # another tool's tag, or a broken one: the UI skips those too
    return None


def _column(kind: str, key: str) -> str:
    """A runs-table column id, also the UI's sort key: ``params.`optimizer.lr```."""
    return f"{kind}.`{key}`"


def _train_twin(objective: str, metrics: Sequence[str]) -> str | None:
    """``train_mse`` for ``val_mse`` (``loss/train_mse`` for ``loss/val_mse``) when the jobs log
    it: drawn with the objective."""
    prefix, slash, name = objective.rpartition("/")
    if not name.startswith("val_"):
        return None
    twin = f"{prefix}{slash}train_{name[len('val_') :]}"
    return twin if twin in metrics else None


def _natural(name: str) -> list[Any]:
    """A sort key that puts ``layer2`` before ``layer10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _section_of(metric: str) -> str:
    """The UI's section of a metric: the text before its last ``/``."""
    prefix = metric.rpartition("/")[0]
    return _SECTION_MODEL if not prefix else "System metrics" if prefix == "system" else prefix


def _sweep_charts(
    swept_keys: Sequence[str], objective: str, twin: str | None, metrics: Sequence[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The sections and charts of ``sweep_view_state``, in the order they are drawn."""
    others = sorted({name for name in metrics if name not in (objective, twin)}, key=_natural)
    section_names = [_SECTION_MODEL, *sorted({_section_of(name) for name in others} - {_SECTION_MODEL}, key=_natural)]
    ids = {section: saved_view_key() for section in section_names}
    # New metrics go to the end of a section marked reordered, not among its charts; the layers'
    # sections are closed (an open section's charts are drawn as soon as the page opens).
    sections: list[dict[str, Any]] = [
        {"uuid": ids[section], "name": section, "display": names.layer_of(f"{section}/") is None}
        | {"isReordered": True}
        | {"deleted": False, "isGenerated": True}
        for section in section_names
    ]
    model = ids[_SECTION_MODEL]
    charts = [_line_chart(model, objective, [objective, twin] if twin else None)]
    charts += [
        _chart(model, "SCATTER", xaxis={"key": key, "type": "PARAM"}, yaxis={"key": objective, "type": "METRIC"})
        for key in swept_keys
    ]
    if swept_keys:  # parallel coordinates need two axes at least
        parallel = {"selectedParams": list(swept_keys), "selectedMetrics": [objective], "showAllRuns": False}
        charts.append(_chart(model, "PARALLEL", **parallel))
    if twin:  # drawn in the first chart; its own chart stays hidden (the UI's "deleted")
        charts.append(_line_chart(model, twin) | {"deleted": True})
    charts += [
        _line_chart(ids[section], name) for section in section_names for name in others if _section_of(name) == section
    ]
    return sections, charts


def _chart(section: str, kind: str, **fields: Any) -> dict[str, Any]:
    """A chart of the kind ``kind`` (LINE, SCATTER, PARALLEL...) in ``section``, with the fields
    every chart of the UI has."""
    base = {"uuid": saved_view_key(), "type": kind, "runsCountToCompare": 100 if kind == "SCATTER" else 10}
    return base | {"metricSectionId": section, "deleted": False, "isGenerated": False} | fields


def _line_chart(section: str, metric: str, together: Sequence[str] | None = None) -> dict[str, Any]:
    """A chart of ``metric`` over epochs, one curve per run, as the UI generates it; with
    ``together``, one chart of those metrics (the UI's multi-metric line chart)."""
    chosen = {"selectedMetricKeys": list(together)} if together else {"displayName": metric.rpartition("/")[2]}
    return _chart(section, "LINE", metricKey=metric, isGenerated=not together, **chosen) | {
        "lineSmoothness": 0,
        "xAxisScaleType": "linear",
        "scaleType": "linear",
        "range": {},
        "xAxisKey": "step",
        "selectedXAxisMetricKey": "",
        "yAxisKey": "metric",
        "yAxisExpressions": [],
        "ignoreOutliers": False,
        "useGlobalXaxisKey": True,
        "useGlobalLineSmoothing": True,
    }
