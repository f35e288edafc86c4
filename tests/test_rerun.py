"""``bprun-rerun``: originals made by the real ``bprun`` CLI, rerun by ``python -m runner.commands.rerun``
(and the Python API), read back from a real MLflow store in a temporary directory.

A tracked CLI run costs about 10 s on two busy cores (imports, the pyfunc model, plots), so the
originals are made once per module, two at a time, all in one store, and each is rerun once;
the tests then read what those runs left behind. How two runs' values are compared, without
any run, is pinned down in ``tests/test_rerun_comparison.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from guard import dying_with_pytest

from runner.reports.rerun import RerunError

EPOCHS = 30
SUBPROCESS_TIMEOUT_SECONDS = 300
PARALLEL_PROCESSES = 2
EXPERIMENT = "backprop-runner"
CSV_NAME = "table.csv"
SWEEP_ENVIRONMENT = ("BPRUN_PARENT_RUN_ID", "BPRUN_EXPERIMENT_ID", "BPRUN_TRACKING_URI")

# One original per case; together they cover every data set kind (synthetic, built-in, CSV),
# every optimizer, full batch and mini-batch. The moons data set has its own seed so that the
# perturbed rerun (seed=5) changes the initial weights and nothing else: a different seed
# would otherwise generate different data, which a rerun rightly refuses.
ORIGINALS = {
    "moons_gd_full_batch": ("dataset=moons", "dataset.seed=11", "optimizer=gd", "optimizer.lr=2"),
    "iris_momentum_mini_batch": ("dataset=iris", "optimizer=momentum", "optimizer.lr=0.1", "trainer.batch_size=16"),
    "csv_nesterov_mini_batch": (
        "dataset=csv",
        f"dataset.path={CSV_NAME}",
        "dataset.targets=[y]",
        "optimizer=nesterov",
        "optimizer.lr=0.2",
        "trainer.batch_size=8",
    ),
}
SWEEP = (
    "-m",
    "hydra.launcher.n_jobs=2",
    "dataset=circles",
    "optimizer=adam",
    "trainer.batch_size=32",
    "optimizer.lr=0.1,0.5",
    "trainer.epochs=20",
)
UNTRACKED = ("tracking=none", "dataset=xor", "trainer.epochs=200", "optimizer.lr=2")


# --- helpers for the end-to-end tests ------------------------------------------------------------
def _environment(**extra: str) -> dict[str, str]:
    """The inherited environment without anything that would redirect a run (a store, a sweep)."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR", *SWEEP_ENVIRONMENT)
    }
    environment["PYTHONDONTWRITEBYTECODE"] = "1"
    environment.update(extra)
    return environment


def _python(*arguments: str, cwd: Path, **environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *arguments],
        cwd=cwd,
        env=_environment(**environment),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_SECONDS,
        preexec_fn=dying_with_pytest(),
    )


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"--- exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def _in_parallel(jobs: list) -> list:
    with ThreadPoolExecutor(PARALLEL_PROCESSES) as pool:
        return list(pool.map(lambda job: job(), jobs))


def _write_csv(path: Path) -> None:
    rng = np.random.default_rng(3)
    x = rng.uniform(-1.0, 1.0, (60, 2))
    y = np.sin(2 * x[:, 0]) + 0.5 * x[:, 1]
    rows = ["x1,x2,y"] + [f"{a:.6f},{b:.6f},{c:.6f}" for (a, b), c in zip(x, y)]
    path.write_text("\n".join(rows) + "\n")


@dataclass
class Original:
    name: str
    cwd: Path
    result: subprocess.CompletedProcess[str]
    run_id: str = ""

    @property
    def folder(self) -> Path:
        """The Hydra output folder of a single run (outputs/<date>/<time>)."""
        (pointer,) = self.cwd.glob("outputs/*/*/mlflow_run.json")
        return pointer.parent


@dataclass
class World:
    """Everything the module's end-to-end tests share: one store, its originals and their reruns."""

    base: Path
    uri: str
    originals: dict[str, Original]
    sweep: Original
    sweep_child: str
    sweep_job_folder: Path
    untracked: Original
    reruns: dict[str, subprocess.CompletedProcess[str]]

    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)

    def runs_tagged(self, key: str, value: str) -> list[Any]:
        client = self.client()
        experiment = client.get_experiment_by_name(EXPERIMENT)
        return list(client.search_runs([experiment.experiment_id], filter_string=f"tags.{key} = '{value}'"))


