"""Sweeps end to end: Hydra multirun through the real CLI, read back from MLflow.

Each sweep runs ``python -m runner -m ...`` in a subprocess, in a temporary working directory
(Hydra's ``outputs/`` lands there) with ``MLFLOW_TRACKING_URI`` pointing at a temporary SQLite
file; the runs are read back with ``MlflowClient``. Covered (issue 5):

- a 4-job grid with the basic launcher: one parent run, four FINISHED children nested under it,
  the sweep recorded on the parent (command, swept values, summary artifacts);
- the same grid with ``hydra/launcher=joblib`` (2 workers) on a fresh SQLite file, three times:
  no crash, no lost run, no run in the Default experiment, complete histories, BLAS pinned to one
  thread and results bit-identical to the basic launcher's; the workers (forked from bprun's
  preloaded fork server) learn the parent from ``hydra.job.env_set`` and compose nothing, bprun
  itself never imports MLflow (the parent run is made by a process forked from the server, the
  summary by a worker), and a store path that cannot travel in an override falls back to
  workers that inherit it;
- failed jobs (divergence, an invalid value, and an error raised before the job's run exists) recorded FAILED with their reason while the other jobs
  finish, the sweep exiting non-zero and its summary listing them; a sweep whose overrides do
  not compose leaves nothing in the store, and one stopped by such an error between two batches
  ends its parent FAILED;
- clean values from Hydra's float ``range``;
- an Optuna sweep whose reported best trial is the best child run, reproducible from its seed;
- ``bprun-report`` on a real sweep.

Sweeps are shared through module-scoped fixtures; every sweep uses few epochs and no tensor
snapshots, so the module runs in about two minutes on two cores.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from runner.worker_server import joblib_workers_requested

pytestmark = pytest.mark.slow

EXPERIMENT = "backprop-runner"
SWEEP_TAG = "bprun.sweep"
PARENT_TAG = "mlflow.parentRunId"

GRID_EPOCHS = 50
GRID = ("optimizer.lr=0.5,2.0", "model.hidden=[4],[8]", f"trainer.epochs={GRID_EPOCHS}",
        "tracking.tensors_every=0")
GRID_COMBINATIONS = {(0.5, "[4]"), (0.5, "[8]"), (2.0, "[4]"), (2.0, "[8]")}
JOBLIB = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")

OPTUNA_EPOCHS = 300
OPTUNA = ("hydra/sweeper=optuna", "hydra.sweeper.n_trials=6", "hydra.sweeper.seed=0",
          "optimizer.lr=tag(log,interval(0.5,8))", "model.hidden=choice([4],[8])",
          f"trainer.epochs={OPTUNA_EPOCHS}", "tracking.tensors_every=0")


# --- helpers ---------------------------------------------------------------------------------

@dataclass
class Sweep:
    """A finished sweep: the command's outcome and its runs as the store holds them."""

    cwd: Path
    store: Any  # conftest.Store
    result: subprocess.CompletedProcess[str]
    parent: Any
    children: list[Any]  # oldest first
    all_runs: list[Any]  # every run of the store, in any experiment

    @property
    def output(self) -> str:
        return f"--- stdout\n{self.result.stdout}\n--- stderr\n{self.result.stderr}"


RunSweep = Callable[..., Sweep]


@pytest.fixture(scope="session")
def run_sweep(run_cli: Callable[..., subprocess.CompletedProcess[str]],
              store_at: Callable[[Path], Any]) -> RunSweep:
    """``run_sweep(directory, *overrides)``: ``bprun -m <overrides>`` with ``directory`` as the
    working directory and a fresh store in it; the single sweep parent and its children."""
    return lambda directory, *overrides: _run_sweep(run_cli, store_at, directory, *overrides)


def _run_sweep(run_cli: Callable[..., subprocess.CompletedProcess[str]], store_at: Callable[[Path], Any],
               directory: Path, *overrides: str) -> Sweep:
    store = store_at(directory)
    assert not store.db.exists(), "each sweep starts on a fresh SQLite file"
    result = run_cli("-m", *overrides, cwd=directory, env={"MLFLOW_TRACKING_URI": store.uri})
    runs = store.runs()
    parents = [run for run in runs if run.data.tags.get(SWEEP_TAG) == "true"]
    assert len(parents) == 1, f"expected one sweep parent, found {len(parents)}\n{result.stdout}\n{result.stderr}"
    parent = parents[0]
    children = sorted((run for run in runs if run.data.tags.get(PARENT_TAG) == parent.info.run_id),
                      key=lambda run: (run.info.start_time, run.info.run_id))
    return Sweep(directory, store, result, parent, children, runs)


