"""Composing a sweep's jobs: Hydra's ``load_sweep_config`` for each job against ``JobComposer``.

    python tests/benchmarks/bench_compose.py [--repeats 5]

Two 24-job grids, each composed both ways in every round, the grids alternating, in this one
process through Hydra's Compose API: the xor grid of lr x seed (one list of config-group
overrides), and a grid over data sets and optimizers (four lists). ``JobComposer`` starts fresh in
every round, so its figures include the Hydra composition of each list of group overrides. Each
round also checks that both ways give the same configs. An untimed round first warms up what Hydra
builds on first use. Prints medians per job and the ratio of each round.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Any

from benchmark_common import REPOSITORY, describe_environment, log, median, print_report
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.types import HydraContext, RunMode
from omegaconf import OmegaConf

import runner.hydra_app.app  # noqa: F401 (registers bprun's schemas and plugins with Hydra)
from runner.sweeps.composing import JobComposer
from runner.sweeps.grid import GridSweeper

GRIDS = {
    "xor, optimizer.lr x seed": [
        "optimizer.lr=0.1,0.2,0.5,1,2,4",
        "seed=0,1,2,3",
        "trainer.epochs=500",
        "model.hidden=[4]",
        "tracking=none",
    ],
    "dataset x optimizer x optimizer.lr x seed": [
        "dataset=xor,moons",
        "optimizer=gd,adam",
        "optimizer.lr=0.1,0.5",
        "seed=0,1,2",
        "tracking=none",
    ],
}
TARGET_GRID = "xor, optimizer.lr x seed"
TARGET = 5.0  # JobComposer at least this many times faster per job than Hydra's composition, on TARGET_GRID


def time_jobs(compose: Any, jobs: list[list[str]]) -> tuple[list[float], list[Any]]:
    """Seconds to compose each job, and the configs."""
    seconds, configs = [], []
    for job in jobs:
        started = time.perf_counter()
        configs.append(compose(job))
        seconds.append(time.perf_counter() - started)
    return seconds, configs


@dataclass
class Grid:
    """One grid's jobs, and what each timed round of it measured."""

    name: str
    master: Any
    jobs: list[list[str]]
    hydra: list[float] = field(default_factory=list)  # seconds per job, Hydra, each round
    composer: list[float] = field(default_factory=list)  # seconds per job, JobComposer, each round
    copies: list[float] = field(default_factory=list)  # seconds of each job whose group list was composed before
    lists: int = 0


def plan_grid(loader: Any, context: Any, name: str, overrides: list[str]) -> Grid:
    master = loader.load_configuration(config_name="config", overrides=overrides, run_mode=RunMode.MULTIRUN)
    sweeper = GridSweeper()
    sweeper.hydra_context = context
    return Grid(name, master, sweeper.jobs(list(master.hydra.overrides.task)))


def one_round(loader: Any, context: Any, grid: Grid, timed: bool) -> None:
    """Every job of ``grid`` composed by Hydra, then by a fresh ``JobComposer``; the configs compared."""
    hydra_seconds, expected = time_jobs(lambda job: loader.load_sweep_config(grid.master, job), grid.jobs)
    composer = JobComposer(context, grid.master)
    composer_seconds, got, copies = [], [], []
    for job in grid.jobs:
        lists_before = composer.counts.group_lists
        (seconds,), (config,) = time_jobs(composer.compose, [job])
        composer_seconds.append(seconds)
        got.append(config)
        if composer.counts.group_lists == lists_before:
            copies.append(seconds)
    for a, b in zip(expected, got):
        if OmegaConf.to_container(a, resolve=False) != OmegaConf.to_container(b, resolve=False):
            raise SystemExit(f"{grid.name}: JobComposer composed a job differently from Hydra")
    if composer.counts.by_hydra:
        raise SystemExit(f"{grid.name}: JobComposer left {composer.counts.by_hydra} job(s) to Hydra")
    log(f"  {grid.name}: Hydra {sum(hydra_seconds):.2f} s, JobComposer {sum(composer_seconds):.3f} s")
    if timed:
        grid.hydra.append(sum(hydra_seconds) / len(grid.jobs))
        grid.composer.append(sum(composer_seconds) / len(grid.jobs))
        grid.copies += copies
        grid.lists = composer.counts.group_lists


def row(grid: Grid) -> str:
    ratios = [hydra / composer for hydra, composer in zip(grid.hydra, grid.composer)]
    return (
        f"| {grid.name} | {len(grid.jobs)} | {grid.lists} | {median(grid.hydra) * 1e3:.1f} ms "
        f"| {median(grid.composer) * 1e3:.1f} ms | {median(grid.copies) * 1e3:.1f} ms "
        f"| {median(ratios):.1f}x ({', '.join(f'{ratio:.1f}' for ratio in ratios)}) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    arguments = parser.parse_args()
    started = time.perf_counter()
    environment = describe_environment(["hydra-core", "omegaconf"])

    with initialize_config_module(config_module="runner.conf", version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        context = HydraContext(config_loader=loader, callbacks=None)  # type: ignore[arg-type]
        grids = [plan_grid(loader, context, name, overrides) for name, overrides in GRIDS.items()]
        for repeat in range(-1, arguments.repeats):  # round -1 warms up Hydra's parser and caches, untimed
            log(f"round {repeat + 1}:" if repeat >= 0 else "warm-up:")
            for grid in grids:  # the grids alternate, so that a busy spell of the machine hits both
                one_round(loader, context, grid, timed=repeat >= 0)
    target = next(grid for grid in grids if grid.name == TARGET_GRID)
    ratio = median([hydra / composer for hydra, composer in zip(target.hydra, target.composer)])
    table = [
        f"Per job, medians of {arguments.repeats} rounds (each composes every job of both grids both ways); "
        "`JobComposer` over all jobs (a Hydra composition per list of group overrides included), and over "
        "the jobs whose list was composed before; the speed-up of each round in brackets:",
        "",
        "| grid | jobs | group lists | Hydra `load_sweep_config` | `JobComposer.compose` | a job of a cached list | "
        "speed-up |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *(row(grid) for grid in grids),
    ]
    verdicts = [f"{TARGET_GRID}: {ratio:.1f}x {'≥' if ratio >= TARGET else '<'} {TARGET:g}x"]
    print_report("Composing a sweep's jobs", environment, [table], verdicts, str(REPOSITORY), started)


if __name__ == "__main__":
    main()
