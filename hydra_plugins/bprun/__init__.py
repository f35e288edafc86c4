"""bprun's Hydra plugins, in the namespace Hydra takes plugins from (``hydra_plugins``).

The classes are defined in ``runner.sweeps``; Hydra identifies a plugin by the module its class
is defined in, so each gets a subclass here. ``runner.hydra_app.plugins`` registers them with
Hydra's public ``Plugins.register``, which also covers installs Hydra does not scan (editable
ones).
"""

from runner.sweeps import grid, local_launcher, optuna


class GridSweeper(grid.GridSweeper):
    __doc__ = grid.GridSweeper.__doc__


class OptunaSweeper(optuna.OptunaSweeper):
    __doc__ = optuna.OptunaSweeper.__doc__


class LocalLauncher(local_launcher.LocalLauncher):
    __doc__ = local_launcher.LocalLauncher.__doc__


PLUGINS = (GridSweeper, OptunaSweeper, LocalLauncher)
