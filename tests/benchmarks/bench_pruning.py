"""Optuna sweep benchmarks: what the hyperband pruner saves, and what starting a trial as soon as a
worker is free buys over batches.

Run from the repository with the project's virtual environment:

    python tests/benchmarks/bench_pruning.py [--repeats N] [--trials N]

It prints Markdown (a table, then the targets met or not, then the command that reproduces it);
progress goes to stderr. With the defaults (3 repeats of 40 trials) it takes about 15 minutes on
a 2-core machine.

The sweep: a TPE search (seed 0) over the digits data set's hidden sizes and learning rate,
200 epochs per trial, 2 worker processes (``hydra.launcher.n_jobs=2``), the default telemetry,
minimizing ``val_mse``:

    bprun -m hydra/sweeper=optuna hydra.sweeper.n_trials=40 hydra.launcher.n_jobs=2 dataset=digits
        trainer.epochs=200 'model.hidden=choice([16],[64],[128],[64,64])'
        'optimizer.lr=tag(log,interval(0.05,5))'

run three ways in each repeat, taking turns:

- ``none``: no pruner, each trial proposed as soon as a worker is free (the default);
- ``hyperband``: ``hydra.sweeper.pruner=hyperband``, the same;
- ``hyperband, batches of 2``: ``hydra.sweeper.asynchronous=false hydra.sweeper.n_jobs=2``, trials
  proposed two at a time, the next two once both have ended (pruned trials end at different
  epochs, and hidden sizes cost differently: the trials are of unequal length).

Targets: hyperband's wall time at most 0.4x the unpruned sweep's, its best ``val_mse`` within 5% of
the unpruned best (medians of the repeats); asynchronous trials at least 1.25x the trials per
second of batches of 2.

Every sweep runs in a fresh temporary directory with ``MLFLOW_TRACKING_URI=sqlite:///<dir>/
mlflow.db``; the best ``val_mse`` is read back from the sweep's parent run (``best_val_mse``).
Everything is removed at the end. The load average is printed at start and end.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from benchmark_common import REPOSITORY, describe_environment, load_average, log, median, print_report, timed_bprun

TARGET_WALL_RATIO = 0.4
TARGET_BEST_WITHIN = 0.05
TARGET_ASYNC_SPEEDUP = 1.25

SWEEP = [
    "hydra/sweeper=optuna",
    "hydra.sweeper.seed=0",
    "hydra.launcher.n_jobs=2",
    "dataset=digits",
    "trainer.epochs=200",
    "model.hidden=choice([16],[64],[128],[64,64])",
    "optimizer.lr=tag(log,interval(0.05,5))",
]
WAYS = {
    "none": [],
    "hyperband": ["hydra.sweeper.pruner=hyperband"],
    "hyperband, batches of 2": [
        "hydra.sweeper.pruner=hyperband",
        "hydra.sweeper.asynchronous=false",
        "hydra.sweeper.n_jobs=2",
    ],
}


def sweep(overrides: list[str], scratch: Path, label: str) -> tuple[float, float, int]:
    """One ``bprun -m`` in a fresh directory: its wall time, the best val_mse its parent run
    logged, and how many of its trials were pruned."""
    from mlflow.tracking import MlflowClient

    seconds, database = timed_bprun(["-m", *overrides], scratch, label)
    uri = f"sqlite:///{database}"
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("backprop-runner").experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("bprun.sweep") == "true"]
    pruned = sum(run.data.tags.get("stop_reason") == "pruned" for run in runs)
    return seconds, parent.data.metrics["best_val_mse"], pruned


def main(argv: list[str] | None = None) -> None:
    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arguments.add_argument("--repeats", type=int, default=3)
    arguments.add_argument("--trials", type=int, default=40)
    options = arguments.parse_args(argv)
    started = time.perf_counter()
    environment_lines = describe_environment(["optuna", "mlflow", "numpy"])
    scratch = Path(tempfile.mkdtemp(prefix="bench-pruning-"))
    overrides = [*SWEEP, f"hydra.sweeper.n_trials={options.trials}"]
    walls: dict[str, list[float]] = {way: [] for way in WAYS}
    bests: dict[str, list[float]] = {way: [] for way in WAYS}
    pruned: dict[str, list[int]] = {way: [] for way in WAYS}
    try:
        log("warm-up")
        sweep([*overrides[:-1], "hydra.sweeper.n_trials=2", "trainer.epochs=2"], scratch, "warm-up")
        for repeat in range(options.repeats):
            order = list(WAYS)[repeat % len(WAYS) :] + list(WAYS)[: repeat % len(WAYS)]
            for way in order:
                log(f"repeat {repeat + 1}/{options.repeats}: {way}")
                seconds, best, count = sweep([*overrides, *WAYS[way]], scratch, way)
                walls[way].append(seconds)
                bests[way].append(best)
                pruned[way].append(count)
                log(f"  {seconds:.1f} s, best val_mse {best:.6g}, {count} pruned")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    environment_lines[1] += f"; at end {load_average()}"
    trials = options.trials
    table = [
        f"### {trials}-trial TPE sweep on digits, 200 epochs, 2 workers, median of {options.repeats}",
        "",
        "| sweep | wall time s (each run) | trials per s | best val_mse (each run) | pruned trials |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for way in WAYS:
        table.append(
            f"| {way} | {median(walls[way]):.1f} ({', '.join(f'{w:.1f}' for w in walls[way])}) "
            f"| {trials / median(walls[way]):.3f} "
            f"| {median(bests[way]):.5f} ({', '.join(f'{b:.5f}' for b in bests[way])}) "
            f"| {median([float(c) for c in pruned[way]]):.0f} |"
        )
    wall_ratio = median(walls["hyperband"]) / median(walls["none"])
    best_gap = median(bests["hyperband"]) / median(bests["none"]) - 1
    speedup = median(walls["hyperband, batches of 2"]) / median(walls["hyperband"])
    verdicts = [
        f"hyperband wall time / no pruner: {wall_ratio:.2f}x (target <= {TARGET_WALL_RATIO}x): "
        + ("met" if wall_ratio <= TARGET_WALL_RATIO else "NOT met"),
        f"hyperband best val_mse against the unpruned best: {best_gap:+.1%} (target within {TARGET_BEST_WITHIN:.0%}): "
        + ("met" if best_gap <= TARGET_BEST_WITHIN else "NOT met"),
        f"asynchronous trials per second / batches of 2: {speedup:.2f}x (target >= {TARGET_ASYNC_SPEEDUP}x): "
        + ("met" if speedup >= TARGET_ASYNC_SPEEDUP else "NOT met"),
    ]
    print_report(
        "Optuna: pruning and asynchronous trials", environment_lines, [table], verdicts, str(REPOSITORY), started
    )


if __name__ == "__main__":
    main()
