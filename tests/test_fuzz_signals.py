"""Signals at random moments: runs and sweeps (in-process and with 2 workers) get SIGINT,
SIGTERM or SIGKILL (to bprun alone or to its whole process group) after a random delay drawn
from a fixed seed, anywhere from the imports to the summary. After each trial the store must be
intact and true, whatever the moment was:

- ``PRAGMA integrity_check`` is ``ok``;
- no run is RUNNING (after a SIGKILL: once ``bprun-doctor`` has run, as the docs say);
- every job's ``train_mse`` steps run from 0 without a gap;
- every tensor file loads and ends at the epoch the metrics end at;
- a FINISHED job has every epoch it was configured for;
- stderr has no traceback, unless the signal came while Python itself was starting, before
  ``bprun``'s ``main`` had installed its handlers: Python's own ``KeyboardInterrupt`` traceback,
  then, and an empty store.

The outcome counts (what state the trials were stopped in) are printed in the test summary.
"""

from __future__ import annotations

import collections
import os
import random
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import PARENT_TAG, Background, cli, query, run_parallel

pytestmark = pytest.mark.slow

SEED = 20261203
# Every mode with every signal twice; BPRUN_FUZZ_TRIALS=N plays N (more moments, a longer test).
TRIALS = int(os.environ.get("BPRUN_FUZZ_TRIALS", "18"))
EPOCHS = 1500
MODES = {
    "run": ("dataset=xor", f"trainer.epochs={EPOCHS}", "tracking.tensors_every=1"),
    "sweep": ("-m", "seed=0,1,2", f"trainer.epochs={EPOCHS}", "tracking.tensors_every=1"),
    "sweep-workers": (
        "-m",
        "hydra.launcher.n_jobs=2",
        "seed=0,1,2",
        f"trainer.epochs={EPOCHS}",
        "tracking.tensors_every=1",
    ),
}
# Long enough to reach past the end of the slowest mode on a busy machine now and then.
LONGEST_DELAY = {"run": 5.0, "sweep": 9.0, "sweep-workers": 7.0}
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)


@dataclass(frozen=True)
class Trial:
    number: int
    mode: str
    signum: int
    group: bool
    delay: float

    @property
    def name(self) -> str:
        return (
            f"{self.number:02d}-{self.mode}-{signal.Signals(self.signum).name}"
            f"{'-group' if self.group else ''}-{self.delay:.2f}s"
        )


def trials() -> list[Trial]:
    chosen = random.Random(SEED)
    planned = []
    for number in range(TRIALS):
        mode = list(MODES)[number % len(MODES)]
        planned.append(
            Trial(
                number,
                mode,
                SIGNALS[(number // len(MODES)) % len(SIGNALS)],
                chosen.random() < 0.5,
                round(chosen.uniform(0.0, LONGEST_DELAY[mode]), 2),
            )
        )
    return planned


def play(trial: Trial, base: Path, store: Any) -> dict[str, Any]:
    cwd = base / trial.name
    process = Background(*MODES[trial.mode], cwd=cwd, uri=store.uri)
    try:
        time.sleep(trial.delay)  # the random moment is the input of the trial, not a wait for a state
        ended_by_itself = not process.running()
        if not ended_by_itself:
            try:
                process.signal(trial.signum, group=trial.group)
            except ProcessLookupError:
                ended_by_itself = True
        result = process.wait(time.monotonic(), timeout=120)
        leftovers = process.leftovers()
    finally:
        process.kill_everything()
    doctor = None
    if trial.signum == signal.SIGKILL and store.db.exists():
        doctor = cli(cwd=cwd, uri=store.uri, module="runner.commands.doctor")
    return {
        "result": result,
        "ended_by_itself": ended_by_itself,
        "leftovers": leftovers,
        "doctor": doctor,
        "integrity": query(store.db, "PRAGMA integrity_check") if store.db.exists() else [("ok",)],
        "runs": store.runs(),
        "store": store,
    }


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory, make_store) -> dict[Trial, dict[str, Any]]:
    base = tmp_path_factory.mktemp("fuzz")
    planned = trials()
    outcomes = run_parallel(
        {trial: (lambda trial=trial: play(trial, base, make_store(f"fuzz-{trial.number:02d}"))) for trial in planned}
    )
    return outcomes


def describe(outcome: dict[str, Any]) -> str:
    """Which state a trial was stopped in, from what it left behind."""
    runs = outcome["runs"]
    jobs = [run for run in runs if run.data.tags.get("bprun.sweep") != "true"]
    if outcome["ended_by_itself"]:
        return "ended before the signal"
    if interrupted_before_main(outcome["result"].stderr):
        return "stopped while Python started, before bprun's handlers"
    if not runs:
        return "stopped before any run existed"
    if not jobs:
        return "stopped with only the parent"
    statuses = collections.Counter(run.info.status for run in jobs)
    return "stopped with jobs " + ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))


