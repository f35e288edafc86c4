"""``hydra/launcher=submitit_slurm`` and ``submitit_local``: a sweep's jobs as SLURM jobs (or as
local processes, to try it without a cluster), through hydra-submitit-launcher.

The plugin's launcher submits the jobs as one job array and waits for each result in turn, so a
Ctrl-C would reach neither the jobs nor their runs. These launchers submit the same array and
watch for bprun's recorded signal: on Ctrl-C or SIGTERM, every job still queued or running is
sent SIGTERM (``scancel`` on SLURM), which a running job records, ending its run KILLED at its
next mini-batch. A job that fails, or is killed, is recorded as a failed job; the others go on.

Local jobs end with bprun however it ends: each watches bprun's process. SLURM jobs run on other
machines; bprun refuses a local store for them before anything is submitted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, setup_globals
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher as PluginLocalLauncher
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as PluginSlurmLauncher
from omegaconf import OmegaConf, open_dict

from runner import names
from runner.process import interruption
from runner.process.children import started_deaf_to_ctrl_c
from runner.sweeps.cluster_job import job_process
from runner.sweeps.launching import (
    POLL_SECONDS,
    ComposedJob,
    JobLost,
    execute_job,
    failed_job,
    shown_overrides,
    wait_for_jobs,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


class _TrackedSubmitit:
    """What bprun's two submitit launchers add to the plugin's (see the module docstring)."""

    params: dict[str, Any]
    config: Any
    hydra_context: Any
    task_function: Any
    _EXECUTOR: str

    def __call__(
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict[type, Singleton],
    ) -> JobReturn:
        """One job, in the process submitit started for it (the plugin's job, with bprun's
        signal handling).

        The cluster's warning that the job is preempted or near its time limit is recorded like
        Ctrl-C: the run ends KILLED at the next mini-batch, marked requeued, and only then does
        submitit's own handler of that signal run (outside any signal handler), which requeues
        the job through ``checkpoint``: its next run starts from the first epoch."""
        import submitit  # (lazy: as in the plugin, Hydra imports every launcher as bprun starts)

        requeue_signal = preemption_signal()
        submitit_handler = signal.getsignal(requeue_signal)  # submitit's checkpoint-and-requeue
        with job_process(self._launching_dir, self._launcher_pid, also=(requeue_signal,)):
            # The plugin's job, with the config kept: the run it made is in its output folder.
            Singleton.set_state(singleton_state)
            setup_globals()
            config = self.hydra_context.config_loader.load_sweep_config(self.config, sweep_overrides)
            with open_dict(config.hydra.job):
                config.hydra.job.id = submitit.JobEnvironment().job_id
                config.hydra.job.num = job_num
            try:
                return execute_job(config, self.hydra_context, self.task_function)
            except interruption.Interrupted as stop:
                if stop.signum != requeue_signal or not callable(submitit_handler):
                    raise
                self._requeue_of = mark_requeued(Path(str(config.hydra.runtime.output_dir)))
        submitit_handler(requeue_signal, None)  # requeues (or says why not) and exits
        raise AssertionError("submitit's handler returned")  # pragma: no cover

    def checkpoint(self, sweep_overrides: list[str], *arguments: Any) -> Any:
        """What submitit requeues: this job again, told which run it had before."""
        if getattr(self, "_requeue_of", None):
            sweep_overrides = [*sweep_overrides, f"++hydra.job.env_set.{names.ENV_REQUEUE_OF}={self._requeue_of}"]
        return super().checkpoint(sweep_overrides, *arguments)  # type: ignore[misc]

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        self._launching_dir = os.getcwd()
        self._launcher_pid = os.getpid() if self._EXECUTOR == "local" else None
        executor = self._executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitting {len(job_overrides)} jobs ({self._EXECUTOR}), their logs in {sweep_dir}/.submitit")
        arguments = []
        for number, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{number} : {' '.join(shown_overrides(overrides))}")
            arguments.append(
                (list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}", Singleton.get_state())
            )
        interruption.check()
        # Local jobs are this process's children, in the terminal's process group: a Ctrl-C would
        # reach submitit's controller of each job, which kills its job a second later. The job
        # hears it (and this launcher's SIGTERM) itself and ends its run in its own time.
        with started_deaf_to_ctrl_c() if self._EXECUTOR == "local" else contextlib.nullcontext():
            jobs = executor.map_array(self, *zip(*arguments))
        wait_for_jobs(lambda timeout: _all_done(jobs, timeout), lambda: self._stop(jobs))
        interruption.check()
        return [_result(job, number) for number, job in enumerate(jobs, start=initial_job_idx)]

    def launch_composed(self, jobs: Sequence[ComposedJob], initial_job_idx: int) -> Sequence[JobReturn]:
        """The jobs, each composed again from its overrides in the process submitit starts for it
        (a SLURM job may run where this process's objects cannot go)."""
        return self.launch([overrides for overrides, _ in jobs], initial_job_idx)

    def call(self, function: Callable[..., T], *arguments: Any) -> T:
        return function(*arguments)

    def close(self) -> None:
        pass  # every job has ended with the batch it belongs to

    def _executor(self) -> Any:
        """The plugin's executor: its parameters mapped to submitit's as the plugin maps them."""
        import submitit  # (lazy, as in the plugin: Hydra imports every launcher as bprun starts)

        params = dict(self.params)
        init = {"folder": params.pop("submitit_folder")}
        if "max_num_timeout" in params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = params.pop("max_num_timeout")
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{key if key in shared else f"{self._EXECUTOR}_{key}": value for key, value in params.items()}
        )
        return executor

    def _stop(self, jobs: list[Any]) -> None:
        """SIGTERM to every job not done (each running job ends its run KILLED), then wait."""
        for job in jobs:
            if not job.done():
                self._terminate(job)
        while not _all_done(jobs, POLL_SECONDS):
            pass

    def _terminate(self, job: Any) -> None:
        job.cancel(check=False)


