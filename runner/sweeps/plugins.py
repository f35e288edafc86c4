"""bprun's Hydra plugins, each declared once: its class, the config option that chooses it (with
its keys and defaults), and the Hydra plugin it builds on, if any.

Hydra instantiates a plugin only when its class is defined in a module of the ``hydra_plugins``
package; ``hydra_plugins.bprun`` gives each class of this table a subclass of the same name
there, and ``register_plugins`` registers both (Hydra's public ``Plugins.register`` and
``ConfigStore``), which also covers installs Hydra does not scan (editable ones).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins

from runner.sweeps import cluster_configs, grid, hydra_name, local_launcher, optuna, stacked_launcher

__all__ = ["PLUGINS", "Plugin", "hydra_name", "missing_extra", "register_plugins"]


@dataclass(frozen=True)
class Plugin:
    module: str  # where the class is defined
    name: str  # the class's name, and its name in hydra_plugins.bprun
    group: str  # the config group that chooses it
    option: str
    config: type  # the option's keys and defaults (its _target_ is hydra_name(name))
    extra: str | None = None  # the extra that brings the Hydra plugin it builds on
    requires: str | None = None  # that plugin's package

    def installed(self) -> bool:
        return self.requires is None or importlib.util.find_spec(self.requires) is not None

    def load(self) -> type:
        cls: type = getattr(importlib.import_module(self.module), self.name)
        return cls


PLUGINS = (
    Plugin("runner.sweeps.grid", "GridSweeper", "hydra/sweeper", "grid", grid.GridSweeperConf),
    Plugin("runner.sweeps.optuna", "OptunaSweeper", "hydra/sweeper", "optuna", optuna.OptunaSweeperConf),
    Plugin(
        "runner.sweeps.local_launcher", "LocalLauncher", "hydra/launcher", "local", local_launcher.LocalLauncherConf
    ),
    Plugin(
        "runner.sweeps.stacked_launcher",
        "StackedLauncher",
        "hydra/launcher",
        "stacked",
        stacked_launcher.StackedLauncherConf,
    ),
    Plugin(
        "runner.sweeps.ray_launcher",
        "RayLauncher",
        "hydra/launcher",
        "ray",
        cluster_configs.RayLauncherConf,
        "ray",
        "hydra_plugins.hydra_ray_launcher",
    ),
    Plugin(
        "runner.sweeps.submitit_launchers",
        "SubmititLocalLauncher",
        "hydra/launcher",
        "submitit_local",
        cluster_configs.SubmititLocalConf,
        "slurm",
        "hydra_plugins.hydra_submitit_launcher",
    ),
    Plugin(
        "runner.sweeps.submitit_launchers",
        "SubmititSlurmLauncher",
        "hydra/launcher",
        "submitit_slurm",
        cluster_configs.SubmititSlurmConf,
        "slurm",
        "hydra_plugins.hydra_submitit_launcher",
    ),
)


def register_plugins(hydra_classes: dict[str, Any]) -> None:
    """Register each plugin's class (its subclass in ``hydra_plugins.bprun``, from
    ``hydra_classes``) and config option. The options of plugins whose extra is not installed
    are registered too: choosing one then says which extra to install (``missing_extra``)."""
    plugins = Plugins.instance()  # first: it imports Hydra's own plugins, whose options ours replace
    store = ConfigStore.instance()
    for plugin in PLUGINS:
        store.store(group=plugin.group, name=plugin.option, node=plugin.config, provider="bprun")
        if plugin.name in hydra_classes:
            plugins.register(hydra_classes[plugin.name])


def missing_extra(group: str, option: str) -> str | None:
    """The extra to install before ``<group>=<option>`` works, or None."""
    for plugin in PLUGINS:
        if (plugin.group, plugin.option) == (group, option) and not plugin.installed():
            return plugin.extra
    return None


def tracking_sweepers() -> set[str]:
    """The ``_target_`` of every bprun sweeper: each tracks a sweep as one MLflow parent run."""
    return {hydra_name(plugin.name) for plugin in PLUGINS if plugin.group == "hydra/sweeper"}
