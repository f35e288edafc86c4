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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from engine._checks import as_finite_2d, check_choice
from engine.limits import check_limit
from engine.network import MLP, Workspace
from engine.optimizers import Optimizer

METRICS = ("mse", "accuracy")


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when the validation loss has not improved by more than ``min_delta`` for ``patience``
    epochs; with ``restore_best_weights`` the network ends with the weights of its best epoch."""

    patience: int = 10
    min_delta: float = 0.0
    restore_best_weights: bool = False

    def __post_init__(self) -> None:
        check_limit("early_stopping.patience", self.patience)
        check_limit("early_stopping.min_delta", self.min_delta)


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
        """Called once when training ends normally (completed, early-stopped or diverged)."""


class _MetricAccumulator:
    """Sums the loss and the requested metrics over batches, weighted by batch size."""

    def __init__(self, loss: str, metrics: Sequence[str]) -> None:
        self.names = ["loss", *metrics]
        self.mse_is_loss = loss == "mse"
        self.mse = "mse" in metrics
        self.accuracy = "accuracy" in metrics
        self.reset()

    def reset(self) -> None:
        self.sums = dict.fromkeys(self.names, 0.0)
        self.count = 0

    def add(self, loss_value: float, a: np.ndarray, y: np.ndarray, scratch: np.ndarray) -> None:
        rows = a.shape[0]
        self.count += rows
        self.sums["loss"] += loss_value * rows
        if self.mse:
            if self.mse_is_loss:
                self.sums["mse"] += loss_value * rows
            else:
                np.subtract(a, y, out=scratch)
                self.sums["mse"] += float(np.vdot(scratch, scratch)) / a.shape[1]
        if self.accuracy:
            self.sums["accuracy"] += _count_correct(a, y)

    def means(self) -> dict[str, float]:
        return {name: total / self.count for name, total in self.sums.items()}


def _count_correct(a: np.ndarray, y: np.ndarray) -> int:
    """Correct class predictions: argmax per row, or a 0.5 threshold for a single output."""
    if a.shape[1] == 1:
        return int(np.count_nonzero((a > 0.5) == (y > 0.5)))
    return int(np.count_nonzero(a.argmax(axis=1) == y.argmax(axis=1)))


def _check_data(network: MLP, X: object, Y: object, x_name: str, y_name: str) -> tuple[np.ndarray, np.ndarray]:
    X = as_finite_2d(x_name, X, network.dtype)
    Y = as_finite_2d(y_name, Y, network.dtype)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"{x_name} has {X.shape[0]} rows but {y_name} has {Y.shape[0]}: they must match")
    network.check_inputs(x_name, X)
    network.check_targets(y_name, Y)
    return X, Y


def evaluate(
    network: MLP,
    X: np.ndarray,
    Y: np.ndarray,
    loss: str,
    metrics: Sequence[str] = (),
    workspace: Workspace | None = None,
) -> dict[str, float]:
    """Loss and ``metrics`` of ``network`` on ``(X, Y)`` in one forward pass over all rows."""
    for metric in metrics:
        check_choice("metrics", metric, dict.fromkeys(METRICS))
    output_delta = network.output_delta(loss)
    workspace = workspace or network.workspace(X.shape[0])
    a = network.forward(X, workspace)
    accumulator = _MetricAccumulator(loss, metrics)
    value = output_delta(a, Y, workspace.deltas[-1], workspace.scratch[-1])
    accumulator.add(value, a, Y, workspace.scratch[-1])
    return accumulator.means()


# Activations that saturate, and how close to which bounds counts as pinned.
_SATURATION_BOUNDS = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}
_PINNED_WITHIN = 1e-6
_PINNED_FRACTION = 0.99
_STUCK_RELATIVE_CHANGE = 1e-9


class _SaturationWatch:
    """Counts epochs in which the loss is stuck and (then, only) whether the units are pinned."""

    def __init__(self, network: MLP, patience: int) -> None:
        check_limit("saturation_patience", patience)
        activations = [network.activation] * (network.n_layers - 1) + [network.output_activation]
        self.layers = [
            (index, _SATURATION_BOUNDS[name]) for index, name in enumerate(activations) if name in _SATURATION_BOUNDS
        ]
        self.patience = patience if self.layers else 0
        self.previous_loss = math.nan
        self.stuck_epochs = 0

    def check(self, train_loss: float, workspace: Workspace, loss: str) -> str | None:
        if not self.patience:
            return None
        stuck = abs(train_loss - self.previous_loss) <= _STUCK_RELATIVE_CHANGE * abs(train_loss)
        self.previous_loss = train_loss
        # The loss test is one comparison; counting pinned units only happens once it holds.
        layer = self._pinned_layer(workspace) if stuck else None
        self.stuck_epochs = self.stuck_epochs + 1 if layer is not None else 0
        if self.stuck_epochs < self.patience:
            return None
        return (
            f"saturated: the units of layer {layer + 1} are pinned at their bounds and train_{loss} "
            f"has stayed at {train_loss:.6g} for {self.patience} epochs (is the learning rate too large?)"
        )

    def _pinned_layer(self, workspace: Workspace) -> int | None:
        """A layer with nearly every unit pinned: no gradient flows back through it."""
        for index, (low, high) in self.layers:
            a = workspace.activations[index]
            pinned = np.count_nonzero((a <= low + _PINNED_WITHIN) | (a >= high - _PINNED_WITHIN))
            if pinned >= _PINNED_FRACTION * a.size:
                return index
        return None


def _first_non_finite(
    metrics: dict[str, float], prefix: str, loss: str, params: np.ndarray | None = None
) -> str | None:
    for name, value in metrics.items():
        if not math.isfinite(value):
            # An mse loss is named as such ('train_mse is inf'), as it is wherever it is logged.
            shown = "mse" if name == "loss" and loss == "mse" else name
            return f"{prefix}_{shown} is {value}"
    if params is None:
        return None
    # A NaN or inf anywhere makes the sum non-finite; one reduction instead of an isfinite mask.
    # np.add.reduce is what ndarray.sum runs, minus a layer of Python wrappers that costs about
    # as much as the sum itself on a small network, once per epoch.
    if not math.isfinite(float(np.add.reduce(params))):
        return "a weight is not finite"
    return None


def train(
    network: MLP,
    optimizer: Optimizer,
    X: np.ndarray,
    Y: np.ndarray,
    *,
    epochs: int,
    loss: str = "mse",
    batch_size: int | None = None,
    rng: np.random.Generator | None = None,
    X_val: np.ndarray | None = None,
    Y_val: np.ndarray | None = None,
    metrics: Sequence[str] = (),
    early_stopping: EarlyStopping | None = None,
    saturation_patience: int = 20,
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
        Training data; cast to the network's dtype. Must be finite and non-empty.
    epochs : int
        Number of passes over the data (>= 1).
    loss : str
        A key of ``engine.losses.LOSSES``.
    batch_size : int or None
        Rows per update; ``None`` (or >= n_samples) is full-batch gradient descent.
    rng : np.random.Generator
        Reshuffles the rows every epoch; required for mini-batches.
    X_val, Y_val : array, optional
        Validation data, evaluated after every epoch.
    metrics : sequence of str
        Extra metrics from ``METRICS`` (``'mse'``, ``'accuracy'``), reported for train and validation.
    early_stopping : EarlyStopping, optional
        Stops on the validation loss; needs a validation set.
    saturation_patience : int
        Stop as diverged when, for this many epochs in a row, the train loss stays the same
        (relative change < 1e-9) while a sigmoid/tanh layer has at least 99% of its units pinned
        at their bounds (no gradient flows back through it): a learning rate so large that the
        network saturated learns nothing more, yet never produces a NaN. 0 turns the check off.
    observers : sequence of Observer
    stop_requested : callable, optional
        Asked after every update (every mini-batch); when it returns something true, training
        stops there with ``stop_reason='interrupted'``. The epoch in progress is neither
        reported nor recorded, but the updates it made stay in the weights.

    Returns
    -------
    History
        ``metrics`` holds ``train_<name>`` (and ``val_<name>``) lists, one value per epoch run.
        Training stops early, with ``stop_reason='diverged'``, at the first epoch whose loss,
        metrics or weights are not finite; that epoch is not reported or recorded.
        ``history.epochs_run`` always counts the epochs recorded.
    """
    check_limit("epochs", epochs)
    for metric in metrics:
        check_choice("metrics", metric, dict.fromkeys(METRICS))
    if not isinstance(optimizer, Optimizer):
        raise ValueError(f"optimizer={optimizer!r} is not allowed: it must be an engine Optimizer")
    output_delta = network.output_delta(loss)
    X, Y = _check_data(network, X, Y, "X", "Y")
    n = X.shape[0]
    has_validation = X_val is not None or Y_val is not None
    if has_validation:
        if X_val is None or Y_val is None:
            raise ValueError("X_val and Y_val must be given together")
        X_val, Y_val = _check_data(network, X_val, Y_val, "X_val", "Y_val")
    if early_stopping is not None and not has_validation:
        raise ValueError("early_stopping needs a validation set (X_val, Y_val); none was given")
    if batch_size is not None:
        check_limit("batch_size", batch_size)
    full_batch = batch_size is None or batch_size >= n
    if not full_batch and not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"rng={rng!r} is not allowed: mini-batch training reshuffles every epoch and needs an np.random.Generator"
        )

    params = network.params
    grads = np.zeros_like(params)
    grad_weights, grad_biases = network.layer_views(grads)
    wants_gradients = any(observer.wants_gradients for observer in observers)
    grad_sum = None  # mini-batches: the epoch gradient is a running sum of the applied ones
    if not wants_gradients:
        report_grads = (None, None)
    elif full_batch:
        report_grads = (grad_weights, grad_biases)
    else:
        grad_sum = np.zeros_like(params)
        report_grads = network.layer_views(grad_sum)

    if full_batch:
        batch_size = n
        workspaces = {n: network.workspace(n)}
    else:
        workspaces = {batch_size: network.workspace(batch_size)}
        if n % batch_size:
            workspaces[n % batch_size] = network.workspace(n % batch_size)
    validation_workspace = network.workspace(X_val.shape[0]) if has_validation else None
    optimizer.reset(network.n_params, network.dtype)
    train_metrics = _MetricAccumulator(loss, metrics)
    history = History(metrics={f"train_{name}": [] for name in train_metrics.names})
    if has_validation:
        history.metrics.update({f"val_{name}": [] for name in train_metrics.names})
    best_loss, best_params, epochs_without_improvement = math.inf, None, 0
    saturation = _SaturationWatch(network, saturation_patience)

    for observer in observers:
        observer.on_train_begin(network)

    # Overflow and NaN are expected when a run diverges: the loop detects them after each epoch
    # and stops with stop_reason='diverged', so NumPy's own warnings would only be noise (and an
    # error wherever warnings are errors).
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        for epoch in range(epochs):
            lr = optimizer.start_epoch(epoch, epochs)
            train_metrics.reset()
            if full_batch:
                workspace = workspaces[n]
                value = network.gradient(X, Y, output_delta, workspace, grad_weights, grad_biases)
                train_metrics.add(value, workspace.activations[-1], Y, workspace.scratch[-1])
                optimizer.step(params, grads)
                stopped = stop_requested is not None and stop_requested()
            else:
                order = rng.permutation(n)
                n_batches = 0
                stopped = False
                for start in range(0, n, batch_size):
                    rows = order[start : start + batch_size]
                    workspace = workspaces[rows.shape[0]]
                    # mode='clip' because the default 'raise' gathers into a temporary and copies it to
                    # `out` (so a bad index cannot leave it half-written): 2.8x slower, and a
                    # permutation's indices are always in range, so clipping never changes one.
                    X.take(rows, axis=0, out=workspace.inputs, mode="clip")
                    Y.take(rows, axis=0, out=workspace.targets, mode="clip")
                    value = network.gradient(
                        workspace.inputs, workspace.targets, output_delta, workspace, grad_weights, grad_biases
                    )
                    train_metrics.add(value, workspace.activations[-1], workspace.targets, workspace.scratch[-1])
                    optimizer.step(params, grads)
                    if grad_sum is not None:
                        grad_sum += grads
                    n_batches += 1
                    if stop_requested is not None and stop_requested():
                        stopped = True
                        break
                if grad_sum is not None:
                    grad_sum *= 1.0 / n_batches
            if stopped:
                history.stop_reason = "interrupted"
                history.message = f"interrupted in epoch {epoch}, after {epoch} complete epoch(s)"
                break

            train_values = train_metrics.means()
            problem = _first_non_finite(train_values, "train", loss, params)
            validation_values = None
            if problem is None and has_validation:
                validation_values = evaluate(network, X_val, Y_val, loss, metrics, validation_workspace)
                problem = _first_non_finite(validation_values, "val", loss)
            if problem is None:
                problem = saturation.check(train_values["loss"], workspace, loss)
            if problem is not None:
                history.stop_reason = "diverged"
                history.message = f"diverged at epoch {epoch}: {problem}"
                break
            history.epochs_run = epoch + 1
            for name, value in train_values.items():
                history.metrics[f"train_{name}"].append(value)
            if validation_values is not None:
                for name, value in validation_values.items():
                    history.metrics[f"val_{name}"].append(value)

            if observers:
                report = EpochReport(
                    epoch,
                    lr,
                    train_values,
                    validation_values,
                    network.weights,
                    network.biases,
                    report_grads[0],
                    report_grads[1],
                )
                for observer in observers:
                    observer.on_epoch_end(report)
            if grad_sum is not None:
                grad_sum.fill(0.0)

            if early_stopping is not None:
                val_loss = validation_values["loss"]
                if val_loss < best_loss - early_stopping.min_delta:
                    best_loss, history.best_epoch, epochs_without_improvement = val_loss, epoch, 0
                    if early_stopping.restore_best_weights:
                        best_params = params.copy()
                else:
                    epochs_without_improvement += 1
                    if epochs_without_improvement >= early_stopping.patience:
                        history.stop_reason = "early_stopping"
                        history.message = (
                            f"early stopping at epoch {epoch}: val_loss has not improved by more than "
                            f"{early_stopping.min_delta} for {early_stopping.patience} epochs "
                            f"(best {best_loss:.6g} at epoch {history.best_epoch})"
                        )
                        break

    if history.stop_reason == "completed":
        history.message = f"completed {history.epochs_run} epochs"
    if best_params is not None:
        np.copyto(params, best_params)
        history.restored_epoch = history.best_epoch
        history.message += f"; restored the weights of epoch {history.best_epoch}"
    for observer in observers:
        observer.on_train_end(history)
    return history
