"""The training loop: full-batch or mini-batch gradient descent with observers.

What an epoch reports
---------------------
- ``train`` metrics: the sample-weighted mean over the epoch's mini-batches of each batch's value,
  computed in the forward pass that produced that batch's gradient (so with the weights *before*
  that batch's update). Full batch: the loss of the weights at the start of the epoch.
- ``validation`` metrics: computed after the epoch's last update.
- ``weights``/``biases``: the parameters at the end of the epoch.
- ``grad_weights``/``grad_biases``: the epoch's gradient, defined as the unweighted mean of the
  mini-batch gradients applied during the epoch (every batch is applied alike, the smaller last
  one included). Full batch: the one gradient applied. Only computed when an observer asks
  (``wants_gradients``); otherwise they are ``None`` and cost nothing.

All arrays in a report are views of live buffers, valid during the call only: an observer that
keeps them must copy. The loop never prints, logs or writes files.

An epoch whose loss, metrics or weights are not finite, or whose network saturated (see
``engine.stopping``), ends training as ``'diverged'``; it is neither reported nor recorded.

``engine.stacked`` trains several networks at once with the same epoch of updates
(``FullBatch``, ``MiniBatches``: their code works on a leading member axis), the same checks of
the arguments, stops, observer calls and ending (the functions here without a leading underscore).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import numpy as np
import numpy.typing as npt

from engine._checks import as_finite_2d
from engine.limits import check_limit
from engine.metrics import METRICS, MetricSums, check_metrics, evaluate
from engine.network import MLP, OutputDelta
from engine.optimizers import Optimizer
from engine.stopping import Divergence, EarlyStopping, EarlyStoppingWatch, Growth, Saturation, StoppingRules

__all__ = [
    "METRICS",
    "EarlyStopping",
    "EpochReport",
    "History",
    "Observer",
    "StoppingRules",
    "Validation",
    "evaluate",
    "train",
]


class Stepper(Protocol):
    """What an epoch of updates needs of an optimizer (an ``Optimizer``, or the
    ``StackedOptimizer`` of stacked members)."""

    def step(self, params: np.ndarray, grads: np.ndarray) -> None: ...


class Shuffler(Protocol):
    """What mini-batches need of a random generator: a permutation of ``n`` rows (of each
    member's rows for stacked members, shape ``(M, n)``)."""

    def permutation(self, x: int, /) -> np.ndarray: ...


@dataclass(frozen=True)
class Validation:
    """Validation data, evaluated after every epoch: ``X`` of shape ``(n_val, n_inputs)`` and
    ``Y`` of shape ``(n_val, n_outputs)``, checked and cast like the training data."""

    X: npt.ArrayLike
    Y: npt.ArrayLike


@dataclass
class EpochReport:
    """What observers receive at the end of each epoch (see the module docstring)."""

    epoch: int
    lr: float
    train: dict[str, float]
    validation: dict[str, float] | None
    weights: list[np.ndarray]
    biases: list[np.ndarray]
    grad_weights: list[np.ndarray] | None
    grad_biases: list[np.ndarray] | None


@dataclass
class History:
    """Per-epoch metrics (``metrics['train_loss'][e]`` etc.) and how training ended.

    ``stop_reason`` is ``'completed'``, ``'early_stopping'``, ``'diverged'`` or ``'interrupted'``;
    ``message`` says what happened in words (for divergence: the epoch and the non-finite
    quantity).
    """

    metrics: dict[str, list[float]] = field(default_factory=dict)
    epochs_run: int = 0
    stop_reason: str = "completed"
    message: str = ""
    best_epoch: int | None = None
    restored_epoch: int | None = None  # set when the network ends with the weights of this epoch


class Observer:
    """Hooks the training loop calls. Subclass and override what you need.

    Set ``wants_gradients = True`` to receive each epoch's gradient tensors; weights and biases
    are always given (they are views, free to pass).
    """

    wants_gradients: bool = False

    def on_train_begin(self, network: MLP) -> None:
        """Called once before the first epoch."""

    def on_epoch_end(self, report: EpochReport) -> None:
        """Called after every epoch that finished with finite loss and weights."""

    def on_train_end(self, history: History) -> None:
        """Called once when training ends: completed, early-stopped, diverged or interrupted."""

    def stop_training(self) -> tuple[str, str] | None:
        """Asked after each ``on_epoch_end``: ``(stop_reason, message)`` ends training after this
        epoch, which stays recorded (a pruner that finds the run will not win: ``'pruned'``);
        None goes on."""
        return None


def train(
    network: MLP,
    optimizer: Optimizer,
    X: npt.ArrayLike,
    Y: npt.ArrayLike,
    *,
    epochs: int,
    loss: str = "mse",
    batch_size: int | None = None,
    rng: np.random.Generator | None = None,
    validation: Validation | tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    metrics: Sequence[str] = (),
    stopping: StoppingRules | None = None,
    observers: Sequence[Observer] = (),
    stop_requested: Callable[[], object] | None = None,
) -> History:
    """Train ``network`` in place and return its per-epoch history.

    Parameters
    ----------
    network : MLP
    optimizer : Optimizer
        Owns the learning rate and its schedule.
    X, Y : array, shapes ``(n_samples, n_inputs)`` and ``(n_samples, n_outputs)``
        Training data, finite and non-empty; cast to the network's dtype.
    epochs, loss : int, str
        Passes over the data (>= 1); a key of ``engine.losses.LOSSES``.
    batch_size, rng : int or None, np.random.Generator or None
        Rows per update; ``None`` (or >= n_samples) is full-batch gradient descent. Mini-batches
        need ``rng``, which reshuffles the rows every epoch.
    validation : Validation or (X_val, Y_val), optional
        Shapes ``(n_val, n_inputs)`` and ``(n_val, n_outputs)``; evaluated after every epoch.
    metrics : sequence of str
        Extra metrics from ``METRICS``, reported for train and validation.
    stopping : StoppingRules, optional
        Early stopping, the saturation and growth checks; ``None`` is ``StoppingRules()``.
    observers : sequence of Observer
        Told of every epoch; one may end training after it (``Observer.stop_training``).
    stop_requested : callable, optional
        Asked after every update: once it returns something true, training stops there as
        ``'interrupted'``; the epoch in progress is not recorded, but its updates stay.

    Returns
    -------
    History: ``train_<name>`` (and ``val_<name>``) metrics, one value per epoch recorded; how it ended.
    """
    check_limit("epochs", epochs)
    updates = _epoch_updates(network, optimizer, X, Y, loss, metrics, batch_size, rng, stop_requested)
    checks = _EpochChecks(network, loss, metrics, validation, stopping)
    grad_views = updates.epoch_gradient(any(observer.wants_gradients for observer in observers))
    history = empty_history(updates.metrics.names, checks.has_validation)
    for observer in observers:
        observer.on_train_begin(network)
    # Overflow and NaN are expected when a run diverges, and caught by the checks: NumPy's warnings are noise.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        for epoch in range(epochs):
            lr = optimizer.start_epoch(epoch, epochs)
            train_values = updates.run_epoch()
            if train_values is None:
                stop_history(history, "interrupted", f"interrupted in epoch {epoch}, after {epoch} complete epoch(s)")
                break
            val_values, problem = checks.validation_and_divergence(train_values, updates.layer_outputs)
            if problem is not None:
                stop_history(history, "diverged", f"diverged at epoch {epoch}: {problem}")
                break
            _record(history, epoch, train_values, val_values)
            if observers:
                report = EpochReport(epoch, lr, train_values, val_values, network.weights, network.biases, *grad_views)
                requested = notify(observers, report)
                if requested is not None:
                    stop_history(history, *requested)
                    break
            problem = checks.early_stopping(epoch, val_values)
            if problem is not None:
                stop_history(history, "early_stopping", f"early stopping at epoch {epoch}: {problem}")
                break
    checks.finish(history)
    for observer in observers:
        observer.on_train_end(history)
    return history


def notify(observers: Sequence[Observer], report: EpochReport) -> tuple[str, str] | None:
    """Hand the epoch to every observer; the first stop one of them asks for, if any."""
    for observer in observers:
        observer.on_epoch_end(report)
    return next((stop for observer in observers if (stop := observer.stop_training()) is not None), None)


def check_data(network: MLP, X: object, Y: object, x_name: str, y_name: str) -> tuple[np.ndarray, np.ndarray]:
    X = as_finite_2d(x_name, X, network.dtype)
    Y = as_finite_2d(y_name, Y, network.dtype)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"{x_name} has {X.shape[0]} rows but {y_name} has {Y.shape[0]}: they must match")
    network.check_inputs(x_name, X)
    network.check_targets(y_name, Y)
    return X, Y


