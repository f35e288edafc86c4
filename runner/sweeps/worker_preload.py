"""What a sweep job needs, imported once by the fork server of the ``local`` launcher's workers.

The server imports this module before it forks the first worker, so every worker starts with
these modules in place instead of importing them itself (about 2 s of a core each, MLflow the
largest part); a worker's first job adds only the app itself (tens of milliseconds). Besides the
imports:

- one tiny model is saved: MLflow scans site-packages on a process's first model save (0.5 s),
  and matplotlib loads its fonts on the first chart (0.2 s); both happen here once, for every
  worker, through the same public calls a run makes;
- the provenance tags' git state and installed versions are read once;
- ``gc.freeze()`` comes last: the modules' objects (about 200,000) move out of the collector's
  reach in the server and so in every worker, whose collections then scan only what jobs create.
"""

from runner.process.children import settle_forkserver_signals

settle_forkserver_signals()  # first: a Ctrl-C to the process group must not break the imports

import gc  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import runner.core.tracked  # noqa: E402,F401  (a tracked run; runner.core.run imports it lazily)
import runner.sweeps.local_launcher  # noqa: E402,F401  (what runs a job in a worker: Hydra's job runner)
from engine import MLP, make_optimizer, train  # noqa: E402
from runner.core.datasets import Dataset  # noqa: E402
from runner.plots.training import save_training_plots  # noqa: E402
from runner.tracking.model import save_pyfunc_model  # noqa: E402
from runner.tracking.provenance import read_once_per_process  # noqa: E402


def _warm_up() -> None:
    X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    Y = np.array([[0.0], [1.0], [1.0], [0.0]])
    network = MLP([2, 2, 1], np.random.default_rng(0))
    history = train(network, make_optimizer("gd", 1.0), X, Y, epochs=2)
    dataset = Dataset("warm-up", "classification", X, Y, None, None, ["x0", "x1"], ["y"])
    with tempfile.TemporaryDirectory() as directory:
        save_pyfunc_model(str(Path(directory, "model")), network, dataset)
        save_training_plots(history.metrics, Path(directory, "plots"))


read_once_per_process()
_warm_up()
gc.freeze()
