"""``bprun-server``: MLflow's tracking server for a team, started the safe way.

- bound to 127.0.0.1 unless ``--host`` says otherwise, with a warning before binding to anything
  else: MLflow's server has no authentication of its own (put a reverse proxy with
  authentication in front of it, see docs/team.md);
- ``--allowed-hosts`` set to the addresses it is reached by (MLflow refuses other Host headers);
- its store PostgreSQL when given a ``postgresql://`` URI (SQLite otherwise), its artifacts in a
  folder it owns and serves (``mlflow-artifacts:``), so that jobs need no shared disk;
- runs' metrics taken at a fraction of MLflow's cost per value by a route of its own
  (``runner.tracking.metrics_endpoint``, MLflow's app plugin ``bprun``), besides MLflow's API;
- MLflow's background job workers off (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``: they take
  gigabytes of memory and serve GenAI features);
- the experiment created through the server with the training-runs kind once it answers.

The server ends with this command: Ctrl-C or SIGTERM stop it, and so does this command's death.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from runner.commands.common import quiet_mlflow
from runner.process import interruption, service
from runner.process.errors import EXIT_FAILED, EXIT_INVALID
from runner.tracking.destination import MODEL_TRAINING_VIEW
from runner.tracking.metrics_endpoint import (
    APP_NAME,
    DEFAULT_MAX_REQUEST_MB,
    ENV_MAX_REQUEST_MB,
    MAX_VALUES_PER_REQUEST,
)

DEFAULT_EXPERIMENT = "backprop-runner"
START_TIMEOUT_SECONDS = 120.0


def parser() -> argparse.ArgumentParser:
    arguments = argparse.ArgumentParser(prog="bprun-server", description=__doc__.split("\n\n")[0])
    arguments.add_argument(
        "--store",
        default="sqlite:///bprun-server/mlflow.db",
        help="the backend store: postgresql://user:password@host:port/database, or a "
        "sqlite:/// file (default: ./bprun-server/mlflow.db)",
    )
    arguments.add_argument(
        "--artifacts",
        default="bprun-server/artifacts",
        type=Path,
        help="the folder the server keeps and serves artifacts in (default: ./bprun-server/artifacts)",
    )
    arguments.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)"
    )
    arguments.add_argument("--port", default=5000, type=int)
    arguments.add_argument(
        "--allowed-hosts",
        help="Host headers the server accepts, comma-separated "
        "(default: the bound address and localhost, with the port)",
    )
    arguments.add_argument("--workers", default=2, type=int, help="web server worker processes (default: 2)")
    arguments.add_argument(
        "--max-request-mb",
        default=DEFAULT_MAX_REQUEST_MB,
        type=float,
        help=f"the largest request the metrics route reads, in MB; larger ones are answered 413 before they "
        f"are read (default: {DEFAULT_MAX_REQUEST_MB}; a request of {MAX_VALUES_PER_REQUEST} values takes about 1)",
    )
    arguments.add_argument(
        "--experiment",
        default=DEFAULT_EXPERIMENT,
        help=f"experiment to create for training runs (default: {DEFAULT_EXPERIMENT})",
    )
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    interruption.install(report=True, stopping_line="bprun-server: stopping the server")
    problem = _check(arguments)
    if problem:
        print(f"bprun-server: {problem}", file=sys.stderr)
        return EXIT_INVALID
    if not _is_loopback(arguments.host):
        print(
            f"bprun-server: warning: binding to {arguments.host}: anyone who can reach this port can read and "
            "change every run, since MLflow's server has no authentication of its own; put a reverse proxy "
            "with authentication in front of it (docs/team.md)",
            file=sys.stderr,
        )
    store = _absolute_store(arguments.store)
    arguments.artifacts.mkdir(parents=True, exist_ok=True)
    address = f"http://{'127.0.0.1' if arguments.host in ('0.0.0.0', '::') else arguments.host}:{arguments.port}"
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        store,
        "--artifacts-destination",
        str(arguments.artifacts.resolve()),
        "--serve-artifacts",
        "--host",
        arguments.host,
        "--port",
        str(arguments.port),
        "--workers",
        str(arguments.workers),
        "--app-name",
        APP_NAME,
        "--allowed-hosts",
        arguments.allowed_hosts or _allowed_hosts(arguments.host, arguments.port),
    ]
    environment = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        ENV_MAX_REQUEST_MB: str(arguments.max_request_mb),
    }
    process = service.start(command, environment)
    try:
        if not _wait_until_healthy(address, process):
            if received := interruption.requested():
                return 128 + received
            print(
                f"bprun-server: the server did not start (exit {process.poll()}); see its output above", file=sys.stderr
            )
            return EXIT_FAILED
        quiet_mlflow()
        from runner.tracking.store import ensure_experiment  # (lazy: MLflow, once the server answers)

        experiment_id = ensure_experiment(address, arguments.experiment)
        print(
            f"bprun-server: serving {store} at {address} (artifacts in {arguments.artifacts.resolve()})\n"
            f"  runs go here with: export MLFLOW_TRACKING_URI={address}   (or bprun tracking=server "
            f"tracking.uri={address})\n"
            f"  dashboard: {address}/#/experiments/{experiment_id}?{MODEL_TRAINING_VIEW}",
            flush=True,
        )
        while process.poll() is None and not interruption.requested():
            time.sleep(0.2)
        if process.poll() is not None:
            print(f"bprun-server: the server stopped (exit {process.returncode})", file=sys.stderr)
            return EXIT_FAILED
        print("bprun-server: stopped", file=sys.stderr)
        received = interruption.requested()
        assert received is not None  # the server still runs: the loop above ended on a signal
        return 128 + received
    finally:
        service.stop(process)


def _check(arguments: argparse.Namespace) -> str | None:
    scheme = arguments.store.partition("://")[0].split("+")[0]
    if scheme not in ("postgresql", "sqlite"):
        return (
            f"--store {arguments.store}: not a store this command runs; give postgresql://user:password@host:port/"
            "database or sqlite:///path/to/mlflow.db"
        )
    if scheme == "postgresql":
        try:
            import psycopg  # noqa: F401  (lazy: whether SQLAlchemy's driver for postgresql:// is installed)
        except ImportError:
            return "--store postgresql://...: the PostgreSQL driver is not installed: pip install -e '.[server]'"
    if not 0 < arguments.port < 65536:
        return f"--port {arguments.port}: it must be between 1 and 65535"
    if arguments.workers < 1:
        return f"--workers {arguments.workers}: it must be at least 1"
    if not 1 <= arguments.max_request_mb <= 1024:
        return f"--max-request-mb {arguments.max_request_mb:g}: it must lie in [1, 1024]"
    return None


def _absolute_store(store: str) -> str:
    """A ``sqlite:///`` file made absolute (and its folder created); other URIs as given."""
    prefix = "sqlite:///"
    if not store.startswith(prefix):
        return store
    database = Path(store[len(prefix) :]).resolve()
    database.parent.mkdir(parents=True, exist_ok=True)
    return f"{prefix}{database}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _allowed_hosts(host: str, port: int) -> str:
    names = {"127.0.0.1", "localhost", host} - {"0.0.0.0", "::"}
    return ",".join(f"{name}:{port}" for name in sorted(names))


def _wait_until_healthy(address: str, process: subprocess.Popen) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline and process.poll() is None and not interruption.requested():
        try:
            urllib.request.urlopen(f"{address}/health", timeout=2).close()
            return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    return False


if __name__ == "__main__":
    sys.exit(main())
