"""Runner benchmarks: start-up time, tracking overhead, telemetry cost, memory.

Run from the repository with the project's virtual environment:

    python tests/benchmarks/bench_runner.py [--repeats N] [--parts A B C D]

It prints Markdown (tables, then the targets met or not, then the command that reproduces it);
progress and MLflow's own log lines go to stderr. With the default 5 repeats it takes about
4-5 minutes on a 2-core machine (part D alone about half of that).

Parts
-----
A. ``bprun --help`` and ``bprun --cfg job`` against ``python -c "import mlflow"``:
   wall time of whole subprocesses, after one untimed warm-up each (page cache), taking turns
   (the order rotates every round) so that a slow phase of the machine hits all three alike.
   Target: each bprun command at most 0.8x the mlflow import (medians of the same run). The
   breakdown comes from ``python -X importtime`` of each command and the heavy packages each
   one leaves in ``sys.modules``.
B. A 1000-epoch xor run in this process, config composed with Hydra's compose API,
   ``runner.core.run.run(cfg, start_dir=<temp dir>)`` with ``tracking=local`` (a fresh SQLite store
   in the temp dir, ``MLFLOW_TRACKING_URI`` unset) against ``tracking=none``, after one
   warm-up call of each. Target: local takes at most 0.5 s longer (run creation and artifacts
   included). The first call's cost (store creation, imports) is reported separately.
C. 64-128-64-10 on digits, 200 epochs, batch 64, ``tracking.tensors_every=1``, after
   a warm-up run of each variant. Targets: epoch time local/none <= 1.25; the work after the
   last epoch <= 1.5 s; peak RSS local/none <= 1.3.
D. 784-512-256-10 on 8192 generated samples (a ``Dataset`` built here and passed as
   ``dataset=``), 20 epochs, batch 256, tensors every epoch (about 170 MB of float64 snapshots
   streamed to disk). Target: peak RSS local/none <= 1.3; epoch time ratio reported. Each run
   takes tens of seconds, so D has its own, smaller repeat count (``--large-repeats``).

How things are measured
-----------------------
- Phases of one ``run`` call come from an extra observer: *before* = the call to
  ``on_train_begin`` (validation, data, store lookup, run creation, params, provenance),
  *epochs* = ``on_train_begin`` to ``on_train_end``, *after* = ``on_train_end`` to the return
  (flush, plots, model, end of run). Wall time is what the targets are about; the main
  thread's CPU time (``time.thread_time``; BLAS runs on it, as the runner limits BLAS to
  ``trainer.blas_threads``) is shown beside it because it is far less sensitive to other load
  on the machine. Garbage-collector pauses are summed with ``gc.callbacks``.
- RSS: a background thread reads ``/proc/self/statm`` (resident pages x page size) every ~2 ms
  while a run is in flight. *Peak* is the highest sample; *growth* is the peak minus the RSS
  read just before the call (after ``gc.collect()`` and ``malloc_trim(0)``), which is the more
  telling number since both variants share the process's imports and data.
- Variants take turns within each repeat; tables show medians; ratios are of medians of the
  same invocation.
- Breakdowns: a tracked run with thin timing wrappers around the runner's tracking functions
  and ``MlflowClient.log_batch`` (seconds per phase; the RSS peak seen while each function was
  the innermost one running): one extra run in B and C, the last timed tracked run in D. For
  A, a cProfile of ``bprun --help``, with the number of calls of Hydra's per-group listing
  (``get_group_options``, a copy of Hydra's whole config repository each); for B and C, one
  more run under cProfile switched on phase by phase from the observer (cProfile inflates
  Python-heavy code, so its seconds are for ranking only). ``--no-profile`` skips the cProfile runs of B and C.
- Supplementary in C: peak RSS (``VmHWM``) of whole ``bprun`` processes, imports included, where
  tracking=none never imports mlflow; the issue's in-process comparison hides that difference.

All stores live under one temporary directory, removed at the end, and the process works in
that directory, so nothing lands in the repository. ``MLFLOW_TRACKING_URI`` is removed from
this process's environment and from the subprocesses'.
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import functools
import gc
import importlib
import json
import logging
import os
import pstats
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from benchmark_common import REPOSITORY, bprun_executable, compose, describe_environment, log, median, print_report

if str(REPOSITORY) not in sys.path:  # running the file directly, without an installed package
    sys.path.insert(0, str(REPOSITORY))

from engine import Observer

TARGET_STARTUP_RATIO = 0.8
TARGET_XOR_EXTRA_SECONDS = 0.5
TARGET_EPOCH_RATIO = 1.25
TARGET_AFTER_SECONDS = 1.5
TARGET_RSS_RATIO = 1.3

XOR_OVERRIDES = ["dataset=xor", "trainer.epochs=1000"]
XOR_EPOCHS = 1000
DIGITS_OVERRIDES = [
    "dataset=digits",
    "model.hidden=[128,64]",
    "trainer.epochs=200",
    "trainer.batch_size=64",
    "tracking.tensors_every=1",
]
DIGITS_EPOCHS = 200
LARGE_OVERRIDES = [
    "model.hidden=[512,256]",
    "trainer.epochs=20",
    "trainer.batch_size=256",
    "dataset.val_fraction=0",
    "tracking.tensors_every=1",
]
LARGE_SAMPLES, LARGE_FEATURES, LARGE_CLASSES = 8192, 784, 10

HEAVY_PACKAGES = (
    "mlflow",
    "sqlalchemy",
    "alembic",
    "pandas",
    "pyarrow",
    "matplotlib",
    "scipy",
    "sklearn",
    "optuna",
    "threadpoolctl",
    "joblib",
)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024

# Functions timed in the breakdown runs: (module, attribute path). Missing ones are skipped, so
# the script keeps working while runner/ changes.
SPANS = [
    ("runner.core.datasets", "Dataset.fingerprint"),
    ("runner.tracking.provenance", "provenance_tags"),
    ("runner.tracking.provenance", "project_git_state"),
    ("runner.tracking.provenance", "git_state"),
    ("runner.tracking.provenance", "git_diff"),
    ("runner.core.tracked", "ensure_experiment"),
    ("runner.tracking.mlflow_run", "TrackedRun.__init__"),
    ("runner.tracking.mlflow_run", "TrackedRun.__enter__"),
    ("runner.tracking.mlflow_run", "log_params"),
    ("runner.tracking.mlflow_run", "TrackedRun.write_text_artifacts"),
    ("runner.tracking.mlflow_run", "TrackedRun.log_dataset"),
    ("runner.tracking.telemetry", "EpochMetrics.on_epoch_end"),
    ("runner.tracking.mlflow_run", "TrackedRun.log_metrics"),
    ("runner.tracking.mlflow_run", "TrackedRun.flush"),
    ("runner.tracking.tensors", "TensorWriter.on_train_begin"),
    ("runner.tracking.tensors", "TensorWriter.on_epoch_end"),
    ("runner.tracking.tensors", "TensorWriter.close"),
    ("runner.core.tracked", "save_training_plots"),
    ("runner.tracking.mlflow_run", "TrackedRun.set_tags"),
    ("runner.core.tracked", "_save_model"),
    ("runner.core.tracked", "save_pyfunc_model"),
    ("runner.tracking.mlflow_run", "TrackedRun.end"),
]


# --- measuring helpers ------------------------------------------------------------------------
def clean_environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment.pop("MLFLOW_TRACKING_URI", None)
    return environment


def rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as handle:
        return int(handle.read().split()[1]) * PAGE_SIZE


_libc: Any = None


def settle_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so that pre-run RSS is comparable."""
    global _libc
    gc.collect()
    try:
        _libc = _libc or ctypes.CDLL("libc.so.6")
        _libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


