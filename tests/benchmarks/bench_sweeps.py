"""Sweep benchmarks (issue 5): the per-job overhead of a multirun, and joblib against the basic launcher.

Run from the repository with the project's virtual environment:

    python tests/benchmarks/bench_sweeps.py [--repeats N] [--parts xor digits] [--no-profile]

It prints Markdown (tables, then the targets met or not, then the command that reproduces it);
progress goes to stderr. With the default 3 repeats it takes about 8-11 minutes on a 2-core
machine (each part about half of that; longer when other work loads the machine).

Parts
-----
xor. ``bprun -m 'model.hidden=[4]' trainer.epochs=500 optimizer.lr=0.5,1,2,4 seed=0,1,2,3,4,5``:
   24 jobs of a 2-4-1 xor network, 500 epochs each, basic launcher, default telemetry (metrics,
   tensors every epoch, plots, weights and the pyfunc model). Target: per-job overhead
   = (sweep wall time - summed training time) / 24 at most 0.5 s. The summed training time has
   three definitions, all reported:

   (a) the time the 24 configs spend in the engine's epochs (``on_train_begin`` to
       ``on_train_end``) with ``tracking=none``, run in this process through
       ``runner.experiment.run_experiment`` after a warm-up: pure training;
   (b) the same with tracking on (``tracking=local``, in a sweep-like loop: a parent run and
       the sweep's environment variables, so each job is a child as in a real sweep): the
       epochs with their per-epoch telemetry;
   (c) the epochs measured inside the sweep subprocess itself (instrumented run, below).

   (a) and (b) use the median wall time of real ``bprun -m`` subprocesses. Where the time goes
   comes from an *instrumented* sweep: the same command run as ``python bench_sweeps.py
   --instrumented-child ...``, which wraps Hydra's per-job steps (``load_sweep_config``,
   ``run_job``, ``_save_config``, ``configure_log``), the sweep callback, ``run_experiment``
   and the runner's tracking functions in thin timers (microseconds each; nothing per epoch is
   wrapped) and then calls ``runner.cli.main`` exactly as the ``bprun`` console script does.
   Its timeline accounts for the whole wall time from launch to exit: interpreter start-up,
   imports, Hydra start-up, the up-front compose of every job, then mlflow import and store +
   parent run, each job (Hydra's ``run_job``, the runner's work before the first and after the
   last epoch, the epochs), the sweep summary, and exit. Real and instrumented runs take turns;
   the instrumented wall time is shown next to the real one. The in-process loop of (b) is also profiled (cProfile,
   ranking only: profiling inflates Python-heavy code).

digits. ``bprun -m dataset=digits 'model.hidden=[128,64]' trainer.epochs=200 trainer.batch_size=32
   optimizer.lr=0.5,1,2 seed=0,1,2,3`` (12 jobs) with the basic launcher and with
   ``hydra/launcher=joblib hydra.launcher.n_jobs=2``, taking turns. Target: speedup >= 1.5x.
   The children's final ``train_mse`` (and final weights, ``weights.npz``) are compared by
   (lr, seed) across launchers and repeats for bit-identity (``trainer.blas_threads=1``, the
   default, fixes BLAS threads; the ``blas.threads`` tags are listed). The MLflow run times
   split each sweep into start-up, jobs and summary. A capacity control runs the same digits
   training (``tracking=none``) in one process alone, then in two processes at once (started
   together through a file barrier): the speedup two processes can get on this machine right
   now, which bounds what any 2-worker launcher can reach.

Every sweep runs in a fresh temporary directory with ``MLFLOW_TRACKING_URI=sqlite:///<dir>/
mlflow.db``; everything is removed at the end. The machine is shared: the load average is
printed at start and end, and for every subprocess sweep the machine's CPU use
(``/proc/stat``: busy and steal, over both cores) next to the sweep's own (``os.times`` of
waited-for children), so that a noisy measurement shows as one.
"""

from __future__ import annotations

import time

MODULE_START = time.monotonic()  # the instrumented child's first moment after interpreter start-up

import argparse  # noqa: E402  (stdlib only at module level: the child's start-up stays honest)
import contextlib  # noqa: E402
import cProfile  # noqa: E402
import hashlib  # noqa: E402
import importlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

from benchmark_common import (  # noqa: E402  (standard library only)
    REPOSITORY,
    bprun_executable,
    compose,
    describe_environment,
    load_average,
    log,
    median,
    print_report,
)

SCRIPT = Path(__file__).resolve()
if str(REPOSITORY) not in sys.path:  # running the file directly, without an installed package
    sys.path.insert(0, str(REPOSITORY))

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
JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]

EXPERIMENT = "backprop-runner"
PROFILE_JOBS = 8
SWEEP_ENVIRONMENT = ("BPRUN_SWEEP_PARENT_RUN_ID", "BPRUN_SWEEP_EXPERIMENT_ID", "BPRUN_SWEEP_TRACKING_URI")
BASE_ENVIRONMENT = {key: value for key, value in os.environ.items()
                    if key != "MLFLOW_TRACKING_URI" and key not in SWEEP_ENVIRONMENT}

# Functions timed in the instrumented sweep and in the in-process loop: (module, attribute).
# Missing ones are skipped, so the script keeps working while runner/ changes. Nothing that runs
# once per epoch is listed (the timers would inflate the epochs they are compared with).
RUNNER_SPANS = [
    ("runner.experiment", "validate"),
    ("runner.experiment", "load_dataset"),
    ("runner.provenance", "provenance_tags"),
    ("runner.provenance", "project_git_state"),
    ("runner.provenance", "git_state"),
    ("runner.provenance", "git_diff"),
    ("runner.provenance", "_run_git"),
    ("runner.provenance", "blas_tags"),
    ("runner.datasets", "Dataset.fingerprint"),
    ("runner.tracking", "check_store"),
    ("runner.tracking", "ensure_experiment"),
    ("runner.tracking", "MlflowRun.__init__"),
    ("runner.tracking", "MlflowRun.__enter__"),
    ("runner.tracking", "log_params"),
    ("runner.tracking", "MlflowRun.write_text_artifacts"),
    ("runner.experiment", "_point_hydra_folder_at"),
    ("runner.tracking", "MlflowRun.log_dataset"),
    ("runner.telemetry", "TensorWriter.on_train_begin"),
    ("runner.tracking", "MlflowRun.flush"),
    ("runner.telemetry", "TensorWriter.close"),
    ("runner.experiment", "_save_plots"),
    ("runner.tracking", "MlflowRun.set_tags"),
    ("runner.experiment", "_save_model"),
    ("runner.tracking", "MlflowRun.__exit__"),
    ("runner.sweep", "SweepCallback.on_multirun_end"),
    ("runner.sweep", "summarize_sweep"),
    ("runner.report", "sweep_children"),
    ("runner.report", "runs_table"),
    ("runner.report", "format_table"),
    ("runner.report", "write_report"),
]
MLFLOW_SPANS = [  # installed once mlflow is imported
    ("mlflow.tracking.client", "MlflowClient.create_run"),
    ("mlflow.tracking.client", "MlflowClient.log_batch"),
    ("mlflow.tracking.client", "MlflowClient.log_inputs"),
    ("mlflow.tracking.client", "MlflowClient.set_terminated"),
    ("mlflow.tracking.client", "MlflowClient.log_artifacts"),
    ("mlflow.tracking.client", "MlflowClient.get_run"),
    ("mlflow.tracking.client", "MlflowClient.search_runs"),
    ("mlflow.tracking.client", "MlflowClient.get_metric_history"),
    ("mlflow.tracking.client", "MlflowClient.set_tag"),
]
HYDRA_SPANS = [  # the instrumented sweep only
    ("hydra._internal.config_loader_impl", "ConfigLoaderImpl.load_sweep_config"),
    ("hydra.core.utils", "_save_config"),
    ("hydra.core.utils", "configure_log"),
    ("hydra._internal.core_plugins.basic_launcher", "configure_log"),
]
DESCRIPTIONS = {
    "experiment.validate": "validate the config",
    "experiment.load_dataset": "load the data set",
    "provenance.provenance_tags": "provenance tags (git, versions, BLAS, config hash)",
    "provenance.project_git_state": "git state of the runner's checkout",
    "provenance.git_state": "`git rev-parse` + `git status`",
    "provenance.git_diff": "`git diff HEAD` + untracked list (tree is dirty)",
    "provenance._run_git": "each `git` subprocess",
    "provenance.blas_tags": "BLAS tags (threadpoolctl)",
    "datasets.Dataset.fingerprint": "data set sha256",
    "tracking.check_store": "check the store",
    "tracking.ensure_experiment": "store / experiment lookup",
    "tracking.MlflowRun.__init__": "MlflowClient + SQLite metric writer",
    "tracking.MlflowRun.__enter__": "run creation: create_run, artifact dir, params",
    "client.MlflowClient.create_run": "`create_run`",
    "tracking.log_params": "params (`log_batch`)",
    "client.MlflowClient.log_batch": "`log_batch` (params, tags)",
    "tracking.MlflowRun.write_text_artifacts": "config.yaml, overrides.yaml, git_diff.patch",
    "experiment._point_hydra_folder_at": "mlflow_run.json in the job folder",
    "tracking.MlflowRun.log_dataset": "data set input (`mlflow.data.from_numpy`, `log_inputs`)",
    "client.MlflowClient.log_inputs": "`log_inputs`",
    "telemetry.TensorWriter.on_train_begin": "open the tensor files",
    "tracking.MlflowRun.flush": "metric flush (direct SQLite)",
    "telemetry.TensorWriter.close": "close the tensor files",
    "experiment._save_plots": "plots: handed to the helper process (in a sweep; waits only while 2 runs are queued), else drawn here",
    "tracking.MlflowRun.set_tags": "stop_reason / epochs_run tags",
    "experiment._save_model": "weights.npz + pyfunc model (`mlflow.pyfunc.save_model`)",
    "tracking.MlflowRun.__exit__": "end of run: final flush, set_terminated",
    "client.MlflowClient.set_terminated": "`set_terminated`",
    "client.MlflowClient.get_run": "`get_run`",
    "client.MlflowClient.search_runs": "`search_runs`",
    "client.MlflowClient.get_metric_history": "`get_metric_history`",
    "client.MlflowClient.log_artifacts": "`log_artifacts`",
    "client.MlflowClient.set_tag": "`set_tag`",
    "sweep.summarize_sweep": "sweep summary",
    "report.sweep_children": "find the children",
    "report.runs_table": "runs table (params, metric histories)",
    "report.format_table": "format the console table",
    "report.write_report": "CSV, Markdown, plots",
    "config_loader_impl.ConfigLoaderImpl.load_sweep_config": "compose the job's config",
    "utils._save_config": "`.hydra/*.yaml` (3 files)",
    "utils.configure_log": "job logging setup",
    "basic_launcher.configure_log": "logging reset after the job",
}


