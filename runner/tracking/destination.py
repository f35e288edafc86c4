"""Where runs go: the tracking URI, the store it names, and how to look at it.

A tracking URI is ``MLFLOW_TRACKING_URI`` when set, else ``tracking.uri``, else
``sqlite:///<the directory bprun started in>/mlflow.db``; a SQLite store keeps its artifacts in
``mlartifacts/`` beside the database file. Standard library only: a sweeper works this out
before anything imports MLflow.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import sqlite3
import tempfile
import urllib.error
import urllib.request
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner import names
from runner.process.errors import InvalidInput, RunError

DEFAULT_DATABASE = "mlflow.db"
OFFLINE_DATABASE = "mlflow-offline.db"
ARTIFACTS_FOLDER = "mlartifacts"
# Below this much free disk space a run could fill the disk half way through writing the store.
MIN_FREE_BYTES = 50 * 1024 * 1024


class StoreUnavailable(InvalidInput):
    """Runs cannot go to the store (unreachable, read-only, full); nothing was trained or logged."""


class TrackingLost(RunError):
    """The tracking server stopped answering during a run or sweep: its run stays RUNNING
    there, and what the run had written locally is kept on disk."""


@dataclass(frozen=True)
class Destination:
    """Where one run or sweep is tracked: the store ``uri``, and for an offline store the
    server its runs are meant for (``sync_target``), which ``bprun-sync`` uploads them to."""

    uri: str
    sync_target: str | None = None
    http_timeout: float = 5.0
    http_retries: int = 2

    @property
    def is_server(self) -> bool:
        return is_server(self.uri)

    @classmethod
    def configured(cls, tracking: Any, start_dir: str) -> Destination:
        """Where a run with the settings ``tracking`` (``uri``, ``offline``, ``http_timeout``,
        ``http_retries``) goes. Offline runs go to ``mlflow-offline.db`` in ``start_dir`` and
        remember the store they were meant for."""
        target = resolve_tracking_uri(tracking.uri, start_dir)
        if tracking.offline:
            return cls(
                f"sqlite:///{Path(start_dir, OFFLINE_DATABASE).resolve()}",
                target,
                tracking.http_timeout,
                tracking.http_retries,
            )
        return cls(target, None, tracking.http_timeout, tracking.http_retries)


def resolve_tracking_uri(configured: str | None, start_dir: str) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``configured``, else a SQLite file in ``start_dir``."""
    from_environment = os.environ.get(names.ENV_TRACKING_URI)
    if from_environment:
        return from_environment
    if configured:
        return configured
    return f"sqlite:///{Path(start_dir, DEFAULT_DATABASE).resolve()}"


SUPPORTED_URIS = "sqlite:///PATH (a SQLite file), http://HOST:PORT or https://HOST:PORT (a tracking server)"


def uri_problem(uri: str) -> str | None:
    """Why runs cannot be tracked at ``uri``, a store bprun does not write to; None when it can."""
    if uri.startswith(("http://", "https://")) and len(uri.split("://", 1)[1].strip("/")) > 0:
        return None
    if uri.startswith("sqlite:///") and len(uri) > len("sqlite:///"):
        return None
    return f"bprun tracks runs in {SUPPORTED_URIS}"


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :]) if uri.startswith(prefix) else None


SERVER_ADVICE = (
    "start the server, point tracking.uri or MLFLOW_TRACKING_URI elsewhere, or train with "
    "tracking.offline=true and upload later with bprun-sync"
)


def check_store(target: Destination, server_advice: str = SERVER_ADVICE) -> None:
    """Raise ``StoreUnavailable``, with a message that says what to do, when runs cannot go to
    ``target``: a server must answer within its timeout, a SQLite file's folder must be
    writable and have room. For a server, MLflow's requests in this process get the same
    timeout and retries (unless the environment sets its own)."""
    problem = uri_problem(target.uri)
    if problem is not None:
        raise StoreUnavailable(f"the tracking URI {target.uri!r} is not allowed: {problem}")
    if target.is_server:
        _check_server(target.uri, target.http_timeout, server_advice)
        apply_http_settings(target.http_timeout, target.http_retries)
        return
    database = sqlite_path(target.uri)
    if database is not None:
        _check_writable(database)


