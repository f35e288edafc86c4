"""``hydra/launcher=stacked``: a sweep's jobs trained at once, each still a run of its own, read
back from the store.

- a stacked sweep and the same sweep on the local launcher give every job the same metric
  histories (every key), tensors and final weights, bit for bit; the same on 2 workers;
- each member is a run like any other: nested under the parent, its params and tags (plus the
  launcher), no per-run plots unless ``tracking.plots=true``, the summary plotting every member;
- a mixed sweep is grouped into stacks and says so (a line, the parent's tag), its members
  with the plots ``tracking.plots=true`` asks for;
- a diverging member ends FAILED alone; Ctrl-C ends every member KILLED at the same epoch;
  SIGKILL leaves runs that bprun-doctor ends, and bprun-resume completes the sweep;
- bprun-rerun of a member and of the whole sweep say identical;
- refusals: a member's bad value, n_jobs=0, exit 2 before anything is stored.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import PARENT_TAG, START_TIMEOUT, TRAIN_MSE, Background, artifact_dir, cli, client, wait_until

pytestmark = pytest.mark.slow

STACKED = "hydra/launcher=stacked"
GRID = (
    "-m",
    "optimizer=momentum",
    "optimizer.lr=0.3,1",
    "seed=0,1",
    "trainer.epochs=40",
    "trainer.batch_size=2",
    "tracking.tensors_every=10",
)


def members(store: Any) -> list[Any]:
    return [run for run in store.runs() if PARENT_TAG in run.data.tags]


def parent_of(store: Any) -> Any:
    (parent,) = [run for run in store.runs() if run.data.tags.get("bprun.sweep") == "true"]
    return parent


def by_job(store: Any) -> dict[tuple[str, str], Any]:
    return {(run.data.params["optimizer.lr"], run.data.params["seed"]): run for run in members(store)}


def histories(store: Any, run: Any) -> dict[str, list[tuple[int, float]]]:
    mlflow = client(store)
    return {
        key: sorted((metric.step, metric.value) for metric in mlflow.get_metric_history(run.info.run_id, key))
        for key in run.data.metrics
    }


def arrays(folder: Path) -> dict[str, np.ndarray]:
    """Every array of the .npy and .npz files under ``folder``, by relative path and name."""
    found = {}
    for path in sorted(folder.rglob("*.np[yz]")):
        name = str(path.relative_to(folder))
        if path.suffix == ".npz":
            with np.load(path) as archive:
                found.update({f"{name}:{key}": archive[key] for key in archive.files})
        else:
            found[name] = np.load(path)
    return found


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory: pytest.TempPathFactory, make_store) -> dict[str, Any]:
    """The same grid stacked in bprun's process, stacked on 2 workers, and on the local launcher."""
    made = {}
    for name, extra in {
        "stacked": (STACKED,),
        "stacked-workers": (STACKED, "hydra.launcher.n_jobs=2"),
        "local": (),
    }.items():
        store = make_store(f"{name}-store")
        result = cli(*GRID, *extra, cwd=tmp_path_factory.mktemp(name), uri=store.uri)
        assert result.returncode == 0, result.output
        made[name] = (store, result)
    return made


@pytest.mark.parametrize("stacked", ["stacked", "stacked-workers"])
def test_every_member_is_bit_for_bit_the_job_on_the_local_launcher(sweeps: dict[str, Any], stacked: str) -> None:
    stacked_store, _ = sweeps[stacked]
    local_store, _ = sweeps["local"]
    stacked_runs, local_runs = by_job(stacked_store), by_job(local_store)
    assert sorted(stacked_runs) == sorted(local_runs) and len(local_runs) == 4
    for job, run in stacked_runs.items():
        alone = local_runs[job]
        assert run.info.status == alone.info.status == "FINISHED"
        got, expected = histories(stacked_store, run), histories(local_store, alone)
        assert sorted(got) == sorted(expected) and TRAIN_MSE in got
        for key in expected:
            assert [value for _, value in got[key]] == [value for _, value in expected[key]], (job, key)
            assert [step for step, _ in got[key]] == list(range(40)), (job, key)
        got_arrays, expected_arrays = arrays(artifact_dir(run)), arrays(artifact_dir(alone))
        assert sorted(got_arrays) == sorted(expected_arrays)
        assert any(name.startswith("tensors") for name in got_arrays) and "weights.npz:W1" in got_arrays
        for name, value in expected_arrays.items():
            assert np.array_equal(got_arrays[name], value), (job, name)
        # The same tags, but for the launcher's own and those of the process that ran it.
        apart = {"bprun.launcher", "bprun.pid", "bprun.process_start"}
        assert set(run.data.tags) - apart == set(alone.data.tags) - apart
        assert run.data.params == alone.data.params


