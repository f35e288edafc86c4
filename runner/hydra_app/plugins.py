"""Registering bprun's Hydra plugins (``runner.sweeps.plugins``) under their Hydra names."""

from __future__ import annotations

import hydra_plugins.bprun
from runner.sweeps.plugins import register_plugins as register


def register_plugins() -> None:
    register(hydra_plugins.bprun.HYDRA_CLASSES)
