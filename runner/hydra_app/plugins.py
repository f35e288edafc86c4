"""Registering bprun's Hydra plugins (the grid and Optuna sweepers, the local launcher)."""

from __future__ import annotations

from hydra.core.plugins import Plugins

import hydra_plugins.bprun


def register_plugins() -> None:
    plugins = Plugins.instance()
    for plugin in hydra_plugins.bprun.PLUGINS:
        plugins.register(plugin)