def test_the_members_are_runs_of_the_sweep_with_their_launcher_and_the_summary_plots(sweeps: dict[str, Any]) -> None:
    store, result = sweeps["stacked"]
    parent = parent_of(store)
    assert "bprun: hydra/launcher=stacked: 4 job(s) trained as 1 stack(s) of 4" in result.stdout, result.output
    assert parent.data.tags["sweep.stacks"].startswith("4 job(s) trained as 1 stack(s) of 4")
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.jobs"] == "4"
    for run in members(store):
        assert run.data.tags[PARENT_TAG] == parent.info.run_id
        assert run.data.tags["bprun.launcher"] == "stacked"
        assert not (artifact_dir(run) / "plots").exists()  # the summary plots every member
        assert (artifact_dir(run) / "model" / "MLmodel").exists()
    summary = artifact_dir(parent) / "summary"
    assert (summary / "learning_curves.png").stat().st_size > 10_000
    assert len((summary / "runs.csv").read_text().strip().splitlines()) == 1 + 4


def test_a_mixed_sweep_stacks_what_it_can_and_says_why_not_the_rest(tmp_path: Path, store) -> None:
    # tracking.plots=true: each member draws its own plots as well.
    grid = ("model.hidden=[4],[8]", "optimizer.lr=0.5,1", "trainer.epochs=5", "tracking.plots=true")
    result = cli("-m", STACKED, *grid, cwd=tmp_path, uri=store.uri)
    assert result.returncode == 0, result.output
    line = "4 job(s) trained as 2 stack(s) of 2, 2 (the jobs differ in model.hidden, which a stack cannot vary)"
    assert f"bprun: hydra/launcher=stacked: {line}" in result.stdout, result.output
    assert parent_of(store).data.tags["sweep.stacks"] == line
    assert sorted(run.info.status for run in members(store)) == ["FINISHED"] * 4
    for run in members(store):
        assert (artifact_dir(run) / "plots" / "learning_curves.png").exists()


def test_a_diverging_member_fails_alone(tmp_path: Path, store) -> None:
    result = cli(
        "-m",
        STACKED,
        "dataset=diabetes",
        "model.activation=relu",
        "model.output_activation=identity",
        "optimizer.lr=0.01,0.5",
        "trainer.epochs=30",
        cwd=tmp_path,
        uri=store.uri,
    )
    assert result.returncode == 1, result.output
    runs = by_job(store)
    diverged, calm = runs[("0.5", "0")], runs[("0.01", "0")]
    assert diverged.info.status == "FAILED" and "diverged at epoch" in diverged.data.tags["failure_reason"]
    assert calm.info.status == "FINISHED" and calm.data.tags["stop_reason"] == "completed"
    assert "1 of 2 job(s) of the sweep failed" in result.stderr, result.output


def _first_epochs_logged(store: Any, count: int) -> bool:
    return len(members(store)) == count and all(TRAIN_MSE in run.data.metrics for run in members(store))


