"""Sweep benchmarks: the per-job overhead of a multirun, and 2 worker processes against 1.

Run from the repository with the project's virtual environment:

    python tests/benchmarks/bench_sweeps.py [--repeats N] [--parts xor digits]

It prints Markdown (tables, then the targets met or not, then the command that reproduces it);
progress goes to stderr. With the default 3 repeats it takes about 5 minutes on a 2-core machine.

Parts
-----
xor. ``bprun -m 'model.hidden=[4]' trainer.epochs=500 optimizer.lr=0.5,1,2,4 seed=0,1,2,3,4,5``:
   24 jobs of a 2-4-1 xor network, 500 epochs each, run one after the other in bprun's process
   (the default), with the default telemetry (metrics, tensors every epoch, plots, weights, the
   pyfunc model). Target: per-job overhead = (sweep wall time - summed training time) / 24 at
   most 0.5 s. The summed training time is measured in this process, after a warm-up, from
   ``on_train_begin`` to ``on_train_end`` of each of the 24 configs, two ways: (a) untracked,
   pure training; (b) tracked (a run per config in a temporary store), the epochs with their
   per-epoch telemetry. The sweep's wall time is the median of real ``bprun -m`` processes.

digits. ``bprun -m dataset=digits 'model.hidden=[128,64]' trainer.epochs=200 trainer.batch_size=32
   optimizer.lr=0.5,1,2 seed=0,1,2,3`` (12 jobs), in bprun's process and with
   ``hydra.launcher.n_jobs=2``, taking turns. Target: 2 workers at least 1.5x faster. The
   children's final weights (``weights.npz``) are compared by (lr, seed) across every sweep for
   bit-identity.

Every sweep runs in a fresh temporary directory with ``MLFLOW_TRACKING_URI=sqlite:///<dir>/
mlflow.db``; everything is removed at the end. The load average is printed at start and end.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmark_common import (
    REPOSITORY,
    compose,
    describe_environment,
    load_average,
    log,
    median,
    print_report,
    timed_bprun,
)

TARGET_OVERHEAD_SECONDS = 0.5
TARGET_SPEEDUP = 1.5

XOR_FIXED = ["model.hidden=[4]", "trainer.epochs=500"]
XOR_LRS = ("0.5", "1", "2", "4")
XOR_SEEDS = ("0", "1", "2", "3", "4", "5")
XOR_SWEEP = [*XOR_FIXED, "optimizer.lr=" + ",".join(XOR_LRS), "seed=" + ",".join(XOR_SEEDS)]
XOR_JOBS = len(XOR_LRS) * len(XOR_SEEDS)

DIGITS_FIXED = ["dataset=digits", "model.hidden=[128,64]", "trainer.epochs=200", "trainer.batch_size=32"]
DIGITS_LRS = ("0.5", "1", "2")
DIGITS_SEEDS = ("0", "1", "2", "3")
DIGITS_SWEEP = [*DIGITS_FIXED, "optimizer.lr=" + ",".join(DIGITS_LRS), "seed=" + ",".join(DIGITS_SEEDS)]
DIGITS_JOBS = len(DIGITS_LRS) * len(DIGITS_SEEDS)
WORKERS = ["hydra.launcher.n_jobs=2"]


def sweep(overrides: list[str], scratch: Path, label: str) -> tuple[float, Path]:
    """Wall time of one ``bprun -m <overrides>`` in a fresh directory; returns it and the store."""
    return timed_bprun(["-m", *overrides], scratch, label)


def weights_report(fingerprints: list[dict[tuple[str, str], str]], verdict_label: str) -> tuple[str, str]:
    """The report's line and verdict saying whether every digits sweep gave every job the same
    final weights."""
    identical = (
        all(fingerprint == fingerprints[0] for fingerprint in fingerprints) and len(fingerprints[0]) == DIGITS_JOBS
    )
    line = (
        f"Final weights of every child, by (lr, seed), across all {len(fingerprints)} sweeps: "
        + ("bit-identical" if identical else "DIFFERENT")
        + "."
    )
    return line, f"{verdict_label}: " + ("yes" if identical else "NO")


def weights_by_job(database: Path) -> dict[tuple[str, str], str]:
    """(lr, seed) -> sha256 of each child's weights.npz."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{database}")
    experiment = client.get_experiment_by_name("backprop-runner")
    found = {}
    for run in client.search_runs([experiment.experiment_id], "tags.`mlflow.parentRunId` != ''"):
        path = Path(run.info.artifact_uri.removeprefix("file://")) / "weights.npz"
        key = (run.data.params["optimizer.lr"], run.data.params["seed"])
        found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


# --- xor -----------------------------------------------------------------------------------------
def training_seconds(tracked: bool, scratch: Path) -> float:
    """Summed on_train_begin..on_train_end of the 24 xor configs run in this process."""
    import runner.hydra_app.app  # noqa: F401  (registers the schemas the configs build on)
    from engine import Observer
    from runner.core.run import run

    class Clock(Observer):
        def on_train_begin(self, network: Any) -> None:
            self.begin = time.perf_counter()

        def on_train_end(self, history: Any) -> None:
            self.end = time.perf_counter()

    store = f"sqlite:///{scratch / f'in-process-{time.monotonic_ns()}.db'}" if tracked else None
    total = 0.0
    for lr in XOR_LRS:
        for seed in XOR_SEEDS:
            tracking = [] if tracked else ["tracking=none"]
            cfg = compose([*XOR_FIXED, f"optimizer.lr={lr}", f"seed={seed}", *tracking])
            clock = Clock()
            run(cfg, tracking_uri=store, start_dir=str(scratch), observers=[clock])
            total += clock.end - clock.begin
    return total


