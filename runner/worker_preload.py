"""What a sweep job needs, made ready once by the fork server of the joblib launcher's workers.

``runner.worker_server.start_worker_server`` names this module as the server's preload: the server
imports it before it forks the first worker, so every worker starts with these modules in place
instead of importing them itself (about 2 s of a core each, MLflow the largest part). bprun
itself never imports it.

Besides the imports:

- MLflow's map of installed packages is filled here. MLflow builds it on a process's first model
  save, to check the model's requirements against the environment: a scan of site-packages that
  cost each worker's first job 0.5-0.6 s.
- The provenance tags' git state and installed versions are read (about 0.05 s of each
  worker's first job).
- matplotlib draws one small chart, so that its fonts and text rendering are ready too.
- ``gc.freeze()`` comes last: the modules' objects (about 200,000) move out of the collector's
  reach, in the server and so in every worker forked from it. loky runs a full collection in a
  worker after every job; it now scans only what the jobs created, instead of spending
  0.1-0.2 s per job walking the modules.
"""

import gc
import importlib
import io
import signal

# Ctrl-C reaches the whole process group; bprun handles it. Until multiprocessing's server loop
# ignores it itself, the server would print a KeyboardInterrupt traceback from these imports
# (bprun starts the server ignoring it already, so that not even Python's start-up sees it). The
# workers get back the handler that is current when this module ends: Python's default.
signal.signal(signal.SIGINT, signal.SIG_IGN)

JOB_MODULES = (
    "git",  # GitPython, for the provenance tags
    "matplotlib.backends.backend_agg", "matplotlib.figure",
    "mlflow.artifacts", "mlflow.data", "mlflow.models", "mlflow.pyfunc",
    "mlflow.store.tracking.sqlalchemy_store", "mlflow.tracking", "mlflow.utils.requirements_utils",
    "threadpoolctl",
    "runner.app", "runner.experiment", "runner.plots", "runner.provenance", "runner.pyfunc_model",
    "runner.sweep", "runner.telemetry", "runner.tracking",
)
for module in JOB_MODULES:
    importlib.import_module(module)

# An MLflow internal (3.17.2 is pinned): if a later MLflow renames it, workers build the map on
# their first model save, as before.
_fill_installed_packages_map = getattr(importlib.import_module("mlflow.utils.requirements_utils"),
                                      "_init_packages_to_modules_map", None)
if _fill_installed_packages_map is not None:
    _fill_installed_packages_map()

# The runner's git state (several git calls) and the installed versions: read once per process
# for the provenance tags, and here for every worker at once. The code whose git state it is was
# imported just above, so it is still the code that runs.
importlib.import_module("runner.provenance").read_once_per_process()

# One small chart drawn to memory: matplotlib loads its fonts and sets up text rendering once
# here, not in each worker's first plots (0.2 s of them).
_figure = importlib.import_module("matplotlib.figure").Figure(figsize=(2, 2))
_axes = _figure.add_subplot()
_axes.plot([1, 2], [1, 10], label="warm-up")
_axes.set_yscale("log")
_axes.legend()
_figure.savefig(io.BytesIO(), format="png", dpi=importlib.import_module("runner.plots").DPI)
del _figure, _axes

signal.signal(signal.SIGINT, signal.default_int_handler)
gc.freeze()