def empty_history(names: Sequence[str], has_validation: bool) -> History:
    splits = ("train", "val") if has_validation else ("train",)
    return History(metrics={f"{split}_{name}": [] for split in splits for name in names})


def _record(history: History, epoch: int, train_values: dict[str, float], val_values: dict[str, float] | None) -> None:
    """Append the epoch's metrics to ``history``."""
    history.epochs_run = epoch + 1
    for name, value in train_values.items():
        history.metrics[f"train_{name}"].append(value)
    if val_values is not None:
        for name, value in val_values.items():
            history.metrics[f"val_{name}"].append(value)


def stop_history(history: History, reason: str, message: str) -> None:
    history.stop_reason, history.message = reason, message


def _epoch_updates(
    network: MLP,
    optimizer: Optimizer,
    X: npt.ArrayLike,
    Y: npt.ArrayLike,
    loss: str,
    metrics: Sequence[str],
    batch_size: int | None,
    rng: np.random.Generator | None,
    stop_requested: Callable[[], object] | None,
) -> FullBatch | MiniBatches:
    """The updates of one epoch, arguments checked, the optimizer reset: full batch when
    ``batch_size`` is None or >= n_samples, else shuffled mini-batches."""
    check_metrics(metrics)
    if not isinstance(optimizer, Optimizer):
        raise ValueError(f"optimizer={optimizer!r} is not allowed: it must be an engine Optimizer")
    output_delta = network.output_delta(loss)
    X, Y = check_data(network, X, Y, "X", "Y")
    if batch_size is not None:
        check_limit("batch_size", batch_size)
    sums = MetricSums(loss, metrics)
    if batch_size is None or batch_size >= X.shape[0]:
        optimizer.reset(network.n_params, network.dtype)
        return FullBatch(network, optimizer, X, Y, output_delta, sums, stop_requested)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"rng={rng!r} is not allowed: mini-batch training reshuffles every epoch and needs an np.random.Generator"
        )
    optimizer.reset(network.n_params, network.dtype)
    return MiniBatches(network, optimizer, X, Y, output_delta, sums, stop_requested, batch_size, rng)


