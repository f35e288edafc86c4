"""When training stops before its last epoch: the settings (``StoppingRules``) and the rules.

Each rule is a small object with one job, asked once per epoch through ``check(...)``, which
returns why training must stop, in words, or ``None``. A rule works from one network's plain
values (a loss, that network's layer outputs, its flat parameter vector), never from the
training loop's buffers, so that every network trained side by side can have rules of its own.

- ``Divergence``: a non-finite metric or weight.
- ``Growth``: the train loss grown past a multiple of its first value (a run on its way to
  overflow, stopped before its values wreck every chart they are drawn in).
- ``Saturation``: the train loss stuck while a sigmoid/tanh layer has its units pinned.
- ``EarlyStoppingWatch``: the validation loss has stopped improving (``EarlyStopping``); keeps a
  copy of the best epoch's parameters and restores it when asked.

Stacked training (``engine.stacked``) keeps one of each rule per member and asks a member's rule
where a test over all members at once finds it may fire (``Growth.limit``); it counts saturation
for all members at once (``StackedSaturation``, which follows ``Saturation`` step for step).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from engine.limits import check_limit


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when the validation loss has not improved by more than ``min_delta`` for ``patience``
    epochs; with ``restore_best_weights`` the network ends with the weights of its best epoch."""

    patience: int = 20
    min_delta: float = 0.0
    restore_best_weights: bool = False

    def __post_init__(self) -> None:
        check_limit("early_stopping.patience", self.patience)
        check_limit("early_stopping.min_delta", self.min_delta)


@dataclass(frozen=True)
class StoppingRules:
    """The stopping rules ``train`` applies besides divergence, which is always checked.

    Parameters
    ----------
    early_stopping : EarlyStopping or None
        Stops on the validation loss; needs validation data. ``None``: off.
    saturation_patience : int
        Stop as diverged when, for this many epochs in a row, the train loss stays the same
        (relative change < 1e-9) while a sigmoid/tanh layer has at least 99% of its units pinned
        at their bounds (no gradient flows back through it): a learning rate so large that the
        network saturated learns nothing more, yet never produces a NaN. 0 turns the check off.
    divergence_factor : float
        Stop as diverged at the first epoch whose train loss is more than this many times the
        first epoch's (that epoch is not recorded). 0 turns the check off; else it must be > 1.
    """

    early_stopping: EarlyStopping | None = None
    saturation_patience: int = 20
    divergence_factor: float = 100.0

    def __post_init__(self) -> None:
        if self.early_stopping is not None and not isinstance(self.early_stopping, EarlyStopping):
            raise ValueError(
                f"early_stopping={self.early_stopping!r} is not allowed: it must be an engine EarlyStopping or None"
            )
        check_limit("saturation_patience", self.saturation_patience)
        check_limit("divergence_factor", self.divergence_factor)
        if 0 < self.divergence_factor <= 1:
            raise ValueError(f"divergence_factor={self.divergence_factor!r} is not allowed: it must be 0 (off) or > 1")


class Divergence:
    """Finds the first non-finite quantity of an epoch: one of its metrics, else a weight."""

    def __init__(self, loss: str) -> None:
        # An mse loss is named as such ('train_mse is inf'), as it is wherever it is logged.
        self.loss_name = "mse" if loss == "mse" else "loss"

    def check(self, split: str, metrics: Mapping[str, float], params: np.ndarray | None = None) -> str | None:
        """What is not finite among ``metrics`` (named ``<split>_<name>``) and ``params``, or None.

        Parameters
        ----------
        split : str
            ``'train'`` or ``'val'``, the prefix of the metric names in the message.
        metrics : mapping of str to float
            One network's metrics of the epoch, ``'loss'`` among them.
        params : array, shape ``(n_params,)``, optional
            That network's flat parameter vector.
        """
        for name, value in metrics.items():
            if not math.isfinite(value):
                return f"{split}_{self.loss_name if name == 'loss' else name} is {value}"
        # A NaN or inf anywhere makes the sum non-finite: one reduction, no mask of the size of params.
        # np.add.reduce is the reduction ndarray.sum wraps: once per epoch, the wrapper costs as
        # much as the sum itself on a small network.
        if params is not None and not math.isfinite(float(np.add.reduce(params))):
            return "a weight is not finite"
        return None