def http_settings(timeout: float, retries: int) -> dict[str, str]:
    """MLflow's environment variables for an http client that gives up after ``timeout`` seconds
    per request and ``retries`` retries (its defaults retry for minutes)."""
    return {names.ENV_HTTP_TIMEOUT: str(max(1, round(timeout))), names.ENV_HTTP_RETRIES: str(retries)}


def apply_http_settings(timeout: float, retries: int) -> None:
    for variable, value in http_settings(timeout, retries).items():
        os.environ.setdefault(variable, value)


def _check_server(uri: str, timeout_seconds: float, advice: str) -> None:
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_seconds).close()
    except urllib.error.HTTPError:
        return  # it answered: reachable, whatever it thinks of /health
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, (socket.timeout, TimeoutError)):
            reason = f"no answer within {timeout_seconds:g} s"
        raise StoreUnavailable(f"cannot reach the MLflow tracking server at {uri}: {reason}; {advice}") from None


def _check_writable(database: Path) -> None:
    folder = database.parent
    if not folder.is_dir():
        raise StoreUnavailable(
            f"cannot write the MLflow store {database}: its folder {folder} does not exist; create it, or point "
            "tracking.uri elsewhere"
        )
    try:
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
    _check_readable(database)
    if free < MIN_FREE_BYTES:
        raise StoreUnavailable(
            f"cannot write the MLflow store {database}: only {free // 1024**2} MB free "
            f"on its disk (at least {MIN_FREE_BYTES // 1024**2} MB needed)"
        )


def table_names(database: Path) -> set[str]:
    """The tables of a SQLite file, read without writing to it; ``sqlite3.DatabaseError`` when
    it is not a database or its schema is damaged."""
    with closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)) as connection:
        return {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _check_readable(database: Path) -> None:
    """Refuse a file that SQLite cannot read (not a database, or a damaged schema) before
    MLflow meets it half way through a run. The schema is read, not every page: a full check
    of a large store takes seconds."""
    if not database.is_file() or database.stat().st_size == 0:
        return
    try:
        table_names(database)
    except sqlite3.DatabaseError as error:
        raise StoreUnavailable(
            f"cannot use the MLflow store {database}: {error}; move the file aside "
            "(or restore it from a backup) or point tracking.uri elsewhere"
        ) from None


# The MLflow UI (3.x) opens an experiment on its GenAI views unless the page's address asks for
# model training; links bprun prints ask for it.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
UI_ADDRESS = "http://127.0.0.1:5000"  # where ``mlflow ui`` serves by default
# One web worker and no background job workers (they serve GenAI features): a few hundred MB
# instead of gigabytes (the benchmarks doc).
UI_COMMAND = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --workers 1"


def page_address(uri: str, page: str) -> str:
    """The address of a UI page (``#/experiments/...``) of the store at ``uri``: on its server,
    or on ``mlflow ui`` for a file store (started with ``where_to_look``'s command)."""
    return f"{uri.rstrip('/') if is_server(uri) else UI_ADDRESS}/{page}"


def where_to_look(uri: str, experiment_id: str | None = None, run_id: str | None = None) -> str:
    """How to see runs of ``uri`` in the MLflow UI: the page of the run (or experiment) on a
    server, or for a file store the ``mlflow ui`` command and the page it then serves."""
    page = "/#/experiments"
    if experiment_id is not None:
        page += f"/{experiment_id}"
        if run_id is not None:
            page += f"/runs/{run_id}"
    page += f"?{MODEL_TRAINING_VIEW}"
    if is_server(uri):
        return uri.rstrip("/") + page
    return f"{UI_COMMAND} --backend-store-uri {uri}, then open {UI_ADDRESS}{page}"