class _Updates:
    """One epoch of gradient updates of ``network`` on ``X`` ``(n, n_inputs)`` and ``Y``
    ``(n, n_outputs)``, ``run_epoch()`` at a time; ``stop_requested`` is asked after every update.

    After an epoch, ``layer_outputs`` holds the activations ``a`` of every layer for its last
    batch; ``metrics`` sums the train metrics over its batches. The optimizer's state is its
    own: ``_epoch_updates`` resets it before training.

    The same code runs stacked members (``engine.stacked``): a ``StackedMLP``, its
    ``StackedOptimizer`` and ``StackedMetricSums``, and for mini-batches one permutation per member
    (``order`` of shape ``(M, n)``, each member's rows gathered into its own batch).
    """

    def __init__(
        self,
        network: MLP,
        optimizer: Stepper,
        X: np.ndarray,
        Y: np.ndarray,
        output_delta: OutputDelta,
        metrics: MetricSums,
        stop_requested: Callable[[], object] | None,
        rows: int,
    ) -> None:
        self.network, self.optimizer, self.X, self.Y = network, optimizer, X, Y
        self.output_delta, self.metrics, self.stop_requested = output_delta, metrics, stop_requested
        self.workspace = network.workspace(rows)
        self.layer_outputs = self.workspace.activations
        self.params = network.params
        self.grads = np.zeros_like(self.params)
        self.grad_weights, self.grad_biases = network.layer_views(self.grads)

    def epoch_gradient(self, wanted: bool) -> tuple[list[np.ndarray], list[np.ndarray]] | tuple[None, None]:
        """Per-layer views ``(grad_weights, grad_biases)`` of the gradient each epoch ends with, or
        ``(None, None)`` when it is not ``wanted`` (then it costs nothing)."""
        raise NotImplementedError

    def run_epoch(self) -> dict[str, float] | None:
        """Apply one epoch of updates and return its train metrics; None when a stop was
        requested before its end."""
        raise NotImplementedError