def _history(client: Any, run_id: str, name: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))


def _weights(uri: str, run_id: str, directory: Path) -> dict[str, np.ndarray]:
    import mlflow.artifacts

    path = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="weights.npz", dst_path=str(directory / run_id), tracking_uri=uri
    )
    with np.load(path) as archive:
        return {name: archive[name] for name in archive.files}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Originals through the real CLI, then one CLI rerun of each, two processes at a time.

    The store is created first, in this process: parallel first use of a fresh SQLite file can
    break its schema migration.
    """
    from runner.tracking.store import ensure_experiment

    base = tmp_path_factory.mktemp("rerun")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    ensure_experiment(uri, EXPERIMENT)
    elsewhere = base / "elsewhere"  # a directory that holds neither the store nor the data
    elsewhere.mkdir()

    def original(name: str, overrides: tuple[str, ...], tracked: bool = True):
        cwd = base / name
        cwd.mkdir()
        if name.startswith("csv"):
            _write_csv(cwd / CSV_NAME)
        budget = () if any(o.startswith("trainer.epochs=") for o in overrides) else (f"trainer.epochs={EPOCHS}",)
        store = {"MLFLOW_TRACKING_URI": uri} if tracked else {}
        return lambda: Original(name, cwd, _python("-m", "runner", *overrides, *budget, cwd=cwd, **store))

    made = _in_parallel(
        [original("sweep", SWEEP)]
        + [original(name, overrides) for name, overrides in ORIGINALS.items()]
        + [original("untracked", UNTRACKED, tracked=False)]
    )
    sweep, *singles, untracked = made
    originals = {made_run.name: made_run for made_run in singles}
    for made_run in originals.values():
        assert made_run.result.returncode == 0, _output(made_run.result)
        made_run.run_id = re.search(r"MLflow run (\w+) in", made_run.result.stdout).group(1)
    assert untracked.result.returncode == 0, _output(untracked.result)
    assert sweep.result.returncode == 0, _output(sweep.result)

    # One child of the sweep, found through its job folder: outputs/multirun/<date>/<time>/1.
    (job_folder,) = sweep.cwd.glob("outputs/multirun/*/*/1")
    sweep_child = json.loads((job_folder / "mlflow_run.json").read_text())["run_id"]

    moons, iris, csv = (originals[name] for name in ORIGINALS)
    reruns = dict(
        zip(
            [*ORIGINALS, "sweep"],
            _in_parallel(
                [
                    # The default store: ./mlflow.db in the directory the command starts in.
                    lambda: _python("-m", "runner.commands.rerun", moons.run_id, cwd=base),
                    lambda: _python("-m", "runner.commands.rerun", iris.run_id, "--tracking-uri", uri, cwd=elsewhere),
                    # Started elsewhere: the CSV's relative path must still find the original's file.
                    lambda: _python("-m", "runner.commands.rerun", csv.run_id, cwd=elsewhere, MLFLOW_TRACKING_URI=uri),
                    # The job folder's .hydra: mlflow_run.json beside it names the run and the store.
                    lambda: _python("-m", "runner.commands.rerun", str(job_folder / ".hydra"), cwd=elsewhere),
                ]
            ),
        )
    )
    return World(base, uri, originals, sweep, sweep_child, job_folder, untracked, reruns)


# --- end to end ----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("case", [*ORIGINALS, "sweep"])
def test_rerun_is_identical_and_recorded_beside_the_original(world: World, case: str, tmp_path: Path) -> None:
    result = world.reruns[case]
    assert result.returncode == 0, _output(result)
    original_id = world.sweep_child if case == "sweep" else world.originals[case].run_id
    client = world.client()
    epochs = client.get_run(original_id).data.tags["epochs_run"]
    assert result.stdout.splitlines()[0] == f"identical ({epochs} epoch(s) and the final weights compared)", _output(
        result
    )

    (new,) = world.runs_tagged("rerun_of", original_id)
    original = client.get_run(original_id)
    assert new.info.run_id in result.stdout
    assert new.data.tags["rerun.result"] == "identical"
    assert new.info.status == original.info.status == "FINISHED"
    assert new.info.experiment_id == original.info.experiment_id
    assert new.data.tags["data.sha256"] == original.data.tags["data.sha256"]
    assert new.data.tags["epochs_run"] == original.data.tags["epochs_run"]
    # Read back independently of the tool: every epoch of every loss metric, and the weights.
    names = [name for name in original.data.metrics if name.startswith(("1_loss/", "2_accuracy/"))]
    assert {"1_loss/train_mse", "1_loss/val_mse"} <= set(names)
    for name in names:
        history = _history(client, original_id, name)
        assert len(history) == int(original.data.tags["epochs_run"])
        assert _history(client, new.info.run_id, name) == history, name
    before, after = _weights(world.uri, original_id, tmp_path), _weights(world.uri, new.info.run_id, tmp_path)
    assert sorted(before) == sorted(after) and len(before) >= 4
    for name in before:
        assert np.array_equal(before[name], after[name]), name

    if case == "csv_nesterov_mini_batch":
        # The config said table.csv, relative to where the original started; the rerun read
        # that same file, named absolutely, from another directory.
        source = original.data.tags["data_source"]
        assert source == str(world.originals[case].cwd / CSV_NAME)
        assert new.data.tags["data_source"] == source
    else:
        # Not a byte of the config changed on the way: same hash.
        assert new.data.tags["config.sha256"] == original.data.tags["config.sha256"]
    if case == "sweep":
        parent = original.data.tags.get("mlflow.parentRunId")
        assert parent and client.get_run(parent).data.tags.get("bprun.sweep") == "true"
        assert len(world.runs_tagged("mlflow.parentRunId", parent)) == 2
        assert "mlflow.parentRunId" not in new.data.tags  # a rerun is never part of the sweep


@pytest.mark.slow
def test_perturbed_rerun_from_a_hydra_folder_differs_from_epoch_0(world: World, monkeypatch) -> None:
    from runner.reports.rerun import rerun

    for name in ("MLFLOW_TRACKING_URI", *SWEEP_ENVIRONMENT):
        monkeypatch.delenv(name, raising=False)
    moons = world.originals["moons_gd_full_batch"]
    report = rerun(str(moons.folder), overrides=["seed=5"])

    assert report.original_run_id == moons.run_id
    assert report.tracking_uri == world.uri  # from the folder's mlflow_run.json
    assert report.result == "different"
    first = report.comparison.first
    assert (first.epoch, first.where) == (0, "train_mse")
    assert first.original != first.rerun
    assert report.summary().startswith(
        f"different: first at epoch 0 in train_mse (original {first.original!r}, rerun {first.rerun!r}); "
        "largest absolute difference "
    )
    new = world.client().get_run(report.rerun_run_id)
    assert new.data.tags["rerun_of"] == moons.run_id
    assert new.data.tags["rerun.result"] == "different"
    assert json.loads(new.data.tags["rerun.overrides"]) == ["seed=5"]


@pytest.mark.slow
def test_changed_weights_are_different_unless_within_tolerance(world: World, monkeypatch, capsys) -> None:
    """The iris original's weights.npz nudged by 1e-9 in one entry: bit for bit that is a
    difference (exit 1) in the weights alone; with --tolerance 1e-6 it is identical (exit 0)."""
    from runner.commands.rerun import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", world.uri)
    iris = world.originals["iris_momentum_mini_batch"]
    artifact_uri = world.client().get_run(iris.run_id).info.artifact_uri
    weights_path = Path(artifact_uri.removeprefix("file://")) / "weights.npz"
    with np.load(weights_path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["W2"][1, 2] += 1e-9
    np.savez(weights_path, **arrays)

    assert main([iris.run_id]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(
        r"different: every compared metric agrees but the final weights differ; "
        r"largest absolute difference 1e-09 \(layer2 weights\) "
        r"\(\d+ epoch\(s\) and the final weights compared\)",
        lines[0],
    ), lines
    assert main([iris.run_id, "--tolerance", "1e-6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(
        r"identical within tolerance 1e-06 \(\d+ epoch\(s\) and the final weights compared\): "
        r"largest absolute difference 1e-09 \(layer2 weights\)",
        lines[0],
    ), lines
    assert len(world.runs_tagged("rerun_of", iris.run_id)) == 3


@pytest.mark.slow
def test_changed_csv_is_refused_with_both_fingerprints_and_provenance_warned(world: World) -> None:
    csv = world.originals["csv_nesterov_mini_batch"]
    client = world.client()
    original = client.get_run(csv.run_id)
    # Pretend the original ran elsewhere: every differing tag is listed, old -> new.
    client.set_tag(csv.run_id, "version.numpy", "1.0.0")
    client.set_tag(csv.run_id, "git.commit", "0" * 40)
    table = csv.cwd / CSV_NAME
    rows = table.read_text().splitlines()
    cells = rows[5].split(",")
    cells[1] = f"{float(cells[1]) + 0.5:.6f}"
    rows[5] = ",".join(cells)
    table.write_text("\n".join(rows) + "\n")

    result = _python(
        "-m", "runner.commands.rerun", csv.run_id, "--tracking-uri", world.uri, cwd=world.base / "elsewhere"
    )
    assert result.returncode == 2, _output(result)
    assert result.stdout == ""
    assert "refusing to rerun" in result.stderr and str(table) in result.stderr
    recorded = original.data.tags["data.sha256"]
    now = re.search(r"data\.sha256 now: +([0-9a-f]{64})", result.stderr).group(1)
    assert recorded in result.stderr and now != recorded
    assert f"version.numpy: 1.0.0 -> {np.__version__}" in result.stderr
    assert f"git.commit: {'0' * 40} -> " in result.stderr
    # Refused before training: still only the one identical rerun made earlier.
    assert len(world.runs_tagged("rerun_of", csv.run_id)) == 1


@pytest.mark.slow
def test_folder_of_an_untracked_run_is_rerun_with_nothing_to_compare(world: World) -> None:
    (folder,) = world.untracked.cwd.glob("outputs/*/*")
    assert not (folder / "mlflow_run.json").exists()
    result = _python("-m", "runner.commands.rerun", str(folder), cwd=world.untracked.cwd)
    assert result.returncode == 3, _output(result)
    assert result.stdout.startswith(f"nothing to compare: {folder} has no mlflow_run.json")
    # The same final metrics as the original printed (bprun: completed 200 epochs: ...).
    printed = re.search(r"completed \d+ epochs: (.*)", world.untracked.result.stdout).group(1)
    assert result.stdout.rstrip().endswith(f"the rerun gave {printed}")
    assert not list(world.untracked.cwd.rglob("mlflow.db"))


@pytest.mark.slow
def test_missing_store_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    result = _python("-m", "runner.commands.rerun", "0" * 32, cwd=tmp_path)
    assert result.returncode == 2, _output(result)
    assert f"no MLflow store at {tmp_path / 'mlflow.db'}" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_bad_sources_are_errors(world: World) -> None:
    from runner.reports.rerun import rerun

    with pytest.raises(RerunError, match=f"no run {'f' * 32} in {re.escape(world.uri)}"):
        rerun("f" * 32, tracking_uri=world.uri)
    sweep_folder = world.sweep_job_folder.parent
    with pytest.raises(RerunError, match=r"is a whole sweep; pass one job's folder: .*/0, .*/1"):
        rerun(str(sweep_folder))
    with pytest.raises(RerunError, match="neither an existing folder nor an MLflow run id"):
        rerun("outputs/no-such-folder")


@pytest.mark.slow
def test_an_original_without_a_metric_history_is_refused(world: World, tmp_path: Path, capsys) -> None:
    """A run that ended before its first epoch was logged has nothing to compare: refused, exit 2,
    nothing rerun (identical would claim a match that was never checked)."""
    from runner.commands.rerun import main

    client = world.client()
    iris = world.originals["iris_momentum_mini_batch"]
    empty = client.create_run(client.get_run(iris.run_id).info.experiment_id, run_name="no history")
    client.log_artifact(empty.info.run_id, client.download_artifacts(iris.run_id, "config.yaml", str(tmp_path)))
    client.set_terminated(empty.info.run_id, "KILLED")
    assert main([empty.info.run_id, "--tracking-uri", world.uri]) == 2
    assert "has no metric history to compare a rerun with" in capsys.readouterr().err
    assert world.runs_tagged("rerun_of", empty.info.run_id) == []


def test_a_killed_original_is_compared_over_the_epochs_it_logged(tmp_path: Path, compose, store) -> None:
    """Interrupted after 30 of 200 epochs: the rerun trains the config and compares those 30
    epochs (no final weights: the original has none), and says so."""
    import signal

    from engine import Observer
    from runner.core.run import run
    from runner.process import interruption
    from runner.reports.rerun import rerun

    class StopAfter(Observer):
        def on_epoch_end(self, report) -> None:
            if report.epoch == 29:
                interruption.request(signal.SIGINT)

    cfg = compose(["dataset=moons", "trainer.epochs=200", "tracking.tensors_every=0"])
    try:
        with pytest.raises(interruption.Interrupted):
            run(cfg, tracking_uri=store.uri, start_dir=str(tmp_path), observers=[StopAfter()])
    finally:
        interruption.reset()
    (original,) = store.runs()
    assert (original.info.status, original.data.tags["epochs_run"]) == ("KILLED", "30")
    report = rerun(original.info.run_id, tracking_uri=store.uri)
    assert report.identical and report.comparison.epochs_compared == 30
    assert report.summary() == (
        "identical (30 epoch(s) compared; the original was KILLED after 30 epoch(s), "
        "so only those, and no final weights, are compared)"
    )


def test_an_original_logged_before_the_loss_sections_reruns_identical(tmp_path: Path, compose, store) -> None:
    """A store written before the loss and accuracy sections (``train_mse``, not
    ``1_loss/train_mse``): its runs rerun identical, compared metric by metric."""
    import sqlite3

    from runner.core.run import run
    from runner.reports.rerun import rerun

    run(compose(["dataset=moons", "trainer.epochs=20", "tracking.tensors_every=0"]), tracking_uri=store.uri)
    with sqlite3.connect(store.db) as database:  # the names such a store holds
        for table in ("metrics", "latest_metrics"):
            for section in ("1_loss/", "2_accuracy/"):
                database.execute(
                    f"UPDATE {table} SET key = substr(key, ?) WHERE substr(key, 1, ?) = ?",
                    (len(section) + 1, len(section), section),
                )
    (original,) = store.runs()
    assert {"train_mse", "val_mse", "train_accuracy", "val_accuracy"} <= set(original.data.metrics)
    report = rerun(original.info.run_id, tracking_uri=store.uri)
    assert report.identical and report.comparison.epochs_compared == 20, report.summary()
    (copy,) = _reruns_of(store, original.info.run_id)
    assert "1_loss/train_mse" in copy.data.metrics


# --- artifacts: absent by the run's listing, never by a failed download ----------------------------
SMALL = ("dataset=moons", "trainer.epochs=5", "tracking.tensors_every=0")


def _small_original(compose, store, tmp_path: Path, capsys) -> Any:
    from runner.core.run import run

    run(compose(list(SMALL)), tracking_uri=store.uri, start_dir=str(tmp_path))
    (original,) = store.runs()
    capsys.readouterr()  # what making the store printed; the tests read what the rerun prints
    return original


def _reruns_of(store, run_id: str) -> list[Any]:
    return [run for run in store.runs() if run.data.tags.get("rerun_of") == run_id]


def test_weights_deleted_after_the_listing_are_an_error_not_a_verdict(
    tmp_path: Path, compose, store, monkeypatch, capsys
) -> None:
    """The original's weights.npz is listed, then gone when it is downloaded: one line naming
    the run and the artifact, exit 1, no verdict, and nothing trained (the original's side is
    fetched before training)."""
    from mlflow.tracking import MlflowClient

    from runner.commands.rerun import main

    original = _small_original(compose, store, tmp_path, capsys)
    original_id = original.info.run_id
    weights = Path(original.info.artifact_uri.removeprefix("file://")) / "weights.npz"
    list_artifacts = MlflowClient.list_artifacts

    def list_then_delete(client: Any, run_id: str, path: str | None = None) -> list[Any]:
        listed = list_artifacts(client, run_id, path)
        if run_id == original_id:
            weights.unlink(missing_ok=True)
        return listed

    monkeypatch.setattr(MlflowClient, "list_artifacts", list_then_delete)
    assert main([original_id, "--tracking-uri", store.uri]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith(
        f"bprun-rerun: run {original_id}: cannot download weights.npz from {store.uri} "
        "(MlflowException: Failed to download artifacts from path 'weights.npz'"
    )
    assert line.endswith(
        "), so there is no verdict; nothing was rerun. Check that the store and its artifact storage are "
        "reachable and readable, then run bprun-rerun again"
    )
    assert _reruns_of(store, original_id) == []


def test_a_failed_download_of_the_reruns_weights_leaves_the_rerun_without_a_verdict(
    tmp_path: Path, compose, store, monkeypatch, capsys
) -> None:
    """The store fails to give back the new run's weights.npz: exit 1 and one line naming that
    run, the artifact and the rerun left in the store; the rerun gets no rerun.result tag."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from runner.commands.rerun import main

    original_id = _small_original(compose, store, tmp_path, capsys).info.run_id
    download_artifacts = MlflowClient.download_artifacts

    def failing_for_the_rerun(client: Any, run_id: str, path: str, dst_path: str | None = None) -> str:
        if run_id != original_id and path == "weights.npz":
            raise MlflowException("503 Service Unavailable\n<html>...</html>")
        return download_artifacts(client, run_id, path, dst_path)

    monkeypatch.setattr(MlflowClient, "download_artifacts", failing_for_the_rerun)
    assert main([original_id, "--tracking-uri", store.uri]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    (rerun_run,) = _reruns_of(store, original_id)
    rerun_id = rerun_run.info.run_id
    assert err.splitlines() == [
        f"bprun-rerun: run {rerun_id}: cannot download weights.npz from {store.uri} "
        f"(MlflowException: 503 Service Unavailable), so there is no verdict; the rerun {rerun_id} of "
        f"{original_id} was trained and stays in the store without one. Check that the store and its "
        "artifact storage are reachable and readable, then run bprun-rerun again"
    ]
    assert "rerun.result" not in rerun_run.data.tags


def test_weights_the_original_never_logged_are_absent_and_compared_as_such(
    tmp_path: Path, compose, store, capsys
) -> None:
    """Not in the run's listing: the original saved no weights.npz, which is a difference."""
    from runner.commands.rerun import main

    original = _small_original(compose, store, tmp_path, capsys)
    (Path(original.info.artifact_uri.removeprefix("file://")) / "weights.npz").unlink()
    assert main([original.info.run_id, "--tracking-uri", store.uri]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "different: every compared metric agrees but the final weights differ; only the rerun saved weights.npz "
        "(5 epoch(s) and the final weights compared)"
    )
    (rerun_run,) = _reruns_of(store, original.info.run_id)
    assert rerun_run.data.tags["rerun.result"] == "different"


# --- the same config in 20 fresh processes ---------------------------------------------------------
FRESH_PROCESSES = 20
DETERMINISM_SCRIPT = """
import hashlib, json, sys
import numpy as np
from omegaconf import OmegaConf
from runner.core.run import run

result = run(OmegaConf.load(sys.argv[1]))
history = hashlib.sha256()
for name in sorted(result.history.metrics):
    history.update(name.encode() + np.asarray(result.history.metrics[name], dtype=np.float64).tobytes())
print(json.dumps({"params": hashlib.sha256(result.network.params.tobytes()).hexdigest(),
                  "history": history.hexdigest(), "epochs": result.history.epochs_run}))
"""


@pytest.mark.slow
def test_same_config_in_fresh_processes_gives_identical_histories_and_weights(tmp_path: Path) -> None:
    """Adam, mini-batches (the shuffle stream), two hidden layers wide enough for OpenBLAS to use
    threads if it were allowed: half the processes start with 2 BLAS threads, half with 1, and
    every process has its own hash seed; trainer.blas_threads=1 must make them all agree."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    import runner.hydra_app.app  # noqa: F401  (registers the schemas conf/ builds on)

    with initialize_config_module(config_module="runner.conf", version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                "tracking=none",
                "dataset=moons",
                "optimizer=adam",
                "optimizer.lr=0.01",
                "model.hidden=[64,64]",
                "trainer.batch_size=32",
                "trainer.epochs=40",
            ],
        )
    config_path = tmp_path / "config.yaml"
    OmegaConf.save(cfg, config_path)
    script = tmp_path / "fingerprint.py"
    script.write_text(DETERMINISM_SCRIPT)

    def job(number: int):
        return lambda: _python(
            str(script),
            str(config_path),
            cwd=tmp_path,
            PYTHONHASHSEED=str(number),
            OPENBLAS_NUM_THREADS=str(1 + number % 2),
        )

    results = _in_parallel([job(number) for number in range(FRESH_PROCESSES)])
    for result in results:
        assert result.returncode == 0, _output(result)
    fingerprints = [json.loads(result.stdout) for result in results]
    assert fingerprints[0]["epochs"] == 40
    assert all(fingerprint == fingerprints[0] for fingerprint in fingerprints), fingerprints
    assert not list(tmp_path.rglob("mlflow.db"))
