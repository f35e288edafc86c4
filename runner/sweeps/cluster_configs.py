"""The options ``hydra/launcher=ray``, ``submitit_local`` and ``submitit_slurm``: bprun's launchers
on top of Hydra's Ray and submitit plugins (``ray_launcher``, ``submitit_launchers``), with their
defaults.

The plugins register configs of these names in Hydra's ConfigStore, pointing at their own
launchers; ``register_cluster_launchers`` replaces them once Hydra has discovered the plugins, so
the names a Hydra user knows start bprun's launchers, which keep a sweep's guarantees (Ctrl-C
cancels the cluster's jobs, a job that fails is recorded, jobs on other machines never write to a
local file). The keys are the plugins' own, so their documentation applies. The options exist
whether or not the plugins are installed: choosing one without them says which extra to install.

Defaults here rather than in YAML files under ``conf/hydra/launcher``: a file with the name of a
ConfigStore entry gets Hydra's deprecated automatic schema matching (and its warning).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


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
    _target_: str = "hydra_plugins.bprun.RayLauncher"
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
    _target_: str = "hydra_plugins.bprun.SubmititLocalLauncher"


@dataclass
class SubmititSlurmConf(SubmititConf):
    """The keys of hydra-submitit-launcher's ``SlurmQueueConf`` (``sbatch`` options)."""

    _target_: str = "hydra_plugins.bprun.SubmititSlurmLauncher"
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


CLUSTER_LAUNCHERS = {"ray": RayLauncherConf, "submitit_local": SubmititLocalConf, "submitit_slurm": SubmititSlurmConf}

# The extra that brings each option's Hydra plugin, and the plugin's package.
EXTRAS = {
    "ray": ("ray", "hydra_plugins.hydra_ray_launcher"),
    "submitit_local": ("slurm", "hydra_plugins.hydra_submitit_launcher"),
    "submitit_slurm": ("slurm", "hydra_plugins.hydra_submitit_launcher"),
}


def missing_extra(launcher_option: str) -> str | None:
    """The extra to install before ``hydra/launcher=<launcher_option>`` works, or None."""
    if launcher_option not in EXTRAS:
        return None
    extra, package = EXTRAS[launcher_option]
    return extra if importlib.util.find_spec(package) is None else None


def register_cluster_launchers() -> None:
    """Store bprun's cluster launcher options, replacing the plugins' (call it after
    ``Plugins.instance()``, which imports the plugins and so registers theirs)."""
    store = ConfigStore.instance()
    for name, node in CLUSTER_LAUNCHERS.items():
        store.store(group="hydra/launcher", name=name, node=node, provider="bprun")
