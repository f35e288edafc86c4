"""The stopping rules on their own: each works from one network's plain values (floats, arrays),
with no training loop around it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.stopping import Divergence, EarlyStopping, EarlyStoppingWatch, Saturation


def test_divergence_names_the_first_non_finite_metric_then_a_weight() -> None:
    divergence = Divergence("mse")
    assert divergence.check("train", {"loss": 0.5, "accuracy": 1.0}, np.ones(4)) is None
    assert divergence.check("train", {"loss": math.inf, "accuracy": math.nan}) == "train_mse is inf"
    assert divergence.check("val", {"loss": 0.5, "accuracy": math.nan}) == "val_accuracy is nan"
    assert divergence.check("train", {"loss": 0.5}, np.array([1.0, np.nan])) == "a weight is not finite"
    # Any other loss keeps the name 'loss'.
    assert Divergence("cross_entropy").check("val", {"loss": math.nan}) == "val_loss is nan"


def test_saturation_counts_stuck_epochs_with_pinned_units_in_a_row() -> None:
    saturation = Saturation(["tanh", "sigmoid"], patience=3, loss="mse")
    pinned = [np.full((4, 3), 0.2), np.ones((4, 1))]  # the output layer sits at its upper bound
    free = [np.full((4, 3), 0.2), np.full((4, 1), 0.5)]
    assert saturation.check(0.25, pinned) is None  # the first epoch has nothing to compare with
    assert saturation.check(0.25, pinned) is None  # stuck 1
    assert saturation.check(0.25, free) is None  # stuck loss, but nothing pinned: back to 0
    assert saturation.check(0.25, pinned) is None  # 1
    assert saturation.check(0.25, pinned) is None  # 2
    message = saturation.check(0.25, pinned)  # 3
    assert message == (
        "saturated: the units of layer 2 are pinned at their bounds and train_mse has stayed at 0.25 "
        "for 3 epochs (is the learning rate too large?)"
    )


def test_saturation_is_off_without_sigmoid_or_tanh_layers_or_with_patience_0() -> None:
    for activations, patience in ((["relu", "identity"], 2), (["sigmoid", "sigmoid"], 0)):
        saturation = Saturation(activations, patience=patience, loss="mse")
        outputs = [np.ones((2, 2)), np.ones((2, 1))]
        assert all(saturation.check(0.5, outputs) is None for _ in range(10))


def test_early_stopping_keeps_and_restores_the_best_parameters() -> None:
    watch = EarlyStoppingWatch(EarlyStopping(patience=2, restore_best_weights=True))
    params = np.array([1.0, 2.0])
    assert watch.check(0, 0.5, params) is None
    params[...] = [3.0, 4.0]
    assert watch.check(1, 0.25, params) is None  # the best: its parameters are copied
    params[...] = [5.0, 6.0]
    assert watch.check(2, 0.3, params) is None
    assert watch.check(3, 0.3, params) == (
        "val_loss has not improved by more than 0.0 for 2 epochs (best 0.25 at epoch 1)"
    )
    assert watch.restore(params) == 1
    assert params.tolist() == [3.0, 4.0]


def test_early_stopping_without_restoring_keeps_no_copy() -> None:
    watch = EarlyStoppingWatch(EarlyStopping(patience=1))
    params = np.array([1.0])
    assert watch.check(0, 0.5, params) is None
    assert watch.check(1, 0.5, params) is not None
    assert watch.best_epoch == 0 and watch.best_params is None
    assert watch.restore(params) is None


@pytest.mark.parametrize("patience", [-1, 1.5, True])
def test_saturation_patience_is_checked(patience) -> None:
    with pytest.raises(
        ValueError, match=rf"^saturation_patience={patience!r} is not allowed: it must be an integer >= 0$"
    ):
        Saturation(["sigmoid"], patience=patience, loss="mse")