class FullBatch(_Updates):
    """One update per epoch, from the gradient over all rows, which is the epoch's gradient."""

    def __init__(
        self,
        network: MLP,
        optimizer: Stepper,
        X: np.ndarray,
        Y: np.ndarray,
        output_delta: OutputDelta,
        metrics: MetricSums,
        stop_requested: Callable[[], object] | None,
    ) -> None:
        super().__init__(network, optimizer, X, Y, output_delta, metrics, stop_requested, X.shape[0])

    def epoch_gradient(self, wanted: bool) -> tuple[list[np.ndarray], list[np.ndarray]] | tuple[None, None]:
        return (self.grad_weights, self.grad_biases) if wanted else (None, None)

    def run_epoch(self) -> dict[str, float] | None:
        self.metrics.reset()
        workspace = self.workspace
        value = self.network.gradient(self.X, self.Y, self.output_delta, workspace, self.grad_weights, self.grad_biases)
        self.metrics.add(value, workspace.activations[-1], self.Y, workspace.scratch[-1])
        self.optimizer.step(self.params, self.grads)
        if self.stop_requested is not None and self.stop_requested():
            return None
        return self.metrics.means()


class MiniBatches(_Updates):
    """Shuffled mini-batches of ``batch_size`` rows, the last one smaller when they do not
    divide n; one update per batch. The epoch's gradient is the mean of the applied ones."""

    def __init__(
        self,
        network: MLP,
        optimizer: Stepper,
        X: np.ndarray,
        Y: np.ndarray,
        output_delta: OutputDelta,
        metrics: MetricSums,
        stop_requested: Callable[[], object] | None,
        batch_size: int,
        rng: Shuffler,
    ) -> None:
        super().__init__(network, optimizer, X, Y, output_delta, metrics, stop_requested, batch_size)
        self.batch_size, self.rng = batch_size, rng
        n = X.shape[0]
        self.n_batches = (n + batch_size - 1) // batch_size
        self.workspaces = {batch_size: self.workspace}
        if n % batch_size:
            self.workspaces[n % batch_size] = network.workspace(n % batch_size)
        self.grad_sum: np.ndarray | None = None  # a running sum of the gradients the epoch applies

    def epoch_gradient(self, wanted: bool) -> tuple[list[np.ndarray], list[np.ndarray]] | tuple[None, None]:
        if not wanted:
            return None, None
        self.grad_sum = np.zeros_like(self.params)
        return self.network.layer_views(self.grad_sum)

    def run_epoch(self) -> dict[str, float] | None:
        self.metrics.reset()
        X, Y, batch_size, grads, grad_sum = self.X, self.Y, self.batch_size, self.grads, self.grad_sum
        if grad_sum is not None:
            grad_sum.fill(0.0)
        order = self.rng.permutation(X.shape[0])
        for start in range(0, X.shape[0], batch_size):
            rows = order[..., start : start + batch_size]
            workspace = self.workspaces[rows.shape[-1]]
            # mode='clip': the default 'raise' gathers into a temporary and copies it to `out`
            # (so that a bad index cannot leave it half-written); a permutation's indices are
            # always in range, so clipping never changes one.
            X.take(rows, axis=0, out=workspace.inputs, mode="clip")
            Y.take(rows, axis=0, out=workspace.targets, mode="clip")
            value = self.network.gradient(
                workspace.inputs, workspace.targets, self.output_delta, workspace, self.grad_weights, self.grad_biases
            )
            self.metrics.add(value, workspace.activations[-1], workspace.targets, workspace.scratch[-1])
            self.optimizer.step(self.params, grads)
            if grad_sum is not None:
                grad_sum += grads
            if self.stop_requested is not None and self.stop_requested():
                return None
        if grad_sum is not None:
            grad_sum *= 1.0 / self.n_batches
        self.layer_outputs = workspace.activations
        return self.metrics.means()