class RssSampler:
    """Samples this process's resident set size every ``interval`` seconds in a thread;
    ``label()`` (if given) names what the main thread is doing at each sample."""

    def __init__(self, interval: float = 0.002, label: Any = None) -> None:
        self.interval, self.label = interval, label
        self.peak = 0
        self.samples = 0
        self.peak_by_label: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        descriptor = os.open("/proc/self/statm", os.O_RDONLY)
        try:
            while True:
                resident = int(os.pread(descriptor, 128, 0).split()[1]) * PAGE_SIZE
                self.peak = max(self.peak, resident)
                self.samples += 1
                if self.label is not None:
                    where = self.label()
                    self.peak_by_label[where] = max(self.peak_by_label.get(where, 0), resident)
                if self._stop.wait(self.interval):
                    break
        finally:
            os.close(descriptor)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self._thread.join()


class GcMeter:
    """Collector pauses (start time, seconds) recorded through ``gc.callbacks``."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float, int]] = []
        self._start = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.append((self._start, time.perf_counter() - self._start, info.get("generation", -1)))

    def __enter__(self) -> GcMeter:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        gc.callbacks.remove(self._callback)

    def seconds_between(self, start: float, stop: float) -> float:
        return sum(seconds for began, seconds, _ in self.pauses if start <= began < stop)

    def count_between(self, start: float, stop: float, generation: int | None = None) -> int:
        return sum(1 for began, _, gen in self.pauses if start <= began < stop and generation in (None, gen))


class Clock(Observer):
    """Wall and main-thread CPU timestamps of the first and last training hook; optionally
    switches cProfile profiles phase by phase (before / epochs / after)."""

    wants_gradients = False

    def __init__(self, profiles: dict[str, cProfile.Profile] | None = None) -> None:
        self.begin = self.end = self.cpu_begin = self.cpu_end = float("nan")
        self.profiles = profiles

    def on_train_begin(self, network: Any) -> None:
        if self.profiles:
            self.profiles["before"].disable()
        self.begin, self.cpu_begin = time.perf_counter(), time.thread_time()
        if self.profiles:
            self.profiles["epochs"].enable()

    def on_train_end(self, history: Any) -> None:
        if self.profiles:
            self.profiles["epochs"].disable()
        self.end, self.cpu_end = time.perf_counter(), time.thread_time()
        if self.profiles:
            self.profiles["after"].enable()


class GradientWanter(Observer):
    """Does nothing but ask for the epoch gradients: ``tracking=none`` plus this isolates the
    engine's cost of computing them from the cost of logging them."""

    wants_gradients = True


@dataclass
class Measurement:
    total: float
    before: float
    epochs: float
    after: float
    cpu_total: float
    cpu_epochs: float
    cpu_after: float
    gc_epochs: float
    gc_after: float
    rss_before: int = 0
    rss_peak: int = 0
    rss_per_second: float = 0.0
    timeline: Any = None  # (start, clock, stop, collector) of the call, for breakdowns

    @property
    def growth(self) -> int:
        return self.rss_peak - self.rss_before


