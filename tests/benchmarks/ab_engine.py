"""A/B speed of the working tree's engine against a reference engine, in one process.

The reference is ``engine/`` at a git commit (or a folder holding a copy of the package),
imported as ``engine_reference`` as ``check_engine_equivalence.py`` does. Both train the four
cases of ``bench_engine.py`` (plain SGD, sigmoid layers, an observer that asks for gradients,
two BLAS threads) from the same seeds; runs alternate between the engines, in the order A B
then B A, so that a slow phase of a shared machine hits both. No torch or scikit-learn needed.

Run from the repository root::

    .venv/bin/python tests/benchmarks/ab_engine.py --reference main
    .venv/bin/python tests/benchmarks/ab_engine.py --reference /tmp/engine-without-X --cases 2 4 --repeats 31

For each case it prints the median seconds of each engine, the speed of the working tree
relative to the reference (reference median / working-tree median: above 1 is faster), the
median of the per-pair ratios (each working-tree run against the reference run beside it), which
drifting load disturbs least, and the ratio of the fastest runs (other load only ever adds time);
in wall-clock seconds and in the process's CPU seconds, which other processes on a busy machine
inflate less (both count the BLAS threads' time). Both engines must end every run with the same
final loss unless ``--results-may-differ``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_engine import THREADS, Case, GradientWatcher, make_case  # noqa: E402
from check_engine_equivalence import REPOSITORY, import_reference  # noqa: E402

import engine  # noqa: E402

ADAM_LR = 0.001  # the cases' rates are for plain SGD


def run_once(package, case: Case, optimizer_name: str = "gd", seed: int = 1) -> tuple[float, float, float]:
    """Wall seconds and CPU seconds (of the whole process, BLAS threads included) of one
    ``package.train`` call on ``case``, and its last training loss."""
    network = package.MLP(case.sizes, np.random.default_rng(seed), activation="sigmoid", output_activation="sigmoid")
    optimizer = package.make_optimizer(optimizer_name, case.lr if optimizer_name == "gd" else ADAM_LR)
    watcher = GradientWatcher()
    shuffle_rng = np.random.default_rng(seed + 1)
    start, cpu_start = time.perf_counter(), time.process_time()
    history = package.train(
        network,
        optimizer,
        case.X,
        case.Y,
        epochs=case.epochs,
        loss="mse",
        batch_size=case.batch_size,
        rng=shuffle_rng,
        observers=[watcher],
    )
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if watcher.epochs_seen != case.epochs or history.stop_reason != "completed":
        raise RuntimeError(f"{package.__name__} on case {case.number} ended early: {history.message}")
    return elapsed, cpu, history.metrics["train_loss"][-1]


def summary(seconds: dict[str, list[float]]) -> tuple[float, float, float, float]:
    """Median seconds of the reference and of the working tree, the median of the per-pair ratios
    reference / working tree, and the ratio of the fastest runs."""
    reference, current = seconds["reference"], seconds["working tree"]
    pairs = statistics.median(a / b for a, b in zip(reference, current))
    return statistics.median(reference), statistics.median(current), pairs, min(reference) / min(current)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default="HEAD", help="git commit, or folder of an engine package")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per case and engine (>= 5)")
    parser.add_argument("--cases", type=int, nargs="+", default=[1, 2, 3, 4], choices=[1, 2, 3, 4])
    parser.add_argument(
        "--threads", type=int, default=THREADS, help=f"BLAS threads (default {THREADS}, as bench_engine.py)"
    )
    parser.add_argument("--optimizer", default="gd", choices=["gd", "adam"], help=f"adam runs at lr={ADAM_LR}")
    parser.add_argument(
        "--results-may-differ",
        action="store_true",
        help="time engines whose results differ (a change that is not bit-identical); print how much",
    )
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error("--repeats must be >= 5")

    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as directory, threadpool_limits(limits=args.threads):
        reference = import_reference(args.reference, Path(directory))
        engines = {"reference": reference, "working tree": engine}
        for case in (make_case(number) for number in sorted(set(args.cases))):
            seconds: dict[str, list[float]] = {name: [] for name in engines}
            cpu_seconds: dict[str, list[float]] = {name: [] for name in engines}
            # warm-up
            losses = {name: run_once(package, case, args.optimizer)[2] for name, package in engines.items()}
            if losses["reference"] != losses["working tree"]:
                if not args.results_may_differ:
                    raise RuntimeError(f"case {case.number}: the engines end at different losses: {losses}")
                print(f"case {case.number}: final losses differ: {losses}", file=sys.stderr)
            for repeat in range(args.repeats):
                order = list(engines.items()) if repeat % 2 == 0 else list(engines.items())[::-1]
                for name, package in order:
                    wall, cpu, _ = run_once(package, case, args.optimizer)
                    seconds[name].append(wall)
                    cpu_seconds[name].append(cpu)
            rows.append((case, summary(seconds), summary(cpu_seconds)))
            print(f"case {case.number} done", file=sys.stderr, flush=True)
    load_after = os.getloadavg()[0]

    print(
        f"working tree against the engine at {args.reference}, {args.optimizer}, {args.threads} BLAS thread(s): "
        f"medians of {args.repeats} alternating runs"
    )
    print()
    print(
        "| case | clock | reference s | working tree s | speed (reference / working tree) "
        "| median of pair ratios | fastest runs |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for case, wall, cpu in rows:
        for clock, (reference_median, current_median, pairs, fastest) in (("wall", wall), ("CPU", cpu)):
            print(
                f"| {case.number}. {case.title} | {clock} | {reference_median:.5f} | {current_median:.5f} | "
                f"{reference_median / current_median:.3f}x | {pairs:.3f}x | {fastest:.3f}x |"
            )
    print()
    print(f"load average (1 min) before/after: {load_before:.2f} / {load_after:.2f}")
    print(f"command: cd {REPOSITORY} && {' '.join([os.path.relpath(sys.executable), *sys.argv])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