class _EpochChecks:
    """The validation pass and the stopping rules of one network, asked after every epoch."""

    def __init__(self, network: MLP, loss: str, metrics: Sequence[str], validation: object, stopping: object) -> None:
        self.params = network.params
        self.validate = _validation_pass(network, validation, loss, metrics)
        self.has_validation = self.validate is not None
        rules = check_stopping(stopping, self.has_validation)
        self.divergence = Divergence(loss)
        self.growth = Growth(rules.divergence_factor, loss)
        self.saturation = Saturation(network.layer_activations, rules.saturation_patience, loss)
        self.watch = None if rules.early_stopping is None else EarlyStoppingWatch(rules.early_stopping)

    def validation_and_divergence(
        self, train_values: dict[str, float], layer_outputs: Sequence[np.ndarray]
    ) -> tuple[dict[str, float] | None, str | None]:
        """The epoch's validation metrics (None without validation data) and why it diverged:
        a non-finite train metric or weight (then validation is skipped), a non-finite
        validation metric, or saturation; None when it did not."""
        problem = self.divergence.check("train", train_values, self.params) or self.growth.check(train_values["loss"])
        if problem is not None:
            return None, problem
        val_values = None
        if self.validate is not None:
            val_values = self.validate()
            problem = self.divergence.check("val", val_values)
        if problem is None:
            problem = self.saturation.check(train_values["loss"], layer_outputs)
        return val_values, problem

    def early_stopping(self, epoch: int, val_values: dict[str, float] | None) -> str | None:
        """Why training stops early after ``epoch``, or None (always, without early stopping)."""
        if self.watch is None or val_values is None:
            return None
        return self.watch.check(epoch, val_values["loss"], self.params)

    def finish(self, history: History) -> None:
        """Complete ``history`` once the loop has ended; restore the best weights when kept."""
        finish_history(history, self.watch, self.params)


def finish_history(history: History, watch: EarlyStoppingWatch | None, params: np.ndarray) -> None:
    """Complete ``history`` of a network whose training has ended; with early stopping, note the
    best epoch and restore its weights into ``params`` when they were kept."""
    if history.stop_reason == "completed":
        history.message = f"completed {history.epochs_run} epochs"
    if watch is None:
        return
    history.best_epoch = watch.best_epoch
    history.restored_epoch = watch.restore(params)
    if history.restored_epoch is not None:
        history.message += f"; restored the weights of epoch {history.restored_epoch}"


def _validation_pass(
    network: MLP, validation: object, loss: str, metrics: Sequence[str]
) -> Callable[[], dict[str, float]] | None:
    """The evaluation of the validation data after an epoch, or None without validation data."""
    data = validation_data(network, validation)
    if data is None:
        return None
    X_val, Y_val = data
    return partial(evaluate, network, X_val, Y_val, loss, metrics, network.workspace(X_val.shape[0]))


def validation_data(network: MLP, validation: object) -> tuple[np.ndarray, np.ndarray] | None:
    """``validation``'s ``(X_val, Y_val)``, checked and cast for ``network``; None without."""
    if validation is None:
        return None
    if isinstance(validation, Validation):
        X_val, Y_val = validation.X, validation.Y
    elif isinstance(validation, tuple) and len(validation) == 2:
        X_val, Y_val = validation
    else:
        raise ValueError(
            f"validation of type {type(validation).__name__} is not allowed: "
            "it must be a Validation(X, Y), an (X, Y) tuple or None"
        )
    return check_data(network, X_val, Y_val, "validation.X", "validation.Y")


def check_stopping(stopping: object, has_validation: bool) -> StoppingRules:
    if stopping is None:
        return StoppingRules()
    if not isinstance(stopping, StoppingRules):
        raise ValueError(f"stopping={stopping!r} is not allowed: it must be an engine StoppingRules or None")
    if stopping.early_stopping is not None and not has_validation:
        raise ValueError("early_stopping needs validation data (validation=Validation(X_val, Y_val)); none was given")
    return stopping
