"""Team-server benchmarks: bprun tracking to ``bprun-server`` on PostgreSQL, against a SQLite file.

Run from the repository with the project's virtual environment:

    python tests/benchmarks/bench_server.py [--repeats N] [--parts digits xor] [--no-breakdown]

It prints Markdown (tables, then the targets met or not, then the command that reproduces it);
progress and the server's address go to stderr. With the default 3 repeats it takes about 6
minutes on a 2-core machine (the xor part about 5 of them).

The server
----------
A PostgreSQL database: on the server ``BPRUN_TEST_POSTGRES_URI`` names when set, else on a throwaway
cluster on loopback (``tests/postgres.py``: ``_throwaway_cluster`` and ``_database``, which stop
and delete it however this script ends). ``python -m runner.commands.server --store <that
database> --artifacts <temp dir> --port <free port>`` (``bprun-server``, its default 2 web
workers) serves it on 127.0.0.1; this script waits for its "bprun-server: serving" line. The
server runs in a process group of its own and is stopped with SIGTERM to that group (SIGKILL
after 30 s, then to every process it had started), in a ``finally``; it also gets SIGTERM when
this script dies (``runner.process.service.start``). The server and PostgreSQL
share the machine's cores with the runs they serve, as on a laptop running a team's server.

Parts
-----
digits. 64-128-64-10 on digits, 200 epochs, batch 64, ``tracking.tensors_every=1``, in this
   process (``runner.core.run.run``, configs from Hydra's compose API, measured with
   ``bench_runner.run_once``: an observer timestamps ``on_train_begin`` and ``on_train_end``):
   ``tracking=server tracking.uri=http://127.0.0.1:P`` against ``tracking=local`` (a SQLite
   file in the temp dir) and ``tracking=none``, taking turns after a warm-up run of each.
   Targets: epochs server/none <= 1.25 (the epochs' wall time, on_train_begin to on_train_end);
   the work after the last epoch with the server (last flush, plots, the uploads of tensors,
   plots, weights and model, the end of the run) <= 2 s. The SQLite figures, measured in the
   same invocation, are shown beside them.
xor. The 24-job sweep of ``bench_sweeps.py`` (``bprun -m 'model.hidden=[4]' trainer.epochs=500
   optimizer.lr=0.5,1,2,4 seed=0,1,2,3,4,5``, one job at a time in bprun's process), as a real
   ``bprun -m`` process on a fresh SQLite file (``bench_sweeps.sweep``) and against the server
   (``tracking=server tracking.uri=...``, ``MLFLOW_TRACKING_URI`` the same), taking turns.
   Per-job overhead = (sweep wall time - summed training time) / 24, the summed training time
   measured in this process two ways, as in ``bench_sweeps.py``: (a) untracked epochs
   (``bench_sweeps.training_seconds``), the same for both stores; (b) the epochs of tracked
   runs against the same kind of store, so that the per-epoch telemetry of each store counts as
   training. Target: per-job overhead server / SQLite <= 1.5 with both.

How things are measured
-----------------------
- Medians of ``--repeats`` runs; every ratio is of medians of the same invocation.
- CPU: the main thread's (``time.thread_time``) for in-process runs; for a sweep, bprun's
  process and the children it waited for (``RUSAGE_CHILDREN``); for the server, the sum of
  user + system time of every process under ``bprun-server`` and of the PostgreSQL postmaster
  and its backends (``/proc/<pid>/stat``; the postmaster found from ``pg_backend_pid()``), read
  before and after. On 2 cores, bprun CPU + server CPU close to 2 x wall means the machine was
  the limit.
- Breakdowns (``--no-breakdown`` skips them): one more tracked run per store with the timing
  wrappers of ``bench_runner.py`` (its ``SPANS`` plus MLflow client calls) and every HTTP request
  timed by a wrapper of ``requests.Session.request`` (MLflow's REST and artifact clients use it),
  by endpoint and phase, with the client's CPU inside each; for xor, a 24-job pass in this process
  per store, shown per job. Then one metric flush (1000 values) five ways: ``log_batch`` through
  the server, bprun-server's metrics endpoint (what runs on bprun-server use), MLflow's store in
  this process on the same PostgreSQL database and on a SQLite file, and the runner's
  ``SqliteMetricWriter`` (what runs on a SQLite file use).

Everything lives under one temporary directory (SQLite files, the server's artifacts, the
sweeps' output folders), removed at the end; the PostgreSQL database is dropped and a throwaway
cluster stopped and deleted. ``MLFLOW_TRACKING_URI`` is removed from this process's environment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench_runner import (
    DIGITS_EPOCHS,
    DIGITS_OVERRIDES,
    SPANS,
    TARGET_EPOCH_RATIO,
    Measurement,
    Series,
    breakdown_run,
    instrumented,
    memory_and_time_table,
    run_once,
    verdict,
)
from bench_sweeps import XOR_FIXED, XOR_JOBS, XOR_LRS, XOR_SEEDS, XOR_SWEEP, sweep, training_seconds
from benchmark_common import (
    REPOSITORY,
    bprun_environment,
    bprun_executable,
    compose,
    describe_environment,
    load_average,
    log,
    median,
    print_report,
)

from runner.process import service

TARGET_AFTER_SECONDS = 2.0  # the server's own target (bench_runner's 1.5 s is for a SQLite file)
TARGET_OVERHEAD_RATIO = 1.5
SERVER_START_TIMEOUT = 180.0
SERVER_STOP_SECONDS = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# MLflow's client calls, timed beside bench_runner's spans in the breakdown runs.
CLIENT_SPANS = [
    ("runner.core.tracked", "check_store"),
    ("mlflow.tracking.client", "MlflowClient.create_run"),
    ("mlflow.tracking.client", "MlflowClient.log_batch"),
    ("mlflow.tracking.client", "MlflowClient.log_inputs"),
    ("mlflow.tracking.client", "MlflowClient.log_artifact"),
    ("mlflow.tracking.client", "MlflowClient.log_artifacts"),
    ("mlflow.tracking.client", "MlflowClient.set_terminated"),
]


# --- processes and their CPU time -----------------------------------------------------------------
def process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds: user + system, its own and its reaped children's)."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        table[int(entry.name)] = (int(fields[1]), sum(int(value) for value in fields[11:15]) / CLOCK_TICKS)
    return table


def descendants(roots: list[int], table: dict[int, tuple[int, float]] | None = None) -> list[int]:
    """``roots`` (those alive) and every process below them."""
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, queue = [], [pid for pid in roots if pid in table]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, ()))
    return found


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    uri: str
    process: subprocess.Popen
    database_uri: str
    postmaster: int | None  # None: PostgreSQL runs on another machine (BPRUN_TEST_POSTGRES_URI)
    log_path: Path

    def cpu_parts(self) -> tuple[float, float]:
        """CPU seconds so far of (bprun-server and MLflow's server processes, PostgreSQL)."""
        table = process_table()
        served = sum(table[pid][1] for pid in descendants([self.process.pid], table))
        database = sum(table[pid][1] for pid in descendants([self.postmaster], table)) if self.postmaster else 0.0
        return served, database

    def cpu(self) -> float:
        return sum(self.cpu_parts())


def postmaster_pid(database_uri: str) -> int | None:
    """The PostgreSQL postmaster serving ``database_uri`` if it runs on this machine: the parent
    of this connection's backend."""
    import psycopg

    libpq = urlsplit(database_uri)._replace(scheme="postgresql").geturl()
    with psycopg.connect(libpq, autocommit=True, connect_timeout=10) as connection:
        backend = connection.execute("SELECT pg_backend_pid()").fetchone()[0]
        try:
            with open(f"/proc/{backend}/stat", "rb") as handle:
                return int(handle.read().rsplit(b")", 1)[1].split()[1])
        except OSError:
            return None


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (tests/postgres.py), dropped at the end, on the server of
    ``BPRUN_TEST_POSTGRES_URI`` or on a throwaway cluster stopped and deleted at the end."""
    tests = str(REPOSITORY / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import postgres
    import pytest

    configured = os.environ.get(postgres.ENV)
    try:
        cluster = contextlib.nullcontext(configured) if configured else postgres._throwaway_cluster()
        with cluster as server_uri, postgres._database(server_uri, configured is not None) as uri:
            yield uri
    except (pytest.skip.Exception, pytest.fail.Exception) as problem:  # what the tests would skip or fail on
        raise SystemExit(f"bench_server.py: no PostgreSQL database: {problem}") from None


@contextlib.contextmanager
def team_server(database_uri: str, folder: Path) -> Iterator[Server]:
    """``bprun-server`` on ``database_uri``, artifacts in ``folder``; stopped however this ends."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = folder / "server.log"
    command = [
        sys.executable,
        "-m",
        "runner.commands.server",
        "--store",
        database_uri,
        "--artifacts",
        str(folder / "artifacts"),
        "--port",
        str(port),
    ]
    server_environment = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    with open(log_path, "wb") as output:
        # It ends with this script, however this script ends.
        process = service.start(command, server_environment, cwd=folder, stdout=output, stderr=subprocess.STDOUT)
    started = time.perf_counter()
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while "bprun-server: serving" not in log_path.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    f"bprun-server did not start (exit {process.poll()}):\n"
                    f"{log_path.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.1)
        seen.update(descendants([process.pid]))
        server = Server(f"http://127.0.0.1:{port}", process, database_uri, postmaster_pid(database_uri), log_path)
        log(
            f"bprun-server serving at {server.uri} after {time.perf_counter() - started:.1f} s "
            f"({len(seen)} processes; PostgreSQL postmaster {server.postmaster or 'not on this machine'})"
        )
        yield server
    finally:
        seen.update(descendants([process.pid]))
        stop_server(process, seen)


def stop_server(process: subprocess.Popen, seen: set[int]) -> None:
    """SIGTERM to the server's group (it stops MLflow's server, which runs in a group of its own),
    SIGKILL after a while; then SIGKILL to any process it had started that is still there."""
    for signum, wait in ((signal.SIGTERM, SERVER_STOP_SECONDS), (signal.SIGKILL, SERVER_STOP_SECONDS)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signum)
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    deadline = time.monotonic() + SERVER_STOP_SECONDS
    while True:
        left = [
            pid
            for pid in seen
            if pid != process.pid and Path(f"/proc/{pid}").exists() and _state(pid) not in ("Z", "X")
        ]
        if not left:
            return
        if time.monotonic() > deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            log(f"bprun-server left {len(left)} process(es) behind: killed them")
            return
        time.sleep(0.2)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0].decode()
    except OSError:
        return "X"


