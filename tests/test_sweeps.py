"""Sweeps end to end: Hydra multirun through the real CLI, read back from MLflow.

Each sweep runs ``python -m runner -m ...`` in a subprocess, in a temporary working directory
(Hydra's ``outputs/`` lands there) with ``MLFLOW_TRACKING_URI`` pointing at a temporary SQLite
file; the runs are read back with ``MlflowClient``. Covered:

- a 4-job grid run in bprun's process: one parent run, four FINISHED children nested under it,
  the sweep recorded on the parent (command, swept values, summary artifacts), each job with its
  own values in its Hydra folder;
- the same grid on 2 worker processes (``hydra.launcher.n_jobs=2``) on a fresh SQLite file,
  twice: no lost run, no run in the Default experiment, complete histories, BLAS pinned to
  one thread, results bit-identical to the in-process grid's; each job learns its parent run from
  its ``hydra.job.env_set`` (a store path with quotes, ``$`` and backslashes included);
- failed jobs: a diverging job and a job whose data cannot be read fail alone while the others
  finish, the sweep exits 1 and its summary lists them; a value that does not validate or compose
  stops the sweep before anything runs, with nothing in the store; an error between two batches
  ends the parent FAILED;
- clean values from Hydra's float ``range``;
- an Optuna sweep whose reported best trial is the best child run, reproducible from its seed;
- ``bprun-report`` on a real sweep.

Sweeps are shared through module-scoped fixtures; every sweep uses few epochs and no tensor
snapshots.
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
from guard import dying_with_pytest

from runner.commands.bprun import parallel_workers_requested
from runner.sweeps.context import SweepRun

pytestmark = pytest.mark.slow

EXPERIMENT = "backprop-runner"
SWEEP_TAG = "bprun.sweep"
PARENT_TAG = "mlflow.parentRunId"

GRID_EPOCHS = 50
GRID = ("optimizer.lr=0.5,2.0", "model.hidden=[4],[8]", f"trainer.epochs={GRID_EPOCHS}", "tracking.tensors_every=0")
GRID_COMBINATIONS = {(0.5, "[4]"), (0.5, "[8]"), (2.0, "[4]"), (2.0, "[8]")}
WORKERS = ("hydra.launcher.n_jobs=2",)

OPTUNA_EPOCHS = 300
OPTUNA = (
    "hydra/sweeper=optuna",
    "hydra.sweeper.n_trials=6",
    "hydra.sweeper.seed=0",
    "optimizer.lr=tag(log,interval(0.5,8))",
    "model.hidden=choice([4],[8])",
    f"trainer.epochs={OPTUNA_EPOCHS}",
    "tracking.tensors_every=0",
)


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
def run_sweep(run_cli: Callable[..., subprocess.CompletedProcess[str]], store_at: Callable[[Path], Any]) -> RunSweep:
    """``run_sweep(directory, *overrides)``: ``bprun -m <overrides>`` with ``directory`` as the
    working directory and a fresh store in it; the single sweep parent and its children."""
    return lambda directory, *overrides: _run_sweep(run_cli, store_at, directory, *overrides)


def _run_sweep(
    run_cli: Callable[..., subprocess.CompletedProcess[str]],
    store_at: Callable[[Path], Any],
    directory: Path,
    *overrides: str,
) -> Sweep:
    store = store_at(directory)
    assert not store.db.exists(), "each sweep starts on a fresh SQLite file"
    result = run_cli("-m", *overrides, cwd=directory, env={"MLFLOW_TRACKING_URI": store.uri})
    runs = store.runs()
    parents = [run for run in runs if run.data.tags.get(SWEEP_TAG) == "true"]
    assert len(parents) == 1, f"expected one sweep parent, found {len(parents)}\n{result.stdout}\n{result.stderr}"
    parent = parents[0]
    children = sorted(
        (run for run in runs if run.data.tags.get(PARENT_TAG) == parent.info.run_id),
        key=lambda run: (run.info.start_time, run.info.run_id),
    )
    return Sweep(directory, store, result, parent, children, runs)


def final_train_mse(sweep: Sweep) -> dict[tuple[float, str], float]:
    """(lr, hidden) -> the final train_mse of that child."""
    finals = {}
    for child in sweep.children:
        key = (float(child.data.params["optimizer.lr"]), child.data.params["model.hidden"])
        assert key not in finals, f"two children for {key}"
        finals[key] = child.data.metrics["1_loss/train_mse"]
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
    assert parent.info.run_name == "lr x hidden sweep (4 jobs)"  # what varies first, the count last

    # The summary is attached to the parent.
    client = sweep.store.client()
    summary = {artifact.path for artifact in client.list_artifacts(parent.info.run_id, "summary")}
    assert {"summary/runs.csv", "summary/runs.md", "summary/learning_curves.png"} <= summary, summary

    # Every child's plots exist when bprun exits.
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

    # Each job's Hydra folder holds its own values and points at its own run.
    folders = sorted((sweep.cwd / parent.data.tags["sweep.dir"]).glob("[0-9]*"), key=lambda path: int(path.name))
    assert [path.name for path in folders] == ["0", "1", "2", "3"]
    by_run = {child.info.run_id: child for child in sweep.children}
    for folder in folders:
        config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
        pointer = json.loads((folder / "mlflow_run.json").read_text())
        child = by_run[pointer["run_id"]]
        assert config["optimizer"]["lr"] == float(child.data.params["optimizer.lr"])
        assert json.dumps(config["model"]["hidden"]) == child.data.params["model.hidden"]


def test_jobs_that_differ_only_in_keys_outside_the_default_name_get_names_that_tell_them_apart(
    tmp_path: Path, run_sweep: RunSweep
) -> None:
    sweep = run_sweep(tmp_path, "seed=0,1", "trainer.epochs=3,4", "model.activation=tanh", "optimizer.lr=0.4")
    assert sweep.result.returncode == 0, sweep.output
    names = sorted(child.info.run_name for child in sweep.children)
    assert names == [f"seed{seed}-epochs{epochs}-xor-gd-lr0.4-h8" for seed in (0, 1) for epochs in (3, 4)]
    for child in sweep.children:  # each name says the job's own values first
        assert child.info.run_name.startswith(
            f"seed{child.data.params['seed']}-epochs{child.data.params['trainer.epochs']}-"
        )
    assert sweep.parent.info.run_name == "seed x epochs sweep (4 jobs)"


@pytest.mark.parametrize(
    ("values", "name"),
    [
        ({"seed": 1}, "seed1-base"),
        ({"trainer.epochs": 20, "seed": 0}, "epochs20-seed0-base"),
        ({"model.activation": "tanh"}, "activation_tanh-base"),
        ({"optimizer.lr": 0.5, "model.hidden": [4, 4], "dataset": "moons"}, "base"),  # already in every name
        ({"model.seed": 1, "seed": 2}, "model.seed1-seed2-base"),  # the same last part: whole keys
        ({"trainer.batch_size": None}, "batch_size_None-base"),
    ],
)
def test_a_jobs_name_starts_with_its_swept_values(values: dict, name: str) -> None:
    from runner.sweeps.naming import job_name

    assert job_name("base", values) == name


def test_a_parents_name_starts_with_what_varies() -> None:
    from runner.sweeps.naming import parent_name

    assert parent_name(["optimizer.lr", "seed"], 6) == "lr x seed sweep (6 jobs)"
    assert parent_name([], 1) == "sweep (1 job)"
    assert parent_name(["seed"], None) == "seed sweep"


# --- 2. the same grid with parallel workers --------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2])
def test_a_grid_on_two_workers_on_a_fresh_store(
    attempt: int, tmp_path: Path, basic_grid: Sweep, run_sweep: RunSweep
) -> None:
    """Parallel first use of a fresh SQLite file can corrupt it and drop runs into the Default
    experiment; two fresh stores in a row must both come out whole. The store's path carries
    characters a Hydra override treats specially."""
    sweep = run_sweep(tmp_path / f"it's $HOME, a\\b {attempt}", *GRID, *WORKERS)
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
        history = client.get_metric_history(child.info.run_id, "1_loss/train_mse")
        assert len(history) == GRID_EPOCHS
        assert sorted(m.step for m in history) == list(range(GRID_EPOCHS))
        assert max(history, key=lambda m: m.step).value == child.data.metrics["1_loss/train_mse"]

    # Results do not depend on the launcher: the same floats, bit for bit.
    assert final_train_mse(sweep) == final_train_mse(basic_grid)

    # The summary: attached to the parent and printed by bprun.
    summary = {artifact.path for artifact in client.list_artifacts(sweep.parent.info.run_id, "summary")}
    assert {"summary/runs.csv", "summary/runs.md", "summary/learning_curves.png"} <= summary, summary
    assert "4 runs, ranked by final val_mse" in sweep.result.stdout, sweep.output
    assert sweep.parent.data.tags["sweep.jobs"] == "4"

    # Each job learned its parent from its own config (hydra.job.env_set), which its folder records.
    job_folders = sorted((sweep.cwd / sweep.parent.data.tags["sweep.dir"]).glob("*/.hydra"))
    assert len(job_folders) == 4
    for folder in job_folders:
        env_set = yaml.safe_load((folder / "hydra.yaml").read_text())["hydra"]["job"]["env_set"]
        job_sweep = SweepRun.from_job_environment(env_set)
        assert job_sweep.run_id == sweep.parent.info.run_id
        assert job_sweep.tracking_uri == sweep.store.uri


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite:////tmp/a b/x=1,y:2/mlflow.db",
        "http://user:p%40ss@127.0.0.1:5000",
        "file:///tmp/[x]",
        "sqlite:////tmp/it's/mlflow.db",
        "sqlite:////tmp/${x}/$y.db",
        "file:///C:\\x\\",
        "sqlite:////tmp/%27%25/mlflow.db",
    ],
)
def test_a_job_composed_with_its_sweeps_overrides_reads_the_sweep_back(uri: str) -> None:
    from hydra import compose, initialize_config_module

    sweep = SweepRun(
        "0123abcd", "7", uri, sync_target=f"{uri}-target", http_settings=(("MLFLOW_HTTP_REQUEST_TIMEOUT", "5"),)
    )
    with initialize_config_module(config_module="runner.conf", version_base="1.3"):
        job = compose(
            config_name="config", overrides=["optimizer.lr=0.5", *sweep.job_overrides()], return_hydra_config=True
        )
    assert SweepRun.from_job_environment(job.hydra.job.env_set) == sweep
    assert job.optimizer.lr == 0.5


# --- 3. failed jobs --------------------------------------------------------------------------


def test_a_diverging_job_fails_alone_and_the_sweep_exits_non_zero(tmp_path: Path, run_sweep: RunSweep) -> None:
    sweep = run_sweep(
        tmp_path,
        "model.output_activation=identity",
        "optimizer.lr=0.5,1e6",
        "trainer.epochs=60",
        "tracking.tensors_every=0",
    )
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
    failed_lines = [
        line for line in sweep.result.stdout.splitlines() if diverged.info.run_name in line and "FAILED" in line
    ]
    assert failed_lines, sweep.output
    assert "diverged at epoch" in failed_lines[0]


@pytest.mark.parametrize("bad", ["optimizer.lr=0.5,-1", "optimizer.lr=0.5,${model.activation}"])
def test_a_value_that_does_not_validate_stops_the_sweep_before_anything_runs(
    bad: str, tmp_path: Path, run_cli, store_at
) -> None:
    store = store_at(tmp_path)
    result = run_cli("-m", bad, "trainer.epochs=5", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": store.uri})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert re.search(r"^bprun: job optimizer.lr=\S+ .*optimizer.lr", result.stderr, re.MULTILINE), result.stderr
    assert not store.db.exists(), "nothing in the store for a sweep that cannot run"


def test_a_job_whose_data_cannot_be_read_fails_alone_and_is_listed(tmp_path: Path, run_sweep: RunSweep) -> None:
    (tmp_path / "good.csv").write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(20)))
    (tmp_path / "bad.csv").write_text("x,y\n1,0\n2,oops\n" + "".join(f"{i},{i % 2}\n" for i in range(20)))
    sweep = run_sweep(
        tmp_path,
        "dataset=csv",
        "dataset.path=good.csv,bad.csv",
        "dataset.targets=[y]",
        "trainer.epochs=5",
        "tracking.tensors_every=0",
    )
    assert sweep.result.returncode == 1, sweep.output
    assert "[2/2] path_bad.csv-csv-gd-lr2-h8: FAILED bad.csv: data row 2, column 'y'" in sweep.result.stderr.replace(
        str(tmp_path) + "/", ""
    ), sweep.output
    assert statuses(sweep) == ["FINISHED"], "the failed job has no run"
    assert sweep.parent.info.status == "FAILED"
    assert (sweep.parent.data.tags["sweep.jobs"], sweep.parent.data.tags["sweep.failed_jobs"]) == ("2", "1")
    failed_lines = [line for line in sweep.result.stdout.splitlines() if "bad.csv" in line and "FAILED" in line]
    assert failed_lines and "DataError" in failed_lines[0], sweep.output
    assert "1 of 2 job(s) of the sweep failed" in sweep.result.stderr, sweep.output


@pytest.mark.parametrize("launcher", [(), WORKERS], ids=["in-process", "workers"])
def test_a_sweep_whose_overrides_do_not_compose_leaves_nothing_in_the_store(
    launcher: tuple[str, ...], tmp_path: Path, run_cli, store_at
) -> None:
    store = store_at(tmp_path)
    result = run_cli(
        "-m",
        "dataset=xor",
        "optimizer=gd,bogus",
        "trainer.epochs=5",
        *launcher,
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": store.uri},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "bprun: optimizer=bogus: no such option; choose one of adam, gd, momentum, nesterov"
    ), result.stderr
    assert not store.db.exists(), "no parent run, not even a store, for a sweep that cannot start"


def test_a_sweep_stopped_by_an_error_between_batches_ends_its_parent_failed(tmp_path: Path, run_cli, store_at) -> None:
    # One job per batch: the first runs, then the second fails to compose and Hydra stops.
    store = store_at(tmp_path)
    result = run_cli(
        "-m",
        "dataset=xor",
        "optimizer=gd,bogus",
        "trainer.epochs=5",
        "hydra.sweeper.max_batch_size=1",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": store.uri},
    )
    assert result.returncode == 2, result.stderr
    assert "bprun: optimizer=bogus: no such option" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    by_kind = {run.data.tags.get(SWEEP_TAG, "child"): run for run in store.runs()}
    assert sorted(by_kind) == ["child", "true"], by_kind
    assert by_kind["child"].info.status == "FINISHED"
    assert by_kind["child"].data.tags[PARENT_TAG] == by_kind["true"].info.run_id
    assert by_kind["true"].info.status == "FAILED", "no sweep left RUNNING"
    assert "Could not find 'optimizer/bogus'" in by_kind["true"].data.tags["failure_reason"]


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
    config_path = Path(
        sweep.store.client().download_artifacts(child.info.run_id, "config.yaml", str(tmp_path / "artifacts"))
    )
    text = config_path.read_text()
    assert "0.30000000000000004" not in text
    assert yaml.safe_load(text)["optimizer"]["lr"] == 0.3
    # The jobs' lines, the job's overrides and its Hydra folder say 0.3 too.
    assert "-lr0.3-h8: FINISHED" in sweep.result.stdout and "0.30000000000000004" not in sweep.result.stdout
    overrides = yaml.safe_load(
        Path(
            sweep.store.client().download_artifacts(child.info.run_id, "overrides.yaml", str(tmp_path / "overrides"))
        ).read_text()
    )
    assert "optimizer.lr=0.3" in overrides


# --- starting the workers -------------------------------------------------------------------


def test_the_worker_preload_imports_what_a_job_needs() -> None:
    """The fork server ignores a preload that fails to import (the workers would silently start
    cold): import it for real, in a fresh interpreter."""
    check = (
        "import sys, runner.sweeps.worker_preload\n"
        "needed = ('mlflow', 'matplotlib', 'hydra', 'runner.core.tracked', 'runner.sweeps.local_launcher')\n"
        "assert all(name in sys.modules for name in needed), [n for n in needed if n not in sys.modules]\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=120, preexec_fn=dying_with_pytest()
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("arguments", "requested"),
    [
        (["-m", "hydra.launcher.n_jobs=2", "optimizer.lr=0.1,1"], True),
        (["--multirun", "hydra/launcher=local", "hydra.launcher.n_jobs=4"], True),
        (["hydra.launcher.n_jobs=2", "optimizer.lr=0.1"], False),  # a single run
        (["-m", "optimizer.lr=0.1,1"], False),  # one job at a time, in bprun's process
        (["-m", "hydra.launcher.n_jobs=2", "hydra.launcher.n_jobs=1"], False),  # the last one counts
        (["-m", "hydra.launcher.n_jobs=2", "hydra/launcher=basic"], False),  # another launcher
        (["-m", "hydra.launcher.n_jobs=2", "--cfg", "job"], False),  # prints, runs nothing
        (["-m", "hydra.launcher.n_jobs=2", "--help"], False),
    ],
)
def test_the_fork_server_starts_first_thing_only_for_parallel_workers(arguments, requested) -> None:
    assert parallel_workers_requested(arguments) is requested


def test_bprun_can_start_the_fork_server_before_importing_anything_but_the_standard_library() -> None:
    """Its point: Hydra and the app import meanwhile. (So do the signal handlers: a Ctrl-C while
    the rest imports is recorded, not a traceback.)"""
    check = (
        "import sys, runner.commands.bprun\n"
        "third_party = sorted({name.partition('.')[0] for name in sys.modules} - set(sys.stdlib_module_names)"
        " - {'runner', '__main__', '__mp_main__', '_distutils_hack'})\n"
        "assert not [name for name in third_party if not name.startswith('__editable__')], third_party\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60, preexec_fn=dying_with_pytest()
    )
    assert result.returncode == 0, result.stderr


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
    objectives = [child.data.metrics["1_loss/train_mse"] for child in sweep.children]
    assert not any("1_loss/val_mse" in child.data.metrics for child in sweep.children)
    best_index = int(np.argmin(objectives))
    best = sweep.children[best_index]

    results = optuna_results(sweep)
    assert results["completed_trials"] == 6 and results["trials"] == 6
    assert results["best_value"] == best.data.metrics["1_loss/train_mse"]
    assert results["best_trial"] == best_index  # children are in trial order (one at a time)
    best_params = results["best_params"]
    assert set(best_params) == {"optimizer.lr", "model.hidden"}
    # Optuna's float, as the job ran it: a run keeps 15 significant digits.
    assert format(best_params["optimizer.lr"], ".15g") == best.data.params["optimizer.lr"]
    assert best_params["model.hidden"] == best.data.params["model.hidden"]

    lines = [line for line in sweep.result.stdout.splitlines() if line.startswith("Optuna: best")]
    assert len(lines) == 1, sweep.output
    match = re.fullmatch(r"Optuna: best (\S+) = (\S+) at trial (\d+): (.*)", lines[0])
    assert match, lines[0]
    assert float(match[2]) == pytest.approx(best.data.metrics["1_loss/train_mse"], rel=1e-5)
    assert int(match[3]) == best_index
    printed = dict(item.split("=", 1) for item in match[4].split())
    assert float(printed["optimizer.lr"]) == best_params["optimizer.lr"]
    assert printed["model.hidden"] == best.data.params["model.hidden"]

    tags = sweep.parent.data.tags
    assert float(tags["optuna.best_value"]) == best.data.metrics["1_loss/train_mse"]
    assert json.loads(tags["optuna.best_params"]) == best_params
    assert tags["optuna.best_trial"] == str(best_index)


def test_optuna_sweep_with_the_same_seed_proposes_the_same_trials(
    optuna_sweep: Sweep, tmp_path: Path, run_sweep: RunSweep
) -> None:
    again = run_sweep(tmp_path, *OPTUNA)
    assert again.result.returncode == 0, again.output

    def trials(sweep: Sweep) -> list[tuple[str, str]]:
        return [(child.data.params["optimizer.lr"], child.data.params["model.hidden"]) for child in sweep.children]

    assert trials(again) == trials(optuna_sweep)
    assert len(set(trials(again))) == 6
    assert [c.data.metrics["1_loss/train_mse"] for c in again.children] == [
        c.data.metrics["1_loss/train_mse"] for c in optuna_sweep.children
    ]
    assert optuna_results(again) == optuna_results(optuna_sweep)


# --- 6. bprun-report -------------------------------------------------------------------------


def test_report_on_the_latest_sweep(basic_grid: Sweep, tmp_path: Path) -> None:
    import pandas as pd

    output = tmp_path / "rep"
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    environment["PYTHONDONTWRITEBYTECODE"] = "1"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "runner.commands.report",
            "--tracking-uri",
            basic_grid.store.uri,
            "--output",
            str(output),
        ],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=dying_with_pytest(),
    )
    assert result.returncode == 0, result.stderr
    assert basic_grid.parent.info.run_id in result.stdout  # the latest sweep by default

    table = pd.read_csv(output / "runs.csv")
    assert len(table) == 4
    assert set(table["run_id"]) == {child.info.run_id for child in basic_grid.children}
    assert (table["status"] == "FINISHED").all()
    # Ranked by final val_mse, which xor lacks: train_mse stands in, lowest first.
    finals = table["final_train_mse"].to_numpy(dtype=float)
    assert np.all(np.diff(finals) >= 0), finals
    assert sorted(zip(table["optimizer.lr"].astype(float), table["model.hidden"].astype(str))) == sorted(
        GRID_COMBINATIONS
    )
    by_run = {child.info.run_id: child.data.metrics["1_loss/train_mse"] for child in basic_grid.children}
    for run_id, value in zip(table["run_id"], finals):
        assert math.isclose(value, by_run[run_id], rel_tol=1e-12)

    markdown = (output / "runs.md").read_text().splitlines()
    table_lines = [line for line in markdown if line.startswith("|")]
    assert len(table_lines) == 2 + 4, markdown  # header, separator, one row per job

    assert_non_trivial_png(output / "learning_curves.png")
    (final_plot,) = output.glob("final_*_vs_optimizer.lr.png")
    assert_non_trivial_png(final_plot)


def test_a_cluster_launcher_without_its_extra_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from runner.sweeps.plugins import missing_extra

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *rest: (
            None
            if name.startswith(("hydra_plugins.hydra_ray_launcher", "hydra_plugins.hydra_submitit_launcher"))
            else real_find_spec(name, *rest)
        ),
    )
    assert missing_extra("hydra/launcher", "ray") == "ray"
    assert missing_extra("hydra/launcher", "submitit_slurm") == "slurm"
    assert missing_extra("hydra/launcher", "submitit_local") == "slurm"
    assert missing_extra("hydra/launcher", "local") is None


def test_whole_batches_plan_the_next_batch_once_this_one_has_ended() -> None:
    """``WholeBatches`` on a stream of 2 slots: a batch of 3 waits for a slot for its third job,
    and nothing of the next batch is planned until every job of this one has ended."""
    from hydra.core.utils import JobReturn

    from runner.sweeps.launching import WholeBatches

    class TwoSlots:
        def __init__(self) -> None:
            self.running: list[int] = []
            self.started: list[int] = []

        def capacity(self) -> int:
            return 2

        def start(self, job: Any, number: int) -> None:
            assert len(self.running) < 2
            self.running.append(number)
            self.started.append(number)

        def next_result(self, timeout: float) -> tuple[int, JobReturn] | None:
            return (self.running.pop(0), JobReturn()) if self.running else None

        def stop(self) -> None:
            self.running.clear()

    slots = TwoSlots()
    batches = WholeBatches(slots, 3)
    job: Any = ([], None)
    assert batches.capacity() == 3
    for number in range(3):
        batches.start(job, number)
    assert slots.started == [0, 1]  # the third waits for a free slot
    assert batches.next_result(0)[0] == 0 and slots.started == [0, 1, 2]
    assert batches.capacity() == 0  # the batch is ending: plan nothing
    assert batches.next_result(0)[0] == 1 and batches.capacity() == 0
    assert batches.next_result(0)[0] == 2 and batches.capacity() == 3  # all ended: the next batch