class Growth:
    """Finds a train loss grown past ``factor`` times the first epoch's: a run diverging that has
    not overflowed yet. ``factor`` 0 turns the check off."""

    def __init__(self, factor: float, loss: str) -> None:
        self.factor = factor
        self.loss_name = "mse" if loss == "mse" else "loss"
        self.first: float | None = None
        # The train loss beyond which the check fires, once the first epoch has set it: inf
        # while it cannot fire (off, before the first epoch, or a first loss of 0).
        self.limit = math.inf

    def check(self, train_loss: float) -> str | None:
        """Count this epoch's train loss; say why it diverged, or None."""
        if not self.factor:
            return None
        if self.first is None:
            self.first = train_loss
            if self.first > 0:
                self.limit = self.factor * self.first
            return None
        if train_loss > self.limit:
            return (
                f"train_{self.loss_name} grew to {train_loss:.6g}, more than {self.factor:g} times its first "
                f"value {self.first:.6g}"
            )
        return None


# Activations that saturate, and how close to which bounds counts as pinned.
SATURATION_BOUNDS = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}
PINNED_WITHIN = 1e-6
PINNED_FRACTION = 0.99
STUCK_RELATIVE_CHANGE = 1e-9


class Saturation:
    """Counts the epochs in a row in which the train loss is stuck and a layer's units are pinned.

    Parameters
    ----------
    layer_activations : sequence of str
        The activation of each layer of the network, output layer last.
    patience : int
        Stuck epochs in a row that make the network saturated; 0 turns the check off (as does a
        network without sigmoid or tanh layers).
    loss : str
        The loss's name, for the message.
    """

    def __init__(self, layer_activations: Sequence[str], patience: int, loss: str) -> None:
        check_limit("saturation_patience", patience)
        self.layers = [
            (index, SATURATION_BOUNDS[name])
            for index, name in enumerate(layer_activations)
            if name in SATURATION_BOUNDS
        ]
        self.patience = patience if self.layers else 0
        self.loss = loss
        self.previous_loss = math.nan
        self.stuck_epochs = 0

    def check(self, train_loss: float, layer_outputs: Sequence[np.ndarray]) -> str | None:
        """Count this epoch; say so once ``patience`` epochs in a row were stuck, else None.

        Parameters
        ----------
        train_loss : float
            The network's train loss of the epoch.
        layer_outputs : sequence of array, shapes ``(rows, sizes[l + 1])``
            The network's activations ``a`` of every layer, from the epoch's last batch.
        """
        if not self.patience:
            return None
        stuck = abs(train_loss - self.previous_loss) <= STUCK_RELATIVE_CHANGE * abs(train_loss)
        self.previous_loss = train_loss
        # The loss test is one comparison; counting pinned units only happens once it holds.
        layer = pinned_layer(self.layers, layer_outputs) if stuck else None
        if layer is None:
            self.stuck_epochs = 0
            return None
        self.stuck_epochs += 1
        if self.stuck_epochs < self.patience:
            return None
        return saturation_message(layer, self.loss, train_loss, self.patience)


def pinned_layer(layers: Sequence[tuple[int, tuple[float, float]]], layer_outputs: Sequence[np.ndarray]) -> int | None:
    """The first of ``layers`` (``(index, (low, high))``) with nearly every unit of its output
    pinned at a bound: no gradient flows back through it; None if there is none."""
    for index, (low, high) in layers:
        a = layer_outputs[index]
        pinned = np.count_nonzero((a <= low + PINNED_WITHIN) | (a >= high - PINNED_WITHIN))
        if pinned >= PINNED_FRACTION * a.size:
            return index
    return None


def saturation_message(layer: int, loss: str, train_loss: float, patience: int) -> str:
    return (
        f"saturated: the units of layer {layer + 1} are pinned at their bounds and train_{loss} "
        f"has stayed at {train_loss:.6g} for {patience} epochs (is the learning rate too large?)"
    )