def final_train_mse(sweep: Sweep) -> dict[tuple[float, str], float]:
    """(lr, hidden) -> the final train_mse of that child."""
    finals = {}
    for child in sweep.children:
        key = (float(child.data.params["optimizer.lr"]), child.data.params["model.hidden"])
        assert key not in finals, f"two children for {key}"
        finals[key] = child.data.metrics["train_mse"]
    return finals


def statuses(sweep: Sweep) -> list[str]:
    return [child.info.status for child in sweep.children]


def assert_non_trivial_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.is_file() and path.stat().st_size > 5000, path
    image = imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 200, (path, image.shape)
    pixels = image.reshape(-1, image.shape[2]) if image.ndim == 3 else image.reshape(-1, 1)
    assert len(np.unique(pixels, axis=0)) > 50, f"{path} looks blank"


# --- 1. a grid with the basic launcher -------------------------------------------------------

@pytest.fixture(scope="module")
def basic_grid(run_sweep: RunSweep, tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    return run_sweep(tmp_path_factory.mktemp("basic_grid"), *GRID)


def test_basic_grid_is_one_parent_with_four_finished_children(basic_grid: Sweep) -> None:
    sweep = basic_grid
    assert sweep.result.returncode == 0, sweep.output
    assert "Traceback" not in sweep.result.stderr, sweep.output
    parent = sweep.parent
    assert parent.info.status == "FINISHED"
    assert len(sweep.children) == 4, sweep.output
    assert len(sweep.all_runs) == 5, "nothing but the parent and its jobs"
    assert statuses(sweep) == ["FINISHED"] * 4, sweep.output

    # The parent records the sweep: the swept keys and values, the command, the job count.
    assert parent.data.params["sweep.optimizer.lr"] == "[0.5, 2.0]"
    assert parent.data.params["sweep.model.hidden"] == "[[4], [8]]"
    assert json.loads(parent.data.tags["sweep.swept_keys"]) == ["optimizer.lr", "model.hidden"]
    command = parent.data.tags["sweep.command"]
    assert "-m" in command.split()
    for override in GRID:
        assert override in command, (override, command)
    assert parent.data.tags["sweep.jobs"] == "4"
    assert parent.data.tags["sweep.failed_jobs"] == "0"

    # The summary is attached to the parent.
    client = sweep.store.client()
    summary = {artifact.path for artifact in client.list_artifacts(parent.info.run_id, "summary")}
    assert {"summary/runs.csv", "summary/runs.md", "summary/learning_curves.png"} <= summary, summary

    # Every child's plots were drawn by bprun's helper process, and all exist when bprun exits.
    for child in sweep.children:
        plots = sorted(artifact.path for artifact in client.list_artifacts(child.info.run_id, "plots"))
        assert plots == ["plots/gradient_norms.png", "plots/learning_curves.png", "plots/weight_norms.png"], plots
        artifacts = Path(child.info.artifact_uri.removeprefix("file://"))
        for name in plots:
            assert_non_trivial_png(artifacts / name)

    # Each child is one point of the grid, with its own values as params.
    combinations = [(float(c.data.params["optimizer.lr"]), c.data.params["model.hidden"]) for c in sweep.children]
    assert sorted(combinations) == sorted(GRID_COMBINATIONS)
    for child in sweep.children:
        assert child.info.experiment_id == parent.info.experiment_id
        assert child.data.params["trainer.epochs"] == str(GRID_EPOCHS)
        assert child.data.tags["epochs_run"] == str(GRID_EPOCHS)
        lr = float(child.data.params["optimizer.lr"])
        hidden = json.loads(child.data.params["model.hidden"])
        assert f"-lr{lr:g}-" in child.info.run_name and child.info.run_name.endswith(f"-h{hidden[0]}")


# --- 2. the same grid with parallel workers --------------------------------------------------

@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_joblib_grid_on_a_fresh_store(attempt: int, tmp_path: Path, basic_grid: Sweep, run_sweep: RunSweep) -> None:
    """Parallel first use of a fresh SQLite file once corrupted it and dropped runs into the
    Default experiment (PITFALLS); three fresh stores in a row must all come out whole."""
    sweep = run_sweep(tmp_path / f"joblib{attempt}", *GRID, *JOBLIB)
    assert sweep.result.returncode == 0, sweep.output
    assert "Traceback" not in sweep.result.stderr, sweep.output
    assert sweep.parent.info.status == "FINISHED"
    assert len(sweep.children) == 4, sweep.output
    assert statuses(sweep) == ["FINISHED"] * 4, sweep.output
    assert len(sweep.all_runs) == 5, "no stray run anywhere in the store"

    client = sweep.store.client()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    assert {run.info.experiment_id for run in sweep.all_runs} == {experiment.experiment_id}
    assert len(client.search_runs(["0"])) == 0, "runs went into the Default experiment"

    for child in sweep.children:
        assert child.data.tags["blas.threads"] == "1", "each worker's BLAS thread count is fixed"
        history = client.get_metric_history(child.info.run_id, "train_mse")
        assert len(history) == GRID_EPOCHS
        assert sorted(m.step for m in history) == list(range(GRID_EPOCHS))
        assert max(history, key=lambda m: m.step).value == child.data.metrics["train_mse"]

    # Results do not depend on the launcher: the same floats, bit for bit.
    assert final_train_mse(sweep) == final_train_mse(basic_grid)

    # The summary, made in an idle worker: attached to the parent and printed by bprun.
    summary = {artifact.path for artifact in client.list_artifacts(sweep.parent.info.run_id, "summary")}
    assert {"summary/runs.csv", "summary/runs.md", "summary/learning_curves.png"} <= summary, summary
    assert "4 runs, ranked by final val_mse" in sweep.result.stdout, sweep.output
    assert sweep.parent.data.tags["sweep.jobs"] == "4"

    # The workers learned their parent from their job's config (hydra.job.env_set), which each
    # job folder records.
    job_folders = sorted((sweep.cwd / sweep.parent.data.tags["sweep.dir"]).glob("*/.hydra"))
    assert len(job_folders) == 4
    for folder in job_folders:
        env_set = yaml.safe_load((folder / "hydra.yaml").read_text())["hydra"]["job"]["env_set"]
        assert env_set["BPRUN_SWEEP_PARENT_RUN_ID"] == sweep.parent.info.run_id
        assert env_set["BPRUN_SWEEP_TRACKING_URI"] == sweep.store.uri


def test_joblib_sweep_on_a_store_path_hydra_cannot_quote(tmp_path: Path, run_sweep: RunSweep) -> None:
    """A '$' in the store's path cannot travel in a Hydra override: the workers then start as new
    processes that inherit the sweep's environment, and the children still nest."""
    sweep = run_sweep(tmp_path / "store$1", "optimizer.lr=0.5,2.0", "trainer.epochs=5", "tracking.tensors_every=0",
                      *JOBLIB)
    assert sweep.result.returncode == 0, sweep.output
    assert "$" in sweep.store.uri
    assert statuses(sweep) == ["FINISHED"] * 2, sweep.output
    assert len(sweep.all_runs) == 3, "no stray run anywhere in the store"
    hydra_yaml = next((sweep.cwd / sweep.parent.data.tags["sweep.dir"]).glob("*/.hydra/hydra.yaml"))
    assert yaml.safe_load(hydra_yaml.read_text())["hydra"]["job"]["env_set"] == {}


@pytest.mark.parametrize("uri", ["sqlite:////tmp/a b/x=1,y:2/mlflow.db", "http://127.0.0.1:5000", "file:///tmp/[x]"])
def test_the_sweep_context_travels_in_a_quoted_override(uri: str) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from runner.sweep import SweepContext, hand_context_to_jobs

    config = OmegaConf.create({"hydra": {"overrides": {"hydra": ["hydra.verbose=false"]}}})
    assert hand_context_to_jobs(config, SweepContext("0123abcd", "7", uri))
    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.hydra)[1:])
    assert {override.key_or_group: override.value() for override in parsed} == {
        "hydra.job.env_set.BPRUN_SWEEP_PARENT_RUN_ID": "0123abcd",
        "hydra.job.env_set.BPRUN_SWEEP_EXPERIMENT_ID": "7",
        "hydra.job.env_set.BPRUN_SWEEP_TRACKING_URI": uri,
    }


