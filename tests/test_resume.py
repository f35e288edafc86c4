"""Sweeps a user can steer: a stopped sweep resumed with ``bprun-resume``, jobs started as slots
free up, and the progress a running sweep shows. Everything is read back from the store.

- a 6-job grid stopped by Ctrl-C, and one whose bprun is killed outright, after some jobs
  finished: resumed, each ends with 6 jobs counted once, the finished ones not run again (their
  run ids unchanged), the others run again as new runs that supersede the earlier ones, every
  run's history contiguous, the parent FINISHED with its job numbering continued;
- an Optuna sweep of 10 trials stopped after 4: resumed, exactly 10 trials, none told twice;
- refused: a sweep that still runs, a second resume while one runs, a changed config, a run
  that is not a sweep's parent;
- jobs of unequal length on 2 workers: a job starts when a slot frees, before the longer job of
  its "batch" ends; the [k/N] lines, the progress line and the parent's best_<objective>.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from support import START_TIMEOUT, Background, cli, client, history, wait_until

pytestmark = pytest.mark.slow

GRID_JOBS, GRID_EPOCHS = 6, 1500
GRID = (
    "-m",
    "seed=" + ",".join(str(seed) for seed in range(GRID_JOBS)),
    f"trainer.epochs={GRID_EPOCHS}",
    "tracking.tensors_every=0",
)
OPTUNA = (
    "-m",
    "hydra/sweeper=optuna",
    "hydra.sweeper.n_trials=10",
    "optimizer.lr=tag(log,interval(0.1,3))",
    f"trainer.epochs={GRID_EPOCHS}",
    "tracking.tensors_every=0",
)


def parents(store: Any) -> list[Any]:
    return [run for run in store.runs() if run.data.tags.get("bprun.sweep") == "true"]


def jobs(store: Any, parent_id: str, superseded: bool = False) -> list[Any]:
    return [
        run
        for run in store.runs()
        if run.data.tags.get("mlflow.parentRunId") == parent_id
        and ("bprun.superseded_by" in run.data.tags) == superseded
    ]


def finished_jobs(store: Any) -> int:
    return sum(run.info.status == "FINISHED" for run in store.runs() if "mlflow.parentRunId" in run.data.tags)


def stop_after_finished(arguments: tuple[str, ...], cwd: Path, store: Any, how: int, finished: int = 3) -> None:
    """Start a sweep, and stop it with signal ``how`` once ``finished`` of its jobs finished."""
    process = Background(*arguments, cwd=cwd, uri=store.uri, label="stopped")
    try:
        wait_until(lambda: finished_jobs(store) >= finished, START_TIMEOUT, f"{finished} jobs finished", process)
        sent = process.signal(how, group=how != signal.SIGKILL)
        result = process.wait(sent)
        assert result.returncode in (128 + signal.SIGINT, -signal.SIGKILL), result.output
        if how == signal.SIGINT:
            assert "continue it with: bprun-resume " in result.stderr, result.output
    finally:
        process.kill_everything()


def assert_resumed_whole(store: Any, before: dict[str, str], size: int) -> None:
    (parent,) = parents(store)
    assert parent.info.status == "FINISHED", parent.data.tags.get("failure_reason")
    current = jobs(store, parent.info.run_id)
    assert len(current) == size, [(run.info.run_name, run.info.status) for run in current]
    assert all(run.info.status == "FINISHED" for run in current)
    counted = {json.dumps(json.loads(run.data.tags["job.overrides"])) for run in current}
    assert len(counted) == size  # each job once
    for run_id, status in before.items():  # the finished ones kept, the others superseded
        if status == "FINISHED":
            assert run_id in {run.info.run_id for run in current}, run_id
        else:
            (old,) = [run for run in store.runs() if run.info.run_id == run_id]
            assert old.data.tags["bprun.superseded_by"] in {run.info.run_id for run in current}
    for run in current:
        steps = [metric.step for metric in history(store, run)]
        assert steps == list(range(GRID_EPOCHS)), run.info.run_name
    assert parent.data.tags["sweep.jobs"] == str(size) and parent.data.tags["sweep.failed_jobs"] == "0"


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_a_stopped_grid_resumes_to_every_job_once(how: int, tmp_path: Path, store) -> None:
    cwd = tmp_path / "cwd"
    stop_after_finished(GRID, cwd, store, how)
    (parent,) = parents(store)
    before = {run.info.run_id: run.info.status for run in jobs(store, parent.info.run_id)}
    assert "FINISHED" in before.values()
    resumed = cli(parent.info.run_id, "--tracking-uri", store.uri, cwd=cwd, module="runner.commands.resume")
    assert resumed.returncode == 0, resumed.output
    assert "bprun: resuming the sweep of parent run" in resumed.stdout
    assert_resumed_whole(store, before, GRID_JOBS)
    sweep_dir = next((cwd / "outputs" / "multirun").rglob("multirun.yaml")).parent
    folders = sorted(int(path.name) for path in sweep_dir.iterdir() if path.name.isdigit())
    assert len(folders) == len(set(folders)) and len(folders) >= GRID_JOBS  # numbering continued, nothing overwritten
    # A second resume of a finished sweep runs nothing.
    again = cli(parent.info.run_id, "--tracking-uri", store.uri, cwd=cwd, module="runner.commands.resume")
    assert again.returncode == 0, again.output
    assert len(jobs(store, parent.info.run_id)) == GRID_JOBS


def test_an_optuna_sweep_resumes_to_exactly_its_trials(tmp_path: Path, store) -> None:
    cwd = tmp_path / "cwd"
    stop_after_finished(OPTUNA, cwd, store, signal.SIGINT, finished=4)
    (parent,) = parents(store)
    before = {run.info.run_id: run.info.status for run in jobs(store, parent.info.run_id)}
    resumed = cli("--tracking-uri", store.uri, cwd=cwd, module="runner.commands.resume")  # the latest sweep
    assert resumed.returncode == 0, resumed.output
    assert_resumed_whole(store, before, 10)
    current = jobs(store, parent.info.run_id)
    values = [json.loads(run.data.tags["job.overrides"]) for run in current]
    assert len({json.dumps(value) for value in values}) == 10  # no trial proposed twice
    results = (next((cwd / "outputs").rglob("optimization_results.yaml"))).read_text()
    assert "trials: 10" in results and "completed_trials: 10" in results, results


def test_a_resume_is_refused_while_the_sweep_runs_and_for_a_second_resume(tmp_path: Path, store) -> None:
    cwd = tmp_path / "cwd"
    # Jobs that outlast the test: the sweep still runs when refused, the resume has jobs to run.
    endless = (*GRID[:2], "trainer.epochs=1000000", *GRID[3:])
    process = Background(*endless, cwd=cwd, uri=store.uri, label="running")
    try:
        wait_until(lambda: parents(store), START_TIMEOUT, "the sweep's parent run", process)
        (parent,) = parents(store)
        refused = cli(parent.info.run_id, "--tracking-uri", store.uri, cwd=cwd, module="runner.commands.resume")
        assert refused.returncode == 2, refused.output
        assert (
            refused.stderr.startswith(f"bprun-resume: the sweep {parent.info.run_id}")
            and "still running" in refused.stderr
        )
        process.signal(signal.SIGINT, group=True)
        process.wait(0)
    finally:
        process.kill_everything()
    # The first resume holds its first job at epoch 5 until the second has been refused.
    pauses = tmp_path / "pauses"
    pauses.mkdir()
    first = Background(
        parent.info.run_id,
        "--tracking-uri",
        store.uri,
        cwd=cwd,
        uri=None,
        label="first",
        env={"BPRUN_TEST_PAUSE_AT_EPOCH": "5", "BPRUN_TEST_PAUSE_FOLDER": str(pauses)},
        module="runner.commands.resume",
    )
    try:
        wait_until(lambda: any(pauses.glob("*.paused")), START_TIMEOUT, "the first resume's job paused", first)
        second = cli(parent.info.run_id, "--tracking-uri", store.uri, cwd=cwd, module="runner.commands.resume")
        assert second.returncode == 2, second.output
        assert "is still running" in second.stderr or "another bprun-resume" in second.stderr, second.output
    finally:
        first.kill_everything()


def test_a_resume_is_refused_when_a_finished_jobs_config_changed(tmp_path: Path, store) -> None:
    cwd = tmp_path / "cwd"
    presets = tmp_path / "conf" / "experiment"
    presets.mkdir(parents=True)
    (presets / "mine.yaml").write_text("# @package _global_\ntrainer:\n  epochs: 2500\n")
    # The preset alone sets the epochs: the command line does not override what changes.
    grid = ("-m", "seed=0,1,2,3,4,5,6,7,8,9,10,11", "tracking.tensors_every=0", "experiment=mine")
    stop_after_finished((f"--config-dir={tmp_path / 'conf'}", *grid), cwd, store, signal.SIGINT)
    (presets / "mine.yaml").write_text("# @package _global_\ntrainer:\n  epochs: 2400\n")
    (parent,) = parents(store)
    refused = cli(parent.info.run_id, "--tracking-uri", store.uri, cwd=cwd, module="runner.commands.resume")
    assert refused.returncode == 2, refused.output
    assert "changed since its run" in refused.stderr and "-  epochs: 2500" in refused.stderr, refused.output
    assert "+  epochs: 2400" in refused.stderr
    (left,) = parents(store)
    assert left.info.status == "KILLED", left.data.tags.get("failure_reason")  # left as it was


def test_a_run_that_is_not_a_sweeps_parent_is_not_resumed(tmp_path: Path, store) -> None:
    single = cli("trainer.epochs=5", cwd=tmp_path / "cwd", uri=store.uri)
    assert single.returncode == 0, single.output
    (run,) = store.runs()
    refused = cli(run.info.run_id, "--tracking-uri", store.uri, cwd=tmp_path, module="runner.commands.resume")
    assert refused.returncode == 2 and "is not a sweep's parent run" in refused.stderr, refused.output


def test_jobs_start_as_slots_free_and_the_sweep_shows_its_progress(tmp_path: Path, store) -> None:
    # Job 1 would train for hours, the others are short: on 2 workers, jobs 2, 3 and 4 all run
    # and finish while job 1 still trains; then Ctrl-C ends it.
    sweep = Background(
        "-m",
        "hydra.launcher.n_jobs=2",
        "trainer.epochs=1000000,300,300,300",
        "tracking.tensors_every=0",
        cwd=tmp_path / "cwd",
        uri=store.uri,
        label="sweep",
    )
    try:
        wait_until(lambda: finished_jobs(store) >= 3, START_TIMEOUT, "the 3 short jobs finished", sweep)
        (parent,) = parents(store)
        children = jobs(store, parent.info.run_id)
        long = next(run for run in children if run.data.params["trainer.epochs"] == "1000000")
        assert long.info.status == "RUNNING"  # none of the short ones waited for it
        final = client(store).get_run(parent.info.run_id)  # the parent shows the best so far
        short = [run for run in children if run.data.params["trainer.epochs"] == "300"]
        assert final.data.metrics["best_val_mse"] == min(run.data.metrics["1_loss/train_mse"] for run in short)
        assert final.data.tags["sweep.best_run_id"] in {run.info.run_id for run in short}
        history = client(store).get_metric_history(parent.info.run_id, "best_val_mse")
        assert 1 <= max(metric.step for metric in history) <= 3  # step: the jobs ended when it was the best
        result = sweep.wait(sweep.signal(signal.SIGINT, group=True))
    finally:
        sweep.kill_everything()
    lines = result.stdout.splitlines()
    for k in range(1, 5):
        assert any(line.startswith(f"[{k}/4] ") and line.endswith(": started") for line in lines), result.stdout
    for k in range(2, 5):
        assert any(line.startswith(f"[{k}/4] ") and ": FINISHED train_mse=" in line for line in lines), result.stdout


def test_the_progress_line_says_how_far_the_sweep_has_got() -> None:
    from hydra.core.utils import JobReturn, JobStatus

    from runner.sweeps.context import JobReport
    from runner.sweeps.progress import SweepProgress

    def ended(objective: float | None, stop_reason: str = "completed", failed: bool = False) -> JobReturn:
        result = JobReturn()
        result.status = JobStatus.FAILED if failed else JobStatus.COMPLETED
        result.return_value = (
            RuntimeError("x")
            if failed
            else JobReport(objective, "r", f"job{objective}", "FINISHED", stop_reason, 5, 1.0)
        )
        return result

    progress = SweepProgress(10, "val_mse")
    assert progress.ended(ended(0.5)) and not progress.ended(ended(0.7)) and progress.ended(ended(0.2))
    assert not progress.ended(ended(0.1, "pruned")) and not progress.ended(ended(None, failed=True))
    line = progress.line(running=2)
    assert line.startswith("sweep: 5/10 done (1 failed, 1 pruned), 2 running; best val_mse=0.2 (job0.2); about ")
    assert line.endswith(" left")
