"""Stacked training (``engine.train_stacked``) against training the same networks one after the
other with ``engine.train``: the engine alone, no runner.

    python tests/benchmarks/bench_stacked_engine.py [--repeats 3] [--cases xor digits]

Two sweeps of small networks, each a grid of learning rates x seeds (each member's initial
weights from its seed; mini-batches from a generator of its own):

- xor: 100 networks 2-8-1, sigmoid layers, mse, plain gradient descent, full batch, 1000 epochs,
  10 learning rates from 0.1 to 10 x 10 seeds;
- digits: 16 networks 64-32-10, sigmoid layers, mse, gradient descent, batches of 64 shuffled
  by each member's generator, 100 epochs, 4 learning rates x 4 seeds.

In every round each sweep runs both ways, the order alternating between rounds (one after the
other first, then stacked; the next round the other way round), two BLAS threads
(``threadpool_limits(2)``, as bench_engine.py). An untimed round first warms up. Timing covers
the training calls only (networks and data are built outside), in wall-clock seconds and in the
process's CPU seconds, which other processes on a busy machine inflate less (a stacked xor sweep
lasts a tenth of a second: a burst of other load changes its wall time by tens of percent). The
speed-ups are the ratios of the medians; in brackets, each round's. Every round checks that each
member's final weights and history from the stack are bit for bit those of its lone run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from benchmark_common import REPOSITORY, describe_environment, load_average, log, median, print_report
from threadpoolctl import threadpool_info, threadpool_limits

if str(REPOSITORY) not in sys.path:  # running the file directly, without an installed package
    sys.path.insert(0, str(REPOSITORY))

import engine

HERE = Path(__file__).resolve().parent
THREADS = 2
XOR_TARGET = 20.0  # stacked at least this many times faster than one after the other, on xor


@dataclass
class Sweep:
    name: str
    sizes: list[int]
    X: np.ndarray
    Y: np.ndarray
    lrs: list[float]
    seeds: list[int]
    epochs: int
    batch_size: int | None
    target: float | None = None
    # (wall, CPU) seconds of each round
    lone: list[tuple[float, float]] = field(default_factory=list)
    stacked: list[tuple[float, float]] = field(default_factory=list)
    identical: list[bool] = field(default_factory=list)

    def speed_up(self, clock: int) -> tuple[float, list[float]]:
        """The ratio of the medians of ``clock`` (0 wall, 1 CPU), and each round's ratio."""
        lone, stacked = [each[clock] for each in self.lone], [each[clock] for each in self.stacked]
        return median(lone) / median(stacked), [a / b for a, b in zip(lone, stacked)]

    @property
    def members(self) -> list[tuple[float, int]]:
        return [(lr, seed) for lr in self.lrs for seed in self.seeds]

    def networks(self) -> list[engine.MLP]:
        return [engine.MLP(self.sizes, np.random.default_rng(seed)) for _, seed in self.members]

    def rngs(self) -> list[np.random.Generator]:
        return [np.random.default_rng(10_000 + seed) for _, seed in self.members]

    def describe(self) -> str:
        batches = "full batch" if self.batch_size is None else f"batches of {self.batch_size}"
        return f"{self.name} {'-'.join(map(str, self.sizes))}, {batches}, {self.epochs} epochs"


def sweeps(names: list[str]) -> list[Sweep]:
    found = []
    if "xor" in names:
        X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
        Y = np.array([[0.0], [1.0], [1.0], [0.0]])
        lrs = np.geomspace(0.1, 10.0, 10).tolist()
        found.append(Sweep("xor", [2, 8, 1], X, Y, lrs, list(range(10)), 1000, None, XOR_TARGET))
    if "digits" in names:
        sys.path.insert(0, str(HERE))
        from bench_engine import load_digits  # (lazy: bench_engine's module reads nothing at import)

        X, Y = load_digits()
        found.append(Sweep("digits", [64, 32, 10], X, Y, [0.05, 0.1, 0.2, 0.5], [0, 1, 2, 3], 100, 64))
    return found


Outcome = tuple[tuple[float, float], list[np.ndarray], list[engine.History]]


def one_after_the_other(sweep: Sweep) -> Outcome:
    networks, rngs = sweep.networks(), sweep.rngs()
    optimizers = [engine.make_optimizer("gd", lr) for lr, _ in sweep.members]
    histories = []
    started, cpu_started = time.perf_counter(), time.process_time()
    for network, optimizer, rng in zip(networks, optimizers, rngs):
        histories.append(
            engine.train(
                network, optimizer, sweep.X, sweep.Y, epochs=sweep.epochs, batch_size=sweep.batch_size, rng=rng
            )
        )
    seconds = (time.perf_counter() - started, time.process_time() - cpu_started)
    return seconds, [network.params for network in networks], histories