class SubmititLocalLauncher(_TrackedSubmitit, PluginLocalLauncher):
    def runs_jobs_elsewhere(self) -> str | None:
        return None

    def _terminate(self, job: Any) -> None:
        # submitit's own cancel sends the job's controller SIGINT and its task SIGKILL a second
        # later, which can cut the end of a run short; SIGTERM to the controller (a local job's
        # id is its process id) is forwarded to the task, which then ends its run in its own time.
        try:
            os.kill(int(job.job_id), signal.SIGTERM)
        except ProcessLookupError:
            pass


class SubmititSlurmLauncher(_TrackedSubmitit, PluginSlurmLauncher):
    def runs_jobs_elsewhere(self) -> str | None:
        return "on the SLURM cluster's nodes"


def preemption_signal() -> int:
    """The signal submitit's jobs get before a time limit or on preemption (submitit's
    ``SUBMITIT_PREEMPT_SIGNAL``, USR2 unless set)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


def mark_requeued(output_dir: Path) -> str | None:
    """Tag the run the job just ended (its output folder's ``mlflow_run.json`` names it) as
    requeued; return its id (None for an untracked job)."""
    pointer = output_dir / names.RUN_POINTER_FILE
    if not pointer.exists():
        return None
    run = json.loads(pointer.read_text())
    from mlflow.tracking import MlflowClient  # (lazy: Hydra imports every launcher as bprun starts)

    client = MlflowClient(run["tracking_uri"])
    client.set_tag(run["run_id"], names.REQUEUED, "true")
    client.set_tag(
        run["run_id"],
        names.FAILURE_REASON,
        "the cluster preempted the job or it reached its time limit: submitit requeued it, and its next "
        f"run (tagged {names.REQUEUE_OF}) starts again from the first epoch",
    )
    return str(run["run_id"])


def _all_done(jobs: list[Any], timeout: float) -> bool:
    """Whether every job is done, else False after ``timeout`` seconds."""
    if all(job.done() for job in jobs):
        return True
    time.sleep(timeout)
    return False


def _result(job: Any, number: int) -> JobReturn:
    try:
        return job.results()[0]
    except Exception as error:  # the job died without a result (submitit's UncompletedJobError)
        return failed_job(JobLost(f"job #{number} ({job.job_id}) ended without a result: {str(error).splitlines()[0]}"))
