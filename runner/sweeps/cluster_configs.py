"""The options ``hydra/launcher=ray``, ``submitit_local`` and ``submitit_slurm``: bprun's launchers
on top of Hydra's Ray and submitit plugins (``ray_launcher``, ``submitit_launchers``), with their
defaults. They are kept apart from the launchers because they exist whether or not the plugins
are installed (choosing one without them says which extra to install), and the launchers import
the plugins.

The plugins register options of these names, pointing at their own launchers;
``runner.sweeps.plugins.register_plugins`` replaces them, so the names a Hydra user knows start
bprun's launchers, which keep a sweep's guarantees (Ctrl-C cancels the cluster's jobs, a job that
fails is recorded, jobs on other machines never write to a local file). The keys are the
plugins' own, so their documentation applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runner.sweeps import hydra_name


def _ray_init() -> dict[str, Any]:
    # null: a Ray cluster of this machine, started for the sweep (or the one `ray start` runs here);
    # "HOST:6379" or "ray://HOST:10001": an existing cluster.
    return {"address": None}


def _ray_remote() -> dict[str, Any]:
    # A job holds as many CPUs as it computes with (its BLAS threads), and a job whose worker died
    # is recorded as failed instead of being run again as a second MLflow run.
    return {"num_cpus": "${trainer.blas_threads}", "max_retries": 0}


@dataclass
class RayConf:
    init: dict[str, Any] = field(default_factory=_ray_init)  # ray.init's arguments
    remote: dict[str, Any] = field(default_factory=_ray_remote)  # ray.remote's options for each job


@dataclass
class RayLauncherConf:
    _target_: str = hydra_name("RayLauncher")
    ray: RayConf = field(default_factory=RayConf)


@dataclass
class SubmititConf:
    """The keys of hydra-submitit-launcher's ``BaseQueueConf``."""

    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"
    timeout_min: int = 60  # the job's time limit, in minutes
    cpus_per_task: int | None = "${trainer.blas_threads}"  # type: ignore[assignment]  # what a job computes with
    gpus_per_node: int | None = None
    tasks_per_node: int = 1
    mem_gb: int | None = 2
    nodes: int = 1
    name: str = "${hydra.job.name}"
    stderr_to_stdout: bool = False


@dataclass
class SubmititLocalConf(SubmititConf):
    _target_: str = hydra_name("SubmititLocalLauncher")


@dataclass
class SubmititSlurmConf(SubmititConf):
    """The keys of hydra-submitit-launcher's ``SlurmQueueConf`` (``sbatch`` options)."""

    _target_: str = hydra_name("SubmititSlurmLauncher")
    partition: str | None = None  # null: the cluster's default partition
    qos: str | None = None
    comment: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    gres: str | None = None
    cpus_per_gpu: int | None = None
    gpus_per_task: int | None = None
    mem_per_gpu: str | None = None
    mem_per_cpu: str | None = None
    account: str | None = None
    # SLURM signals a job this many seconds before its time limit, and when it is preempted: the
    # job ends its run KILLED, marked requeued, and submitit requeues it to start a new run
    # (after a time limit max_num_timeout times at most; a new run starts from the first epoch).
    signal_delay_s: int = 120
    max_num_timeout: int = 1
    additional_parameters: dict[str, Any] = field(default_factory=dict)  # more sbatch options
    array_parallelism: int = 256  # jobs of the sweep running at once, at most
    setup: list[str] | None = None  # shell lines run before the job (module load ..., source venv)