@pytest.mark.parametrize("uri", ["sqlite:////tmp/it's/mlflow.db", "sqlite:////tmp/${x}/mlflow.db", "file:///C:\\x"])
def test_a_context_an_override_would_change_is_not_handed_over(uri: str) -> None:
    from omegaconf import OmegaConf

    from runner.sweep import SweepContext, hand_context_to_jobs

    config = OmegaConf.create({"hydra": {"overrides": {"hydra": ["hydra.verbose=false"]}}})
    assert not hand_context_to_jobs(config, SweepContext("0123abcd", "7", uri))
    assert list(config.hydra.overrides.hydra) == ["hydra.verbose=false"]


# --- 3. failed jobs --------------------------------------------------------------------------

def test_a_diverging_job_fails_alone_and_the_sweep_exits_non_zero(tmp_path: Path, run_sweep: RunSweep) -> None:
    sweep = run_sweep(tmp_path, "model.output_activation=identity", "optimizer.lr=0.5,1e6",
                      "trainer.epochs=60", "tracking.tensors_every=0")
    assert sweep.result.returncode != 0, sweep.output
    assert len(sweep.children) == 2, sweep.output
    by_lr = {float(child.data.params["optimizer.lr"]): child for child in sweep.children}
    assert set(by_lr) == {0.5, 1e6}
    assert by_lr[0.5].info.status == "FINISHED"
    diverged = by_lr[1e6]
    assert diverged.info.status == "FAILED"
    reason = diverged.data.tags["failure_reason"]
    assert reason.startswith("diverged at epoch"), reason
    assert diverged.data.tags["stop_reason"] == "diverged"

    assert sweep.parent.info.status == "FAILED"
    assert sweep.parent.data.tags["sweep.failed_jobs"] == "1"
    assert sweep.parent.data.tags["sweep.jobs"] == "2"

    # The summary table on stdout lists the failed run with its reason.
    failed_lines = [line for line in sweep.result.stdout.splitlines()
                    if diverged.info.run_name in line and "FAILED" in line]
    assert failed_lines, sweep.output
    assert "diverged at epoch" in failed_lines[0]