# --- small helpers ----------------------------------------------------------------------------
def sweep_environment(directory: Path) -> dict[str, str]:
    return {**BASE_ENVIRONMENT, "MLFLOW_TRACKING_URI": f"sqlite:///{directory / 'mlflow.db'}"}


def cpu_jiffies() -> tuple[int, int, int]:
    """(total, idle + iowait, steal) clock ticks of all CPUs since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(value) for value in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0, 0
    fields += [0] * (8 - len(fields))
    return sum(fields[:8]), fields[3] + fields[4], fields[7]


@dataclass
class Meter:
    """Wall time, CPU of waited-for children, and the machine's CPU use over an interval."""

    wall: float = 0.0
    children_cpu: float = 0.0
    busy: float = float("nan")  # fraction of all CPUs busy (anyone), steal excluded
    steal: float = float("nan")
    launch_epoch: float = 0.0  # time.time() at the start, to line up with MLflow's timestamps
    launch: float = 0.0  # time.monotonic() at the start
    end: float = 0.0

    @property
    def own(self) -> float:
        return self.children_cpu / (self.wall * (os.cpu_count() or 1)) if self.wall else float("nan")


def adopt_orphans() -> None:
    """Become the reaper of this process's orphaned descendants (Linux). A joblib sweep's workers
    are forked by a fork server that bprun starts and does not wait for: when it ends after bprun,
    its CPU time (its workers' included) is counted in ``os.times`` here only if this process
    waits for it, in ``reap_orphans``."""
    import ctypes

    PR_SET_CHILD_SUBREAPER = 36
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError) as error:
        log(f"cannot adopt orphaned processes ({error}): a joblib sweep's CPU share is undercounted")


def reap_orphans() -> None:
    """Wait for every descendant that outlived its parent (see ``adopt_orphans``)."""
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


@contextlib.contextmanager
def metered() -> Any:
    meter = Meter()
    times, jiffies = os.times(), cpu_jiffies()
    meter.launch_epoch, meter.launch = time.time(), time.monotonic()
    try:
        yield meter
    finally:
        meter.end = time.monotonic()
        meter.wall = meter.end - meter.launch
        reap_orphans()
        after, jiffies_after = os.times(), cpu_jiffies()
        meter.children_cpu = (after.children_user - times.children_user) + (after.children_system - times.children_system)
        total = jiffies_after[0] - jiffies[0]
        if total > 0:
            meter.busy = (total - (jiffies_after[1] - jiffies[1]) - (jiffies_after[2] - jiffies[2])) / total
            meter.steal = (jiffies_after[2] - jiffies[2]) / total


# --- timing wrappers (shared by the instrumented child and the in-process loop) ---------------
@dataclass
class Job:
    start: float  # run_experiment called
    begin: float  # on_train_begin
    end: float  # on_train_end
    stop: float  # run_experiment returned

    @property
    def before(self) -> float:
        return self.begin - self.start

    @property
    def epochs(self) -> float:
        return self.end - self.begin

    @property
    def after(self) -> float:
        return self.stop - self.end

    @property
    def total(self) -> float:
        return self.stop - self.start


_clock_class: Any = None


def make_clock() -> Any:
    """An engine observer that notes when training begins and ends (time.monotonic)."""
    global _clock_class
    if _clock_class is None:
        from engine import Observer

        class Clock(Observer):
            wants_gradients = False

            def __init__(self) -> None:
                self.begin = self.end = float("nan")

            def on_train_begin(self, network: Any) -> None:
                self.begin = time.monotonic()

            def on_train_end(self, history: Any) -> None:
                self.end = time.monotonic()

        _clock_class = Clock
    return _clock_class()


class Spans:
    """Records (name, start, end, depth) for wrapped functions, and the jobs' phases."""

    def __init__(self) -> None:
        self.records: list[tuple[str, float, float, int]] = []
        self.jobs: list[Job] = []
        self.stack: list[str] = []
        self._restore: list[tuple[Any, str, Any]] = []

    @contextlib.contextmanager
    def span(self, name: str) -> Any:
        depth = len(self.stack)
        self.stack.append(name)
        start = time.monotonic()
        try:
            yield
        finally:
            end = time.monotonic()
            self.stack.pop()
            self.records.append((name, start, end, depth))

    def timed(self, name: str, function: Callable) -> Callable:
        records, stack = self.records, self.stack

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            depth = len(stack)
            stack.append(name)
            start = time.monotonic()
            try:
                return function(*args, **kwargs)
            finally:
                end = time.monotonic()
                stack.pop()
                records.append((name, start, end, depth))

        wrapper.__wrapped__ = function  # type: ignore[attr-defined]
        wrapper.__name__ = getattr(function, "__name__", name)
        return wrapper

    def _replace(self, owner: Any, leaf: str, replacement: Any, original: Any) -> None:
        setattr(owner, leaf, replacement)
        self._restore.append((owner, leaf, original))

    def wrap_all(self, targets: list[tuple[str, str]]) -> None:
        for module_name, attribute in targets:
            try:
                owner: Any = importlib.import_module(module_name)
                *path, leaf = attribute.split(".")
                for part in path:
                    owner = getattr(owner, part)
                original = owner.__dict__[leaf] if isinstance(owner, type) else getattr(owner, leaf)
            except Exception:  # not in this version of the runner (or of mlflow / hydra)
                continue
            self._replace(owner, leaf, self.timed(f"{module_name.split('.')[-1]}.{attribute}", original), original)

    def run_job_timed(self, function: Callable, *args: Any, **kwargs: Any) -> Any:
        """Call ``run_experiment`` with a clock observer added; record the job's phases."""
        clock = make_clock()
        kwargs["extra_observers"] = [*kwargs.get("extra_observers", ()), clock]
        start = time.monotonic()
        try:
            with self.span("run_experiment"):
                return function(*args, **kwargs)
        finally:
            self.jobs.append(Job(start, clock.begin, clock.end, time.monotonic()))

    def wrap_run_experiment(self) -> None:
        module = importlib.import_module("runner.experiment")
        original = module.run_experiment

        def run_experiment(*args: Any, **kwargs: Any) -> Any:
            return self.run_job_timed(original, *args, **kwargs)

        self._replace(module, "run_experiment", run_experiment, original)

    def wrap_hydra_jobs(self) -> None:
        """Time Hydra's ``run_job`` (as the basic launcher calls it) and the task inside it."""
        module = importlib.import_module("hydra._internal.core_plugins.basic_launcher")
        original = module.run_job

        def run_job(*args: Any, **kwargs: Any) -> Any:
            task = kwargs.get("task_function")
            if task is not None:
                kwargs["task_function"] = self.timed("task function", task)
            with self.span("basic_launcher.run_job"):
                return original(*args, **kwargs)

        self._replace(module, "run_job", run_job, original)

    def wrap_multirun_start(self) -> None:
        """The sweep's start (the callback's ``on_multirun_start``), then, once the sweeper has
        composed the jobs, the parent run: the mlflow import timed on its own, then the store,
        experiment and parent run (``start_parent``); mlflow's client is wrapped once it is
        imported."""
        from runner.sweep import SweepCallback

        original_start = SweepCallback.__dict__["on_multirun_start"]
        original_parent = SweepCallback.__dict__["start_parent"]

        def on_multirun_start(callback: Any, *args: Any, **kwargs: Any) -> Any:
            with self.span("sweep.SweepCallback.on_multirun_start"):
                return original_start(callback, *args, **kwargs)

        def start_parent(callback: Any, *args: Any, **kwargs: Any) -> Any:
            with self.span("import mlflow"):
                importlib.import_module("mlflow.tracking")
            try:
                with self.span("sweep.SweepCallback.start_parent"):
                    return original_parent(callback, *args, **kwargs)
            finally:
                self.wrap_all(MLFLOW_SPANS)

        self._replace(SweepCallback, "on_multirun_start", on_multirun_start, original_start)
        self._replace(SweepCallback, "start_parent", start_parent, original_parent)

    def restore(self) -> None:
        for owner, leaf, original in reversed(self._restore):
            setattr(owner, leaf, original)
        self._restore.clear()


