"""Sweeps on Hydra's cluster launchers: a Ray cluster on loopback started here, and submitit's
local executor (SLURM's stand-in: the same launcher, jobs as local processes).

Each sweep is read back from the store: one parent, every job nested and FINISHED with a value
for every epoch; a job reruns identical in one process; Ctrl-C cancels the cluster's jobs and
leaves no run RUNNING and no job computing; a job killed outright is recorded FAILED while the
others finish; a requeued job marks its run and starts a new one linked to it; a launcher that
runs jobs on other machines refuses a local store; a Ray sweep stopped by Ctrl-C resumes to every
job once.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from support import PARENT_TAG, PROMPT_EXIT_SECONDS, START_TIMEOUT, Background, cli, query, wait_until
from test_resume import GRID, assert_resumed_whole, jobs, parents, stop_after_finished
from test_team_server import free_port

pytestmark = pytest.mark.slow
pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="the ray extra is not installed")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the slurm extra is not installed")

EPOCHS = 40
LONG_EPOCHS = 200_000  # a job that is still training when the test stops it


@pytest.fixture(scope="module")
def ray_cluster():
    """A 2-CPU Ray cluster on loopback (its own temp dir: Ray's socket paths must stay short),
    stopped afterwards whatever happened."""
    ray = str(Path(sys.executable).parent / "ray")
    folder = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    port = free_port()
    started = subprocess.run(
        [
            ray,
            "start",
            "--head",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--include-dashboard=false",
            "--temp-dir",
            folder,
            "--disable-usage-stats",
        ],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=START_TIMEOUT)
        shutil.rmtree(folder, ignore_errors=True)


def sweep_runs(store: Any) -> tuple[Any, list[Any]]:
    runs = store.runs()
    parents = [run for run in runs if run.data.tags.get("bprun.sweep") == "true"]
    assert len(parents) == 1, [(run.info.run_name, run.info.status) for run in runs]
    return parents[0], [run for run in runs if run is not parents[0]]


def assert_complete(store: Any, children: list[Any], jobs: int, epochs: int) -> None:
    """Every job FINISHED with a value of every metric at every epoch."""
    assert len(children) == jobs
    assert Counter(child.info.status for child in children) == {"FINISHED": jobs}
    client = store.client()
    for child in children:
        for key in child.data.metrics:
            steps = sorted(metric.step for metric in client.get_metric_history(child.info.run_id, key))
            assert steps == list(range(epochs)), (child.info.run_name, key)


def assert_stopped_sweep(store: Any, running: int) -> None:
    """The parent KILLED, and each of the ``running`` jobs' runs ended KILLED by its own job,
    between two epochs, every completed epoch logged (not marked afterwards by the sweep)."""
    parent, children = sweep_runs(store)
    assert parent.info.status == "KILLED"
    assert len(children) == running
    client = store.client()
    for child in children:
        assert child.info.status == "KILLED" and child.data.tags["stop_reason"] == "interrupted", child.data.tags
        steps = sorted(metric.step for metric in client.get_metric_history(child.info.run_id, "1_loss/train_mse"))
        assert steps == list(range(int(child.data.tags["epochs_run"]))) and steps


def ray_job_processes() -> list[str]:
    """Ray workers busy with a bprun job (an idle worker is titled ray::IDLE)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(b"ray::run_ray_job"):
                found.append(entry.name)
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def ray_sweep(ray_cluster: str, make_store, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    store = make_store("ray-sweep-store")
    cwd = tmp_path_factory.mktemp("ray-sweep")
    result = cli(
        "-m",
        "hydra/launcher=ray",
        f"hydra.launcher.ray.init.address={ray_cluster}",
        "seed=0,1,2,3,4,5,6,7",
        f"trainer.epochs={EPOCHS}",
        cwd=cwd,
        uri=store.uri,
    )
    return {"result": result, "store": store}


def test_an_8_job_sweep_on_a_ray_cluster_lands_whole(ray_sweep: dict[str, Any]) -> None:
    result, store = ray_sweep["result"], ray_sweep["store"]
    assert result.returncode == 0, result.output
    parent, children = sweep_runs(store)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.jobs"] == "8"
    assert all(child.data.tags[PARENT_TAG] == parent.info.run_id for child in children)
    assert_complete(store, children, jobs=8, epochs=EPOCHS)
    # Each job computed with the BLAS threads of its config, and says so.
    assert {child.data.tags["blas.threads"] for child in children} == {"1"}
    # Each job said where it stands as it started and as it ended (Ray prefixes its workers' lines
    # with "(run_ray_job pid=...) ").
    lines = [re.sub(r"^\(run_ray_job pid=\d+\) ", "", line) for line in result.stdout.splitlines()]
    for k in range(1, 9):
        assert any(line.startswith(f"[{k}/8] ") and line.endswith(": started") for line in lines), result.stdout
        assert any(line.startswith(f"[{k}/8] ") and ": FINISHED " in line for line in lines), result.stdout


def test_a_ray_sweep_stopped_by_ctrl_c_resumes_to_every_job_once(ray_cluster: str, store, tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    # Four of the grid's jobs: two finish, the others run again on resume.
    grid = ("-m", "hydra/launcher=ray", f"hydra.launcher.ray.init.address={ray_cluster}", "seed=0,1,2,3", *GRID[2:])
    stop_after_finished(grid, cwd, store, signal.SIGINT, finished=2)
    (parent,) = parents(store)
    before = {run.info.run_id: run.info.status for run in jobs(store, parent.info.run_id)}
    resumed = cli(parent.info.run_id, "--tracking-uri", store.uri, cwd=cwd, module="runner.commands.resume")
    assert resumed.returncode == 0, resumed.output
    assert_resumed_whole(store, before, 4)


def test_a_job_of_the_ray_sweep_reruns_identical_in_one_process(ray_sweep: dict[str, Any], tmp_path: Path) -> None:
    store = ray_sweep["store"]
    _, children = sweep_runs(store)
    rerun = cli(children[3].info.run_id, cwd=tmp_path, uri=store.uri, module="runner.commands.rerun")
    assert rerun.returncode == 0, rerun.output
    assert f"identical ({EPOCHS} epoch(s) and the final weights compared)" in rerun.stdout, rerun.output


def test_ctrl_c_cancels_the_ray_tasks_and_ends_their_runs_killed(ray_cluster: str, make_store, tmp_path: Path) -> None:
    store = make_store("ray-ctrl-c-store")
    sweep = Background(
        "-m",
        "hydra/launcher=ray",
        f"hydra.launcher.ray.init.address={ray_cluster}",
        "seed=0,1,2,3",
        f"trainer.epochs={LONG_EPOCHS}",
        cwd=tmp_path,
        uri=store.uri,
    )
    try:
        # Two jobs compute (2 CPUs), two wait in Ray's queue.
        wait_until(
            lambda: len(query(store.db, "SELECT DISTINCT run_uuid FROM metrics")) >= 2,
            START_TIMEOUT,
            "two jobs logging",
            sweep,
            interval=0.1,
        )
        finished = sweep.wait(sweep.signal(signal.SIGINT, group=True))
        assert finished.returncode == 130, finished.output
        assert finished.seconds < PROMPT_EXIT_SECONDS
    finally:
        sweep.kill_everything()
    wait_until(lambda: not ray_job_processes(), PROMPT_EXIT_SECONDS, "no Ray worker running a job")
    assert_stopped_sweep(store, running=2)


def test_a_sweep_through_submitit_lands_whole_and_reruns_identical(make_store, tmp_path: Path) -> None:
    store = make_store("submitit-store")
    result = cli(
        "-m",
        "hydra/launcher=submitit_local",
        "seed=0,1",
        f"trainer.epochs={EPOCHS}",
        cwd=tmp_path / "sweep",
        uri=store.uri,
    )
    assert result.returncode == 0, result.output
    parent, children = sweep_runs(store)
    assert parent.info.status == "FINISHED"
    assert all(child.data.tags[PARENT_TAG] == parent.info.run_id for child in children)
    assert_complete(store, children, jobs=2, epochs=EPOCHS)
    rerun = cli(children[0].info.run_id, cwd=tmp_path / "rerun", uri=store.uri, module="runner.commands.rerun")
    assert rerun.returncode == 0, rerun.output
    assert f"identical ({EPOCHS} epoch(s) and the final weights compared)" in rerun.stdout, rerun.output


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def running_job_pids(store: Any) -> dict[str, int]:
    """Run id -> the pid of the job process, for runs that have logged a metric."""
    rows = query(
        store.db,
        "SELECT DISTINCT t.run_uuid, t.value FROM tags t JOIN metrics m ON m.run_uuid = t.run_uuid "
        "WHERE t.key = 'bprun.pid'",
    )
    return {run_id: int(pid) for run_id, pid in rows}


def signal_a_running_job(store: Any, cwd: Path, seeds: str, epochs: int, signum: int) -> tuple[str, Any]:
    """Run a submitit_local sweep over ``seeds``, send ``signum`` to the process of the first job
    that logs, and wait for the sweep's end; return that job's run id and how the sweep ended."""
    sweep = Background("-m", "hydra/launcher=submitit_local", seeds, f"trainer.epochs={epochs}", cwd=cwd, uri=store.uri)
    try:
        run_id, pid = wait_until(
            lambda: next(iter(running_job_pids(store).items()), None),
            START_TIMEOUT,
            "a job logging",
            sweep,
            interval=0.05,
        )
        assert pid != sweep.pid
        os.kill(pid, signum)
        return run_id, sweep.wait(time.monotonic(), timeout=START_TIMEOUT)
    finally:
        sweep.kill_everything()


def test_a_submitit_job_killed_by_a_signal_is_recorded_failed_while_the_others_finish(
    make_store, tmp_path: Path
) -> None:
    store = make_store("submitit-kill-store")
    epochs = 3000
    victim, finished = signal_a_running_job(store, tmp_path, "seed=0,1,2", epochs, signal.SIGKILL)
    assert finished.returncode == 1, finished.output  # the sweep ran to its end; one job failed
    assert "1 of 3 job(s) of the sweep failed" in finished.stderr, finished.output
    parent, children = sweep_runs(store)
    assert parent.info.status == "FAILED"
    killed = next(child for child in children if child.info.run_id == victim)
    assert killed.info.status == "FAILED" and "ended before the run did" in killed.data.tags["failure_reason"]
    assert_complete(store, [child for child in children if child is not killed], jobs=2, epochs=epochs)


def test_a_requeued_job_marks_its_run_and_starts_a_new_one_linked_to_it(make_store, tmp_path: Path) -> None:
    """What SLURM does to a job at its time limit or preempted, here with submitit's local
    executor: the job gets submitit's signal (USR2), and submitit requeues it."""
    store = make_store("submitit-requeue-store")
    epochs = 3000
    first, finished = signal_a_running_job(store, tmp_path, "seed=0,1", epochs, signal.SIGUSR2)
    assert finished.returncode == 0, finished.output
    runs = store.runs()
    parent = next(run for run in runs if run.data.tags.get("bprun.sweep") == "true")
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.jobs"] == "2", parent.data.tags
    stopped = next(run for run in runs if run.info.run_id == first)
    assert stopped.info.status == "KILLED" and stopped.data.tags["bprun.requeued"] == "true"
    assert "requeued" in stopped.data.tags["failure_reason"]
    requeued = [run for run in runs if run.data.tags.get("bprun.requeue_of") == first]
    assert len(requeued) == 1 and requeued[0].data.tags[PARENT_TAG] == parent.info.run_id
    assert requeued[0].data.params["seed"] == stopped.data.params["seed"]
    others = [run for run in runs if run not in (parent, stopped)]
    assert_complete(store, others, jobs=2, epochs=epochs)


def test_ctrl_c_cancels_the_submitit_jobs_and_ends_their_runs_killed(make_store, tmp_path: Path) -> None:
    store = make_store("submitit-ctrl-c-store")
    sweep = Background(
        "-m", "hydra/launcher=submitit_local", "seed=0,1", f"trainer.epochs={LONG_EPOCHS}", cwd=tmp_path, uri=store.uri
    )
    try:
        pids = wait_until(
            lambda: len(running_job_pids(store)) == 2 and running_job_pids(store),
            START_TIMEOUT,
            "both jobs logging",
            sweep,
            interval=0.1,
        )
        finished = sweep.wait(sweep.signal(signal.SIGINT, group=True))
        leftovers = sweep.leftovers()
    finally:
        sweep.kill_everything()
    assert finished.returncode == 130, finished.output
    assert not leftovers
    assert not [pid for pid in pids.values() if alive(pid)]
    assert_stopped_sweep(store, running=2)


def test_a_launcher_that_runs_jobs_elsewhere_refuses_a_local_store(make_store, tmp_path: Path) -> None:
    store = make_store("slurm-store")
    result = cli("-m", "hydra/launcher=submitit_slurm", "seed=0,1", cwd=tmp_path, uri=store.uri)
    assert result.returncode == 2, result.output
    assert (
        f"hydra/launcher=submitit_slurm runs jobs on the SLURM cluster's nodes, which cannot write to this "
        f"machine's MLflow store {store.uri}"
    ) in result.stderr
    assert "tracking=server" in result.stderr
    assert store.runs() == [] and not list(tmp_path.rglob(".submitit"))  # nothing tracked, nothing submitted


def test_a_ray_address_where_no_cluster_answers_is_refused_before_anything_is_tracked(
    make_store, tmp_path: Path
) -> None:
    store = make_store("ray-nowhere-store")
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    result = cli(
        "-m",
        "hydra/launcher=ray",
        f"hydra.launcher.ray.init.address={address}",
        "seed=0,1",
        cwd=tmp_path,
        uri=store.uri,
    )
    assert result.returncode == 2, result.output
    assert f"hydra.launcher.ray.init.address={address}: no Ray cluster answers there" in result.stderr
    assert store.runs() == []