def test_ctrl_c_ends_every_member_killed_at_the_same_epoch(tmp_path: Path, store) -> None:
    sweep = Background("-m", STACKED, "optimizer.lr=0.5,1,2", "trainer.epochs=100000", cwd=tmp_path, uri=store.uri)
    try:
        wait_until(lambda: _first_epochs_logged(store, 3), START_TIMEOUT, "every member's first epoch", sweep)
        result = sweep.wait(sweep.signal(signal.SIGINT, group=True))
        assert result.returncode == 128 + signal.SIGINT, result.output
        assert sweep.leftovers() == []
    finally:
        sweep.kill_everything()
    runs = members(store)
    assert [run.info.status for run in runs] == ["KILLED"] * 3
    steps = [[step for step, _ in histories(store, run)[TRAIN_MSE]] for run in runs]
    assert steps[0] == list(range(len(steps[0]))) and steps[0] and all(found == steps[0] for found in steps)
    assert {run.data.tags["epochs_run"] for run in runs} == {str(len(steps[0]))}
    assert parent_of(store).info.status == "KILLED"


def test_after_sigkill_doctor_ends_the_members_and_the_sweep_resumes(tmp_path: Path, store) -> None:
    pauses = tmp_path / "pauses"
    pauses.mkdir()
    sweep = Background(
        "-m",
        STACKED,
        "optimizer.lr=0.5,1",
        "trainer.epochs=30",
        cwd=tmp_path,
        uri=store.uri,
        env={"BPRUN_TEST_PAUSE_AT_EPOCH": "5", "BPRUN_TEST_PAUSE_FOLDER": str(pauses)},
    )
    try:
        wait_until(lambda: any(pauses.glob("*.paused")), START_TIMEOUT, "the stack paused at epoch 5", sweep)
        sweep.wait(sweep.signal(signal.SIGKILL, group=True))
    finally:
        sweep.kill_everything()
    assert sorted(run.info.status for run in store.runs()) == ["RUNNING"] * 3
    doctor = cli("--tracking-uri", store.uri, cwd=tmp_path, module="runner.commands.doctor", timeout=120)
    assert doctor.returncode == 0, doctor.output
    assert sorted(run.info.status for run in store.runs()) == ["KILLED"] * 3
    parent = parent_of(store)
    resumed = cli(parent.info.run_id, "--tracking-uri", store.uri, cwd=tmp_path, module="runner.commands.resume")
    assert resumed.returncode == 0, resumed.output
    current = [run for run in members(store) if "bprun.superseded_by" not in run.data.tags]
    assert sorted(run.info.status for run in current) == ["FINISHED"] * 2
    assert all(len(histories(store, run)[TRAIN_MSE]) == 30 for run in current)
    assert parent_of(store).info.status == "FINISHED"


def test_a_member_and_the_whole_sweep_rerun_identical(sweeps: dict[str, Any], tmp_path: Path) -> None:
    store, _ = sweeps["stacked"]
    member = by_job(store)[("1", "1")]
    rerun = cli(member.info.run_id, cwd=tmp_path / "one", uri=store.uri, module="runner.commands.rerun")
    assert rerun.returncode == 0, rerun.output
    assert "identical (40 epoch(s) and the final weights compared)" in rerun.stdout, rerun.output
    whole = cli(parent_of(store).info.run_id, cwd=tmp_path / "all", uri=store.uri, module="runner.commands.rerun")
    assert whole.returncode == 0, whole.output
    assert f"sweep {parent_of(store).info.run_id}: identical" in whole.stdout, whole.output


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("optimizer.lr=0.5,-1", ("optimizer.lr", "-1")),
        ("hydra.launcher.n_jobs=0", ("hydra.launcher.n_jobs", "0")),
    ],
    ids=["a member's bad value", "no workers"],
)
def test_refusals_exit_2_in_one_line_before_anything_is_stored(
    override: str, names: tuple[str, str], tmp_path: Path, store
) -> None:
    result = cli("-m", STACKED, override, "trainer.epochs=5", cwd=tmp_path, uri=store.uri)
    assert result.returncode == 2, result.output
    first = result.stderr.strip().splitlines()[0]
    assert all(name in first for name in names), result.output
    assert store.runs() == []