@dataclass
class Series:
    runs: list[Measurement] = field(default_factory=list)

    def med(self, name: str) -> float:
        return median([getattr(run, name) for run in self.runs])


def run_once(
    cfg: Any,
    start_dir: str,
    dataset: Any = None,
    extra: tuple[Observer, ...] = (),
    sample_rss: bool = False,
    profiles: dict[str, cProfile.Profile] | None = None,
    sampler: RssSampler | None = None,
) -> Measurement:
    """One ``run`` call, timed phase by phase (and its RSS sampled if asked)."""
    from runner.core.run import run

    clock = Clock(profiles)
    settle_memory()
    rss_before = rss_bytes()
    if sampler is None and sample_rss:
        sampler = RssSampler()
    with GcMeter() as collector:
        if sampler:
            sampler.__enter__()
        try:
            if profiles:
                profiles["before"].enable()
            start, cpu_start = time.perf_counter(), time.thread_time()
            run(cfg, start_dir=start_dir, observers=[*extra, clock], dataset=dataset)
            stop, cpu_stop = time.perf_counter(), time.thread_time()
            if profiles:
                profiles["after"].disable()
        finally:
            if sampler:
                sampler.__exit__()
    return Measurement(
        total=stop - start,
        before=clock.begin - start,
        epochs=clock.end - clock.begin,
        after=stop - clock.end,
        cpu_total=cpu_stop - cpu_start,
        cpu_epochs=clock.cpu_end - clock.cpu_begin,
        cpu_after=cpu_stop - clock.cpu_end,
        gc_epochs=collector.seconds_between(clock.begin, clock.end),
        gc_after=collector.seconds_between(clock.end, stop),
        rss_before=rss_before,
        rss_peak=max(sampler.peak, rss_before) if sampler else 0,
        rss_per_second=sampler.samples / (stop - start) if sampler else 0.0,
        timeline=(start, clock, stop, collector),
    )


# --- breakdowns -------------------------------------------------------------------------------
@dataclass
class SpanRecord:
    name: str
    start: float
    seconds: float
    depth: int
    count: int  # metrics sent, for log_batch


@contextmanager
def instrumented() -> Iterator[tuple[list[SpanRecord], list[str]]]:
    """Wrap the functions in ``SPANS``; yields (records, stack of active span names)."""
    records: list[SpanRecord] = []
    stack: list[str] = []
    restore = []

    def wrap(name: str, function: Any) -> Any:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = len(stack)
            stack.append(name)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds = time.perf_counter() - start
                stack.pop()
                count = len(kwargs.get("metrics") or ()) if name.endswith("log_batch") else 0
                records.append(SpanRecord(name, start, seconds, depth, count))

        return timed

    for module_name, attribute in SPANS:
        try:
            owner: Any = importlib.import_module(module_name)
            *path, leaf = attribute.split(".")
            for part in path:
                owner = getattr(owner, part)
            original = owner.__dict__[leaf] if isinstance(owner, type) else getattr(owner, leaf)
        except Exception:  # not in this version of the runner (or of mlflow)
            continue
        short = f"{module_name.split('.')[-1]}.{attribute}"
        setattr(owner, leaf, wrap(short, original))
        restore.append((owner, leaf, original))
    try:
        yield records, stack
    finally:
        for owner, leaf, original in reversed(restore):
            setattr(owner, leaf, original)


def breakdown_run(cfg: Any, start_dir: str, dataset: Any = None, memory: bool = False) -> tuple[Measurement, list[str]]:
    """One tracked run with timing wrappers: seconds per function and phase, the phase left
    outside every wrapped function, collector pauses, and (``memory``) RSS by function."""
    phase_label = ["(before training)"]

    class Phase(Observer):
        def on_train_begin(self, network: Any) -> None:
            phase_label[0] = "(training epochs, outside the wrapped functions)"

        def on_train_end(self, history: Any) -> None:
            phase_label[0] = "(after training, outside the wrapped functions)"

    with instrumented() as (records, stack):
        sampler = RssSampler(label=lambda: stack[-1] if stack else phase_label[0]) if memory else None
        run = run_once(cfg, start_dir, dataset=dataset, extra=(Phase(),), sampler=sampler)
    start, clock, stop, collector = run.timeline
    before = run.rss_before
    bounds = {"before": (start, clock.begin), "epochs": (clock.begin, clock.end), "after": (clock.end, stop)}

    def phase_of(moment: float) -> str:
        return "before" if moment < clock.begin else "epochs" if moment < clock.end else "after"

    table: dict[str, dict[str, Any]] = {}
    outermost = dict.fromkeys(bounds, 0.0)
    metrics_sent = 0
    for record in records:
        row = table.setdefault(record.name, {"calls": 0, "before": 0.0, "epochs": 0.0, "after": 0.0})
        row["calls"] += 1
        row[phase_of(record.start)] += record.seconds
        metrics_sent += record.count
        if record.depth == 0:
            outermost[phase_of(record.start)] += record.seconds
    lengths = {phase: stop_ - start_ for phase, (start_, stop_) in bounds.items()}
    lines = [
        "| function (inclusive; nested calls overlap) | calls | s before | s epochs | s after |",
        "| --- | ---: | ---: | ---: | ---: |",
        "| **whole phase** | | " + " | ".join(f"**{lengths[p]:.3f}**" for p in bounds) + " |",
    ]
    for name, row in table.items():
        lines.append(f"| `{name}` | {row['calls']} | {row['before']:.3f} | {row['epochs']:.3f} | {row['after']:.3f} |")
    lines.append(
        "| outside every wrapped function (engine, validation, config, ...) | | "
        + " | ".join(f"{lengths[p] - outermost[p]:.3f}" for p in bounds)
        + " |"
    )
    lines.append(
        "| garbage-collector pauses (anywhere) | "
        f"{collector.count_between(start, stop)} | "
        + " | ".join(f"{collector.seconds_between(*bounds[p]):.3f}" for p in bounds)
        + " |"
    )
    batches = table.get("client.MlflowClient.log_batch")
    if batches and metrics_sent:
        seconds = batches["before"] + batches["epochs"] + batches["after"]
        lines.append(
            f"\n`MlflowClient.log_batch`: {batches['calls']} calls carrying {metrics_sent:,} metric values "
            f"took {seconds:.3f} s: {seconds / batches['calls'] * 1e3:.0f} ms per call, "
            f"{seconds / metrics_sent * 1e6:.0f} us per value."
        )
    if sampler:
        lines += [
            "",
            f"RSS while each function was the innermost one running (pre-run RSS {before / MB:.0f} MB):",
            "",
            "| innermost active function | peak RSS MB | above pre-run MB |",
            "| --- | ---: | ---: |",
        ]
        for where, peak in sorted(sampler.peak_by_label.items(), key=lambda item: -item[1])[:10]:
            lines.append(f"| `{where}` | {peak / MB:.0f} | {(peak - before) / MB:.1f} |")
    return run, lines