# --- the instrumented child -------------------------------------------------------------------
def child_main(output: str, bprun_arguments: list[str]) -> None:
    """``bprun -m ...`` in this process with timers around Hydra's and the runner's steps;
    writes the timeline to ``output`` (JSON) before the interpreter exits."""
    import runner.app
    import runner.cli

    imported = time.monotonic()
    spans = Spans()
    with spans.span("moved imports"):
        # Imported here (not by the first job) so that their functions can be wrapped.
        for name in ("runner.experiment", "runner.tracking", "runner.telemetry", "runner.provenance",
                     "runner.datasets", "runner.sweep", "runner.report", "runner.plots", "engine"):
            importlib.import_module(name)
    spans.wrap_all(RUNNER_SPANS + HYDRA_SPANS)
    spans.wrap_run_experiment()
    spans.wrap_hydra_jobs()
    spans.wrap_multirun_start()
    sys.argv = ["bprun", *bprun_arguments]
    code: Any = 0
    main_start = time.monotonic()
    try:
        runner.cli.main()
    except SystemExit as exit_:
        code = exit_.code
    finally:
        main_end = time.monotonic()
        Path(output).write_text(json.dumps({
            "module_start": MODULE_START, "imported": imported, "main_start": main_start, "main_end": main_end,
            "records": spans.records, "jobs": [[job.start, job.begin, job.end, job.stop] for job in spans.jobs],
            "code": code if isinstance(code, int) else (0 if code is None else 1),
        }))
        if os.environ.get("BENCH_SWEEPS_GC_FREEZE"):
            # Exit probe: move every live object out of the collector's reach, so that the
            # collections during interpreter finalization have (almost) nothing to scan.
            import gc

            gc.freeze()
    sys.exit(code)