def stacked(sweep: Sweep) -> Outcome:
    networks, rngs = sweep.networks(), sweep.rngs()
    optimizers = [engine.make_optimizer("gd", lr) for lr, _ in sweep.members]
    started, cpu_started = time.perf_counter(), time.process_time()
    histories = engine.train_stacked(
        networks, optimizers, sweep.X, sweep.Y, epochs=sweep.epochs, batch_size=sweep.batch_size, rngs=rngs
    )
    seconds = (time.perf_counter() - started, time.process_time() - cpu_started)
    return seconds, [network.params for network in networks], histories


def one_round(sweep: Sweep, repeat: int) -> None:
    ways: list[tuple[str, Callable[[Sweep], Outcome]]] = [
        ("lone", one_after_the_other),
        ("stacked", stacked),
    ]
    results = {}
    for name, way in ways if repeat % 2 == 0 else ways[::-1]:
        results[name] = way(sweep)
    if repeat < 0:
        return
    (lone_seconds, lone_params, lone_histories) = results["lone"]
    (stacked_seconds, stacked_params, stacked_histories) = results["stacked"]
    sweep.lone.append(lone_seconds)
    sweep.stacked.append(stacked_seconds)
    sweep.identical.append(
        all(np.array_equal(a, b) for a, b in zip(lone_params, stacked_params))
        and all(vars(a) == vars(b) for a, b in zip(lone_histories, stacked_histories))
    )
    log(
        f"  {sweep.name}: one after the other {lone_seconds[0]:.3f} s ({lone_seconds[1]:.3f} s CPU), "
        f"stacked {stacked_seconds[0]:.3f} s ({stacked_seconds[1]:.3f} s CPU)"
    )


def rows(sweep: Sweep) -> list[str]:
    target = "" if sweep.target is None else f"≥ {sweep.target:g}x"
    identical = "bit-identical" if all(sweep.identical) else "**DIFFERENT**"
    lines = []
    for clock, name in enumerate(("wall", "CPU")):
        speed_up, ratios = sweep.speed_up(clock)
        lone = median([each[clock] for each in sweep.lone])
        together = median([each[clock] for each in sweep.stacked])
        lines.append(
            f"| {sweep.describe()} | {len(sweep.members)} | {name} | {lone:.3f} s | {together:.3f} s "
            f"| **{speed_up:.1f}x** ({', '.join(f'{ratio:.1f}' for ratio in ratios)}) | {target} | {identical} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", nargs="+", default=["xor", "digits"], choices=["xor", "digits"])
    arguments = parser.parse_args()
    started = time.perf_counter()
    blas = [
        f"{info['internal_api']} {info['version']} ({info.get('architecture', '?')})"
        for info in threadpool_info()
        if info["user_api"] == "blas"
    ]
    environment = [*describe_environment(["numpy"]), f"- BLAS: {', '.join(blas)}, {THREADS} threads"]
    chosen = sweeps(arguments.cases)
    with threadpool_limits(limits=THREADS):
        for repeat in range(-1, arguments.repeats):  # round -1 warms up, untimed
            log(f"round {repeat + 1}:" if repeat >= 0 else "warm-up:")
            for sweep in chosen:
                one_round(sweep, repeat)
    table = [
        f"Seconds of training, medians of {arguments.repeats} rounds; the speed-up of each round in brackets. "
        f"Load average at the end {load_average()}.",
        "",
        "| sweep | networks | clock | one after the other (`train`) | stacked (`train_stacked`) | speed-up | target | "
        "final weights and histories |",
        "| --- | ---: | --- | ---: | ---: | ---: | --- | --- |",
        *(line for sweep in chosen for line in rows(sweep)),
    ]
    verdicts = []
    for sweep in chosen:
        (wall, _), (cpu, _) = sweep.speed_up(0), sweep.speed_up(1)
        verdict = f"{sweep.name}: {wall:.1f}x wall, {cpu:.1f}x CPU"
        if sweep.target is not None:
            verdict += f" (target ≥ {sweep.target:g}x in CPU time: {'met' if cpu >= sweep.target else 'NOT met'})"
        verdicts.append(verdict + (", bit-identical" if all(sweep.identical) else ", results DIFFER"))
    print_report(
        "Stacked training against one network after the other", environment, [table], verdicts, str(REPOSITORY), started
    )
    if not all(all(sweep.identical) for sweep in chosen):
        sys.exit(1)


if __name__ == "__main__":
    main()