def profile_run(cfg: Any, start_dir: str, phases: tuple[tuple[str, str, int], ...], dataset: Any = None) -> list[str]:
    """One tracked run under cProfile, phase by phase; ``phases`` = (phase, sort key, rows)."""
    profiles = {phase: cProfile.Profile() for phase in ("before", "epochs", "after")}
    run = run_once(cfg, start_dir, dataset=dataset, profiles=profiles)
    lines = [
        "```",
        f"cProfile run (inflated by profiling): before {run.before:.3f} s, epochs {run.epochs:.3f} s, "
        f"after {run.after:.3f} s",
    ]
    for phase, key, count in phases:
        lines.append(f"{phase}: top {count} by {'own time' if key == 'tottime' else 'cumulative time'}")
        lines.extend("  " + line for line in top_profile_lines(pstats.Stats(profiles[phase]), key, count))
    lines.append("```")
    return lines


def top_profile_lines(stats: pstats.Stats, key: str, count: int) -> list[str]:
    entries = []
    for (filename, line, function), (_calls, primitive, own, cumulative, _callers) in stats.stats.items():
        if filename == __file__ or "_lsprof.Profiler" in function:
            continue
        entries.append((own if key == "tottime" else cumulative, primitive, filename, line, function))
    entries.sort(key=lambda entry: -entry[0])
    lines = []
    for seconds, calls, filename, line, function in entries[:count]:
        for root in (str(REPOSITORY) + os.sep, os.sep + "site-packages" + os.sep):
            if root in filename:
                filename = filename.split(root, 1)[1]
        lines.append(f"{seconds:7.3f} s {calls:7d}x  {filename}:{line}({function})")
    return lines


# --- part A -----------------------------------------------------------------------------------


