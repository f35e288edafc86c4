"""bprun's Hydra plugins, in the namespace Hydra takes plugins from (``hydra_plugins``).

The classes are defined in ``runner.sweeps``; Hydra identifies a plugin by the module its class
is defined in, so each gets a subclass here. ``runner.hydra_app.plugins`` registers them with
Hydra's public ``Plugins.register``, which also covers installs Hydra does not scan (editable
ones).
"""

import importlib.util

from runner.sweeps import grid, local_launcher, optuna


class GridSweeper(grid.GridSweeper):
    __doc__ = grid.GridSweeper.__doc__


class OptunaSweeper(optuna.OptunaSweeper):
    __doc__ = optuna.OptunaSweeper.__doc__


class LocalLauncher(local_launcher.LocalLauncher):
    __doc__ = local_launcher.LocalLauncher.__doc__


PLUGINS: list[type] = [GridSweeper, OptunaSweeper, LocalLauncher]

# The cluster launchers build on Hydra's plugins for Ray and submitit, when their extras are
# installed (``runner.sweeps.cluster_configs`` names the extras otherwise).
if importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is not None:
    from runner.sweeps import ray_launcher

    class RayLauncher(ray_launcher.RayLauncher):
        __doc__ = ray_launcher.RayLauncher.__doc__

    PLUGINS.append(RayLauncher)

if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None:
    from runner.sweeps import submitit_launchers

    class SubmititLocalLauncher(submitit_launchers.LocalLauncher):
        __doc__ = submitit_launchers.LocalLauncher.__doc__

    class SubmititSlurmLauncher(submitit_launchers.SlurmLauncher):
        __doc__ = submitit_launchers.SlurmLauncher.__doc__

    PLUGINS += [SubmititLocalLauncher, SubmititSlurmLauncher]