def capacity_child(barrier: str, count: int) -> None:
    """One digits training (tracking=none) after a warm-up, started when ``count`` processes
    are ready (files in ``barrier``); prints its epoch time as JSON."""
    warnings.simplefilter("ignore")
    import runner.app  # noqa: F401  (registers the schemas)
    from runner.experiment import run_experiment

    cfg = compose([*DIGITS_FIXED, "optimizer.lr=1", "seed=0", "tracking=none"])
    run_experiment(compose([*DIGITS_FIXED, "optimizer.lr=1", "seed=0", "tracking=none", "trainer.epochs=3"]))
    Path(barrier, f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + 120
    while len(list(Path(barrier).glob("ready-*"))) < count and time.monotonic() < deadline:
        time.sleep(0.002)
    clock = make_clock()
    cpu = time.thread_time()
    run_experiment(cfg, extra_observers=[clock])
    print(json.dumps({"epochs": clock.end - clock.begin, "cpu": time.thread_time() - cpu}))


# --- subprocess sweeps ------------------------------------------------------------------------
@dataclass
class SweepRun:
    kind: str
    directory: Path
    meter: Meter
    code: int
    store: "StoreSummary | None" = None
    child: dict | None = None  # the instrumented child's JSON


def run_subprocess_sweep(kind: str, argv: list[str], work: Path, number: int,
                         extra_environment: dict[str, str] | None = None) -> SweepRun:
    directory = work / f"{kind}-{number}"
    directory.mkdir()
    environment = {**sweep_environment(directory), **(extra_environment or {})}
    with open(directory / "stdout.txt", "wb") as out, open(directory / "stderr.txt", "wb") as err:
        with metered() as meter:
            completed = subprocess.run(argv, cwd=directory, env=environment, stdout=out, stderr=err)
    if completed.returncode != 0:
        tail = (directory / "stderr.txt").read_text(errors="replace").splitlines()[-15:]
        log(f"  {kind} sweep exited {completed.returncode}:\n    " + "\n    ".join(tail))
    return SweepRun(kind, directory, meter, completed.returncode)


def real_sweep(kind: str, arguments: list[str], work: Path, number: int) -> SweepRun:
    run = run_subprocess_sweep(kind, [bprun_executable(), "-m", *arguments], work, number)
    run.store = read_store(run.directory)
    return run


def instrumented_sweep(kind: str, arguments: list[str], work: Path, number: int,
                       extra_environment: dict[str, str] | None = None) -> SweepRun:
    output = work / f"{kind}-{number}.json"
    run = run_subprocess_sweep(kind, [sys.executable, str(SCRIPT), "--instrumented-child", str(output), "-m", *arguments],
                               work, number, extra_environment)
    run.child = json.loads(output.read_text()) if output.exists() else None
    run.store = read_store(run.directory)
    return run


@dataclass
class Child:
    key: tuple[str, str]  # (optimizer.lr, seed)
    status: str
    train_mse: float
    start: float  # seconds since the epoch
    end: float
    blas_threads: str
    weights: str  # sha256 of the final weights


@dataclass
class StoreSummary:
    parent_status: str = "missing"
    parent_start: float = float("nan")
    parent_end: float = float("nan")
    children: list[Child] = field(default_factory=list)
    stray_runs: int = 0  # runs neither the parent nor its children (wrong nesting or experiment)


def weights_digest(artifact_uri: str) -> str:
    from urllib.parse import unquote, urlparse

    import numpy as np

    path = Path(unquote(urlparse(artifact_uri).path)) / "weights.npz"
    if not path.exists():
        return "missing"
    digest = hashlib.sha256()
    with np.load(path) as arrays:
        for name in sorted(arrays.files):
            array = arrays[name]
            digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def read_store(directory: Path) -> StoreSummary:
    from mlflow.tracking import MlflowClient

    summary = StoreSummary()
    database = directory / "mlflow.db"
    if not database.exists():
        return summary
    client = MlflowClient(f"sqlite:///{database}")
    experiments = client.search_experiments()
    runs = [run for experiment in experiments
            for run in client.search_runs([experiment.experiment_id], max_results=10000)]
    parents = [run for run in runs if run.data.tags.get("bprun.sweep") == "true"]
    if not parents:
        summary.stray_runs = len(runs)
        return summary
    parent = parents[0]
    summary.parent_status = parent.info.status
    summary.parent_start = parent.info.start_time / 1e3
    summary.parent_end = (parent.info.end_time or 0) / 1e3 or float("nan")
    for run in runs:
        if run.info.run_id == parent.info.run_id:
            continue
        if run.data.tags.get("mlflow.parentRunId") != parent.info.run_id:
            summary.stray_runs += 1
            continue
        summary.children.append(Child(
            key=(run.data.params.get("optimizer.lr", "?"), run.data.params.get("seed", "?")),
            status=run.info.status, train_mse=run.data.metrics.get("train_mse", float("nan")),
            start=run.info.start_time / 1e3, end=(run.info.end_time or 0) / 1e3 or float("nan"),
            blas_threads=run.data.tags.get("blas.threads", "?"), weights=weights_digest(run.info.artifact_uri)))
    summary.stray_runs += len(parents) - 1
    return summary


def store_check(run: SweepRun, jobs: int) -> str | None:
    """A problem with a sweep's store, or None when it holds what a good sweep leaves."""
    store = run.store
    if run.code != 0:
        return f"{run.kind}: exit code {run.code}"
    if store is None or store.parent_status != "FINISHED":
        return f"{run.kind}: parent run {store.parent_status if store else 'unreadable'}"
    finished = sum(child.status == "FINISHED" for child in store.children)
    if finished != jobs or store.stray_runs:
        return f"{run.kind}: {finished}/{jobs} children FINISHED, {store.stray_runs} stray runs"
    return None


# --- part xor: analysis of the instrumented sweep ---------------------------------------------
TIMELINE_ROWS = [
    ("startup", "interpreter start-up (launch to the script's first line)", "one-off"),
    ("imports", "`import runner.app` (hydra, omegaconf, numpy, engine)", "one-off"),
    ("moved", "`import runner.experiment` & co (the first job would do it; moved for the timers)", "one-off"),
    ("hydra_start", "Hydra start-up: arguments, primary config, sweeper, launcher, callbacks (`on_multirun_start`: "
                    "the plot helper)", "one-off"),
    ("validate", "per job: the sweeper composes every job's config once up front (`validate_batch_is_legal`)",
     "per job"),
    ("mlflow_import", "`import mlflow` (first use: the parent run, once the jobs composed)", "one-off"),
    ("parent", "sweep start: store creation, experiment, parent run (`SweepCallback.start_parent`)", "one-off"),
    ("launcher_setup", "sweeper and launcher set-up before the first job (besides that)", "one-off"),
    ("compose", "per job: the launcher composes the job's config again (`load_sweep_config`; not with bprun's patch)",
     "per job"),
    ("hydra_job", "per job: Hydra's `run_job` around the task (folder, `.hydra/*.yaml`, logging)", "per job"),
    ("task_rest", "per job: task outside `run_experiment` (summary lines)", "per job"),
    ("before", "per job: `run_experiment` before the first epoch", "per job"),
    ("epochs", "per job: **epochs** (training with per-epoch telemetry)", "training"),
    ("after", "per job: `run_experiment` after the last epoch", "per job"),
    ("gap", "per job: launcher between jobs (log line, logging reset)", "per job"),
    ("summary", "sweep end: summary table, plots, artifacts, parent status (`on_multirun_end`)", "one-off"),
    ("after_summary", "after the summary until `main()` returns", "one-off"),
    ("exit", "interpreter exit (atexit, teardown)", "one-off"),
]


TIMELINE_DETAILS = {  # functions shown under a timeline row: those called inside its span
    "parent": ["tracking.check_store", "tracking.ensure_experiment", "tracking.log_params"],
    "summary": ["sweep.summarize_sweep", "report.sweep_children", "report.runs_table", "report.format_table",
                "report.write_report", "client.MlflowClient.log_artifacts", "client.MlflowClient.set_terminated"],
}
DETAIL_DESCRIPTIONS = {
    "tracking.ensure_experiment": "`ensure_experiment`: SQLite schema creation (SQLAlchemy, alembic migrations) "
                                  "and the experiment",
    "tracking.check_store": "`check_store`: store folder writable",
    "tracking.log_params": "`log_params`: the swept values on the parent",
    "sweep.summarize_sweep": "`summarize_sweep`",
    "report.sweep_children": "`sweep_children`: search the children",
    "report.runs_table": "`runs_table`: params and metric histories into a DataFrame",
    "report.format_table": "`format_table`: the console table",
    "report.write_report": "`write_report`: CSV, Markdown, learning-curve and final-vs-key plots",
    "client.MlflowClient.log_artifacts": "`log_artifacts`: copy the summary to the parent",
    "client.MlflowClient.set_terminated": "`set_terminated`: parent FINISHED",
}


@dataclass
class ChildAnalysis:
    rows: dict[str, float]
    total: float
    jobs: list[dict[str, Any]]  # per job: phase times and function times
    problems: list[str]
    details: dict[str, dict[str, float]] = field(default_factory=dict)


def analyse_child(run: SweepRun) -> ChildAnalysis | None:
    data = run.child
    if not data:
        return None
    records = sorted((tuple(record) for record in data["records"]), key=lambda record: record[1])
    jobs = [Job(*values) for values in data["jobs"]]

    def every(name: str) -> list[tuple]:
        return [record for record in records if record[0] == name]

    def first(name: str) -> tuple | None:
        found = every(name)
        return found[0] if found else None

    moved, mlflow_import = first("moved imports"), first("import mlflow")
    multirun_start, parent = first("sweep.SweepCallback.on_multirun_start"), first("sweep.SweepCallback.start_parent")
    summary = first("sweep.SweepCallback.on_multirun_end")
    composes = every("config_loader_impl.ConfigLoaderImpl.load_sweep_config")
    run_jobs, tasks = every("basic_launcher.run_job"), every("task function")
    experiments = every("run_experiment")
    problems = []
    if None in (moved, mlflow_import, multirun_start, parent, summary):
        return ChildAnalysis({}, run.meter.wall, [], ["the instrumented sweep did not reach every stage"])
    # Hydra's basic sweeper composes each job's config once to validate the batch, then its
    # launcher composes it again right before the job; bprun hands the launcher the config
    # already composed (runner.app._compose_each_job_once), so only the up-front composes remain.
    count = len(run_jobs)
    up_front_only = bool(composes) and bool(run_jobs) and len(composes) == count and composes[-1][2] <= run_jobs[0][1]
    if up_front_only:
        validations, composes = composes, [None] * count
    else:
        validations, composes = (composes[:-count], composes[-count:]) if count else (composes, [])
    if not (len(composes) == len(run_jobs) == len(tasks) == len(jobs) == len(experiments)) or not jobs:
        return ChildAnalysis({}, run.meter.wall, [], [
            f"unexpected job records: {len(composes)} composes, {len(run_jobs)} run_job, {len(tasks)} tasks, "
            f"{len(jobs)} run_experiment"])
    launch, exited = run.meter.launch, run.meter.end
    rows = dict.fromkeys((key for key, _, _ in TIMELINE_ROWS), 0.0)
    rows["startup"] = data["module_start"] - launch
    rows["imports"] = data["imported"] - data["module_start"]
    rows["moved"] = moved[2] - data["imported"]
    rows["hydra_start"] = multirun_start[2] - moved[2]
    rows["validate"] = sum(record[2] - record[1] for record in validations)
    rows["mlflow_import"] = mlflow_import[2] - mlflow_import[1]
    rows["parent"] = parent[2] - parent[1]
    rows["launcher_setup"] = ((run_jobs[0][1] if up_front_only else composes[0][1]) - multirun_start[2]
                              - rows["validate"] - rows["mlflow_import"] - rows["parent"])
    per_job = []
    for number, (compose_, run_job, task, job, experiment) in enumerate(zip(composes, run_jobs, tasks, jobs,
                                                                             experiments)):
        if number + 1 == count:
            following = summary[1]
        else:  # where the next job's work starts
            following = run_jobs[number + 1][1] if up_front_only else composes[number + 1][1]
        phases = {
            "validate": (validations[number][2] - validations[number][1]) if len(validations) == count else 0.0,
            "compose": 0.0 if compose_ is None else compose_[2] - compose_[1],
            "hydra_job": (run_job[2] - run_job[1]) - (task[2] - task[1]),
            "task_rest": (task[2] - task[1]) - job.total,
            "before": job.before, "epochs": job.epochs, "after": job.after,
            "gap": (0.0 if compose_ is None else run_job[1] - compose_[2]) + (following - run_job[2]),
        }
        for key, value in phases.items():
            if key != "validate":  # already summed, outside the jobs' stretch of the timeline
                rows[key] += value
        functions = function_times(records, job, experiment[3])
        for name, window in (("utils._save_config", run_job), ("utils.configure_log", run_job),
                             ("basic_launcher.configure_log", (None, run_job[2], following))):
            inside = [record for record in records if record[0] == name and window[1] <= record[1] < window[2]]
            functions[name] = {"hydra": sum(record[2] - record[1] for record in inside), "calls:hydra": len(inside)}
        per_job.append({**phases, "functions": functions})
    rows["summary"] = summary[2] - summary[1]
    rows["after_summary"] = data["main_end"] - summary[2]
    rows["exit"] = exited - data["main_end"]
    total = exited - launch
    residual = total - sum(rows.values())
    if abs(residual) > 0.01:
        problems.append(f"timeline leaves {residual:.3f} s unaccounted")
    details = {}
    for key, window in (("parent", parent), ("summary", summary)):
        details[key] = {name: sum(record[2] - record[1] for record in records
                                  if record[0] == name and window[1] <= record[1] < window[2])
                        for name in TIMELINE_DETAILS[key]}
    return ChildAnalysis(rows, total, per_job, problems, details)


def function_times(records: list[tuple], job: Job, base_depth: int) -> dict[str, dict[str, float]]:
    """Seconds per wrapped function inside one ``run_experiment`` call, by phase, with the
    call count and the nesting depth below ``run_experiment``."""
    functions: dict[str, dict[str, float]] = {}
    for name, start, end, depth in records:
        if not job.start <= start < job.stop or name in ("run_experiment", "task function"):
            continue
        phase = "before" if start < job.begin else "epochs" if start < job.end else "after"
        entry = functions.setdefault(name, {"before": 0.0, "epochs": 0.0, "after": 0.0})
        entry[phase] += end - start
        entry[f"calls:{phase}"] = entry.get(f"calls:{phase}", 0) + 1
        entry.setdefault(f"depth:{phase}", depth - base_depth - 1)
        entry.setdefault(f"order:{phase}", start - job.start)
    return functions


# --- part xor: the in-process loop ------------------------------------------------------------
def xor_job_overrides() -> list[list[str]]:
    """The 24 jobs in Hydra's order (the last sweep key varies fastest)."""
    return [[*XOR_FIXED, f"optimizer.lr={lr}", f"seed={seed}"] for lr in XOR_LRS for seed in XOR_SEEDS]


@contextlib.contextmanager
def sweep_like(directory: Path) -> Any:
    """A fresh store with a sweep parent run, announced to jobs as the sweep callback does."""
    from mlflow.tracking import MlflowClient

    from runner.tracking import ensure_experiment

    directory.mkdir()
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    experiment_id = ensure_experiment(uri, EXPERIMENT)
    parent = MlflowClient(uri).create_run(experiment_id, run_name="in-process sweep", tags={
        "bprun.sweep": "true", "sweep.swept_keys": json.dumps(["optimizer.lr", "seed"])})
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", *SWEEP_ENVIRONMENT)}
    os.environ.update(dict(zip(("MLFLOW_TRACKING_URI", *SWEEP_ENVIRONMENT),
                               (uri, parent.info.run_id, experiment_id, uri))))
    try:
        yield uri, parent.info.run_id
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def summarize_quietly(uri: str, parent_run_id: str) -> float:
    from runner.sweep import summarize_sweep

    start = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()):
        summarize_sweep(uri, parent_run_id)
    return time.monotonic() - start


