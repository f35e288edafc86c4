"""``hydra/launcher=ray``: a sweep's jobs as Ray tasks, on a Ray cluster of this machine or an
existing one (``hydra.launcher.ray.init.address``), through hydra-ray-launcher.

The plugin's launcher waits for every task with a blocking ``ray.get``, so a Ctrl-C would reach
neither the tasks nor their runs. This one launches the same tasks with Ray's public API
(``ray.remote``, ``ray.wait``, ``ray.cancel``) and watches for bprun's recorded signal: on Ctrl-C
or SIGTERM, tasks not started are cancelled and running ones are interrupted (Ray raises the
interruption in the task, which bprun's handler in the job records), so each running job ends its
run KILLED at its next mini-batch. A task whose worker died is recorded as a failed job; the
others go on.

A cluster whose nodes are all on this machine can use a local SQLite store like the local
launcher; any other node makes bprun refuse a local store before anything is submitted.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, setup_globals
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher as PluginRayLauncher
from omegaconf import DictConfig, OmegaConf, open_dict

from runner.process.errors import CommandExit, InvalidInput
from runner.sweeps.cluster_job import job_process, local_addresses
from runner.sweeps.composing import JobComposer
from runner.sweeps.launching import (
    ComposedJob,
    JobLost,
    compose_jobs,
    execute_job,
    failed_job,
    run_all,
    shown_overrides,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long a cluster's head may take to accept a connection before bprun gives up on it.
CONNECT_SECONDS = 10.0
# Worker processes warmed up as a sweep starts, at most (one per job slot of the cluster).
MAX_WARM_UPS = 16


class RayLauncher(PluginRayLauncher):
    """The plugin's launcher, keeping a sweep's guarantees (see the module docstring). Ray is
    imported when a sweep uses it: Hydra imports every launcher as bprun starts."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.composer = JobComposer(hydra_context, config)  # for launch(): jobs given as overrides
        # Ray starts a worker process per job slot for this sweep, each with its imports to do
        # (seconds of a core): started now, they do them while bprun composes and validates the
        # jobs and creates the parent run, instead of after.
        self._start_ray()
        ray = import_ray()
        cpus_per_job = float(self._remote_options().get("num_cpus", 1))
        slots = int(ray.cluster_resources().get("CPU", 1) // max(cpus_per_job, 1e-9))
        self._slots = max(1, slots)
        self._tasks: dict[Any, int] = {}  # a running task -> its job's number
        self._hydra_state: Any = None
        warm = self._remote(warm_up_worker)
        for _ in range(max(1, min(slots, MAX_WARM_UPS))):
            warm.remote()  # nobody waits for it: the jobs queue behind it on its worker

    def call(self, function: Callable[..., T], *arguments: Any) -> T:
        """``function(*arguments)`` (the sweep's parent run, its summary) in one of the sweep's
        Ray workers, warmed up with MLflow imported, as the local launcher does in its workers:
        this process then never imports MLflow or draws a chart. Here, if Ray fails."""
        ray = import_ray()
        try:
            return ray.get(self._remote(function).remote(*arguments))
        except ray.exceptions.RayTaskError as error:
            raise error.as_instanceof_cause() from None
        except ray.exceptions.RayError:
            log.debug("Ray failed to run %s; it runs in this process", function.__name__)
        return function(*arguments)

    def _remote_options(self) -> dict[str, Any]:
        return _plain(self.ray_cfg.remote)

    def _remote(self, function: Callable[..., Any]) -> Any:
        """``function`` as a Ray remote function with the sweep's ``hydra.launcher.ray.remote`` options."""
        ray, options = import_ray(), self._remote_options()
        return ray.remote(**options)(function) if options else ray.remote(function)

    def runs_jobs_elsewhere(self) -> str | None:
        """Where jobs may run that is not this machine ("on other machines of the Ray cluster at
        ADDRESS"), or None when every node is this machine. Starts or joins the cluster."""
        ray = import_ray()
        self._start_ray()
        here = local_addresses() | {ray.util.get_node_ip_address()}  # Ray's address for this machine
        others = sorted(
            {
                node["NodeManagerAddress"]
                for node in ray.nodes()
                if node.get("Alive") and not _is_here(node["NodeManagerAddress"], here)
            }
        )
        if not others:
            return None
        return f"on other machines of the Ray cluster ({', '.join(others)})"

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        return self.launch_composed(compose_jobs(self.composer, job_overrides), initial_job_idx)

    def launch_composed(self, jobs: Sequence[ComposedJob], initial_job_idx: int) -> list[JobReturn]:
        return run_all(self, jobs, initial_job_idx)

    # --- a JobStream: each job a Ray task, as many at once as the cluster has slots -------------
    def capacity(self) -> int:
        return self._slots

    def start(self, job: ComposedJob, number: int) -> None:
        """Job ``number`` as a Ray task (bprun's sweepers hand over the configs they composed to
        validate the jobs: this process composes each job once, and spends its CPU, which the
        jobs share, on nothing else)."""
        ray = import_ray()
        if self._hydra_state is None:
            setup_globals()
            assert self.config is not None and self.hydra_context is not None
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
            log.info("Launching jobs as Ray tasks")
            # Put once, shared by every task, instead of serialized into each.
            self._hydra_state = ray.put((self.hydra_context, self.task_function, Singleton.get_state()))
        overrides, config = job
        log.debug(f"#{number} : {' '.join(shown_overrides(overrides))}")
        with open_dict(config):
            config.hydra.job.id = f"ray_{number}"
            config.hydra.job.num = number
        self._tasks[self._remote(run_ray_job).remote(self._hydra_state, config, os.getcwd())] = number

    def next_result(self, timeout: float) -> tuple[int, JobReturn] | None:
        if not self._tasks:
            return None
        ready, _ = import_ray().wait(list(self._tasks), num_returns=1, timeout=timeout)
        if not ready:
            return None
        number = self._tasks.pop(ready[0])
        return number, _result(ready[0], number)

    def stop(self) -> None:
        ray = import_ray()
        for task in self._tasks:
            ray.cancel(task)  # not started: never starts; running: its job ends its run KILLED
        ray.wait(list(self._tasks), num_returns=len(self._tasks))
        self._tasks.clear()

    def close(self) -> None:
        pass  # Ray's workers belong to the cluster; a cluster ray.init started here ends with bprun

    def _start_ray(self) -> None:
        ray = import_ray()
        if ray.is_initialized():
            return
        arguments = _plain(self.ray_cfg.init)
        if not arguments.get("address"):  # a cluster started for the sweep: the plugin's default, as
            arguments.setdefault("object_store_memory", 78643200)  # Ray's can exceed a small machine's memory
        call = f"ray.init({', '.join(f'{key}={value!r}' for key, value in arguments.items())})"
        log.info(f"Starting Ray: {call}")
        _check_answers(str(arguments.get("address") or ""), call)
        try:
            ray.init(**arguments)
        except Exception as error:  # no cluster at that address, an argument Ray refuses
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise CommandExit(
                InvalidInput(
                    f"hydra.launcher.ray.init: {call} failed, before any job was submitted: {type(error).__name__}: "
                    f"{reason}"
                )
            ) from None


def _plain(node: Any) -> dict[str, Any]:
    """A config node of keyword arguments (``hydra.launcher.ray.init``, ``.remote``) as a dict."""
    container = OmegaConf.to_container(node, resolve=True) if node else {}
    assert isinstance(container, dict)  # the launcher's schema types both as dicts
    return {str(key): value for key, value in container.items()}


def warm_up_worker() -> None:
    """A Ray worker's imports and first-time costs, done before its first job (``warm_up``); the
    import is here so that bprun's process does not make it."""
    from runner.sweeps.warm_up import warm_up  # (lazy: MLflow and matplotlib, in the worker only)

    warm_up()


def run_ray_job(
    hydra_state: tuple[HydraContext, TaskFunction, dict[Any, Any]], config: DictConfig, launching_dir: str
) -> JobReturn:
    """One job in a Ray worker, with the Hydra state of the launching process."""
    hydra_context, task_function, singleton_state = hydra_state
    with job_process(launching_dir):
        setup_globals()
        Singleton.set_state(singleton_state)
        result = execute_job(config, hydra_context, task_function)
        sys.stdout.flush()  # the job's lines reach bprun's terminal before its result
        return result


def import_ray() -> Any:
    """Ray, imported when a sweep uses it (Hydra imports every launcher as bprun starts)."""
    # Each job's summary line differs only in numbers, which Ray's log deduplication would fold.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # A cluster that ray.init starts here reports nothing over the network.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray colours the prefix of each job's lines: escape codes in a log file unless on a terminal.
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    # Where a Ray authentication token exists (a cluster ray.init started here once writes one),
    # `ray start` starts clusters that require it, and a driver sends it only in token mode.
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or token_file.exists()):
        os.environ["RAY_AUTH_MODE"] = "token"
    import ray  # (lazy: after the settings above, for Ray sweeps only)

    return ray


def _result(task: Any, number: int) -> JobReturn:
    ray = import_ray()
    try:
        return ray.get(task)
    except ray.exceptions.RayTaskError as error:  # raised outside Hydra's job runner
        failure: BaseException = error.as_instanceof_cause()
    except (
        ray.exceptions.WorkerCrashedError,
        ray.exceptions.NodeDiedError,
        ray.exceptions.TaskCancelledError,
    ) as error:
        failure = JobLost(f"job #{number}: its Ray worker ended before the job did ({type(error).__name__})")
    return failed_job(failure)


def _check_answers(address: str, call: str) -> None:
    """Refuse a HOST:PORT address where nothing listens: ``ray.init`` would wait for it without end."""
    host, colon, port = address.rpartition(":")
    if not colon or "://" in address or not port.isdigit():
        return  # "auto", "local", ray://...: Ray itself says what is wrong
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as error:
        raise CommandExit(
            InvalidInput(
                f"hydra.launcher.ray.init.address={address}: no Ray cluster answers there ({error}); start one "
                "(ray start --head) or give its head's address, or null for a cluster of this machine; nothing was "
                f"submitted ({call})"
            )
        ) from None


def _is_here(address: str, here: set[str]) -> bool:
    try:
        return address in here or ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
