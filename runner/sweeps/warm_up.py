"""What a process about to run sweep jobs does once, before its first job: import what a job
needs and pay the first-time costs of a run.

- the imports: MLflow, matplotlib, the engine (seconds of a core, MLflow the largest part);
- one tiny model is saved: MLflow scans site-packages on a process's first model save, and
  matplotlib loads its fonts on the first chart; both happen here, through the same public calls
  a run makes;
- the provenance tags' git state and installed versions are read.

The local launcher's fork server does it once for all its workers (``worker_preload``); the Ray
launcher has each Ray worker do it while bprun composes the jobs (``ray_launcher``).
"""

import tempfile
from pathlib import Path

import numpy as np

import runner.core.tracked  # noqa: F401  (a tracked run; runner.core.run imports it lazily)
from engine import MLP, make_optimizer, train
from runner.core.datasets import Dataset
from runner.plots.training import save_training_plots
from runner.tracking.model import save_pyfunc_model
from runner.tracking.provenance import read_once_per_process


def warm_up() -> None:
    X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    Y = np.array([[0.0], [1.0], [1.0], [0.0]])
    network = MLP([2, 2, 1], np.random.default_rng(0))
    history = train(network, make_optimizer("gd", 1.0), X, Y, epochs=2)
    dataset = Dataset("warm-up", "classification", X, Y, None, None, ["x0", "x1"], ["y"])
    with tempfile.TemporaryDirectory() as directory:
        save_pyfunc_model(str(Path(directory, "model")), network, dataset)
        save_training_plots(history.metrics, Path(directory, "plots"))
    read_once_per_process()