def xor_part(repeats: int, scratch: Path) -> tuple[list[str], list[str]]:
    log("xor: warm-up")
    training_seconds(False, scratch)
    training_seconds(True, scratch)
    sweep(XOR_SWEEP, scratch, "xor-warm-up")
    walls, untracked, tracked = [], [], []
    for repeat in range(repeats):
        log(f"xor: repeat {repeat + 1}/{repeats}")
        walls.append(sweep(XOR_SWEEP, scratch, "xor")[0])
        untracked.append(training_seconds(False, scratch))
        tracked.append(training_seconds(True, scratch))
    wall = median(walls)
    overhead_untracked = (wall - median(untracked)) / XOR_JOBS
    overhead_tracked = (wall - median(tracked)) / XOR_JOBS
    lines = [
        f"### xor: 24-job sweep in bprun's process, median of {repeats}",
        "",
        "| measurement | seconds |",
        "| --- | ---: |",
        f"| sweep wall time (`bprun -m`, whole process) | {wall:.2f} (runs: {', '.join(f'{w:.2f}' for w in walls)}) |",
        f"| (a) summed training time, untracked epochs | {median(untracked):.2f} |",
        f"| (b) summed training time, epochs with per-epoch telemetry | {median(tracked):.2f} |",
        f"| per-job overhead, (wall - (a)) / 24 | **{overhead_untracked:.3f}** |",
        f"| per-job overhead, (wall - (b)) / 24 | **{overhead_tracked:.3f}** |",
    ]
    verdicts = [
        f"xor per-job overhead {overhead_untracked:.3f} s with (a), {overhead_tracked:.3f} s with (b) "
        f"(target <= {TARGET_OVERHEAD_SECONDS} s): "
        + ("met" if max(overhead_untracked, overhead_tracked) <= TARGET_OVERHEAD_SECONDS else "NOT met")
    ]
    return lines, verdicts


# --- digits --------------------------------------------------------------------------------------
def digits_part(repeats: int, scratch: Path) -> tuple[list[str], list[str]]:
    log("digits: warm-up")
    sweep([*DIGITS_SWEEP, "trainer.epochs=2"], scratch, "digits-warm-up")
    one, two, speedups = [], [], []
    fingerprints: list[dict[tuple[str, str], str]] = []
    for repeat in range(repeats):
        order = [("one", []), ("two", WORKERS)] if repeat % 2 == 0 else [("two", WORKERS), ("one", [])]
        seconds = {}
        for name, extra in order:
            log(f"digits: repeat {repeat + 1}/{repeats}, {name} at a time")
            seconds[name], database = sweep([*DIGITS_SWEEP, *extra], scratch, f"digits-{name}")
            fingerprints.append(weights_by_job(database))
        one.append(seconds["one"])
        two.append(seconds["two"])
        speedups.append(seconds["one"] / seconds["two"])
    speedup = median(one) / median(two)
    weights_line, weights_verdict = weights_report(fingerprints, "digits weights identical across launchers")
    lines = [
        f"### digits: 12-job grid, one job at a time in bprun's process against 2 worker processes, "
        f"median of {repeats}",
        "",
        "| launcher | sweep wall time, s | runs |",
        "| --- | ---: | --- |",
        f"| one at a time (in bprun's process) | {median(one):.2f} | {', '.join(f'{s:.2f}' for s in one)} |",
        f"| `hydra.launcher.n_jobs=2` | {median(two):.2f} | {', '.join(f'{s:.2f}' for s in two)} |",
        "",
        f"Speedup (ratio of medians): **{speedup:.2f}x**; per pair of sweeps: "
        f"{', '.join(f'{s:.2f}x' for s in speedups)}.",
        weights_line,
    ]
    verdicts = [
        f"digits 2 workers / 1: {speedup:.2f}x (target >= {TARGET_SPEEDUP}x): "
        + ("met" if speedup >= TARGET_SPEEDUP else "NOT met"),
        weights_verdict,
    ]
    return lines, verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", nargs="+", choices=("xor", "digits"), default=["xor", "digits"])
    arguments = parser.parse_args()
    started = time.perf_counter()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    environment_lines = describe_environment(["numpy", "mlflow", "hydra-core"])
    sections, verdicts = [], []
    with tempfile.TemporaryDirectory(prefix="bench-sweeps-") as directory:
        scratch = Path(directory)
        os.chdir(scratch)
        for part, function in (("xor", xor_part), ("digits", digits_part)):
            if part in arguments.parts:
                lines, part_verdicts = function(arguments.repeats, scratch)
                sections.append(lines)
                verdicts += part_verdicts
        os.chdir(REPOSITORY)  # out of the folder about to be removed
    environment_lines.append(f"- load average at the end {load_average()}")
    print_report("Sweep benchmarks", environment_lines, sections, verdicts, str(REPOSITORY), started)


if __name__ == "__main__":
    main()