@dataclass
class InProcess:
    none: list[list[Job]] = field(default_factory=list)  # per repeat, 24 jobs
    local: list[list[Job]] = field(default_factory=list)
    local_functions: list[dict[str, dict[str, float]]] = field(default_factory=list)  # per job, all repeats
    summaries: list[float] = field(default_factory=list)
    warmup: dict[str, float] = field(default_factory=dict)
    profile: list[str] = field(default_factory=list)


def in_process_xor(repeats: int, work: Path, profile: bool) -> InProcess:
    import runner.app  # noqa: F401  (registers the schemas)
    from runner.experiment import run_experiment

    start_dir = str(work)  # not a git work tree, like the sweep's temporary directory
    overrides = xor_job_overrides()
    configs = {tracking: [compose([*job, f"tracking={tracking}"]) for job in overrides]
               for tracking in ("none", "local")}
    result = InProcess()
    spans = Spans()
    # Warm-up: imports (mlflow, matplotlib, pandas, pyfunc), data set caches, a first summary.
    start = time.monotonic()
    spans.run_job_timed(run_experiment, configs["none"][0], start_dir=start_dir)
    result.warmup["none"] = time.monotonic() - start
    with sweep_like(work / "warm-up") as (uri, parent):
        start = time.monotonic()
        spans.run_job_timed(run_experiment, configs["local"][0], start_dir=start_dir)
        result.warmup["local"] = time.monotonic() - start
        logging.getLogger("mlflow").setLevel(logging.ERROR)
        result.warmup["summary"] = summarize_quietly(uri, parent)
    for repeat in range(repeats):
        for tracking in (("none", "local") if repeat % 2 == 0 else ("local", "none")):
            log(f"  in-process xor loop, tracking={tracking}, repeat {repeat + 1}/{repeats} ...")
            spans = Spans()
            if tracking == "none":
                for cfg in configs["none"]:
                    spans.run_job_timed(run_experiment, cfg, start_dir=start_dir)
                result.none.append(spans.jobs)
                continue
            spans.wrap_all(RUNNER_SPANS + MLFLOW_SPANS)
            try:
                with sweep_like(work / f"in-process-{repeat}") as (uri, parent):
                    for cfg in configs["local"]:
                        spans.run_job_timed(run_experiment, cfg, start_dir=start_dir)
                    result.summaries.append(summarize_quietly(uri, parent))
            finally:
                spans.restore()
            result.local.append(spans.jobs)
            experiments = [record for record in spans.records if record[0] == "run_experiment"]
            for job, experiment in zip(spans.jobs, experiments):
                result.local_functions.append(function_times(spans.records, job, experiment[3]))
    if profile:
        log(f"  cProfile of {PROFILE_JOBS} in-process tracked jobs ...")
        profiler = cProfile.Profile()
        with sweep_like(work / "profile"):
            for cfg in configs["local"][:PROFILE_JOBS]:
                profiler.enable()
                run_experiment(cfg, start_dir=start_dir)
                profiler.disable()
        stats = pstats.Stats(profiler)
        result.profile = top_profile_lines(stats, PROFILE_JOBS, 24) + [""] + selected_profile_lines(stats, PROFILE_JOBS)
    return result


PROFILE_SELECTION = (  # (file suffix, function names or None for all) shown from the same profile
    ("runner/experiment.py", None), ("runner/tracking.py", None), ("runner/provenance.py", None),
    ("runner/telemetry.py", None), ("runner/plots.py", ("save_training_plots",)),
    ("runner/pyfunc_model.py", ("save_pyfunc_model",)), ("runner/datasets.py", None), ("runner/doctor.py", None),
    ("engine/training.py", ("train",)),
    ("mlflow/tracking/client.py", ("create_run", "log_batch", "log_inputs", "set_terminated", "set_tag")),
    ("mlflow/pyfunc/__init__.py", ("save_model",)), ("mlflow/data/__init__.py", None),
    ("subprocess.py", ("run",)),
)


def selected_profile_lines(stats: pstats.Stats, jobs: int, count: int = 30) -> list[str]:
    """The runner's own functions and the MLflow calls they make, from the same profile."""
    entries = []
    for (filename, line, function), (_calls, primitive, own, cumulative, _callers) in stats.stats.items():
        for suffix, names in PROFILE_SELECTION:
            if filename.endswith(suffix) and (names is None or function in names):
                entries.append((cumulative, own, primitive, filename, line, function))
                break
    entries.sort(key=lambda entry: -entry[0])
    lines = ["Selected entries of the same profile (the runner's functions, the MLflow calls, git subprocesses), "
             "by cumulative time per job:", "  cum s/job  own s/job  calls/job  function"]
    for cumulative, own, calls, filename, line, function in entries[:count]:
        for root in (str(REPOSITORY) + os.sep, os.sep + "site-packages" + os.sep, os.sep + "lib" + os.sep):
            if root in filename:
                filename = filename.split(root, 1)[1]
        lines.append(f"  {cumulative / jobs:9.4f}  {own / jobs:9.4f}  {calls / jobs:9.1f}  {filename}:{line}({function})")
    return lines


def top_profile_lines(stats: pstats.Stats, jobs: int, count: int) -> list[str]:
    entries = []
    for (filename, line, function), (_calls, primitive, own, cumulative, _callers) in stats.stats.items():
        if filename == __file__ or "_lsprof.Profiler" in function:
            continue
        entries.append((cumulative, own, primitive, filename, line, function))
    entries.sort(key=lambda entry: -entry[0])
    lines = [f"cProfile of {jobs} in-process tracked xor jobs (tracking=local, children of a parent run, after "
             "warm-up), sorted by cumulative time; per job (inflated by profiling: rank, do not add):",
             "  cum s/job  own s/job  calls/job  function"]
    for cumulative, own, calls, filename, line, function in entries[:count]:
        for root in (str(REPOSITORY) + os.sep, os.sep + "site-packages" + os.sep, os.sep + "lib" + os.sep):
            if root in filename:
                filename = filename.split(root, 1)[1]
        lines.append(f"  {cumulative / jobs:9.4f}  {own / jobs:9.4f}  {calls / jobs:9.1f}  {filename}:{line}({function})")
    return lines


