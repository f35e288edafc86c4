"""The stopping rules on their own: each works from one network's plain values (floats, arrays),
with no training loop around it."""

from __future__ import annotations

import math

import numpy as np
import pytest

import engine
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


def test_growth_stops_a_train_loss_past_its_factor_of_the_first_epochs() -> None:
    from engine.stopping import Growth

    growth = Growth(100.0, "mse")
    assert [growth.check(value) for value in (0.5, 2.0, 50.0)] == [None, None, None]
    assert growth.check(50.01) == "train_mse grew to 50.01, more than 100 times its first value 0.5"
    assert Growth(0.0, "mse").check(1e300) is None  # off
    zero = Growth(100.0, "cross_entropy")
    assert zero.check(0.0) is None and zero.check(1.0) is None  # a first loss of 0 sets no scale


@pytest.mark.parametrize("factor", [0.5, 1.0, -2.0])
def test_a_divergence_factor_at_or_below_1_is_refused(factor: float) -> None:
    with pytest.raises(ValueError, match="divergence_factor"):
        engine.StoppingRules(divergence_factor=factor)


def test_a_run_that_grows_past_the_factor_ends_diverged_with_every_logged_loss_below_it() -> None:
    X = np.linspace(-1, 1, 40).reshape(-1, 1)
    Y = 3 * X
    network = engine.MLP([1, 8, 1], np.random.default_rng(0), activation="relu", output_activation="identity")
    history = engine.train(
        network,
        engine.make_optimizer("gd", 2.0),
        X,
        Y,
        epochs=200,
        stopping=engine.StoppingRules(divergence_factor=10.0),
    )
    losses = history.metrics["train_loss"]
    assert history.stop_reason == "diverged" and "more than 10 times its first value" in history.message
    assert max(losses) <= 10 * losses[0] and len(losses) == history.epochs_run


def test_an_observer_can_end_training_after_an_epoch_which_stays_recorded() -> None:
    class PruneAt(engine.Observer):
        def __init__(self) -> None:
            self.epoch = -1

        def on_epoch_end(self, report: engine.EpochReport) -> None:
            self.epoch = report.epoch

        def stop_training(self) -> tuple[str, str] | None:
            return ("pruned", f"pruned at epoch {self.epoch}") if self.epoch == 4 else None

    X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    Y = np.array([[0.0], [1.0], [1.0], [0.0]])
    network = engine.MLP([2, 4, 1], np.random.default_rng(0))
    history = engine.train(network, engine.make_optimizer("gd", 1.0), X, Y, epochs=50, observers=[PruneAt()])
    assert (history.stop_reason, history.message, history.epochs_run) == ("pruned", "pruned at epoch 4", 5)
    assert len(history.metrics["train_loss"]) == 5