def test_an_invalid_job_in_a_sweep_is_recorded_failed(tmp_path: Path, run_sweep: RunSweep) -> None:
    sweep = run_sweep(tmp_path, "optimizer.lr=0.5,-1", "trainer.epochs=20", "tracking.tensors_every=0")
    assert sweep.result.returncode != 0, sweep.output
    assert "Traceback" not in sweep.result.stderr, sweep.output
    assert len(sweep.children) == 2, sweep.output
    finished = [child for child in sweep.children if child.info.status == "FINISHED"]
    failed = [child for child in sweep.children if child.info.status == "FAILED"]
    assert len(finished) == 1 and len(failed) == 1, statuses(sweep)
    assert float(finished[0].data.params["optimizer.lr"]) == 0.5
    assert "optimizer.lr" in failed[0].data.tags["failure_reason"], failed[0].data.tags
    assert "optimizer.lr=-1" in json.loads(failed[0].data.tags["job.overrides"])
    assert sweep.parent.info.status == "FAILED"
    assert sweep.parent.data.tags["sweep.failed_jobs"] == "1"
    assert any("FAILED" in line and "optimizer.lr" in line for line in sweep.result.stdout.splitlines()), \
        sweep.output


def test_a_job_failing_before_its_run_exists_is_still_recorded(tmp_path: Path, run_sweep: RunSweep) -> None:
    # ${model.activation} resolves to 'sigmoid', which the float schema of optimizer.lr rejects
    # only when the job resolves its config, after composition.
    sweep = run_sweep(tmp_path, "optimizer.lr=0.5,${model.activation}", "trainer.epochs=5",
                      "tracking.tensors_every=0")
    assert "job failed: invalid input: optimizer.lr" in sweep.result.stderr, sweep.output
    assert any(child.info.status == "FINISHED" for child in sweep.children), sweep.output
    assert len(sweep.children) == 2, f"the failed job has no run\n{sweep.output}"
    failed = [child for child in sweep.children if child.info.status == "FAILED"]
    assert len(failed) == 1 and "interpolation" in failed[0].data.tags["failure_reason"]
    assert sweep.parent.info.status == "FAILED"
    assert sweep.parent.data.tags["sweep.failed_jobs"] == "1"
    assert sweep.result.returncode != 0, sweep.output


