"""Stacked sweeps: ``hydra/launcher=stacked`` against the local launcher and one single run, as
whole ``bprun`` processes.

    python tests/benchmarks/bench_stacked_sweep.py [--repeats 3] [--parts xor digits]

xor. ``bprun -m trainer.epochs=500 optimizer.lr=<10 values> seed=0..9`` (100 jobs of the default 2-8-1 network, 500
   epochs, default telemetry) five ways, taking turns in every round: stacked in bprun's process
   and on 2 workers, the local launcher on 2 workers and in bprun's process, and one tracked
   single run ``bprun`` of the same config. Targets (the faster stacked way): <= 0.25x the local
   launcher on 2 workers, <= 3x the single run. Every job's train_mse
   history of the stacked sweep equals the same job's of the local sweep (read from both stores).
digits. ``bprun -m dataset=digits dataset.seed=0 'model.hidden=[64,32]' trainer.epochs=100
   trainer.batch_size=64 optimizer.lr=0.1,0.2,0.5,1 seed=0,1,2,3`` (16 jobs), stacked on 2 workers
   against the local launcher on 2 workers. Target: stacked >= 1.5x faster. (``dataset.seed``
   fixes the data split, so the jobs' seeds vary only their weights and mini-batches: the 16 jobs
   share their data and stack; without it each seed has its own split.)

Peak RSS is ``ru_maxrss`` of the ``bprun`` process (its largest process for the worker sweeps).
Each command runs in a fresh temporary directory with its own SQLite store; all removed at the end.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from benchmark_common import REPOSITORY, describe_environment, log, median, print_report, timed_bprun

XOR_LRS = ("0.1", "0.2", "0.3", "0.5", "0.7", "1", "1.5", "2", "3", "4")
XOR_SEEDS = tuple(str(seed) for seed in range(10))
XOR_CONFIG = ["trainer.epochs=500"]
XOR_SWEEP = [*XOR_CONFIG, "optimizer.lr=" + ",".join(XOR_LRS), "seed=" + ",".join(XOR_SEEDS)]
DIGITS_SWEEP = [
    "dataset=digits",
    "dataset.seed=0",
    "model.hidden=[64,32]",
    "trainer.epochs=100",
    "trainer.batch_size=64",
    "optimizer.lr=0.1,0.2,0.5,1",
    "seed=0,1,2,3",
]
STACKED = ["hydra/launcher=stacked"]
WORKERS = ["hydra.launcher.n_jobs=2"]
TARGET_VS_LOCAL = 0.25
TARGET_VS_SINGLE = 3.0
TARGET_DIGITS_SPEEDUP = 1.5


def bprun(arguments: list[str], scratch: Path, label: str) -> tuple[float, Path]:
    seconds, database = timed_bprun(arguments, scratch, label)
    log(f"  {label}: {seconds:.1f} s")
    return seconds, database


def peak_rss(arguments: list[str], scratch: Path, label: str) -> tuple[float, float, Path]:
    """As ``bprun``, with the peak RSS of this process alone (a child of its own, so that the
    other commands' peaks do not mix in)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child runs the command and reports its figures
        os.close(read)
        seconds, database = bprun(arguments, scratch, label)
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        os.write(write, f"{seconds}\n{rss}\n{database}".encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not text:
        raise SystemExit(f"{label} failed")
    seconds, rss, database = text.split("\n")
    return float(seconds), float(rss), Path(database)


def train_mse_by_job(database: Path) -> dict[tuple[str, str], list[float]]:
    """(lr, seed) -> the job's train_mse values, epoch by epoch, as its store holds them."""
    from mlflow.tracking import MlflowClient

    from runner import names

    client = MlflowClient(f"sqlite:///{database}")
    experiment = client.get_experiment_by_name("backprop-runner")
    found = {}
    for run in client.search_runs([experiment.experiment_id], "tags.`mlflow.parentRunId` != ''", max_results=1000):
        key = names.metric_key(run.data.metrics, "train_mse")
        assert key is not None, run.info.run_id
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda metric: metric.step)
        found[(run.data.params["optimizer.lr"], run.data.params["seed"])] = [metric.value for metric in history]
    return found


def xor_part(repeats: int, scratch: Path) -> tuple[list[str], list[str]]:
    ways = {
        "stacked, in bprun's process": ["-m", *XOR_SWEEP, *STACKED],
        "stacked, 2 workers": ["-m", *XOR_SWEEP, *STACKED, *WORKERS],
        "local launcher, 2 workers": ["-m", *XOR_SWEEP, *WORKERS],
        "local launcher, in bprun's process": ["-m", *XOR_SWEEP],
        "one single run": XOR_CONFIG,
    }
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    rss: dict[str, list[float]] = {way: [] for way in ways}
    stores: dict[str, Path] = {}
    for repeat in range(repeats):
        log(f"xor, round {repeat + 1}:")
        for way, arguments in ways.items():
            wall, peak, database = peak_rss(arguments, scratch, way.split(",")[0].replace(" ", "-"))
            seconds[way].append(wall)
            rss[way].append(peak)
            stores[way] = database
    stacked, local = (
        train_mse_by_job(stores["stacked, in bprun's process"]),
        train_mse_by_job(stores["local launcher, 2 workers"]),
    )
    identical = len(stacked) == len(XOR_LRS) * len(XOR_SEEDS) and stacked == local
    # The stacked way the targets are judged on: the faster of the two, by their medians.
    best = min(("stacked, in bprun's process", "stacked, 2 workers"), key=lambda way: median(seconds[way]))
    vs_local = [s / l for s, l in zip(seconds[best], seconds["local launcher, 2 workers"])]
    vs_single = [s / o for s, o in zip(seconds[best], seconds["one single run"])]
    same_way = [
        s / l for s, l in zip(seconds["stacked, in bprun's process"], seconds["local launcher, in bprun's process"])
    ]
    lines = [
        f"100-job xor sweep (2-8-1, 500 epochs, 10 learning rates x 10 seeds, default telemetry, SQLite store), "
        f"whole `bprun` processes, medians of {repeats} rounds:",
        "",
        "| command | wall | peak RSS |",
        "| --- | --- | --- |",
        *(f"| {way} | {median(seconds[way]):.1f} s | {median(rss[way]):.0f} MB |" for way in ways),
        "",
        f"Stacked ({best}) / local launcher on 2 workers: {median(vs_local):.2f}x "
        f"({', '.join(f'{r:.2f}' for r in vs_local)}); "
        f"stacked / one single run: {median(vs_single):.2f}x ({', '.join(f'{r:.2f}' for r in vs_single)}). "
        f"In bprun's process, stacked / local launcher: {median(same_way):.2f}x "
        f"({', '.join(f'{r:.2f}' for r in same_way)}). "
        f"Every job's train_mse history, stacked against local: {'identical' if identical else 'DIFFERENT'} "
        f"({len(stacked)} jobs).",
    ]
    verdicts = [
        f"xor stacked / local 2 workers: {median(vs_local):.2f}x "
        f"{'≤' if median(vs_local) <= TARGET_VS_LOCAL else '>'} {TARGET_VS_LOCAL}x",
        f"xor stacked / one single run: {median(vs_single):.2f}x "
        f"{'≤' if median(vs_single) <= TARGET_VS_SINGLE else '>'} {TARGET_VS_SINGLE}x",
        f"xor train_mse histories identical to the local sweep's: {'yes' if identical else 'NO'}",
    ]
    return lines, verdicts


def digits_part(repeats: int, scratch: Path) -> tuple[list[str], list[str]]:
    ways = {
        "stacked, 2 workers": ["-m", *DIGITS_SWEEP, *STACKED, *WORKERS],
        "local launcher, 2 workers": ["-m", *DIGITS_SWEEP, *WORKERS],
    }
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    stores: dict[str, Path] = {}
    for repeat in range(repeats):
        log(f"digits, round {repeat + 1}:")
        for way, arguments in ways.items():
            wall, database = bprun(arguments, scratch, way.split(",")[0].replace(" ", "-"))
            seconds[way].append(wall)
            stores[way] = database
    speedups = [l / s for s, l in zip(seconds["stacked, 2 workers"], seconds["local launcher, 2 workers"])]
    identical = train_mse_by_job(stores["stacked, 2 workers"]) == train_mse_by_job(stores["local launcher, 2 workers"])
    lines = [
        f"16-job digits sweep (64-32-10, 100 epochs, batch 64, 4 learning rates x 4 seeds, `dataset.seed=0`), "
        f"medians of {repeats} rounds:",
        "",
        "| command | wall |",
        "| --- | --- |",
        *(f"| {way} | {median(seconds[way]):.1f} s |" for way in ways),
        "",
        f"Speed-up of stacking: {median(speedups):.2f}x ({', '.join(f'{r:.2f}' for r in speedups)}); train_mse "
        f"histories {'identical' if identical else 'DIFFERENT'}.",
    ]
    verdicts = [
        f"digits stacked on 2 workers / local on 2 workers: {median(speedups):.2f}x faster "
        f"{'≥' if median(speedups) >= TARGET_DIGITS_SPEEDUP else '<'} {TARGET_DIGITS_SPEEDUP}x",
        f"digits train_mse histories identical: {'yes' if identical else 'NO'}",
    ]
    return lines, verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", nargs="+", choices=("xor", "digits"), default=["xor", "digits"])
    arguments = parser.parse_args()
    started = time.perf_counter()
    environment_lines = describe_environment(["numpy", "mlflow", "hydra-core"])
    sections, verdicts = [], []
    with tempfile.TemporaryDirectory(prefix="bench-stacked-") as scratch:
        for part in arguments.parts:
            lines, part_verdicts = (xor_part if part == "xor" else digits_part)(arguments.repeats, Path(scratch))
            sections.append(lines)
            verdicts += part_verdicts
    print_report("Stacked sweeps", environment_lines, sections, verdicts, str(REPOSITORY), started)


if __name__ == "__main__":
    main()