class StackedSaturation:
    """``Saturation`` of stacked members, counted for all of them at once: the same tests in the
    same order, on arrays of one value per member, each member with its own patience.

    ``check(train_losses, layer_outputs)`` takes each member's train loss (shape ``(M,)``) and the
    stacked layer outputs (``(M, rows, sizes[l + 1])``), and returns each member's verdict as
    ``Saturation.check`` would give it. ``select(keep)`` keeps the members at positions ``keep``.
    """

    def __init__(self, layer_activations: Sequence[str], patience: Sequence[int], loss: str) -> None:
        rules = [Saturation(layer_activations, each, loss) for each in patience]
        self.layers, self.loss = rules[0].layers, loss
        self.patience = np.array([rule.patience for rule in rules])
        self.previous_loss = np.full(len(rules), math.nan)
        self.stuck_epochs = np.zeros(len(rules), np.int64)
        self.on = self.patience > 0

    def check(self, train_losses: np.ndarray, layer_outputs: Sequence[np.ndarray]) -> dict[int, str]:
        """The members found saturated this epoch, by position, with ``Saturation.check``'s
        message."""
        if not self.on.any():
            return {}
        stuck = np.abs(train_losses - self.previous_loss) <= STUCK_RELATIVE_CHANGE * np.abs(train_losses)
        stuck &= self.on
        np.copyto(self.previous_loss, train_losses, where=self.on)
        self.stuck_epochs *= stuck  # 0 where the loss moved
        verdicts: dict[int, str] = {}
        if not stuck.any():
            return verdicts
        for member in np.flatnonzero(stuck).tolist():
            layer = pinned_layer(self.layers, [outputs[member] for outputs in layer_outputs])
            if layer is None:
                self.stuck_epochs[member] = 0
                continue
            self.stuck_epochs[member] += 1
            if self.stuck_epochs[member] >= self.patience[member]:
                loss, patience = float(train_losses[member]), int(self.patience[member])
                verdicts[member] = saturation_message(layer, self.loss, loss, patience)
        return verdicts

    def select(self, keep: np.ndarray) -> None:
        self.patience, self.previous_loss = self.patience[keep], self.previous_loss[keep]
        self.stuck_epochs, self.on = self.stuck_epochs[keep], self.on[keep]


class EarlyStoppingWatch:
    """Follows one network's validation loss for an ``EarlyStopping`` rule.

    ``best_epoch`` is the last epoch that improved on the best loss by more than ``min_delta``;
    with ``restore_best_weights`` a copy of that epoch's parameters is kept for ``restore``.
    """

    def __init__(self, rule: EarlyStopping) -> None:
        self.rule = rule
        self.best_loss = math.inf
        self.best_epoch: int | None = None
        self.best_params: np.ndarray | None = None
        self.epochs_without_improvement = 0

    def check(self, epoch: int, val_loss: float, params: np.ndarray) -> str | None:
        """Count ``epoch``; say so once ``patience`` epochs in a row did not improve, else None.

        Parameters
        ----------
        epoch : int
            The 0-based epoch that ``val_loss`` and ``params`` are from.
        val_loss : float
            The network's validation loss after the epoch.
        params : array, shape ``(n_params,)``
            The network's flat parameter vector after the epoch (copied when it is the best).
        """
        rule = self.rule
        if val_loss < self.best_loss - rule.min_delta:
            self.best_loss, self.best_epoch, self.epochs_without_improvement = val_loss, epoch, 0
            if rule.restore_best_weights:
                self.best_params = params.copy()
            return None
        self.epochs_without_improvement += 1
        if self.epochs_without_improvement < rule.patience:
            return None
        return (
            f"val_loss has not improved by more than {rule.min_delta} for {rule.patience} epochs "
            f"(best {self.best_loss:.6g} at epoch {self.best_epoch})"
        )

    def restore(self, params: np.ndarray) -> int | None:
        """Copy the kept parameters of the best epoch into ``params``; return that epoch, or None
        when none were kept (``restore_best_weights`` off, or no epoch checked)."""
        if self.best_params is None:
            return None
        np.copyto(params, self.best_params)
        return self.best_epoch
