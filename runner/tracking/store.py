"""The MLflow store itself: creating the experiment runs go to, and opening a store to read
runs back (refusing one that is not there)."""

from __future__ import annotations

import os
import secrets
import sqlite3
from pathlib import Path
from urllib.parse import urlparse

from mlflow.tracking import MlflowClient

from runner import names
from runner.process.errors import InvalidInput
from runner.tracking import compat
from runner.tracking.destination import ARTIFACTS_FOLDER, is_server, resolve_tracking_uri, sqlite_path, table_names

# The MLflow UI opens an experiment on its training-runs table (not its GenAI traces view) when
# the experiment carries this kind.
TRAINING_EXPERIMENT_KIND = "custom_model_development"


class StoreMissing(InvalidInput):
    """There is no store to read runs from at the given URI."""


def ensure_experiment(uri: str, name: str) -> str:
    """Create the store (MLflow's schema migration, for a new SQLite file) and the experiment if
    needed, and return the experiment's id. A new experiment of a SQLite store keeps its
    artifacts in ``mlartifacts/`` beside the database, not in whatever directory the process
    runs in; every experiment bprun logs to opens on the training-runs table in the UI."""
    database = sqlite_path(uri)
    if database is not None and not database.exists():
        create_sqlite_store(database)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = (database.parent / ARTIFACTS_FOLDER).resolve().as_uri() if database else None
        try:
            experiment_id = client.create_experiment(
                name, artifact_location=location, tags={names.EXPERIMENT_KIND: TRAINING_EXPERIMENT_KIND}
            )
        except Exception:
            # Another process created it between the lookup and the create: use theirs.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
    else:
        experiment_id = experiment.experiment_id
        if experiment.tags.get(names.EXPERIMENT_KIND) is None:
            client.set_experiment_tag(experiment_id, names.EXPERIMENT_KIND, TRAINING_EXPERIMENT_KIND)
    return experiment_id


def create_sqlite_store(database: Path) -> None:
    """Create a new SQLite store whole or not at all. MLflow builds its schema in dozens of
    migrations, each its own transaction: a process killed in the middle would leave a file
    that every later command refuses ("out-of-date database schema"). So the schema is built
    in a file of its own beside ``database`` and linked into place only when complete; when
    another process created the store first, theirs is used. The file starts as a copy of the
    template of a new store when there is one (``compat.copy_store_template``), which spares
    MLflow's migrations; the first store MLflow builds becomes that template."""
    database.parent.mkdir(parents=True, exist_ok=True)
    partial = database.parent / f".{database.name}.creating-{os.getpid()}-{secrets.token_hex(4)}"
    partial.touch(exist_ok=False)  # the permissions MLflow's own file would get (the umask's)
    try:
        from_template = compat.copy_store_template(partial)
        MlflowClient(f"sqlite:///{partial}").search_experiments(max_results=1)  # MLflow completes the store
        if not from_template:
            compat.keep_store_template(partial)
        try:
            os.link(partial, database)  # atomic, and never replaces a store that appeared meanwhile
        except FileExistsError:
            pass
    finally:
        os.unlink(partial)


def open_store(uri: str) -> MlflowClient:
    """A client on an existing store, for reading runs back. MLflow would create a store that is
    not there (a new SQLite file, or its tables in any SQLite file): refuse instead."""
    database = sqlite_path(uri)
    if database is not None:
        if not database.is_file():
            raise StoreMissing(f"no MLflow store at {database} (pass --tracking-uri or set MLFLOW_TRACKING_URI)")
        try:
            tables = table_names(database)
        except sqlite3.DatabaseError as error:
            raise StoreMissing(f"{database} is not an MLflow store ({error})") from None
        if not {"experiments", "runs"} <= tables:
            raise StoreMissing(f"{database} is not an MLflow store (it has no runs table)")
    elif not is_server(uri):
        parsed = urlparse(uri)
        if parsed.scheme in ("", "file") and not Path(parsed.path if parsed.scheme else uri).exists():
            raise StoreMissing(f"no MLflow store at {uri}")
    return MlflowClient(uri)


def existing_store(tracking_uri: str | None) -> str:
    """``tracking_uri``, or where ``bprun`` logs (``MLFLOW_TRACKING_URI``, else ``mlflow.db`` in
    the current directory), once it is known to hold a store: for code that reads runs back
    from any directory without ever creating a store there."""
    uri = tracking_uri or resolve_tracking_uri(None, os.getcwd())
    open_store(uri)
    return uri