# --- part xor ---------------------------------------------------------------------------------
def part_xor(repeats: int, work: Path, profile: bool) -> tuple[list[str], list[str]]:
    real: list[SweepRun] = []
    instrumented: list[SweepRun] = []
    log("part xor: warm-up sweep (page cache, .pyc files) ...")
    run_subprocess_sweep("warm-up", [bprun_executable(), "-m", *XOR_SWEEP[:2], "optimizer.lr=1", "seed=0,1"], work, 0)
    for repeat in range(repeats):
        for kind in (("real", "instrumented") if repeat % 2 == 0 else ("instrumented", "real")):
            log(f"part xor: {kind} {XOR_JOBS}-job sweep, repeat {repeat + 1}/{repeats} ...")
            if kind == "real":
                real.append(real_sweep("xor-real", XOR_SWEEP, work, repeat))
            else:
                instrumented.append(instrumented_sweep("xor-instrumented", XOR_SWEEP, work, repeat))
    log("part xor: in-process loops ...")
    inproc = in_process_xor(repeats, work, profile)
    log("part xor: exit probe (2-job sweeps, with and without gc.freeze() before exit) ...")
    exits: dict[str, list[float]] = {"plain": [], "gc.freeze()": []}
    for number in range(2):
        for variant in exits:
            probe = instrumented_sweep(f"exit-probe-{'freeze' if 'freeze' in variant else 'plain'}",
                                       [*XOR_SWEEP[:2], "optimizer.lr=1", "seed=0,1"], work, number,
                                       {"BENCH_SWEEPS_GC_FREEZE": "1"} if "freeze" in variant else None)
            if probe.child:
                exits[variant].append(probe.meter.end - probe.child["main_end"])

    problems = [problem for run in real + instrumented if (problem := store_check(run, XOR_JOBS))]
    analyses = [analysis for run in instrumented if (analysis := analyse_child(run))]
    for analysis in analyses:
        problems += analysis.problems
    analyses = [analysis for analysis in analyses if analysis.rows]

    wall_real = median([run.meter.wall for run in real])
    wall_instrumented = median([run.meter.wall for run in instrumented])
    pure = median([sum(job.epochs for job in jobs) for jobs in inproc.none])
    telemetry = median([sum(job.epochs for job in jobs) for jobs in inproc.local])
    overhead_a = (wall_real - pure) / XOR_JOBS
    overhead_b = (wall_real - telemetry) / XOR_JOBS
    overhead_c = median([(analysis.total - analysis.rows["epochs"]) / XOR_JOBS for analysis in analyses])
    epochs_c = median([analysis.rows["epochs"] for analysis in analyses])

    lines = [f"### 1. {XOR_JOBS}-job xor grid (2-4-1, 500 epochs, basic launcher, default telemetry): median of {repeats}",
             "", f"`bprun -m {shlex.join(XOR_SWEEP)}`", "",
             "| sweep subprocess | wall s (median) | min s | max s | machine CPU busy % | of which this sweep % | "
             "steal % |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, runs in (("`bprun -m` (real)", real), ("same, instrumented (`--instrumented-child`)", instrumented)):
        walls = [run.meter.wall for run in runs]
        lines.append(f"| {label} | {median(walls):.2f} | {min(walls):.2f} | {max(walls):.2f} | "
                     f"{100 * median([run.meter.busy for run in runs]):.0f} | "
                     f"{100 * median([run.meter.own for run in runs]):.0f} | "
                     f"{100 * median([run.meter.steal for run in runs]):.1f} |")
    lines += ["", f"Per-job overhead = (sweep wall time - summed training time) / {XOR_JOBS}, for each definition of the "
              "training time:", "",
              "| definition of the summed training time | sweep wall s | summed training s | training per job s | "
              "**overhead per job s** | target |", "| --- | ---: | ---: | ---: | ---: | --- |",
              f"| (a) pure training: epochs with tracking=none, in-process | {wall_real:.2f} | {pure:.2f} | "
              f"{pure / XOR_JOBS:.3f} | **{overhead_a:.3f}** | {met(overhead_a <= TARGET_OVERHEAD_SECONDS)} |",
              f"| (b) epochs with telemetry on (tracking=local, in-process sweep-like loop) | {wall_real:.2f} | "
              f"{telemetry:.2f} | {telemetry / XOR_JOBS:.3f} | **{overhead_b:.3f}** | "
              f"{met(overhead_b <= TARGET_OVERHEAD_SECONDS)} |",
              f"| (c) epochs inside the instrumented sweep itself | {wall_instrumented:.2f} | {epochs_c:.2f} | "
              f"{epochs_c / XOR_JOBS:.3f} | **{overhead_c:.3f}** | {met(overhead_c <= TARGET_OVERHEAD_SECONDS)} |",
              "", f"(a) - (b) = {overhead_a - overhead_b:.3f} s per job is the per-epoch telemetry (metrics, "
              "gradient norms, tensor snapshots) inside the epochs; it belongs to the training time under (b)."]
    if analyses:
        lines += ["", *timeline_table(analyses, repeats)]
        lines += ["", f"Interpreter exit probe (2-job sweeps, main() returned to process gone, median of 2): "
                  f"{median(exits['plain']):.2f} s as is, {median(exits['gc.freeze()']):.2f} s with `gc.freeze()` "
                  "just before exit: the exit is the garbage collector's final passes over the heap of everything "
                  "imported (mlflow, pandas, matplotlib, scikit-learn, ...), not atexit handlers."]
        lines += ["", *overhead_ranking(analyses, overhead_c)]
        lines += ["", *job_breakdown_table(analyses, inproc)]
    lines += ["", *in_process_table(inproc, repeats)]
    if inproc.profile:
        lines += ["", "```", *inproc.profile, "```"]
    if problems:
        lines += ["", "Problems seen: " + "; ".join(problems)]
    verdicts = [f"1. xor per-job overhead, definition (a) (pure training, tracking=none): {overhead_a:.3f} s, "
                f"target <= {TARGET_OVERHEAD_SECONDS} s: {met(overhead_a <= TARGET_OVERHEAD_SECONDS)}",
                f"1. xor per-job overhead, definition (b) (epochs with telemetry): {overhead_b:.3f} s, "
                f"target <= {TARGET_OVERHEAD_SECONDS} s: {met(overhead_b <= TARGET_OVERHEAD_SECONDS)}",
                f"1. xor per-job overhead, (c) inside the instrumented sweep: {overhead_c:.3f} s "
                f"(cross-check of (b))"]
    return lines, verdicts


def met(condition: bool) -> str:
    return "met" if condition else "**NOT met**"


def timeline_table(analyses: list[ChildAnalysis], repeats: int) -> list[str]:
    total = median([analysis.total for analysis in analyses])
    lines = [f"Where the wall time of the instrumented sweep goes (median of {len(analyses)} runs; each row's "
             f"median separately, so the rows add up only roughly; per-job rows are summed over the {XOR_JOBS} jobs):", "",
             f"| part of the sweep | kind | s | s per job (/{XOR_JOBS}) | share |", "| --- | --- | ---: | ---: | ---: |"]
    sums = {"one-off": 0.0, "per job": 0.0, "training": 0.0}
    for key, label, kind in TIMELINE_ROWS:
        value = median([analysis.rows[key] for analysis in analyses])
        sums[kind] += value
        lines.append(f"| {label} | {kind} | {value:.3f} | {value / XOR_JOBS:.4f} | {100 * value / total:.1f}% |")
        for name in TIMELINE_DETAILS.get(key, ()):
            detail = median([analysis.details.get(key, {}).get(name, float("nan")) for analysis in analyses])
            lines.append(f"| &nbsp;&nbsp;{DETAIL_DESCRIPTIONS.get(name, name)} | | {detail:.3f} | | |")
    lines.append(f"| **whole sweep, launch to exit** | | **{total:.3f}** | {total / XOR_JOBS:.4f} | 100% |")
    overhead = sums["one-off"] + sums["per job"]
    lines += ["", f"Overhead {overhead:.2f} s = one-off {sums['one-off']:.2f} s "
              f"({sums['one-off'] / XOR_JOBS:.3f} s per job when spread over {XOR_JOBS} jobs) + per-job work "
              f"{sums['per job']:.2f} s ({sums['per job'] / XOR_JOBS:.3f} s per job); training "
              f"{sums['training']:.2f} s."]
    return lines


RANKING_GROUPS = {  # top-level runner functions shown together in the ranking
    "provenance.provenance_tags": "provenance: git state (git subprocesses), versions, BLAS tags, git diff",
    "provenance.project_git_state": "provenance: git state (git subprocesses), versions, BLAS tags, git diff",
    "provenance.git_diff": "provenance: git state (git subprocesses), versions, BLAS tags, git diff",
    "tracking.MlflowRun.__init__": "run creation: create_run, params (`log_batch`), client",
    "tracking.MlflowRun.__enter__": "run creation: create_run, params (`log_batch`), client",
}


def overhead_ranking(analyses: list[ChildAnalysis], overhead: float) -> list[str]:
    """The per-job overhead of the instrumented sweep split into items, largest first: one-off
    parts and each per-job step summed over the jobs, all divided by the number of jobs (so the
    items of one sweep add up to its overhead exactly), then the median over the sweeps."""
    labels = {"validate": "Hydra: the sweeper's up-front compose of each job's config",
              "compose": "Hydra: the launcher's compose of the job's config",
              "hydra_job": "Hydra: `run_job` around the task (folder, `.hydra/*.yaml`, logging)",
              "task_rest": "task outside `run_experiment`", "gap": "launcher between jobs"}
    per_sweep: list[dict[str, float]] = []
    for analysis in analyses:
        values: dict[str, float] = {}
        for key, label, kind in TIMELINE_ROWS:
            if kind == "one-off":
                values[f"one-off: {label}"] = analysis.rows[key]
        for job in analysis.jobs:
            for key, label in labels.items():
                values[f"per job: {label}"] = values.get(f"per job: {label}", 0.0) + job[key]
            for phase in ("before", "after"):
                covered = 0.0
                for name, entry in job["functions"].items():
                    if entry.get(f"depth:{phase}") == 0:
                        label = RANKING_GROUPS.get(name, f"`{name.split('.', 1)[1]}`: {DESCRIPTIONS.get(name, '')}")
                        values[f"per job: {label}"] = values.get(f"per job: {label}", 0.0) + entry[phase]
                        covered += entry[phase]
                rest = (f"per job: rest of `run_experiment` {phase} {'the first' if phase == 'before' else 'the last'} "
                        "epoch (config copy, network and optimizer set-up, params, ...)")
                values[rest] = values.get(rest, 0.0) + job[phase] - covered
        per_sweep.append({label: value / XOR_JOBS for label, value in values.items()})
    items = {label: median([values.get(label, 0.0) for values in per_sweep])
             for label in dict.fromkeys(label for values in per_sweep for label in values)}
    total = sum(items.values())
    lines = [f"Per-job overhead (c) item by item, largest first: s per job = the item's total in the sweep (one-off "
             f"parts, or a step summed over all {XOR_JOBS} jobs, job 1's lazy imports included) / {XOR_JOBS}, median "
             f"of the {len(analyses)} instrumented sweeps. The items add up to {total:.3f} s; (c) = {overhead:.3f} s.",
             "", "| item | s per job | share |", "| --- | ---: | ---: |"]
    for label, value in sorted(items.items(), key=lambda item: -item[1]):
        if abs(value) >= 0.0005:
            lines.append(f"| {label} | {value:.4f} | {100 * value / total:.1f}% |")
    return lines


def job_breakdown_table(analyses: list[ChildAnalysis], inproc: InProcess) -> list[str]:
    """Per job: Hydra's steps and the runner's functions, job 1 against the steady state."""
    sweep_jobs = [job for analysis in analyses for job in analysis.jobs]
    firsts = [analysis.jobs[0] for analysis in analyses]
    steady = [job for analysis in analyses for job in analysis.jobs[1:]]
    inproc_steady = inproc.local_functions

    def phase_value(jobs: list[dict], key: str) -> float:
        return median([job[key] for job in jobs]) if jobs else float("nan")

    def function_value(jobs: list[dict], name: str, phase: str) -> float:
        return median([job["functions"].get(name, {}).get(phase, 0.0) for job in jobs]) if jobs else float("nan")

    def inproc_value(name: str, phase: str) -> float:
        return median([job.get(name, {}).get(phase, 0.0) for job in inproc_steady]) if inproc_steady else float("nan")

    def calls(name: str, phase: str) -> str:
        counts = [job["functions"].get(name, {}).get(f"calls:{phase}", 0) for job in steady]
        value = median(counts) if counts else 0
        return f"{value:g}"

    inproc_phase = {
        "before": median([job.before for jobs in inproc.local for job in jobs]),
        "epochs": median([job.epochs for jobs in inproc.local for job in jobs]),
        "after": median([job.after for jobs in inproc.local for job in jobs]),
    }
    lines = ["Per job, inside the sweep (instrumented subprocess) and in the in-process sweep-like loop: median "
             f"seconds per job (steady state = jobs 2-{XOR_JOBS} of all {len(analyses)} instrumented sweeps, "
             f"{len(steady)} jobs; in-process = all {len(inproc_steady)} timed tracked jobs). Functions are "
             "inclusive and nested (indented under their caller); medians do not add up exactly.", "",
             "| step | calls per job | job 1 s | steady median s | in-process median s |",
             "| --- | ---: | ---: | ---: | ---: |"]

    def row(label: str, first: float, middle: float, inproc_: float | None, count: str = "") -> None:
        other = "n/a" if inproc_ is None else f"{inproc_:.4f}"
        lines.append(f"| {label} | {count} | {first:.4f} | {middle:.4f} | {other} |")

    row("**sweeper's up-front compose of the job's config** (`validate_batch_is_legal`, before any job runs)",
        phase_value(firsts, "validate"), phase_value(steady, "validate"), None, "1")
    row("**launcher's compose of the job's config** (`ConfigLoaderImpl.load_sweep_config`)",
        phase_value(firsts, "compose"), phase_value(steady, "compose"), None, "1")
    row("**Hydra's `run_job` around the task**", phase_value(firsts, "hydra_job"), phase_value(steady, "hydra_job"),
        None, "1")
    for name in ("utils._save_config", "utils.configure_log"):
        row(f"&nbsp;&nbsp;`{name.split('.', 1)[1]}`: {DESCRIPTIONS[name]}", function_value(firsts, name, "hydra"),
            function_value(steady, name, "hydra"), None, calls(name, "hydra"))
    row("**task outside `run_experiment`** (summary lines, HydraConfig)", phase_value(firsts, "task_rest"),
        phase_value(steady, "task_rest"), None)
    for phase, title in (("before", "**`run_experiment` before the first epoch**"),
                         ("epochs", "*epochs (training + per-epoch telemetry; not overhead)*"),
                         ("after", "**`run_experiment` after the last epoch**")):
        row(title, phase_value(firsts, phase), phase_value(steady, phase), inproc_phase[phase])
        names: dict[str, tuple[float, int]] = {}
        for job in sweep_jobs:
            for name, entry in job["functions"].items():
                if f"order:{phase}" in entry:
                    order, _ = names.get(name, (float("inf"), 0))
                    names[name] = (min(order, entry[f"order:{phase}"]), int(entry[f"depth:{phase}"]))
        for name, (_, depth) in sorted(names.items(), key=lambda item: item[1][0]):
            short = name.split(".", 1)[1] if "." in name else name
            indent = "&nbsp;&nbsp;" * (depth + 1)
            description = DESCRIPTIONS.get(name, "")
            row(f"{indent}`{short}`{': ' + description if description else ''}", function_value(firsts, name, phase),
                function_value(steady, name, phase), inproc_value(name, phase), calls(name, phase))
    row("**launcher between jobs** (log line, logging reset)", phase_value(firsts, "gap"), phase_value(steady, "gap"),
        None, "1")
    row("&nbsp;&nbsp;`configure_log` (launcher): logging reset after the job",
        function_value(firsts, "basic_launcher.configure_log", "hydra"),
        function_value(steady, "basic_launcher.configure_log", "hydra"), None,
        calls("basic_launcher.configure_log", "hydra"))
    overhead_keys = ("validate", "compose", "hydra_job", "task_rest", "before", "after", "gap")
    first_total = median([sum(job[key] for key in overhead_keys) for job in firsts])
    steady_total = median([sum(job[key] for key in overhead_keys) for job in steady])
    row("**per-job overhead (all but the epochs)**", first_total, steady_total,
        inproc_phase["before"] + inproc_phase["after"])
    git = median([job["functions"].get("provenance._run_git", {}).get("before", 0.0) for job in steady])
    git_calls = median([job["functions"].get("provenance._run_git", {}).get("calls:before", 0) for job in steady])
    lines += ["", f"Steady-state job: {git_calls:g} `git` subprocesses take {git:.3f} s; job 1 pays the lazy imports "
              "(matplotlib, mlflow.pyfunc, pandas, mlflow.data) on top of the steady cost."]
    return lines


def in_process_table(inproc: InProcess, repeats: int) -> list[str]:
    lines = [f"In-process sweep-like loop (the same {XOR_JOBS} configs through `run_experiment`, no Hydra, no subprocess; "
             f"median over {repeats} repeats of the {XOR_JOBS}-job sum, after a warm-up):", "",
             f"| tracking | {XOR_JOBS} jobs s | before s | epochs s | after s | per job s | overhead per job (all but "
             "epochs) s |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, series in (("none", inproc.none), ("local (children of a parent run)", inproc.local)):
        sums = {key: median([sum(getattr(job, key) for job in jobs) for jobs in series])
                for key in ("total", "before", "epochs", "after")}
        lines.append(f"| {name} | {sums['total']:.3f} | {sums['before']:.3f} | {sums['epochs']:.3f} | "
                     f"{sums['after']:.3f} | {sums['total'] / XOR_JOBS:.4f} | "
                     f"{(sums['total'] - sums['epochs']) / XOR_JOBS:.4f} |")
    lines += ["", f"Sweep summary in-process (`summarize_sweep` on the {XOR_JOBS} children): median "
              f"{median(inproc.summaries):.3f} s. First calls in this process (imports included, excluded above): "
              f"tracking=none job {inproc.warmup.get('none', float('nan')):.3f} s, tracking=local job "
              f"{inproc.warmup.get('local', float('nan')):.3f} s, first summary "
              f"{inproc.warmup.get('summary', float('nan')):.3f} s."]
    return lines


# --- part digits ------------------------------------------------------------------------------
def capacity_control(work: Path) -> dict[str, Any]:
    """Epoch time of one digits training alone, and of two started together."""
    results: dict[str, Any] = {}
    for count in (1, 2):
        barrier = work / f"barrier-{count}-{time.monotonic_ns()}"
        barrier.mkdir()
        processes = [subprocess.Popen([sys.executable, str(SCRIPT), "--capacity-child", str(barrier), str(count)],
                                      cwd=barrier, env=BASE_ENVIRONMENT, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True) for _ in range(count)]
        values = []
        for process in processes:
            out, _ = process.communicate()
            try:
                values.append(json.loads(out.strip().splitlines()[-1]))
            except (ValueError, IndexError):
                values.append({"epochs": float("nan"), "cpu": float("nan")})
        results[count] = values
    return results


def part_digits(repeats: int, work: Path) -> tuple[list[str], list[str]]:
    runs: dict[str, list[SweepRun]] = {"basic": [], "joblib": []}
    capacity: list[dict[str, Any]] = []
    for repeat in range(repeats):
        for kind in (("basic", "joblib") if repeat % 2 == 0 else ("joblib", "basic")):
            log(f"part digits: {kind} launcher, repeat {repeat + 1}/{repeats} ...")
            arguments = DIGITS_SWEEP + (JOBLIB if kind == "joblib" else [])
            runs[kind].append(real_sweep(f"digits-{kind}", arguments, work, repeat))
        log(f"part digits: capacity control, repeat {repeat + 1}/{repeats} ...")
        capacity.append(capacity_control(work))

    problems = [problem for series in runs.values() for run in series if (problem := store_check(run, DIGITS_JOBS))]
    basic = median([run.meter.wall for run in runs["basic"]])
    joblib = median([run.meter.wall for run in runs["joblib"]])
    speedup = basic / joblib
    paired = [b.meter.wall / j.meter.wall for b, j in zip(runs["basic"], runs["joblib"])]

    lines = [f"### 2. {DIGITS_JOBS}-job digits grid (64-128-64-10, 200 epochs, batch 32): basic vs joblib launcher, "
             "median of "
             f"{repeats}", "", f"`bprun -m {shlex.join(DIGITS_SWEEP)}` [+ `{' '.join(JOBLIB)}`]", "",
             "| launcher | wall s (median) | min s | max s | machine CPU busy % | of which this sweep % | steal % | "
             "summed job run times s | jobs running at once (summed / span) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    timelines: dict[str, dict[str, float]] = {}
    for kind, series in runs.items():
        walls = [run.meter.wall for run in series]
        rows = [sweep_timeline(run) for run in series if run.store and run.store.children]
        timelines[kind] = {key: median([row[key] for row in rows]) for key in rows[0]} if rows else {}
        timeline = timelines[kind]
        lines.append(f"| {kind}{' (n_jobs=2)' if kind == 'joblib' else ''} | {median(walls):.2f} | {min(walls):.2f} | "
                     f"{max(walls):.2f} | {100 * median([run.meter.busy for run in series]):.0f} | "
                     f"{100 * median([run.meter.own for run in series]):.0f} | "
                     f"{100 * median([run.meter.steal for run in series]):.1f} | "
                     f"{timeline.get('summed', float('nan')):.2f} | "
                     f"{timeline.get('summed', float('nan')) / timeline.get('jobs', float('nan')):.2f} |")
    lines += ["", f"**Speedup basic / joblib: {speedup:.2f}x** (ratio of medians; per repeat: "
              f"{', '.join(f'{value:.2f}x' for value in paired)}). Target >= {TARGET_SPEEDUP}x: "
              f"{met(speedup >= TARGET_SPEEDUP)}.", "",
              "Each sweep's wall time split with the MLflow run times (median s; launch and exit from this process's "
              "clock, the rest from MLflow's millisecond timestamps):", "",
              "| launcher | launch to parent run created | parent to first job's run | first job start to last job end | "
              "last job end to parent ended (summary) | parent ended to exit | median job run s |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for kind, timeline in timelines.items():
        if timeline:
            lines.append(f"| {kind} | {timeline['startup']:.2f} | {timeline['to_first']:.2f} | {timeline['jobs']:.2f} | "
                         f"{timeline['summary']:.2f} | {timeline['exit']:.2f} | {timeline['job']:.2f} |")

    # Capacity control.
    alone = median([values[1][0]["epochs"] for values in capacity])
    together = median([max(value["epochs"] for value in values[2]) for values in capacity])
    each_cpu = median([value["cpu"] for values in capacity for value in values[2]])
    attainable = 2 * alone / together
    lines += ["", "Capacity control: the same digits training (lr=1, seed 0, tracking=none) in fresh processes after "
              f"a warm-up: alone {alone:.2f} s of epochs; two processes started together through a barrier: the "
              f"slower took {together:.2f} s (main-thread CPU each {each_cpu:.2f} s). Two trainings at once on this "
              f"machine right now: **{attainable:.2f}x** the throughput of one, the ceiling for any 2-worker "
              f"launcher (median of {repeats})."]
    if timelines.get("basic") and timelines.get("joblib"):
        outside = joblib - timelines["joblib"]["jobs"]
        span = timelines["basic"]["jobs"]
        lines.append(f"Outside the jobs' span the joblib sweep spends {outside:.2f} s (start-up, worker spin-up, "
                     f"summary, exit; basic: {basic - span:.2f} s). Even if the basic sweep's {span:.2f} s span of "
                     f"jobs were halved, the speedup would be {basic / (outside + span / 2):.2f}x; divided by the "
                     f"measured ceiling instead: {basic / (outside + span / attainable):.2f}x.")
    serial = timelines.get("basic", {}).get("summed", float("nan"))
    parallel = timelines.get("joblib", {}).get("summed", float("nan"))
    lines.append(f"Summed job run times (MLflow start to end of each child): basic {serial:.2f} s, joblib "
                 f"{parallel:.2f} s: each job ran {parallel / serial:.2f}x as long when two ran at once.")

    # Bit-identity of the results across launchers and repeats.
    reference = {child.key: child for child in runs["basic"][0].store.children} if runs["basic"][0].store else {}
    identity_lines = ["", "Results by (lr, seed) against the first basic sweep (final `train_mse` from the store, "
                      "bit for bit; final weights by SHA-256 of `weights.npz`'s arrays):", "",
                      "| sweep | children | train_mse identical | weights identical | max abs train_mse diff | "
                      "blas.threads tags |", "| --- | ---: | ---: | ---: | ---: | --- |"]
    all_identical = bool(reference)
    for kind, series in runs.items():
        for number, run in enumerate(series):
            children = run.store.children if run.store else []
            same_mse = sum(1 for child in children if child.key in reference
                           and child.train_mse.hex() == reference[child.key].train_mse.hex())
            same_weights = sum(1 for child in children if child.key in reference
                               and child.weights == reference[child.key].weights != "missing")
            differences = [abs(child.train_mse - reference[child.key].train_mse) for child in children
                           if child.key in reference]
            blas = ", ".join(sorted({child.blas_threads for child in children})) or "-"
            all_identical &= same_mse == same_weights == len(reference) == len(children)
            identity_lines.append(f"| {kind} #{number + 1} | {len(children)} | {same_mse}/{len(reference)} | "
                                  f"{same_weights}/{len(reference)} | {max(differences, default=float('nan')):.3g} | "
                                  f"{blas} |")
    lines += identity_lines
    if reference:
        sample = sorted(reference.values(), key=lambda child: (float(child.key[0]), int(child.key[1])))
        lines += ["", "Final train_mse of the reference sweep: " + ", ".join(
            f"lr={child.key[0]} seed={child.key[1]}: {child.train_mse!r}" for child in sample[:4]) + ", ..."]
    if problems:
        lines += ["", "Problems seen: " + "; ".join(problems)]
    verdicts = [f"2. digits speedup joblib (n_jobs=2) over basic: {speedup:.2f}x, target >= {TARGET_SPEEDUP}x: "
                f"{met(speedup >= TARGET_SPEEDUP)} (machine ceiling for 2 processes right now: {attainable:.2f}x)",
                f"2. digits results identical between launchers (train_mse and weights, every (lr, seed), every "
                f"repeat): {'yes, bit for bit' if all_identical else '**no**'}"]
    return lines, verdicts


def sweep_timeline(run: SweepRun) -> dict[str, float]:
    store = run.store
    children = store.children
    first_start = min(child.start for child in children)
    last_end = max(child.end for child in children)
    launch, exit_ = run.meter.launch_epoch, run.meter.launch_epoch + run.meter.wall
    return {"startup": store.parent_start - launch, "to_first": first_start - store.parent_start,
            "jobs": last_end - first_start, "summary": store.parent_end - last_end, "exit": exit_ - store.parent_end,
            "summed": sum(child.end - child.start for child in children),
            "job": median([child.end - child.start for child in children])}


# --- report -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each measurement; default 3")
    parser.add_argument("--parts", nargs="+", default=["xor", "digits"], choices=["xor", "digits"])
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile of the in-process loop")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("repeats must be >= 1")
    bprun_executable()
    adopt_orphans()

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    warnings.simplefilter("ignore", DeprecationWarning)  # SQLAlchemy 2.1 + MLflow's store (PITFALLS)
    environment_lines = describe_environment(
        ("mlflow", "hydra-core", "hydra-joblib-launcher", "joblib", "numpy", "SQLAlchemy", "matplotlib"))
    started = time.perf_counter()
    sections: list[list[str]] = []
    verdicts: list[str] = []
    home = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="bench-sweeps-") as temporary:
        work = Path(temporary)
        os.chdir(work)
        try:
            if "xor" in args.parts:
                lines, found = part_xor(args.repeats, work, not args.no_profile)
                sections.append(lines)
                verdicts += found
            if "digits" in args.parts:
                lines, found = part_digits(args.repeats, work)
                sections.append(lines)
                verdicts += found
        finally:
            os.chdir(home)

    print_report("Sweep benchmarks (issue 5)", environment_lines, sections, verdicts, home, started,
                 closing=f"Load average at end {load_average()}. ")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--instrumented-child"]:
        child_main(sys.argv[2], sys.argv[3:])
    elif sys.argv[1:2] == ["--capacity-child"]:
        capacity_child(sys.argv[2], int(sys.argv[3]))
    else:
        main()