def interrupted_before_main(stderr: str) -> bool:
    """Whether SIGINT came before ``bprun``'s ``main`` ran: Python's default handler raised
    ``KeyboardInterrupt`` in the interpreter's start-up or an import, and no frame is in ``main``
    (its first statement installs bprun's handlers, after which no ``KeyboardInterrupt`` escapes)."""
    lines = stderr.strip().splitlines()
    in_main = re.search(r'bprun\.py", line \d+, in main$', stderr, re.MULTILINE)
    return bool(lines) and lines[-1] == "KeyboardInterrupt" and not in_main


def check(trial: Trial, outcome: dict[str, Any], scratch: Path) -> list[str]:
    """What is wrong with the store a trial left (empty when all is well)."""
    problems = []
    result = outcome["result"]
    if result.returncode is None:
        problems.append("bprun did not exit within 120 s of the signal")
    if outcome["leftovers"]:
        problems.append(f"processes left: {outcome['leftovers']}")
    if outcome["doctor"] is not None and outcome["doctor"].returncode != 0:
        problems.append(f"bprun-doctor failed: {outcome['doctor'].output}")
    if outcome["integrity"] != [("ok",)]:
        problems.append(f"integrity_check: {outcome['integrity']}")
    if trial.signum != signal.SIGKILL and "Traceback" in result.stderr:
        if not interrupted_before_main(result.stderr):
            problems.append("a traceback on stderr")
        elif outcome["runs"] or result.returncode == 0:
            problems.append(f"interrupted before main, yet exit {result.returncode} and {len(outcome['runs'])} runs")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(outcome["store"].uri)
    for run in outcome["runs"]:
        label = f"{run.info.run_name} {run.info.run_id} {run.info.status}"
        if run.info.status == "RUNNING":
            problems.append(f"{label}: still RUNNING")
        if run.data.tags.get("bprun.sweep") == "true":
            continue
        steps = sorted(metric.step for metric in client.get_metric_history(run.info.run_id, "1_loss/train_mse"))
        if steps != list(range(len(steps))):
            problems.append(f"{label}: train_mse steps not contiguous from 0 ({steps[:3]}...{steps[-3:]})")
        if run.info.status == "FINISHED" and len(steps) != EPOCHS:
            problems.append(f"{label}: FINISHED with {len(steps)} of {EPOCHS} epochs")
        if PARENT_TAG not in run.data.tags and trial.mode != "run":
            problems.append(f"{label}: a sweep's job without its parent")
        tensors = Path(run.info.artifact_uri.removeprefix("file://")) / "tensors"
        if tensors.is_dir():
            for path in sorted(tensors.glob("*.npy")):
                try:
                    array = np.load(path)
                except Exception as error:
                    problems.append(f"{label}: {path.name} does not load: {error}")
                    continue
                if path.name == "epochs.npy" and steps and (len(array) == 0 or array[-1] != steps[-1]):
                    problems.append(
                        f"{label}: tensors end at epoch {array[-1] if len(array) else None}, metrics at {steps[-1]}"
                    )
    return problems


def test_a_signal_at_any_moment_leaves_an_intact_and_true_store(fuzzed, record_property, tmp_path: Path) -> None:
    counts = collections.Counter()
    failures = {}
    for trial, outcome in fuzzed.items():
        counts[f"{trial.mode:13} {signal.Signals(trial.signum).name:7} {describe(outcome)}"] += 1
        problems = check(trial, outcome, tmp_path)
        if problems:
            failures[trial.name] = [*problems, outcome["result"].output]
    summary = "\n".join(f"{count:3}  {what}" for what, count in sorted(counts.items()))
    record_property("fuzz outcomes", f"{len(fuzzed)} trials (seed {SEED}):\n{summary}")
    assert len(fuzzed) == TRIALS
    assert not failures, "\n\n".join(f"{name}:\n" + "\n".join(problems) for name, problems in failures.items())
