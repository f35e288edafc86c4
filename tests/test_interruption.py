"""Ctrl-C (SIGINT to the whole process group, as a terminal sends it), SIGTERM (to bprun alone)
and SIGKILL at many points of a run and of a sweep, through the real CLI; then the store is read
back.

Points are reached through events, never by waiting a fixed time: a run logging its metrics, or
a named point where bprun stops until the signal arrives (``BPRUN_TEST_SIGNAL_POINT``: start-up
imports, the start of a job, the end of a run, the sweep's parent just created, the sweep's
summary, the workers just stopped, the fork server still importing). After every scenario:

- the command exits 128 + the signal's number, with one line saying what was ended, no traceback;
- no run is RUNNING (after SIGKILL: until ``bprun-doctor``);
- every run's metric steps run from 0 without a gap, FINISHED only with every epoch, and its
  tensor files load and end at the same epoch as its metrics;
- no process of bprun's is alive 5 s after it ended, SIGKILL of bprun included.

The scenarios run two at a time in a module fixture; the tests read their outcomes.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import (
    PARENT_TAG,
    START_TIMEOUT,
    Background,
    Finished,
    ScenarioError,
    artifact_dir,
    cli,
    history,
    query,
    run_parallel,
    runs_logging,
    wait_until,
)

pytestmark = pytest.mark.slow

# Runs that would train for hours unless stopped; every epoch's tensors are kept, so that the
# last tensor epoch must equal the last metric step.
ENDLESS = ("trainer.epochs=1000000", "tracking.tensors_every=1")
SHORT_EPOCHS = 300
PARALLEL = ("hydra.launcher.n_jobs=2",)


@dataclass(frozen=True)
class Scenario:
    args: tuple[str, ...]
    signal: int = signal.SIGINT
    group: bool = True  # the whole process group (a terminal's Ctrl-C) or bprun alone
    point: str | None = None  # a named test point; None: wait until ``logging`` runs log metrics
    logging: int = 1
    presses: int = 1
    # A named point bprun reaches after the signal, where the whole process group then gets SIGTERM.
    then_at: str | None = None


@dataclass
class Outcome:
    scenario: Scenario
    store: Any
    result: Finished
    leftovers: list[str]
    runs: list[Any]

    @property
    def output(self) -> str:
        return self.result.output

    def children(self) -> list[Any]:
        return sorted((run for run in self.runs if PARENT_TAG in run.data.tags), key=lambda run: run.info.start_time)

    def parents(self) -> list[Any]:
        return [run for run in self.runs if run.data.tags.get("bprun.sweep") == "true"]


SCENARIOS = {
    # a single run
    "run-startup-imports": Scenario(("trainer.epochs=5",), point="startup"),
    "run-job-start-sigterm": Scenario(("trainer.epochs=5",), signal.SIGTERM, group=False, point="job-start"),
    "run-training": Scenario(ENDLESS),
    "run-training-sigterm": Scenario(ENDLESS, signal.SIGTERM, group=False),
    "run-end-pressed-twice": Scenario((f"trainer.epochs={SHORT_EPOCHS}",), point="run-end", presses=2),
    "run-about-to-be-created": Scenario(("trainer.epochs=5",), point="run-create"),
    "run-just-created": Scenario(("trainer.epochs=5",), point="run-created"),
    # a sweep in bprun's process
    "sweep-parent-created": Scenario(("-m", "seed=0,1", "trainer.epochs=5"), point="sweep-start"),
    "sweep-second-job-training": Scenario(
        ("-m", "trainer.epochs=50,1000000,50", "tracking.tensors_every=1"), logging=2
    ),
    "sweep-summary-sigterm": Scenario(
        ("-m", "seed=0,1", "trainer.epochs=20"), signal.SIGTERM, group=False, point="sweep-summary"
    ),
    # a sweep on two worker processes
    "workers-startup-pressed-twice": Scenario(("-m", *PARALLEL, "seed=0,1,2", *ENDLESS), point="startup", presses=2),
    "workers-parent-created": Scenario(("-m", *PARALLEL, "seed=0,1,2", *ENDLESS), point="sweep-start"),
    "workers-training": Scenario(("-m", *PARALLEL, "seed=0,1,2,3", *ENDLESS), logging=2),
    "workers-training-sigterm": Scenario(
        ("-m", *PARALLEL, "seed=0,1,2,3", *ENDLESS), signal.SIGTERM, group=False, logging=2
    ),
    "workers-training-sigkill": Scenario(
        ("-m", *PARALLEL, "seed=0,1,2,3", *ENDLESS), signal.SIGKILL, group=False, logging=2
    ),
    "workers-training-sigterm-group": Scenario(("-m", *PARALLEL, "seed=0,1,2,3", *ENDLESS), signal.SIGTERM, logging=2),
    "workers-stopped-sigterm-group": Scenario(
        ("-m", *PARALLEL, "seed=0,1,2,3", *ENDLESS), signal.SIGTERM, group=False, logging=2, then_at="workers-stopped"
    ),
    "workers-forkserver-importing-sigkill": Scenario(
        ("-m", *PARALLEL, "seed=0,1", *ENDLESS), signal.SIGKILL, group=False, point="forkserver-preload"
    ),
}


def play(name: str, scenario: Scenario, base: Path, store: Any) -> Outcome:
    cwd = base / name
    marker = cwd / "at-the-point"
    environment = {}
    point = scenario.point or scenario.then_at
    if point is not None:
        environment = {"BPRUN_TEST_SIGNAL_POINT": point, "BPRUN_TEST_SIGNAL_MARKER": str(marker)}
    process = Background(*scenario.args, cwd=cwd, uri=store.uri, env=environment)
    try:
        if scenario.point is not None:
            wait_until(marker.exists, START_TIMEOUT, f"the point {scenario.point}", process)
        else:
            wait_until(
                lambda: runs_logging(store.db) >= scenario.logging,
                START_TIMEOUT,
                f"{scenario.logging} run(s) logging",
                process,
                interval=0.1,
            )
        sent = process.signal(scenario.signal, group=scenario.group)
        for _ in range(scenario.presses - 1):  # once bprun has said it is stopping, if it still runs
            try:
                wait_until(
                    lambda: "stopping at the next safe point" in process.stderr_so_far(),
                    30,
                    "bprun's notice of the signal",
                    process,
                )
                process.signal(scenario.signal, group=scenario.group)
            except (ScenarioError, ProcessLookupError):
                if process.running():
                    raise
        if scenario.then_at is not None:
            wait_until(marker.exists, START_TIMEOUT, f"the point {scenario.then_at}", process)
            process.signal(signal.SIGTERM, group=True)
        result = process.wait(sent)
        leftovers = process.leftovers()
    finally:
        process.kill_everything()
    return Outcome(scenario, store, result, leftovers, store.runs())


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, make_store) -> dict[str, Outcome]:
    base = tmp_path_factory.mktemp("interruption")
    jobs: dict[str, Callable[[], Outcome]] = {
        name: (lambda name=name, scenario=scenario: play(name, scenario, base, make_store(f"interrupt-{name}")))
        for name, scenario in SCENARIOS.items()
    }
    return run_parallel(jobs)


def assert_consistent(outcome: Outcome, allow_running_parent: bool = False) -> None:
    """What every scenario must leave: see the module docstring."""
    result, scenario = outcome.result, outcome.scenario
    assert result.returncode == (-scenario.signal if scenario.signal == signal.SIGKILL else 128 + scenario.signal), (
        outcome.output
    )
    assert "Traceback" not in result.stdout + result.stderr, outcome.output
    assert outcome.leftovers == [], outcome.leftovers
    for run in outcome.runs:
        status = run.info.status
        if run.data.tags.get("bprun.sweep") == "true":
            assert status != "RUNNING" or allow_running_parent, (run.info.run_name, status, outcome.output)
            continue
        assert status in ("FINISHED", "KILLED"), (run.info.run_name, status, run.data.tags.get("failure_reason"))
        steps = [metric.step for metric in history(outcome.store, run)]
        assert steps == list(range(len(steps))), "metric steps must run from 0 without a gap"
        assert run.data.tags["epochs_run"] == str(len(steps))
        if status == "FINISHED":
            assert run.data.params["trainer.epochs"] == str(len(steps)), "FINISHED only with every epoch"
        else:
            assert run.data.tags["stop_reason"] == "interrupted"
            assert run.data.tags["failure_reason"].startswith("interrupted in epoch")
        tensors = artifact_dir(run) / "tensors"
        if tensors.is_dir() and not steps:
            assert np.load(tensors / "epochs.npy").tolist() == [], "no tensors without an epoch"
        elif tensors.is_dir():
            epochs = np.load(tensors / "epochs.npy").tolist()
            # Every epoch (tensors_every=1) or a spaced selection; the last always.
            assert epochs[-1] == steps[-1], "tensors and metrics must end at the same epoch"
            assert set(epochs) <= set(steps) and epochs == sorted(epochs)
            for path in tensors.glob("layer*.npy"):
                assert np.load(path).shape[0] == len(epochs), path.name


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_interruption_leaves_a_consistent_store_and_no_process(outcomes: dict[str, Outcome], name: str) -> None:
    assert_consistent(outcomes[name], allow_running_parent=SCENARIOS[name].signal == signal.SIGKILL)


# --- a single run ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["run-startup-imports", "run-job-start-sigterm", "run-about-to-be-created"])
def test_a_signal_before_the_run_exists_leaves_nothing(outcomes: dict[str, Outcome], name: str) -> None:
    outcome = outcomes[name]
    assert outcome.runs == [], outcome.output
    verb = "terminated" if outcome.scenario.signal == signal.SIGTERM else "interrupted"
    assert f"bprun: {verb}; no MLflow run had started" in outcome.result.stderr, outcome.output


def test_a_signal_once_the_run_exists_ends_it_killed_even_before_its_first_epoch(
    outcomes: dict[str, Outcome],
) -> None:
    outcome = outcomes["run-just-created"]
    (run,) = outcome.runs
    assert run.info.status == "KILLED", outcome.output
    assert run.data.tags["epochs_run"] == "0" and run.data.tags["stop_reason"] == "interrupted"
    assert history(outcome.store, run) == []
    assert f"run {run.info.run_id} ended KILLED after 0 complete epoch(s)" in outcome.result.stderr, outcome.output


@pytest.mark.parametrize("name", ["run-training", "run-training-sigterm"])
def test_a_signal_during_training_ends_the_run_killed_with_every_completed_epoch(outcomes, name: str) -> None:
    outcome = outcomes[name]
    (run,) = outcome.runs
    assert run.info.status == "KILLED", outcome.output
    epochs = int(run.data.tags["epochs_run"])
    assert epochs > 0
    assert f"run {run.info.run_id} ended KILLED after {epochs} complete epoch(s)" in outcome.result.stderr
    plots = sorted(path.name for path in (artifact_dir(run) / "plots").iterdir())
    assert plots == ["gradient_norms.png", "learning_curves.png", "weight_norms.png"]


def test_ctrl_c_twice_at_the_end_of_a_run_lets_the_run_end_finished(outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes["run-end-pressed-twice"]
    (run,) = outcome.runs
    assert run.info.status == "FINISHED", outcome.output
    assert len(history(outcome.store, run)) == SHORT_EPOCHS
    stderr = outcome.result.stderr
    assert "already stopping" in stderr, outcome.output
    assert f"interrupted; run {run.info.run_id} had completed all its epochs" in stderr, outcome.output


# --- a sweep in bprun's process ----------------------------------------------------------------


def test_a_signal_once_the_parent_exists_ends_it_killed_before_any_job(outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes["sweep-parent-created"]
    (parent,) = outcome.parents()
    assert parent.info.status == "KILLED" and outcome.children() == [], outcome.output
    assert "the sweep's parent run" in outcome.result.stderr and "ended KILLED" in outcome.result.stderr


def test_ctrl_c_in_the_second_job_keeps_the_first_and_never_starts_the_third(outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes["sweep-second-job-training"]
    children = outcome.children()
    assert [(run.info.status, run.data.params["trainer.epochs"]) for run in children] == [
        ("FINISHED", "50"),
        ("KILLED", "1000000"),
    ], outcome.output
    (parent,) = outcome.parents()
    assert parent.info.status == "KILLED"
    for run in children:  # the completed run's plots and the interrupted one's
        assert len(list((artifact_dir(run) / "plots").glob("*.png"))) == 3


def test_sigterm_during_the_summary_lets_the_sweep_end_with_it(outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes["sweep-summary-sigterm"]
    (parent,) = outcome.parents()
    assert parent.info.status == "FINISHED", outcome.output
    assert [run.info.status for run in outcome.children()] == ["FINISHED", "FINISHED"]
    summary = {artifact.path for artifact in outcome.store.client().list_artifacts(parent.info.run_id, "summary")}
    assert "summary/runs.csv" in summary
    assert "terminated; every job of the sweep had run" in outcome.result.stderr, outcome.output


# --- a sweep on worker processes ---------------------------------------------------------------


def test_ctrl_c_while_the_workers_start_leaves_nothing(outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes["workers-startup-pressed-twice"]
    assert outcome.runs == [], outcome.output
    assert "interrupted; no MLflow run had started" in outcome.result.stderr


def test_ctrl_c_once_the_parent_exists_in_a_parallel_sweep(outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes["workers-parent-created"]
    (parent,) = outcome.parents()
    assert parent.info.status == "KILLED" and outcome.children() == [], outcome.output


@pytest.mark.parametrize("name", ["workers-training", "workers-training-sigterm"])
def test_a_signal_to_a_parallel_sweep_ends_every_running_job_killed(outcomes, name: str) -> None:
    outcome = outcomes[name]
    (parent,) = outcome.parents()
    assert parent.info.status == "KILLED", outcome.output
    children = outcome.children()
    assert len(children) >= 2 and {run.info.status for run in children} == {"KILLED"}, outcome.output


def test_sigterm_to_the_group_ends_a_parallel_sweep_and_every_process(outcomes: dict[str, Outcome]) -> None:
    """SIGTERM to the whole process group (a CI job's timeout, say) reaches bprun, its workers and
    the fork server at once. The fork server carries on (the pool learns of its workers' exits
    through it), so bprun waits for its workers to end their runs and then ends them: nothing is
    left (see the consistency test)."""
    outcome = outcomes["workers-training-sigterm-group"]
    (parent,) = outcome.parents()
    assert parent.info.status == "KILLED", outcome.output
    children = outcome.children()
    assert len(children) >= 2 and {run.info.status for run in children} == {"KILLED"}, outcome.output


def test_sigterm_to_the_group_once_bprun_has_stopped_its_workers_leaves_no_process(
    outcomes: dict[str, Outcome],
) -> None:
    """SIGTERM to bprun, then, once it has stopped its workers (their jobs ended KILLED, the
    workers idle), SIGTERM to the whole group: the workers, told to stop already, get the signal
    on top, and so does the fork server. Each worker still ends when bprun ends the pool, and bprun
    still learns of it; no process is left (see the consistency test)."""
    outcome = outcomes["workers-stopped-sigterm-group"]
    assert "already stopping" in outcome.result.stderr, outcome.output
    (parent,) = outcome.parents()
    assert parent.info.status == "KILLED", outcome.output
    children = outcome.children()
    assert len(children) >= 2 and {run.info.status for run in children} == {"KILLED"}, outcome.output


def test_a_fork_server_still_importing_dies_with_bprun(outcomes: dict[str, Outcome]) -> None:
    """bprun killed while its fork server imports what jobs need (it reads multiprocessing's pipe
    only after that): the server dies with bprun, the resource tracker with them, before any
    worker exists (see the consistency test for the processes)."""
    outcome = outcomes["workers-forkserver-importing-sigkill"]
    assert outcome.children() == [], outcome.output


def test_sigkill_of_bprun_ends_its_workers_and_their_runs(outcomes: dict[str, Outcome], tmp_path: Path) -> None:
    """The workers see their lifeline close, end their runs KILLED and exit (no process is left,
    see the consistency test); the parent run, which only bprun could end, waits for the doctor."""
    outcome = outcomes["workers-training-sigkill"]
    (parent,) = outcome.parents()
    assert parent.info.status == "RUNNING"
    children = outcome.children()
    assert len(children) >= 2 and {run.info.status for run in children} == {"KILLED"}, outcome.output
    doctor = cli("--tracking-uri", outcome.store.uri, cwd=tmp_path, module="runner.commands.doctor", timeout=120)
    assert doctor.returncode == 0, doctor.output
    assert outcome.store.client().get_run(parent.info.run_id).info.status == "KILLED"


# --- a worker killed by the system ---------------------------------------------------------------


def test_a_parallel_sweep_whose_worker_is_killed_ends_failed(tmp_path: Path, make_store) -> None:
    """A worker killed by the system (the OOM killer, say): the sweep stops with one message; the
    other worker ends its run, the parent ends FAILED, nothing stays RUNNING or alive."""
    store = make_store("worker-killed")
    process = Background("-m", *PARALLEL, "seed=0,1,2,3", *ENDLESS, cwd=tmp_path, uri=store.uri)
    try:

        def running_run_pids() -> list[int]:
            rows = query(
                store.db,
                "SELECT t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                "AND t.key = 'bprun.pid' JOIN latest_metrics m ON m.run_uuid = r.run_uuid "
                "AND m.key = '1_loss/train_mse' WHERE r.status = 'RUNNING'",
            )
            return sorted(int(pid) for (pid,) in rows)

        pids = wait_until(
            lambda: len(running_run_pids()) >= 2 and running_run_pids(),
            START_TIMEOUT,
            "two jobs logging",
            process,
            interval=0.1,
        )
        if process.pid in pids:
            raise ScenarioError("the jobs ran in bprun's process, not in workers")
        killed = time.monotonic()
        os.kill(pids[0], signal.SIGKILL)
        result = process.wait(killed)
        leftovers = process.leftovers()
    finally:
        process.kill_everything()
    assert result.returncode == 1, result.output
    assert "a worker process of the sweep ended abruptly" in result.stderr, result.output
    assert "Traceback" not in result.stderr, result.output
    assert leftovers == []
    runs = store.runs()
    statuses = {run.info.run_name: run.info.status for run in runs}
    assert "RUNNING" not in statuses.values(), statuses
    (parent,) = [run for run in runs if run.data.tags.get("bprun.sweep") == "true"]
    assert parent.info.status == "FAILED"
    assert parent.data.tags["failure_reason"].startswith("stopped by an error: a worker process")
