"""bprun's Hydra plugins, in the package Hydra takes plugins from.

Hydra instantiates a plugin only when its class is defined in a module of ``hydra_plugins``.
bprun's plugins are declared once, in ``runner.sweeps.plugins.PLUGINS`` (class, config option,
the Hydra plugin each builds on); each installed one gets a subclass of the same name here,
which ``runner.hydra_app.plugins`` registers.
"""

from runner.sweeps.plugins import PLUGINS

HYDRA_CLASSES: dict[str, type] = {}
for _plugin in PLUGINS:
    if _plugin.installed():
        _base = _plugin.load()
        HYDRA_CLASSES[_plugin.name] = type(
            _plugin.name, (_base,), {"__module__": __name__, "__qualname__": _plugin.name, "__doc__": _base.__doc__}
        )
globals().update(HYDRA_CLASSES)