@pytest.mark.parametrize("launcher", [(), JOBLIB], ids=["basic", "joblib"])
def test_a_sweep_whose_overrides_do_not_compose_leaves_nothing_in_the_store(
        launcher: tuple[str, ...], tmp_path: Path, run_cli, store_at) -> None:
    store = store_at(tmp_path)
    result = run_cli("-m", "dataset=xor", "optimizer=gd,bogus", "trainer.epochs=5", *launcher,
                     cwd=tmp_path, env={"MLFLOW_TRACKING_URI": store.uri})
    assert result.returncode == 1, result.stderr
    assert "Could not find 'optimizer/bogus'" in result.stderr, result.stderr
    assert not store.db.exists(), "no parent run, not even a store, for a sweep that cannot start"


def test_a_sweep_stopped_by_an_error_between_batches_ends_its_parent_failed(
        tmp_path: Path, run_cli, store_at) -> None:
    # One job per batch: the first runs, then the second fails to compose and Hydra stops.
    store = store_at(tmp_path)
    result = run_cli("-m", "dataset=xor", "optimizer=gd,bogus", "trainer.epochs=5", "hydra.sweeper.max_batch_size=1",
                     cwd=tmp_path, env={"MLFLOW_TRACKING_URI": store.uri})
    assert result.returncode == 1, result.stderr
    assert "Could not find 'optimizer/bogus'" in result.stderr, result.stderr
    by_kind = {run.data.tags.get(SWEEP_TAG, "child"): run for run in store.runs()}
    assert sorted(by_kind) == ["child", "true"], by_kind
    assert by_kind["child"].info.status == "FINISHED"
    assert by_kind["child"].data.tags[PARENT_TAG] == by_kind["true"].info.run_id
    assert by_kind["true"].info.status == "FAILED", "no sweep left RUNNING"
    assert by_kind["true"].data.tags["failure_reason"] == "stopped by an error (see bprun's error output)"


# --- 4. clean values -------------------------------------------------------------------------

def test_hydra_float_range_is_logged_as_typed(tmp_path: Path, run_sweep: RunSweep) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    # What Hydra 1.3.8 itself yields (Decimal arithmetic at 28 digits): 0.30000000000000004, and
    # 0.4 as well, since 4 x Decimal(0.1) rounds to just below Decimal(0.4).
    override = OverridesParser.create().parse_overrides(["optimizer.lr=range(0.1,0.4,0.1)"])[0]
    hydra_values = list(override.sweep_iterator())
    assert 0.30000000000000004 in hydra_values
    expected = {format(value, ".15g") for value in hydra_values}
    assert {"0.1", "0.2", "0.3"} <= expected

    sweep = run_sweep(tmp_path, "optimizer.lr=range(0.1,0.4,0.1)", "trainer.epochs=5", "tracking.tensors_every=0")
    assert sweep.result.returncode == 0, sweep.output
    assert statuses(sweep) == ["FINISHED"] * len(hydra_values), sweep.output
    assert {child.data.params["optimizer.lr"] for child in sweep.children} == expected
    names = [child.info.run_name for child in sweep.children]
    assert any("lr0.3-" in name for name in names), names
    assert not any("0.30000000000000004" in name for name in names), names
    assert json.loads(sweep.parent.data.params["sweep.optimizer.lr"]) == [float(v) for v in sorted(expected)]
    assert sweep.parent.data.params["sweep.optimizer.lr"].startswith("[0.1, 0.2, 0.3")
    assert "0.30000000000000004" not in sweep.parent.data.params["sweep.optimizer.lr"]

    (child,) = [child for child in sweep.children if child.data.params["optimizer.lr"] == "0.3"]
    config_path = Path(sweep.store.client().download_artifacts(child.info.run_id, "config.yaml",
                                                               str(tmp_path / "artifacts")))
    text = config_path.read_text()
    assert "0.30000000000000004" not in text
    assert yaml.safe_load(text)["optimizer"]["lr"] == 0.3