# --- HTTP requests --------------------------------------------------------------------------------
@dataclass
class Request:
    start: float
    seconds: float
    cpu: float  # this thread's CPU time inside the call (the HTTP client's own work)
    method: str
    endpoint: str
    sent: int


def endpoint_of(url: str) -> str:
    path = urlsplit(url).path
    if "/mlflow-artifacts/artifacts/" in path:
        return "mlflow-artifacts/artifacts/<file>"
    for prefix in ("/api/2.0/mlflow/", "/api/3.0/mlflow/", "/ajax-api/2.0/mlflow/"):
        if path.startswith(prefix):
            return path[len(prefix) :]
    return path


def _sent_bytes(keywords: dict[str, Any]) -> int:
    data = keywords.get("data")
    if data is not None and hasattr(data, "fileno"):
        try:
            return os.fstat(data.fileno()).st_size
        except OSError:
            return 0
    if isinstance(data, (bytes, str)):
        return len(data)
    if keywords.get("json") is not None:
        return len(json.dumps(keywords["json"], default=str))
    return 0


@contextlib.contextmanager
def http_recorder() -> Iterator[list[Request]]:
    """Every request made with ``requests`` in this process, timed (MLflow's clients use it)."""
    import requests

    requests_made: list[Request] = []
    original = requests.Session.request

    def request(session: Any, method: str, url: str, *args: Any, **keywords: Any) -> Any:
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return original(session, method, url, *args, **keywords)
        finally:
            requests_made.append(
                Request(
                    start,
                    time.perf_counter() - start,
                    time.thread_time() - cpu,
                    method.upper(),
                    endpoint_of(url),
                    _sent_bytes(keywords),
                )
            )

    requests.Session.request = request
    try:
        yield requests_made
    finally:
        requests.Session.request = original


