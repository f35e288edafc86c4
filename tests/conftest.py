"""Shared fixtures for the runner's tests: temporary MLflow stores, the real CLI in a subprocess,
and Hydra's compose API over the packaged config tree.

Everything a test writes goes to pytest's temporary directories: CLI runs get a temporary working
directory (so Hydra's ``outputs/`` and a default ``mlflow.db`` land there) and, where a test
reads runs back, ``MLFLOW_TRACKING_URI`` pointing at a SQLite file in a temporary store. Nothing
here uses pytest's cache, so the suite behaves the same with ``-p no:cacheprovider``.

Every process a test starts ends when pytest ends, however pytest ends (``guard.py``): the
session starts the guard here, and pytest-xdist's workers die with the controller.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import guard
import pytest
from omegaconf import DictConfig

import runner.hydra_app.app  # noqa: F401  (importing the app registers the schemas that conf/ builds on)

# A CLI run costs 3-5 s (imports); the limit only keeps a hung run from hanging the suite.
CLI_TIMEOUT_SECONDS = 300


@dataclass(frozen=True)
class Store:
    """A temporary MLflow store: ``<directory>/mlflow.db`` (which may not exist yet)."""

    directory: Path

    @property
    def db(self) -> Path:
        return self.directory / "mlflow.db"

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.db}"

    def client(self) -> Any:
        """An ``MlflowClient`` on this store. Opening a client creates the database, so call
        ``runs()`` instead when the store may not exist."""
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)

    def runs(self) -> list[Any]:
        """Every run in every experiment (deleted ones included); [] when there is no database."""
        if not self.db.exists():
            return []
        from mlflow.entities import ViewType

        client = self.client()
        experiment_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
        if not experiment_ids:
            return []
        return list(client.search_runs(experiment_ids, run_view_type=ViewType.ALL))


def new_store(directory: Path) -> Store:
    directory.mkdir(parents=True, exist_ok=True)
    return Store(directory.resolve())


def run_cli(*overrides: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m runner <overrides>`` in ``cwd`` and wait for it.

    ``MLFLOW_TRACKING_URI`` (and ``HYDRA_FULL_ERROR``, which changes how errors print) are
    removed from the inherited environment; ``env`` entries are added on top.
    """
    environment = {
        key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")
    }
    environment["PYTHONDONTWRITEBYTECODE"] = "1"  # nothing written next to the sources
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "runner", *overrides],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        preexec_fn=guard.dying_with_pytest(),
    )


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``bprun <overrides>`` would run, composed with Hydra's compose API."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="runner.conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A fresh temporary store (its database does not exist until something writes to it)."""
    return new_store(tmp_path / "store")


@pytest.fixture(scope="session")
def store_at() -> Callable[[Path], Store]:
    """``store_at(directory)``: the store whose database is ``<directory>/mlflow.db``."""
    return new_store


@pytest.fixture(scope="session")
def make_store(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Store]:
    """Fresh stores for module-scoped fixtures, which cannot use ``tmp_path``."""
    return lambda name: new_store(tmp_path_factory.mktemp(name))


@pytest.fixture(name="run_cli", scope="session")
def run_cli_fixture() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_cli(*overrides, cwd=..., env=None)`` as a fixture."""
    return run_cli


@pytest.fixture(name="compose", scope="session")
def compose_fixture() -> Callable[[Sequence[str]], DictConfig]:
    """``compose(overrides)`` as a fixture."""
    return compose


# The key of pytest-xdist's worker input that holds the controller's pid.
CONTROLLER_KEY = "bprun_controller_pid"


def pytest_configure(config: pytest.Config) -> None:
    """Every process of the session ends with it (see ``guard.py``)."""
    worker_input = getattr(config, "workerinput", None)
    if worker_input is None:
        guard.start_session()
    elif CONTROLLER_KEY in worker_input:
        guard.die_with_controller(worker_input[CONTROLLER_KEY])


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist's controller, for each worker it starts: its own pid."""
    node.workerinput[CONTROLLER_KEY] = os.getpid()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print what tests recorded for the reader (``record_property("fuzz outcomes", ...)``), also
    from xdist's workers, whose own output pytest does not show."""
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            for name, value in getattr(report, "user_properties", []):
                if name == "fuzz outcomes":
                    terminalreporter.write_sep("-", "signals at random moments")
                    terminalreporter.write_line(str(value))


# The modules that take longest, longest first (measured with --durations). pytest-xdist hands
# whole files to its workers in collection order: starting these first keeps one of them from
# being the last file left while the other worker idles.
LONGEST_FIRST = (
    "test_interruption.py",
    "test_cluster_launchers.py",
    "test_failures.py",
    "test_server_lost.py",
    "test_resume.py",
    "test_sweeps.py",
    "test_fuzz_signals.py",
    "test_sync.py",
    "test_team_server.py",
    "test_stacked_sweeps.py",
    "test_rerun.py",
    "test_cli.py",
    "test_views.py",
    "test_pruning.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the longest modules first (``LONGEST_FIRST``), the others after in their own order."""
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))