# --- composing each job once ------------------------------------------------------------------

COUNT_COMPOSES = """
import sys
from hydra._internal.config_loader_impl import ConfigLoaderImpl
composed = []
original = ConfigLoaderImpl.load_configuration
def counting(self, config_name, overrides, *args, **kwargs):
    composed.append(list(overrides))
    return original(self, config_name, overrides, *args, **kwargs)
ConfigLoaderImpl.load_configuration = counting
from runner.app import main
sys.argv = ["bprun", *sys.argv[1:]]
try:
    main()
finally:
    print("COMPOSED", len(composed), file=sys.stderr)
"""


def test_the_basic_launcher_gets_the_config_the_sweeper_composed_up_front(tmp_path: Path) -> None:
    """Hydra composes the master config twice and, without bprun's patch, every job twice (the
    sweeper's up-front check, then the launcher). Each job must still get its own values."""
    script = tmp_path / "count_composes.py"
    script.write_text(COUNT_COMPOSES)
    result = subprocess.run(
        [sys.executable, str(script), "-m", "optimizer.lr=0.5,2.0,4.0", "trainer.epochs=2", "tracking=none"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^COMPOSED 5$", result.stderr, re.MULTILINE), result.stderr  # 2 + 3 jobs, not 2 + 6
    job_configs = sorted((tmp_path / "outputs" / "multirun").glob("*/*/*/.hydra/config.yaml"))
    assert len(job_configs) == 3, job_configs
    by_job = {path.parent.parent.name: yaml.safe_load(path.read_text())["optimizer"]["lr"] for path in job_configs}
    assert by_job == {"0": 0.5, "1": 2.0, "2": 4.0}
    hydra_by_job = {path.parent.parent.name: yaml.safe_load((path.parent / "hydra.yaml").read_text())["hydra"]["job"]["num"]
                    for path in job_configs}
    assert hydra_by_job == {"0": 0, "1": 1, "2": 2}


def test_the_worker_preload_imports_and_prepares_what_a_job_needs() -> None:
    """The fork server ignores a preload that fails to import (the workers would silently start
    cold): import it for real, in a fresh interpreter."""
    check = ("import gc, sys, runner.worker_preload as preload\n"
             "from mlflow.utils import requirements_utils\n"
             "assert all(name in sys.modules for name in preload.JOB_MODULES)\n"
             "assert requirements_utils._PACKAGES_TO_MODULES, 'installed-packages map not filled'\n"
             "assert gc.get_freeze_count() > 100_000, gc.get_freeze_count()\n"
             "from runner.tracking import provenance\n"
             "assert provenance.project_git_state.cache_info().currsize == 1\n"
             "assert provenance._version.cache_info().currsize == len(provenance.VERSION_TAGS)\n")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("arguments", "requested"), [
    (["-m", "hydra/launcher=joblib", "optimizer.lr=0.1,1"], True),
    (["--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], True),
    (["hydra/launcher=joblib", "optimizer.lr=0.1"], False),  # a single run
    (["-m", "optimizer.lr=0.1,1"], False),  # the basic launcher
    (["-m", "hydra/launcher=joblib", "hydra/launcher=basic"], False),  # the last one counts
    (["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=1"], False),  # joblib runs it in-process
    (["-m", "hydra/launcher=joblib", "tracking=none"], False),  # no parent run, no preloaded MLflow needed
    (["-m", "hydra/launcher=joblib", "tracking.enabled=False"], False),
    (["-m", "hydra/launcher=joblib", "--cfg", "job"], False),  # prints, runs nothing
    (["-m", "hydra/launcher=joblib", "--help"], False),
])
def test_the_worker_server_starts_first_thing_only_for_a_tracked_parallel_sweep(arguments, requested) -> None:
    assert joblib_workers_requested(arguments) is requested


def test_bprun_can_start_the_worker_server_before_importing_anything_but_the_standard_library() -> None:
    """The point of starting it from ``runner.cli``: Hydra and the app import meanwhile."""
    check = ("import sys, runner.cli\n"
             "third_party = sorted({name.partition('.')[0] for name in sys.modules} - set(sys.stdlib_module_names)"
             " - {'runner', '__main__', '_distutils_hack'})\n"
             "assert not [name for name in third_party if not name.startswith('__editable__')], third_party\n")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


COUNT_COMPOSES_IN_WORKERS = """
import os, sys
from hydra._internal.config_loader_impl import ConfigLoaderImpl
LOG = os.environ["COMPOSE_LOG"]
role = "parent" if __name__ == "__main__" else "worker"  # workers import this file as __mp_main__
def record(line):
    import multiprocessing
    with open(LOG, "a") as log:
        log.write(f"{role} {os.getpid()} {multiprocessing.current_process().name} {line}\\n")
record("started")
original = ConfigLoaderImpl.load_configuration
def counting(self, config_name, overrides, *args, **kwargs):
    record("compose")
    return original(self, config_name, overrides, *args, **kwargs)
ConfigLoaderImpl.load_configuration = counting
if __name__ == "__main__":
    from runner.cli import main
    sys.argv = ["bprun", *sys.argv[1:]]
    main()
    record("imported-mlflow" if "mlflow" in sys.modules else "never-imported-mlflow")
"""


def test_joblib_workers_get_the_config_the_sweeper_composed_up_front(tmp_path: Path, store_at) -> None:
    """The workers (forked from the preloaded server, so they import this script as __mp_main__)
    run their jobs without composing: each job is composed once, in the parent. The parent run
    is created in a process forked from the server too."""
    script = tmp_path / "count_composes.py"
    script.write_text(COUNT_COMPOSES_IN_WORKERS)
    log = tmp_path / "composes.log"
    store = store_at(tmp_path)
    result = subprocess.run(
        [sys.executable, str(script), "-m", "optimizer.lr=0.5,2.0,4.0", "seed=1,2", "trainer.epochs=2",
         "tracking.tensors_every=0", *JOBLIB],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "COMPOSE_LOG": str(log), "MLFLOW_TRACKING_URI": store.uri})
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in log.read_text().splitlines()]
    forked = {(pid, name) for role, pid, name, event in lines if role == "worker"}
    # The 2 workers, and the process that created the parent run.
    assert sorted(name == "bprun-sweep-parent" for _, name in forked) == [False, False, True], lines
    composes = [role for role, _, _, event in lines if event == "compose"]
    assert composes.count("parent") == 2 + 6 and composes.count("worker") == 0, lines
    # The parent run was created in a forked process and the summary made in a worker.
    assert ["parent", "never-imported-mlflow"] in [[role, event] for role, _, _, event in lines], lines

    children = [run for run in store.runs() if PARENT_TAG in run.data.tags]
    assert sorted((float(run.data.params["optimizer.lr"]), int(run.data.params["seed"])) for run in children) == [
        (lr, seed) for lr in (0.5, 2.0, 4.0) for seed in (1, 2)]
    job_configs = sorted((tmp_path / "outputs" / "multirun").glob("*/*/*/.hydra/config.yaml"))
    by_job = {path.parent.parent.name: yaml.safe_load(path.read_text())["optimizer"]["lr"] for path in job_configs}
    assert by_job == {"0": 0.5, "1": 0.5, "2": 2.0, "3": 2.0, "4": 4.0, "5": 4.0}


# --- 5. Optuna -------------------------------------------------------------------------------

def optuna_results(sweep: Sweep) -> dict[str, Any]:
    found = list((sweep.cwd / "outputs" / "multirun").rglob("optimization_results.yaml"))
    assert len(found) == 1, found
    assert found[0].parent == sweep.cwd / sweep.parent.data.tags["sweep.dir"]
    return yaml.safe_load(found[0].read_text())


@pytest.fixture(scope="module")
def optuna_sweep(run_sweep: RunSweep, tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    return run_sweep(tmp_path_factory.mktemp("optuna"), *OPTUNA)


def test_optuna_sweep_reports_the_best_child(optuna_sweep: Sweep) -> None:
    sweep = optuna_sweep
    assert sweep.result.returncode == 0, sweep.output
    assert sweep.parent.info.status == "FINISHED"
    assert len(sweep.children) == 6, sweep.output
    assert statuses(sweep) == ["FINISHED"] * 6, sweep.output
    for child in sweep.children:
        assert 0.5 <= float(child.data.params["optimizer.lr"]) <= 8
        assert child.data.params["model.hidden"] in ("[4]", "[8]")
        assert child.data.tags["epochs_run"] == str(OPTUNA_EPOCHS)

    # xor has no validation split: the objective falls back to the final train_mse.
    objectives = [child.data.metrics["train_mse"] for child in sweep.children]
    assert not any("val_mse" in child.data.metrics for child in sweep.children)
    best_index = int(np.argmin(objectives))
    best = sweep.children[best_index]

    results = optuna_results(sweep)
    assert results["completed_trials"] == 6 and results["trials"] == 6
    assert results["best_value"] == best.data.metrics["train_mse"]
    assert results["best_trial"] == best_index  # children are in trial order (one at a time)
    best_params = results["best_params"]
    assert set(best_params) == {"optimizer.lr", "model.hidden"}
    # Optuna's float, as the job ran it: run_experiment keeps 15 significant digits.
    assert format(best_params["optimizer.lr"], ".15g") == best.data.params["optimizer.lr"]
    assert best_params["model.hidden"] == best.data.params["model.hidden"]

    lines = [line for line in sweep.result.stdout.splitlines() if line.startswith("Optuna: best")]
    assert len(lines) == 1, sweep.output
    match = re.fullmatch(r"Optuna: best (\S+) = (\S+) at trial (\d+): (.*)", lines[0])
    assert match, lines[0]
    assert float(match[2]) == pytest.approx(best.data.metrics["train_mse"], rel=1e-5)
    assert int(match[3]) == best_index
    printed = dict(item.split("=", 1) for item in match[4].split())
    assert float(printed["optimizer.lr"]) == best_params["optimizer.lr"]
    assert printed["model.hidden"] == best.data.params["model.hidden"]

    tags = sweep.parent.data.tags
    assert float(tags["optuna.best_value"]) == best.data.metrics["train_mse"]
    assert json.loads(tags["optuna.best_params"]) == best_params
    assert tags["optuna.best_trial"] == str(best_index)


def test_optuna_sweep_with_the_same_seed_proposes_the_same_trials(
        optuna_sweep: Sweep, tmp_path: Path, run_sweep: RunSweep) -> None:
    again = run_sweep(tmp_path, *OPTUNA)
    assert again.result.returncode == 0, again.output

    def trials(sweep: Sweep) -> list[tuple[str, str]]:
        return [(child.data.params["optimizer.lr"], child.data.params["model.hidden"]) for child in sweep.children]

    assert trials(again) == trials(optuna_sweep)
    assert len(set(trials(again))) == 6
    assert [c.data.metrics["train_mse"] for c in again.children] == \
        [c.data.metrics["train_mse"] for c in optuna_sweep.children]
    assert optuna_results(again) == optuna_results(optuna_sweep)


# --- 6. bprun-report -------------------------------------------------------------------------

def test_report_on_the_latest_sweep(basic_grid: Sweep, tmp_path: Path) -> None:
    import pandas as pd

    output = tmp_path / "rep"
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    environment["PYTHONDONTWRITEBYTECODE"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "runner.report", "--tracking-uri", basic_grid.store.uri, "--output", str(output)],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert basic_grid.parent.info.run_id in result.stdout  # the latest sweep by default

    table = pd.read_csv(output / "runs.csv")
    assert len(table) == 4
    assert set(table["run_id"]) == {child.info.run_id for child in basic_grid.children}
    assert (table["status"] == "FINISHED").all()
    # Ranked by final val_mse, which xor lacks: train_mse stands in, lowest first.
    finals = table["final_train_mse"].to_numpy(dtype=float)
    assert np.all(np.diff(finals) >= 0), finals
    assert sorted(zip(table["optimizer.lr"].astype(float), table["model.hidden"].astype(str))) == \
        sorted(GRID_COMBINATIONS)
    by_run = {child.info.run_id: child.data.metrics["train_mse"] for child in basic_grid.children}
    for run_id, value in zip(table["run_id"], finals):
        assert math.isclose(value, by_run[run_id], rel_tol=1e-12)

    markdown = (output / "runs.md").read_text().splitlines()
    table_lines = [line for line in markdown if line.startswith("|")]
    assert len(table_lines) == 2 + 4, markdown  # header, separator, one row per job

    assert_non_trivial_png(output / "learning_curves.png")
    (final_plot,) = output.glob("final_*_vs_optimizer.lr.png")
    assert_non_trivial_png(final_plot)