@contextlib.contextmanager
def client_spans() -> Iterator[None]:
    """bench_runner's ``instrumented()`` also times MLflow's client calls while this is active."""
    import bench_runner

    bench_runner.SPANS = [*SPANS, *CLIENT_SPANS]
    try:
        yield
    finally:
        bench_runner.SPANS = SPANS


def phase_of(moment: float, timelines: list[Any]) -> str:
    for start, clock, stop, _ in timelines:
        if start <= moment <= stop:
            return "before" if moment < clock.begin else "epochs" if moment < clock.end else "after"
    return "outside"


PHASES = ("before", "epochs", "after")


def request_table(requests_made: list[Request], timelines: list[Any], jobs: int = 1) -> list[str]:
    """Requests by endpoint and phase (per job when ``jobs`` > 1)."""
    per = " per job" if jobs > 1 else ""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    totals = {phase: [0, 0.0] for phase in PHASES}
    for made in requests_made:
        row = rows.setdefault(
            (made.method, made.endpoint), {"bytes": 0, "cpu": 0.0, **{p: [0, 0.0] for p in (*PHASES, "outside")}}
        )
        phase = phase_of(made.start, timelines)
        row[phase][0] += 1
        row[phase][1] += made.seconds
        row["bytes"] += made.sent
        row["cpu"] += made.cpu
        if phase in totals:
            totals[phase][0] += 1
            totals[phase][1] += made.seconds
    lines = [
        "| HTTP request | "
        + " | ".join(f"{phase}: calls{per}, ms{per}" for phase in PHASES)
        + f" | ms per call | of which client CPU | kB sent{per} |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    ordered = sorted(rows.items(), key=lambda item: -sum(item[1][p][1] for p in PHASES))
    for (method, endpoint), row in ordered:
        calls = sum(row[p][0] for p in PHASES)
        seconds = sum(row[p][1] for p in PHASES)
        lines.append(
            f"| `{method} {endpoint}` | "
            + " | ".join(f"{row[p][0] / jobs:.1f}, {row[p][1] / jobs * 1e3:.0f}" if row[p][0] else "" for p in PHASES)
            + f" | {seconds / calls * 1e3 if calls else 0:.1f} | {row['cpu'] / calls * 1e3 if calls else 0:.1f} | "
            f"{row['bytes'] / jobs / 1024:.0f} |"
        )
    lines.append(
        "| **all requests** | "
        + " | ".join(f"**{totals[p][0] / jobs:.1f}, {totals[p][1] / jobs * 1e3:.0f}**" for p in PHASES)
        + " | | | |"
    )
    return lines


# --- digits ---------------------------------------------------------------------------------------
def digits_part(repeats: int, work: Path, server: Server, breakdown: bool) -> tuple[list[str], list[str]]:
    store = work / "digits"
    store.mkdir()
    configs = {
        "none": compose([*DIGITS_OVERRIDES, "tracking=none"]),
        "local (SQLite)": compose([*DIGITS_OVERRIDES, "tracking=local"]),
        "server": compose([*DIGITS_OVERRIDES, "tracking=server", f"tracking.uri={server.uri}"]),
    }
    for name, cfg in configs.items():
        log(f"digits: warm-up, {name}")
        run_once(cfg, str(store))
    series = {name: Series() for name in configs}
    server_cpu: list[tuple[float, float]] = []
    names = list(configs)
    for repeat in range(repeats):
        log(f"digits: repeat {repeat + 1}/{repeats}")
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            before = server.cpu_parts()
            series[name].runs.append(run_once(configs[name], str(store), sample_rss=True))
            if name == "server":
                server_cpu.append(cpu_since(server, before))
    none, local, remote = series["none"], series["local (SQLite)"], series["server"]
    epoch_ratio = {name: values.med("epochs") / none.med("epochs") for name, values in series.items()}
    lines = [
        f"### digits: 64-128-64-10, 200 epochs, batch 64, tensors every epoch, in this process: "
        f"median of {repeats} after 1 warm-up each",
        "",
        *memory_and_time_table(series),
        "",
        f"Epochs over untracked: server {(remote.med('epochs') - none.med('epochs')) / DIGITS_EPOCHS * 1e3:.2f} "
        f"ms/epoch wall, {(remote.med('cpu_epochs') - none.med('cpu_epochs')) / DIGITS_EPOCHS * 1e3:.2f} ms/epoch "
        f"main-thread CPU; SQLite {(local.med('epochs') - none.med('epochs')) / DIGITS_EPOCHS * 1e3:.2f} ms/epoch "
        f"wall, {(local.med('cpu_epochs') - none.med('cpu_epochs')) / DIGITS_EPOCHS * 1e3:.2f} ms/epoch CPU. "
        f"After the last epoch: server {remote.med('after'):.3f} s ({remote.med('cpu_after'):.3f} s main-thread "
        f"CPU), SQLite {local.med('after'):.3f} s ({local.med('cpu_after'):.3f} s CPU). Before the first epoch: "
        f"server {remote.med('before'):.3f} s, SQLite {local.med('before'):.3f} s.",
        f"CPU of the server's processes and of PostgreSQL during a tracked run (on the other core, if free): "
        f"{median([sum(parts) for parts in server_cpu]):.2f} s = {median([parts[0] for parts in server_cpu]):.2f} "
        f"s + {median([parts[1] for parts in server_cpu]):.2f} s "
        f"(runs: {', '.join(f'{sum(parts):.2f}' for parts in server_cpu)}).",
    ]
    if breakdown:
        log("digits: breakdown runs")
        lines += ["", *digits_breakdown(configs, str(store), server)]
    verdicts = [
        verdict("digits epochs server/none", epoch_ratio["server"], TARGET_EPOCH_RATIO, "x")
        + f" (main-thread CPU {remote.med('cpu_epochs') / none.med('cpu_epochs'):.2f}x; "
        f"SQLite in the same run {epoch_ratio['local (SQLite)']:.2f}x)",
        verdict("digits work after the last epoch, server", remote.med("after"), TARGET_AFTER_SECONDS, " s")
        + f" (SQLite in the same run {local.med('after'):.2f} s)",
    ]
    return lines, verdicts


def digits_breakdown(configs: dict[str, Any], store: str, server: Server) -> list[str]:
    lines = []
    for name in ("server", "local (SQLite)"):
        before = server.cpu_parts()
        with client_spans(), http_recorder() as requests_made:
            run, table = breakdown_run(configs[name], store)
        cpu = cpu_since(server, before)
        lines += [
            f"Breakdown of one more tracked run, {name} (timing wrappers; inclusive, nested calls overlap):",
            "",
            *table,
        ]
        if requests_made:
            uploads = [made for made in requests_made if made.method == "PUT"]
            lines += [
                "",
                f"Its HTTP requests ({len(requests_made)}; {len(uploads)} file uploads carrying "
                f"{sum(made.sent for made in uploads) / 2**20:.1f} MB in "
                f"{sum(made.seconds for made in uploads):.3f} s; CPU during the run: server processes "
                f"{cpu[0]:.2f} s, PostgreSQL {cpu[1]:.2f} s):",
                "",
                *request_table(requests_made, [run.timeline]),
            ]
        lines.append("")
    return lines[:-1]


# --- xor ------------------------------------------------------------------------------------------
@dataclass
class PassResult:
    """The 24 xor configs run in this process against one store."""

    runs: list[Measurement] = field(default_factory=list)

    def total(self, name: str) -> float:
        return sum(getattr(run, name) for run in self.runs)


def xor_configs(tracking: list[str]) -> list[Any]:
    return [
        compose([*XOR_FIXED, f"optimizer.lr={lr}", f"seed={seed}", *tracking]) for lr in XOR_LRS for seed in XOR_SEEDS
    ]


def xor_pass(configs: list[Any], start_dir: Path) -> PassResult:
    return PassResult([run_once(cfg, str(start_dir)) for cfg in configs])


def server_sweep(server: Server, scratch: Path, label: str) -> tuple[float, float, tuple[float, float]]:
    """Wall time of ``bprun -m`` of the xor sweep against the server, the CPU of bprun's process
    (and the children it waited for), and the CPU of the server and PostgreSQL meanwhile."""
    directory = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=scratch))
    cpu, server_cpu = children_cpu(), server.cpu_parts()
    started = time.perf_counter()
    result = subprocess.run(
        [bprun_executable(), "-m", *XOR_SWEEP, "tracking=server", f"tracking.uri={server.uri}"],
        cwd=directory,
        env=bprun_environment(server.uri),
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{label} sweep failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds, children_cpu() - cpu, cpu_since(server, server_cpu)


def sqlite_sweep(scratch: Path, server: Server, label: str) -> tuple[float, float, tuple[float, float]]:
    cpu, server_cpu = children_cpu(), server.cpu_parts()
    seconds = sweep(XOR_SWEEP, scratch, label)[0]
    return seconds, children_cpu() - cpu, cpu_since(server, server_cpu)


def cpu_since(server: Server, before: tuple[float, float]) -> tuple[float, float]:
    now = server.cpu_parts()
    return now[0] - before[0], now[1] - before[1]


def xor_part(repeats: int, work: Path, server: Server, breakdown: bool) -> tuple[list[str], list[str]]:
    scratch = work / "xor"
    scratch.mkdir()
    sqlite_dir = scratch / "in-process-sqlite"
    sqlite_dir.mkdir()
    configs = {
        "SQLite": xor_configs(["tracking=local"]),
        "server": xor_configs(["tracking=server", f"tracking.uri={server.uri}"]),
    }
    log("xor: warm-up (in-process passes, one sweep each)")
    training_seconds(False, scratch)
    for cfgs in configs.values():
        xor_pass(cfgs, sqlite_dir)
    sqlite_sweep(scratch, server, "xor-sqlite-warm-up")
    server_sweep(server, scratch, "xor-server-warm-up")
    walls: dict[str, list[float]] = {"SQLite": [], "server": []}
    bprun_cpu: dict[str, list[float]] = {"SQLite": [], "server": []}
    server_cpu: dict[str, list[tuple[float, float]]] = {"SQLite": [], "server": []}
    untracked: list[float] = []
    passes: dict[str, list[PassResult]] = {"SQLite": [], "server": []}
    for repeat in range(repeats):
        order = ("SQLite", "server") if repeat % 2 == 0 else ("server", "SQLite")
        for name in order:
            log(f"xor: repeat {repeat + 1}/{repeats}, {name} sweep")
            wall, cpu, served = (
                sqlite_sweep(scratch, server, "xor-sqlite")
                if name == "SQLite"
                else server_sweep(server, scratch, "xor-server")
            )
            walls[name].append(wall)
            bprun_cpu[name].append(cpu)
            server_cpu[name].append(served)
        log(f"xor: repeat {repeat + 1}/{repeats}, in-process training")
        untracked.append(training_seconds(False, scratch))
        for name in order:
            passes[name].append(xor_pass(configs[name], sqlite_dir))
    a = median(untracked)
    b = {name: median([result.total("epochs") for result in passes[name]]) for name in passes}
    wall = {name: median(values) for name, values in walls.items()}
    overhead_a = {name: (wall[name] - a) / XOR_JOBS for name in wall}
    overhead_b = {name: (wall[name] - b[name]) / XOR_JOBS for name in wall}
    ratio_a = overhead_a["server"] / overhead_a["SQLite"]
    ratio_b = overhead_b["server"] / overhead_b["SQLite"]

    from runner.tracking.store import create_sqlite_store

    creations = []
    for number in range(3):
        start = time.perf_counter()
        create_sqlite_store(scratch / f"fresh-store-{number}" / "mlflow.db")
        creations.append(time.perf_counter() - start)

    lines = [
        f"### xor: 24-job sweep (`bprun -m`, one job at a time in bprun's process), SQLite file against the "
        f"server: median of {repeats} after 1 warm-up each",
        "",
        "| store | sweep wall s | runs | (b) summed tracked epochs s | per-job overhead (wall - (a)) / 24 s | "
        "per-job overhead (wall - (b)) / 24 s | bprun CPU s per job | server processes + PostgreSQL CPU s per job |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ("SQLite", "server"):
        lines.append(
            f"| {name} | {wall[name]:.2f} | {', '.join(f'{value:.2f}' for value in walls[name])} | "
            f"{b[name]:.2f} | **{overhead_a[name]:.3f}** | **{overhead_b[name]:.3f}** | "
            f"{median(bprun_cpu[name]) / XOR_JOBS:.3f} | "
            f"{median([sum(parts) for parts in server_cpu[name]]) / XOR_JOBS:.3f} = "
            f"{median([parts[0] for parts in server_cpu[name]]) / XOR_JOBS:.3f} + "
            f"{median([parts[1] for parts in server_cpu[name]]) / XOR_JOBS:.3f} |"
        )
    lines.append(
        f"| **server / SQLite** | {wall['server'] / wall['SQLite']:.2f}x | | {b['server'] / b['SQLite']:.2f}x | "
        f"**{ratio_a:.2f}x** | **{ratio_b:.2f}x** | "
        f"{median(bprun_cpu['server']) / median(bprun_cpu['SQLite']):.2f}x | |"
    )
    lines += [
        "",
        f"(a) summed untracked training of the 24 configs in this process (`bench_sweeps.training_seconds`): "
        f"{a:.2f} s. (b) the epochs of the same 24 configs tracked in this process against each store. "
        f"Each SQLite sweep creates its store (a copy of the new-store template once there is one, else "
        f"MLflow's migrations: {median(creations):.2f} s in this process, "
        f"{median(creations) / XOR_JOBS * 1e3:.0f} ms per job); the server's experiment exists already.",
    ]
    lines += [
        "",
        "The same 24 jobs run in this process (medians of the passes above), seconds per job:",
        "",
        "| store | before the first epoch | epochs | after the last epoch | before + after | main-thread CPU, "
        "before + after |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ("SQLite", "server"):
        per = {
            key: median([result.total(key) for result in passes[name]]) / XOR_JOBS
            for key in ("before", "epochs", "after", "cpu_total", "cpu_epochs")
        }
        lines.append(
            f"| {name} | {per['before']:.3f} | {per['epochs']:.3f} | {per['after']:.3f} | "
            f"{per['before'] + per['after']:.3f} | {per['cpu_total'] - per['cpu_epochs']:.3f} |"
        )
    lines.append(
        "\nIn the sweep, a SQLite job's plots are drawn by bprun's plot helper process (the other core); a "
        "server job's plots are drawn there too, and its staged artifacts are uploaded once they are "
        "(`runner/core/tracked.py`, `_save_plots`). In this process both draw them in the job."
    )
    if breakdown:
        log("xor: breakdown passes")
        lines += ["", *xor_breakdown(configs, sqlite_dir, server)]
    verdicts = [
        f"xor per-job overhead server / SQLite: {ratio_a:.2f}x with (a) ({overhead_a['server']:.3f} s / "
        f"{overhead_a['SQLite']:.3f} s), {ratio_b:.2f}x with (b) ({overhead_b['server']:.3f} s / "
        f"{overhead_b['SQLite']:.3f} s), target <= {TARGET_OVERHEAD_RATIO:g}x: "
        + ("met" if max(ratio_a, ratio_b) <= TARGET_OVERHEAD_RATIO else "**NOT met**")
    ]
    return lines, verdicts


def xor_breakdown(configs: dict[str, list[Any]], sqlite_dir: Path, server: Server) -> list[str]:
    """One more 24-job pass per store with the timing wrappers; functions and requests per job."""
    tables: dict[str, dict[str, dict[str, float]]] = {}
    whole: dict[str, dict[str, float]] = {}
    lines: list[str] = []
    for name in ("server", "SQLite"):
        cpu_before = server.cpu_parts()
        with client_spans(), instrumented() as (records, _), http_recorder() as requests_made:
            result = xor_pass(configs[name], sqlite_dir)
        cpu = cpu_since(server, cpu_before)
        timelines = [run.timeline for run in result.runs]
        table: dict[str, dict[str, float]] = {}
        for record in records:
            row = table.setdefault(record.name, {"calls": 0, **dict.fromkeys(PHASES, 0.0)})
            row["calls"] += 1
            phase = phase_of(record.start, timelines)
            if phase in PHASES:
                row[phase] += record.seconds
        tables[name] = table
        whole[name] = {phase: result.total(phase) for phase in PHASES}
        if requests_made:
            lines += [
                f"HTTP requests of the server pass, per job (CPU per job: server processes "
                f"{cpu[0] / XOR_JOBS:.3f} s, PostgreSQL {cpu[1] / XOR_JOBS:.3f} s):",
                "",
                *request_table(requests_made, timelines, XOR_JOBS),
                "",
            ]
    names = sorted(
        set(tables["server"]) | set(tables["SQLite"]),
        key=lambda key: -sum(tables["server"].get(key, {}).get(p, 0.0) for p in PHASES),
    )
    head = [
        "Breakdown of one more pass of the 24 jobs per store in this process (timing wrappers), ms per job:",
        "",
        "| function (inclusive; nested calls overlap) | calls per job, server / SQLite | server before | "
        "server epochs | server after | SQLite before | SQLite epochs | SQLite after |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        "| **whole phase** | | "
        + " | ".join(f"**{whole[store][p] / XOR_JOBS * 1e3:.0f}**" for store in ("server", "SQLite") for p in PHASES)
        + " |",
    ]
    for key in names:
        server_row, sqlite_row = tables["server"].get(key), tables["SQLite"].get(key)
        calls = " / ".join(f"{row['calls'] / XOR_JOBS:.1f}" if row else "0" for row in (server_row, sqlite_row))
        cells = [f"{row[p] / XOR_JOBS * 1e3:.1f}" if row else "" for row in (server_row, sqlite_row) for p in PHASES]
        head.append(f"| `{key}` | {calls} | " + " | ".join(cells) + " |")
    return [*head, "", *lines][:-1] if lines else head


# --- one metric flush -----------------------------------------------------------------------------
FLUSH_VALUES = 1000  # runner.tracking.mlflow_run.MAX_METRICS_PER_CALL: one flush to a server
FLUSH_KEYS = 14  # what a 2-4-1 xor run logs every epoch


def flush_costs(server: Server, work: Path, calls: int = 7) -> list[str]:
    """One write of 1000 metric values (14 keys, about 71 steps), median of ``calls`` after one
    warm-up: ``log_batch`` through the server, bprun-server's metrics endpoint, MLflow's store in
    this process on the same PostgreSQL database and on a SQLite file, and the runner's own
    SQLite writer."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from runner.tracking.compat import SqliteMetricWriter
    from runner.tracking.metric_sinks import EndpointSink, MetricSink, SqliteSink
    from runner.tracking.metrics_endpoint import MetricsEndpoint
    from runner.tracking.store import ensure_experiment

    database = work / "flush" / "mlflow.db"
    sqlite_uri = f"sqlite:///{database}"
    ways = {
        "`MlflowClient.log_batch` to bprun-server over HTTP (MLflow's store on PostgreSQL, in the server)": (
            server.uri,
            None,
        ),
        "bprun-server's metrics endpoint over HTTP (what a run on bprun-server uses)": (server.uri, "endpoint"),
        "`MlflowClient.log_batch`, MLflow's store on the same PostgreSQL database in this process": (
            server.database_uri,
            None,
        ),
        "`MlflowClient.log_batch`, MLflow's store on a SQLite file in this process": (sqlite_uri, None),
        "the runner's `SqliteMetricWriter` on the same SQLite file (what a SQLite run uses)": (sqlite_uri, "sqlite"),
    }
    lines = [
        f"### One metric flush: {FLUSH_VALUES} values ({FLUSH_KEYS} keys), median of {calls} calls after 1 warm-up",
        "",
        "| how | ms per call | us per value | main-thread CPU ms | server processes + PostgreSQL CPU ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, (uri, direct) in ways.items():
        client = MlflowClient(uri)
        run_id = client.create_run(ensure_experiment(uri, "bench-flush")).info.run_id
        sink: MetricSink | None = None  # the sink a run on that store writes through; None: log_batch
        if direct is not None:
            writer = SqliteMetricWriter.open(database) if direct == "sqlite" else MetricsEndpoint.of(uri)
            if writer is None:
                lines.append(f"| {label} | (not available with this MLflow) | | | |")
                continue
            sink = SqliteSink(writer) if direct == "sqlite" else EndpointSink(writer, lambda call, *a: call(*a))
        walls, cpus, served = [], [], []
        for number in range(calls + 1):
            now = int(time.time() * 1000)
            values = [
                (f"metric{index % FLUSH_KEYS}", float(index), now, number * 100 + index // FLUSH_KEYS)
                for index in range(FLUSH_VALUES)
            ]
            metrics = [Metric(*value) for value in values]
            server_before = server.cpu()
            start, cpu = time.perf_counter(), time.thread_time()
            if sink is not None:
                sink.write({run_id: values})
            else:
                client.log_batch(run_id, metrics=metrics)
            walls.append(time.perf_counter() - start)
            cpus.append(time.thread_time() - cpu)
            served.append(server.cpu() - server_before)
        if sink is not None:
            sink.close()
        wall, cpu, served_cpu = median(walls[1:]), median(cpus[1:]), median(served[1:])
        lines.append(
            f"| {label} | {wall * 1e3:.1f} | {wall / FLUSH_VALUES * 1e6:.1f} | {cpu * 1e3:.1f} | "
            + (f"{served_cpu * 1e3:.0f} |" if uri == server.uri else "|")
        )
    lines.append(
        f"\nServer CPU is read from `/proc` in clock ticks of {1000 / CLOCK_TICKS:.0f} ms. "
        "In-process PostgreSQL figures include PostgreSQL's own work in its backend, not shown."
    )
    return lines


# --- report ---------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per variant; default 3")
    parser.add_argument("--parts", nargs="+", choices=("digits", "xor"), default=["digits", "xor"])
    parser.add_argument(
        "--no-breakdown",
        action="store_true",
        help="skip the extra runs with timing wrappers and the HTTP request tables",
    )
    arguments = parser.parse_args()
    if arguments.repeats < 1:
        parser.error("--repeats must be >= 1")
    started = time.perf_counter()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    warnings.simplefilter("ignore", DeprecationWarning)  # SQLAlchemy 2.1 + MLflow's store: harmless, not ours
    environment_lines = describe_environment(
        ("mlflow", "hydra-core", "numpy", "SQLAlchemy", "psycopg"),
        " (the server, PostgreSQL and the runs share these cores)",
    )
    sections: list[list[str]] = []
    verdicts: list[str] = []
    home = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="bench-server-") as temporary:
        work = Path(temporary)
        os.chdir(work)
        try:
            import runner.core.tracked  # (MLflow and the tracked path: imported before anything is timed)
            import runner.hydra_app.app  # noqa: F401  (registers the schemas)
            from runner.commands.common import quiet_mlflow

            quiet_mlflow()  # no "View run ... at" lines, no progress bars
            logging.getLogger("mlflow").setLevel(logging.ERROR)
            log("starting PostgreSQL ...")
            with postgres_database() as database_uri, team_server(database_uri, work / "server") as server:
                postgres_where = (
                    "`BPRUN_TEST_POSTGRES_URI`'s server"
                    if os.environ.get("BPRUN_TEST_POSTGRES_URI")
                    else "a throwaway PostgreSQL cluster on loopback (fsync off)"
                )
                environment_lines.append(
                    f"- `bprun-server` (2 web workers) on {postgres_where}, artifacts served "
                    f"from a local folder, on 127.0.0.1"
                )
                for part, function in (("digits", digits_part), ("xor", xor_part)):
                    if part in arguments.parts:
                        lines, found = function(arguments.repeats, work, server, not arguments.no_breakdown)
                        sections.append(lines)
                        verdicts += found
                if not arguments.no_breakdown:
                    log("one metric flush, five ways")
                    sections.append(flush_costs(server, work))
        finally:
            os.chdir(home)
    environment_lines.append(f"- load average at the end {load_average()}")
    print_report("Team server benchmarks", environment_lines, sections, verdicts, home, started)


if __name__ == "__main__":
    main()
