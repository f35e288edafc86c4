"""Pure-NumPy backpropagation engine: multi-layer perceptrons, losses, optimizers, training.

Depends on NumPy and the standard library only; nothing here knows about Hydra or MLflow.
"""

from engine.activations import ACTIVATIONS
from engine.gradcheck import GradientCheck, gradient_check
from engine.initializers import INITIALIZERS
from engine.losses import LOSSES
from engine.metrics import METRICS, evaluate
from engine.network import MLP
from engine.optimizers import OPTIMIZERS, Optimizer, make_optimizer
from engine.schedules import SCHEDULE_NAMES, Schedule
from engine.stacked import train_stacked
from engine.stopping import EarlyStopping, StoppingRules
from engine.training import EpochReport, History, Observer, Validation, train

__all__ = [
    "ACTIVATIONS",
    "INITIALIZERS",
    "LOSSES",
    "METRICS",
    "MLP",
    "OPTIMIZERS",
    "SCHEDULE_NAMES",
    "EarlyStopping",
    "EpochReport",
    "GradientCheck",
    "History",
    "Observer",
    "Optimizer",
    "Schedule",
    "StoppingRules",
    "Validation",
    "evaluate",
    "gradient_check",
    "make_optimizer",
    "train",
    "train_stacked",
]