def part_a(repeats: int, work: Path) -> tuple[list[str], list[str]]:
    bprun = bprun_executable()
    commands = {
        "bprun --help": [bprun, "--help"],
        "bprun --cfg job": [bprun, "--cfg", "job"],
        'python -c "import mlflow"': [sys.executable, "-c", "import mlflow"],
    }
    environment = clean_environment()
    cwd = work / "startup"
    cwd.mkdir()

    def once(argv: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        return time.perf_counter() - start

    for argv in commands.values():
        once(argv)  # warm-up: page cache, .pyc files
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    names = list(commands)
    for round_number in range(repeats):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            seconds[name].append(once(commands[name]))
    reference = median(seconds['python -c "import mlflow"'])
    lines = [
        f"### A. Start-up: subprocess wall time, median of {repeats} after 1 warm-up each",
        "",
        "| command | median s | min s | max s | ratio to import mlflow |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    verdicts = []
    for name, values in seconds.items():
        ratio = median(values) / reference
        lines.append(f"| `{name}` | {median(values):.3f} | {min(values):.3f} | {max(values):.3f} | {ratio:.2f} |")
        if name.startswith("bprun"):
            verdicts.append(verdict(f"A. `{name}` / `import mlflow`", ratio, TARGET_STARTUP_RATIO, "x"))
    lines += [
        "",
        "What each command imports (one more run each under `python -X importtime`; the seconds are inflated by it):",
        "",
        "| command | modules loaded | heavy packages loaded | largest top-level imports, cumulative s |",
        "| --- | ---: | --- | --- |",
    ]
    for name, argv in commands.items():
        lines.append(import_profile(name, argv, cwd, environment))
    lines += [
        "",
        "Where `bprun --help` spends its time after the imports (cProfile of `main()` in a subprocess; "
        "inflated by profiling):",
        "",
        "```",
        *help_profile(cwd, environment),
        "```",
    ]
    return lines, verdicts


def help_profile(cwd: Path, environment: dict[str, str], count: int = 10) -> list[str]:
    code = (
        "import cProfile, pstats, sys, time\n"
        "sys.argv = ['bprun', '--help']\n"
        "start = time.perf_counter()\n"
        "from runner.commands.bprun import main\n"
        "imported = time.perf_counter()\n"
        "profile = cProfile.Profile()\n"
        "profile.enable()\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "profile.disable()\n"
        "done = time.perf_counter()\n"
        "sys.stderr.write(f'import runner.commands.bprun {imported - start:.3f} s, '\n"
        "                 f'main() {done - imported:.3f} s\\n')\n"
        "stats = pstats.Stats(profile, stream=sys.stderr)\n"
        "listings = sum(\n"
        "    calls for (where, _, name), (calls, *_) in stats.stats.items()\n"
        "    if name == 'get_group_options' and where.endswith('config_loader_impl.py')\n"
        ")\n"
        "sys.stderr.write(f'calls of Hydra\\'s per-group listing (its config loader\\'s get_group_options): '\n"
        "                 f'{listings}\\n')\n"
        f"stats.sort_stats('cumulative').print_stats({count + 4})\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    for line in completed.stderr.splitlines():
        if line.startswith(("import runner.commands.bprun", "calls of Hydra's per-group listing")):
            lines.append(line)
        elif "(" in line and line.strip()[:1].isdigit():
            fields = line.split(None, 5)
            try:
                cumulative = float(fields[3])
            except (IndexError, ValueError):
                continue
            if len(fields) == 6:
                where = fields[5]
                for root in (str(REPOSITORY) + os.sep, os.sep + "site-packages" + os.sep):
                    if root in where:
                        where = where.split(root, 1)[1]
                lines.append(f"{cumulative:7.3f} s cumulative {fields[0]:>9}x  {where}")
    return lines[: count + 2]


def import_profile(name: str, argv: list[str], cwd: Path, environment: dict[str, str]) -> str:
    """Run the command's Python code under -X importtime; summarise what it loaded."""
    report = cwd / "modules.json"
    if argv[0] == sys.executable:
        code = f"import mlflow, sys, json; json.dump(sorted(sys.modules), open({str(report)!r}, 'w'))"
    else:
        code = (
            "import sys, json\n"
            f"sys.argv = ['bprun', *{argv[1:]!r}]\n"
            "from runner.commands.bprun import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            f"json.dump(sorted(sys.modules), open({str(report)!r}, 'w'))\n"
        )
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        cwd=cwd,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    modules = json.loads(report.read_text()) if report.exists() else []
    report.unlink(missing_ok=True)
    heavy = [package for package in HEAVY_PACKAGES if package in modules]
    top_level = []
    for line in completed.stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        _, cumulative, module = line.split("|")
        if module.startswith(" ") and not module.startswith("  "):  # one space: imported at top level
            try:
                top_level.append((int(cumulative) / 1e6, module.strip()))
            except ValueError:
                continue
    top_level.sort(reverse=True)
    largest = ", ".join(f"{module} {seconds:.2f}" for seconds, module in top_level[:6])
    return f"| `{name}` | {len(modules)} | {', '.join(heavy) or '(none)'} | {largest} |"


# --- part B -----------------------------------------------------------------------------------
def part_b(repeats: int, work: Path, first_imports: dict[str, float], profile: bool) -> tuple[list[str], list[str]]:
    store = work / "xor"
    store.mkdir()
    local_cfg = compose([*XOR_OVERRIDES, "tracking=local"])
    none_cfg = compose([*XOR_OVERRIDES, "tracking=none"])

    modules_before = set(sys.modules)
    with instrumented() as (records, _):
        first_local = run_once(local_cfg, str(store))
    first_store = sum(record.seconds for record in records if record.name.endswith("ensure_experiment"))
    new_modules = [name for name in sys.modules if name not in modules_before]
    first_none = run_once(none_cfg, str(store))

    series = {"local": Series(), "none": Series()}
    for repeat in range(repeats):
        for variant in ("local", "none") if repeat % 2 == 0 else ("none", "local"):
            series[variant].runs.append(run_once(local_cfg if variant == "local" else none_cfg, str(store)))
    local, none = series["local"], series["none"]

    # Store creation again, now with everything imported: a fresh SQLite file and experiment.
    from runner.tracking.store import ensure_experiment

    store_seconds = []
    for number in range(3):
        fresh = work / f"fresh-store-{number}"
        fresh.mkdir()
        start = time.perf_counter()
        ensure_experiment(f"sqlite:///{fresh / 'mlflow.db'}", "backprop-runner")
        store_seconds.append(time.perf_counter() - start)
    warm_store_seconds = median(store_seconds)
    import_seconds = time_imports_in_subprocess(new_modules)

    extra = local.med("total") - none.med("total")
    lines = [
        f"### B. 1000-epoch xor in one process: median of {repeats} after 1 warm-up each",
        "",
        "| tracking | total s | before training s | epochs s | after training s | total CPU s | "
        "epochs CPU s | GC pauses in epochs s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, values in series.items():
        lines.append(
            f"| {name} | {values.med('total'):.3f} | {values.med('before'):.3f} | {values.med('epochs'):.3f} | "
            f"{values.med('after'):.3f} | {values.med('cpu_total'):.3f} | {values.med('cpu_epochs'):.3f} | "
            f"{values.med('gc_epochs'):.3f} |"
        )
    difference = {
        name: local.med(name) - none.med(name)
        for name in ("total", "before", "epochs", "after", "cpu_total", "cpu_epochs", "gc_epochs")
    }
    lines.append(
        "| **local - none** | **{total:.3f}** | {before:.3f} | {epochs:.3f} | {after:.3f} | {cpu_total:.3f} | "
        "{cpu_epochs:.3f} | {gc_epochs:.3f} |".format(**difference)
    )
    lines += [
        "",
        f"Where the extra {extra:.2f} s goes: run creation before training (store lookup, run, params, "
        f"provenance, data set input, text artifacts) {difference['before']:.3f} s; per-epoch logging "
        f"{difference['epochs']:.3f} s ({difference['epochs'] / XOR_EPOCHS * 1e3:.2f} ms/epoch); "
        f"end-of-run work (last flush, plots, model, end of run) {difference['after']:.3f} s.",
        "",
        "First calls (excluded above):",
        "",
        "| what | s |",
        "| --- | ---: |",
        f"| `import runner.hydra_app.app, runner.core.tracked` before any call | {first_imports['runner']:.3f} |",
        f"| first Hydra compose | {first_imports['compose']:.3f} |",
        f"| first `run`, tracking=local, fresh store | {first_local.total:.3f} |",
        f"| &nbsp; of which inside `ensure_experiment` (store creation, with the imports it triggers) | "
        f"{first_store:.3f} |",
        f"| &nbsp; first-call overhead = first local - median local | {first_local.total - local.med('total'):.3f} |",
        f"| store creation on another fresh SQLite file, everything already imported (median of 3) | "
        f"{warm_store_seconds:.3f} |",
        f"| the {len(new_modules)} modules the first tracked call imported, timed in a fresh subprocess "
        f"after `import runner.commands.bprun` | {import_seconds:.3f} |",
        f"| first `run`, tracking=none | {first_none.total:.3f} |",
    ]
    heavy = sorted({name.split(".")[0] for name in new_modules} & set(HEAVY_PACKAGES))
    lines.append(f"\nHeavy packages the first tracked call imported: {', '.join(heavy) or '(none)'}.")
    lines += [
        "",
        "Breakdown of one more tracked xor run (timing wrappers):",
        "",
        *breakdown_run(local_cfg, str(store))[1],
    ]
    if profile:
        lines += ["", *profile_run(local_cfg, str(store), (("epochs", "tottime", 8), ("after", "cumulative", 8)))]
    verdicts = [verdict("B. xor 1000 epochs, local - none", extra, TARGET_XOR_EXTRA_SECONDS, " s")]
    return lines, verdicts


def time_imports_in_subprocess(modules: list[str]) -> float:
    """Seconds to import ``modules`` (in the order first seen) in a fresh interpreter that has
    already imported the app and the tracked run, like this process before its first call."""
    code = (
        "import importlib, sys, time, warnings\nwarnings.simplefilter('ignore')\n"
        "import runner.hydra_app.app, runner.core.tracked\n"
        f"names = {modules!r}\n"
        "start = time.perf_counter()\n"
        "for name in names:\n"
        "    if name in sys.modules:\n        continue\n"
        "    try:\n        importlib.import_module(name)\n    except Exception:\n        pass\n"
        "print(time.perf_counter() - start)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_environment(),
        cwd=tempfile.gettempdir(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        return float(completed.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return float("nan")


# --- parts C and D ----------------------------------------------------------------------------
def memory_and_time_table(series: dict[str, Series], reference: str = "none") -> list[str]:
    base = series[reference]
    lines = [
        "| tracking | total s | before s | epochs s | after s | epochs / none | epochs CPU s | CPU / none | "
        "GC in epochs s | pre-run RSS MB | peak RSS MB | peak / none | growth MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, values in series.items():
        lines.append(
            f"| {name} | {values.med('total'):.3f} | {values.med('before'):.3f} | {values.med('epochs'):.3f} | "
            f"{values.med('after'):.3f} | {values.med('epochs') / base.med('epochs'):.2f} | "
            f"{values.med('cpu_epochs'):.3f} | {values.med('cpu_epochs') / base.med('cpu_epochs'):.2f} | "
            f"{values.med('gc_epochs'):.3f} | {values.med('rss_before') / MB:.0f} | "
            f"{values.med('rss_peak') / MB:.0f} | "
            f"{values.med('rss_peak') / base.med('rss_peak'):.2f} | {values.med('growth') / MB:.1f} |"
        )
    rate = median([run.rss_per_second for values in series.values() for run in values.runs])
    lines.append(f"\nRSS sampled about {rate:.0f} times a second (the sampler needs the GIL between samples).")
    return lines


def part_c(repeats: int, work: Path, profile: bool) -> tuple[list[str], list[str]]:
    store = work / "digits"
    store.mkdir()
    configs = {
        "local": compose([*DIGITS_OVERRIDES, "tracking=local"]),
        "none": compose([*DIGITS_OVERRIDES, "tracking=none"]),
    }
    variants = {
        "local": (configs["local"], ()),
        "none": (configs["none"], ()),
        "none + gradients": (configs["none"], (GradientWanter(),)),
    }
    for cfg, extra in variants.values():
        run_once(cfg, str(store), extra=extra)  # warm-up
    series = {name: Series() for name in variants}
    names = list(variants)
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            cfg, extra = variants[name]
            series[name].runs.append(run_once(cfg, str(store), extra=extra, sample_rss=True))
    local, none, gradients = series["local"], series["none"], series["none + gradients"]
    epoch_ratio = local.med("epochs") / none.med("epochs")
    rss_ratio = local.med("rss_peak") / none.med("rss_peak")
    lines = [
        f"### C. 64-128-64-10 on digits, 200 epochs, batch 64, tensors every epoch: "
        f"median of {repeats} after 1 warm-up each",
        "",
        *memory_and_time_table(series),
        "",
        "`none + gradients` is tracking=none plus an observer that only asks for the epoch gradients, "
        "which the engine then accumulates: the engine's share of the telemetry cost.",
        "",
        f"Epochs, local over none: {(local.med('epochs') - none.med('epochs')) / DIGITS_EPOCHS * 1e3:.2f} ms/epoch "
        f"wall, {(local.med('cpu_epochs') - none.med('cpu_epochs')) / DIGITS_EPOCHS * 1e3:.2f} ms/epoch CPU; "
        f"of which gradient accumulation "
        f"{(gradients.med('cpu_epochs') - none.med('cpu_epochs')) / DIGITS_EPOCHS * 1e3:.2f} ms/epoch CPU. "
        f"After the last epoch: {local.med('after'):.3f} s.",
    ]
    lines += fresh_process_rss(work)
    lines += [
        "",
        "Breakdown of one more tracked run (timing wrappers):",
        "",
        *breakdown_run(configs["local"], str(store), memory=True)[1],
    ]
    if profile:
        lines += [
            "",
            *profile_run(configs["local"], str(store), (("epochs", "tottime", 10), ("after", "cumulative", 12))),
        ]
    verdicts = [
        verdict("C. digits epochs local/none", epoch_ratio, TARGET_EPOCH_RATIO, "x")
        + f" (main-thread CPU: {local.med('cpu_epochs') / none.med('cpu_epochs'):.2f}x)",
        verdict("C. digits work after the last epoch", local.med("after"), TARGET_AFTER_SECONDS, " s"),
        verdict("C. digits peak RSS local/none, same process", rss_ratio, TARGET_RSS_RATIO, "x")
        + f" (growth above pre-run: {local.med('growth') / MB:.1f} MB vs {none.med('growth') / MB:.1f} MB)",
    ]
    return lines, verdicts


def fresh_process_rss(work: Path) -> list[str]:
    """Supplementary: peak RSS of whole ``bprun`` processes (imports included), one run each.

    Read as ``VmHWM`` by the child itself at exit: ``ru_maxrss`` of a child would start from
    this (large) process's RSS at fork, since it survives ``execve``; ``VmHWM`` belongs to the
    new address space.
    """
    cwd = work / "cli"
    cwd.mkdir()
    report = cwd / "vmhwm.txt"
    peaks = {}
    for tracking in ("none", "local"):
        code = (
            "import atexit, sys\n"
            "def report():\n"
            "    for line in open('/proc/self/status'):\n"
            "        if line.startswith('VmHWM:'):\n"
            f"            open({str(report)!r}, 'w').write(line.split()[1])\n"
            "atexit.register(report)\n"
            f"sys.argv = ['bprun', *{[*DIGITS_OVERRIDES, f'tracking={tracking}']!r}]\n"
            "from runner.commands.bprun import main\n"
            "main()\n"
        )
        report.unlink(missing_ok=True)
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=cwd,
            env=clean_environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        peaks[tracking] = int(report.read_text()) * 1024 if report.exists() else float("nan")
    return [
        "",
        "Supplementary: whole `bprun` processes with the same overrides (imports included; "
        "tracking=none never imports mlflow), one run each, peak RSS (`VmHWM`):",
        "",
        "| tracking | peak RSS MB | ratio to none |",
        "| --- | ---: | ---: |",
        *(f"| {name} | {peak / MB:.0f} | {peak / peaks['none']:.2f} |" for name, peak in peaks.items()),
    ]


def large_dataset():
    from runner.core.datasets import Dataset

    rng = np.random.default_rng(0)
    X = rng.standard_normal((LARGE_SAMPLES, LARGE_FEATURES))
    Y = np.eye(LARGE_CLASSES)[rng.integers(0, LARGE_CLASSES, size=LARGE_SAMPLES)]
    return Dataset(
        name="random784",
        task="classification",
        X_train=X,
        Y_train=Y,
        X_val=None,
        Y_val=None,
        feature_names=[f"x{i}" for i in range(LARGE_FEATURES)],
        target_names=[f"class_{c}" for c in range(LARGE_CLASSES)],
        class_names=[str(c) for c in range(LARGE_CLASSES)],
        source=f"np.random.default_rng(0): standard normal {LARGE_SAMPLES}x{LARGE_FEATURES}, random labels",
    )


def part_d(repeats: int, work: Path) -> tuple[list[str], list[str]]:
    store = work / "large"
    store.mkdir()
    dataset = large_dataset()
    configs = {
        "local": compose([*LARGE_OVERRIDES, "tracking=local"]),
        "none": compose([*LARGE_OVERRIDES, "tracking=none"]),
    }
    # Warm-up on one epoch: the same shapes and code paths at a twentieth of the cost.
    for name in ("local", "none"):
        run_once(compose([*LARGE_OVERRIDES, f"tracking={name}", "trainer.epochs=1"]), str(store), dataset=dataset)
    series = {"local": Series(), "none": Series()}
    breakdown: list[str] = []
    for repeat in range(repeats):
        for name in ("local", "none") if repeat % 2 == 0 else ("none", "local"):
            if name == "local" and repeat == repeats - 1:
                # The last tracked run doubles as the breakdown run (the wrappers cost microseconds).
                run, breakdown = breakdown_run(configs[name], str(store), dataset=dataset, memory=True)
            else:
                run = run_once(configs[name], str(store), dataset=dataset, sample_rss=True)
            series[name].runs.append(run)
    local, none = series["local"], series["none"]
    rss_ratio = local.med("rss_peak") / none.med("rss_peak")
    runs = {path.parent for path in store.rglob("tensors/layer1.weights.npy")}
    biggest = max((sum(file.stat().st_size for file in run.glob("*.npy")) for run in runs), default=0)
    lines = [
        f"### D. 784-512-256-10 on {LARGE_SAMPLES} generated samples, 20 epochs, batch 256, tensors every "
        f"epoch: median of {repeats} after a 1-epoch warm-up each",
        "",
        *memory_and_time_table(series),
        "",
        f"Tensor files of one 20-epoch tracked run: {biggest / MB:.0f} MB. The training data X alone is "
        f"{dataset.X_train.nbytes / MB:.0f} MB.",
    ]
    lines += ["", "Breakdown of the last tracked run above (timing wrappers, RSS by function):", "", *breakdown]
    verdicts = [
        verdict("D. 784-512-256-10 peak RSS local/none, same process", rss_ratio, TARGET_RSS_RATIO, "x")
        + f" (growth above pre-run: {local.med('growth') / MB:.1f} MB vs {none.med('growth') / MB:.1f} MB)",
        f"D. 784-512-256-10 epochs local/none: {local.med('epochs') / none.med('epochs'):.2f}x wall, "
        f"{local.med('cpu_epochs') / none.med('cpu_epochs'):.2f}x main-thread CPU (no target)",
    ]
    return lines, verdicts


# --- report -----------------------------------------------------------------------------------
def verdict(label: str, value: float, target: float, unit: str) -> str:
    return f"{label}: {value:.2f}{unit}, target <= {target:g}{unit}: " + ("met" if value <= target else "**NOT met**")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed repeats per variant in parts A-C (A uses at least 5); default 5"
    )
    parser.add_argument(
        "--large-repeats",
        type=int,
        default=None,
        help="timed repeats per variant in part D (tens of seconds each); default min(repeats, 2)",
    )
    parser.add_argument("--parts", nargs="+", default=["A", "B", "C", "D"], choices=["A", "B", "C", "D"])
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile runs of parts B and C")
    args = parser.parse_args(argv)
    if args.repeats < 1 or (args.large_repeats is not None and args.large_repeats < 1):
        parser.error("repeats must be >= 1")
    large_repeats = args.large_repeats or min(args.repeats, 2)
    parts = sorted(set(args.parts))

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    warnings.simplefilter("ignore", DeprecationWarning)  # SQLAlchemy 2.1 + MLflow's store: harmless, not ours
    environment_lines = describe_environment(
        ("mlflow", "hydra-core", "numpy", "SQLAlchemy", "matplotlib"),
        " (other work on the machine inflates wall times; CPU columns are the steadier cross-check)",
    )
    started = time.perf_counter()
    sections: list[list[str]] = []
    verdicts: list[str] = []
    home = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="bench-runner-") as temporary:
        work = Path(temporary)
        os.chdir(work)
        try:
            if "A" in parts:
                log("part A: start-up subprocesses ...")
                lines, found = part_a(max(args.repeats, 5), work)
                sections.append(lines)
                verdicts += found
            first_imports = {}
            if set(parts) & {"B", "C", "D"}:
                start = time.perf_counter()
                import runner.core.tracked
                import runner.hydra_app.app  # noqa: F401  (registers the schemas)

                first_imports["runner"] = time.perf_counter() - start
                start = time.perf_counter()
                compose(XOR_OVERRIDES)
                first_imports["compose"] = time.perf_counter() - start
            if "B" in parts:
                log("part B: xor, tracked vs not ...")
                lines, found = part_b(args.repeats, work, first_imports, not args.no_profile)
                sections.append(lines)
                verdicts += found
            # MLflow's INFO/WARNING lines (model validation, cloudpickle) would bury the progress.
            logging.getLogger("mlflow").setLevel(logging.ERROR)
            if "C" in parts:
                log("part C: digits telemetry ...")
                lines, found = part_c(args.repeats, work, not args.no_profile)
                sections.append(lines)
                verdicts += found
            if "D" in parts:
                log(f"part D: 784-512-256-10, 20 epochs, {large_repeats} repeat(s) ...")
                lines, found = part_d(large_repeats, work)
                sections.append(lines)
                verdicts += found
        finally:
            os.chdir(home)

    print_report("Runner benchmarks", environment_lines, sections, verdicts, home, started)


if __name__ == "__main__":
    main()
