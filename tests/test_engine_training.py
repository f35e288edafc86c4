"""The training loop: convergence, shuffling, dtypes, early stopping, divergence, observers, metrics."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import engine

XOR_X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
XOR_Y = np.array([[0.0], [1.0], [1.0], [0.0]])


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _reference_gradient(network: engine.MLP, flat_params: np.ndarray, X: np.ndarray, Y: np.ndarray):
    """mse loss and its gradient for a sigmoid/sigmoid network at ``flat_params``, written from
    the formulas without the engine's forward or backward code. Returns ``(loss, flat_gradient)``."""
    weights, biases = network.layer_views(flat_params)
    activations = [X]
    for W, b in zip(weights, biases):
        activations.append(_sigmoid(activations[-1] @ W + b))
    output = activations[-1]
    n, k = Y.shape
    loss = float(np.sum((output - Y) ** 2) / (n * k))
    gradient = np.zeros_like(flat_params)
    grad_weights, grad_biases = network.layer_views(gradient)
    delta = 2.0 * (output - Y) / (n * k) * output * (1.0 - output)
    for layer in reversed(range(len(weights))):
        grad_weights[layer][...] = activations[layer].T @ delta
        grad_biases[layer][...] = delta.sum(axis=0)
        if layer > 0:
            delta = (delta @ weights[layer].T) * activations[layer] * (1.0 - activations[layer])
    return loss, gradient


class Recorder(engine.Observer):
    """Keeps copies of everything it is given (report arrays are live buffers)."""

    def __init__(self, wants_gradients: bool = False) -> None:
        self.wants_gradients = wants_gradients
        self.events: list[tuple] = []
        self.start_params: np.ndarray | None = None
        self.reports: list[dict] = []
        self.history: engine.History | None = None

    def on_train_begin(self, network: engine.MLP) -> None:
        self.events.append(("begin",))
        self.start_params = network.params.copy()

    def on_epoch_end(self, report: engine.EpochReport) -> None:
        self.events.append(("epoch", report.epoch))
        self.reports.append(
            {
                "epoch": report.epoch,
                "lr": report.lr,
                "train": dict(report.train),
                "validation": None if report.validation is None else dict(report.validation),
                "weights": [w.copy() for w in report.weights],
                "biases": [b.copy() for b in report.biases],
                "grad_weights": None if report.grad_weights is None else [g.copy() for g in report.grad_weights],
                "grad_biases": None if report.grad_biases is None else [g.copy() for g in report.grad_biases],
            }
        )

    def on_train_end(self, history: engine.History) -> None:
        self.events.append(("end",))
        self.history = history


def _flat_report_params(network: engine.MLP, report: dict) -> np.ndarray:
    flat = np.zeros(network.n_params)
    weights, biases = network.layer_views(flat)
    for target, source in zip(weights + biases, report["weights"] + report["biases"]):
        target[...] = source
    return flat


def _flat_report_gradient(network: engine.MLP, report: dict) -> np.ndarray:
    flat = np.zeros(network.n_params)
    weights, biases = network.layer_views(flat)
    for target, source in zip(weights + biases, report["grad_weights"] + report["grad_biases"]):
        target[...] = source
    return flat


def _regression_data(seed: int, n: int = 10, n_inputs: int = 3, n_outputs: int = 2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_inputs))
    Y = rng.uniform(0.1, 0.9, size=(n, n_outputs))
    return X, Y


# ---------------------------------------------------------------------------------------------
# Convergence
# ---------------------------------------------------------------------------------------------


def test_xor_is_learned_by_a_2_2_1_sigmoid_network_with_gradient_descent() -> None:
    network = engine.MLP(
        [2, 2, 1], np.random.default_rng(3), activation="sigmoid", output_activation="sigmoid", init="xavier_normal"
    )
    history = engine.train(
        network, engine.make_optimizer("gd", 5.0), XOR_X, XOR_Y, epochs=1000, loss="mse", metrics=["accuracy"]
    )
    losses = history.metrics["train_loss"]
    assert history.stop_reason == "completed" and history.epochs_run == 1000 and len(losses) == 1000
    assert losses[0] > 0.2  # it starts at chance level ...
    assert losses[-1] < 0.01  # ... and ends well below it
    assert history.metrics["train_accuracy"][-1] == 1.0
    np.testing.assert_array_equal(network.predict(XOR_X) > 0.5, XOR_Y > 0.5)


# ---------------------------------------------------------------------------------------------
# Mini-batches and randomness
# ---------------------------------------------------------------------------------------------


def _minibatch_run(shuffle_seed: int) -> tuple[np.ndarray, dict[str, list[float]]]:
    X, Y = _regression_data(0, n=30)
    network = engine.MLP([3, 4, 2], np.random.default_rng(7), activation="tanh", output_activation="sigmoid")
    history = engine.train(
        network, engine.make_optimizer("gd", 0.5), X, Y, epochs=5, batch_size=8, rng=np.random.default_rng(shuffle_seed)
    )
    return network.params.copy(), history.metrics


def test_minibatch_training_is_reproducible_for_one_shuffle_seed_and_differs_for_another() -> None:
    params_a, metrics_a = _minibatch_run(shuffle_seed=1)
    params_b, metrics_b = _minibatch_run(shuffle_seed=1)
    params_c, metrics_c = _minibatch_run(shuffle_seed=2)
    assert params_a.tobytes() == params_b.tobytes()
    assert metrics_a == metrics_b
    assert not np.allclose(params_a, params_c, rtol=0, atol=1e-6)
    assert metrics_a["train_loss"] != metrics_c["train_loss"]


def test_minibatch_training_without_a_generator_is_refused() -> None:
    network = engine.MLP([3, 2], np.random.default_rng(0))
    X, Y = _regression_data(0)
    with pytest.raises(ValueError, match=r"rng=None is not allowed: mini-batch .*np\.random\.Generator"):
        engine.train(network, engine.make_optimizer("gd", 0.1), X, Y, epochs=1, batch_size=3)


def test_batch_size_of_at_least_n_samples_is_full_batch_and_needs_no_generator() -> None:
    X, Y = _regression_data(0)
    results = []
    for batch_size in (None, 10, 1000):
        network = engine.MLP([3, 4, 2], np.random.default_rng(5))
        history = engine.train(network, engine.make_optimizer("gd", 0.5), X, Y, epochs=3, batch_size=batch_size)
        results.append((network.params.tobytes(), history.metrics["train_loss"]))
    assert results[0] == results[1] == results[2]


# ---------------------------------------------------------------------------------------------
# float32
# ---------------------------------------------------------------------------------------------


def test_float32_networks_train_in_float32_from_the_same_start_as_float64() -> None:
    X, Y = _regression_data(4, n=16)
    network32 = engine.MLP(
        [3, 5, 2], np.random.default_rng(11), activation="tanh", output_activation="identity", dtype="float32"
    )
    network64 = engine.MLP(
        [3, 5, 2], np.random.default_rng(11), activation="tanh", output_activation="identity", dtype="float64"
    )
    assert network32.params.dtype == np.float32
    assert all(w.dtype == np.float32 for w in network32.weights + network32.biases)
    np.testing.assert_array_equal(network32.params, network64.params.astype(np.float32))

    history32 = engine.train(network32, engine.make_optimizer("gd", 0.1), X, Y, epochs=50)
    history64 = engine.train(network64, engine.make_optimizer("gd", 0.1), X, Y, epochs=50)

    losses = history32.metrics["train_loss"]
    assert network32.params.dtype == np.float32
    assert network32.predict(X).dtype == np.float32
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0]
    # Same trajectory up to single-precision round-off.
    np.testing.assert_allclose(losses, history64.metrics["train_loss"], rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Early stopping, on a case solved by hand
# ---------------------------------------------------------------------------------------------
#
# A 1-1 identity network on one training sample x = 1, y = 0 with mse: E = (w + b)^2, so
# dE/dw = dE/db = 2 s with s = w + b, and a gd step with lr = 0.125 gives
# s <- s - 0.125 (2 s + 2 s) = s / 2. Starting from w = 1, b = 0, after epoch e (0-based)
# s = 0.5^(e + 1), w = 0.5 + 0.5^(e + 2) and b = -0.5 + 0.5^(e + 2): all exact in binary.
# The validation sample x = 1, y = c has val_loss(e) = (0.5^(e + 1) - c)^2.


def _halving_network() -> engine.MLP:
    network = engine.MLP([1, 1], np.random.default_rng(0), output_activation="identity")
    network.params[...] = [1.0, 0.0]
    return network


def _train_halving(
    target: float, early_stopping: engine.EarlyStopping | None, epochs: int = 20, observers: tuple = ()
) -> tuple[engine.MLP, engine.History]:
    network = _halving_network()
    history = engine.train(
        network,
        engine.make_optimizer("gd", 0.125),
        [[1.0]],
        [[0.0]],
        epochs=epochs,
        validation=engine.Validation([[1.0]], [[target]]),
        stopping=engine.StoppingRules(early_stopping=early_stopping),
        observers=observers,
    )
    return network, history


# c = 0.2: s = 0.5, 0.25, 0.125, 0.0625, 0.03125 at epochs 0..4, so
# val_loss = 0.09, 0.0025, 0.005625, 0.01890625, 0.0284765625: best at epoch 1, then 3 bad epochs.
VAL_LOSSES_C02 = [0.09, 0.0025, 0.005625, 0.01890625, 0.0284765625]


def test_early_stopping_stops_after_patience_epochs_without_improvement() -> None:
    recorder = Recorder()
    network, history = _train_halving(0.2, engine.EarlyStopping(patience=3), observers=(recorder,))
    assert history.stop_reason == "early_stopping"
    assert history.epochs_run == 5  # epochs 2, 3, 4 did not improve on epoch 1
    assert history.best_epoch == 1
    assert history.metrics["val_loss"] == pytest.approx(VAL_LOSSES_C02, abs=1e-15)
    assert re.fullmatch(
        r"early stopping at epoch 4: val_loss has not improved by more than 0\.0 for 3 epochs "
        r"\(best 0\.0025 at epoch 1\)",
        history.message,
    ), history.message
    # Without restore_best_weights the network keeps its last weights: s = 0.5^5.
    assert network.params.tolist() == [0.5 + 0.5**6, -0.5 + 0.5**6]
    assert [event[0] for event in recorder.events] == ["begin"] + ["epoch"] * 5 + ["end"]
    assert recorder.history is history


def test_early_stopping_restores_the_best_weights() -> None:
    network, history = _train_halving(0.2, engine.EarlyStopping(patience=3, restore_best_weights=True))
    assert history.stop_reason == "early_stopping" and history.epochs_run == 5 and history.best_epoch == 1
    # The weights after epoch 1: w = 0.5 + 0.125 = 0.625, b = -0.5 + 0.125 = -0.375 (s = 0.25).
    assert network.params.tolist() == [0.625, -0.375]


def test_early_stopping_min_delta_ignores_improvements_that_are_too_small() -> None:
    # c = 0: val_loss = s^2 = 0.25, 0.0625, 0.015625, 0.00390625, 0.0009765625, ...
    # With min_delta = 0.01 an epoch counts only if it beats best - 0.01:
    #   epoch 1: 0.0625 < 0.25 - 0.01 = 0.24                 improvement, best 0.0625
    #   epoch 2: 0.015625 < 0.0625 - 0.01 = 0.0525           improvement, best 0.015625
    #   epoch 3: 0.00390625 < 0.015625 - 0.01 = 0.005625     improvement, best 0.00390625
    #   epoch 4: 0.0009765625 < 0.00390625 - 0.01 < 0?       no (1 epoch without improvement)
    #   epoch 5: no (2 epochs) -> stop with patience 2.
    _, history = _train_halving(0.0, engine.EarlyStopping(patience=2, min_delta=0.01))
    assert history.stop_reason == "early_stopping"
    assert history.epochs_run == 6
    assert history.best_epoch == 3
    assert history.message.startswith("early stopping at epoch 5: ")
    assert "by more than 0.01 for 2 epochs" in history.message
    # The same run with min_delta = 0 keeps improving and completes.
    _, history = _train_halving(0.0, engine.EarlyStopping(patience=2, min_delta=0.0), epochs=12)
    assert history.stop_reason == "completed" and history.epochs_run == 12
    assert history.message == "completed 12 epochs"


# ---------------------------------------------------------------------------------------------
# Divergence
# ---------------------------------------------------------------------------------------------


# The non-finite rule alone: these cases grow past any multiple of their first loss long before
# they overflow, which the growth rule (tests/test_engine_stopping.py) would stop first.
NON_FINITE_ONLY = engine.StoppingRules(divergence_factor=0)


def _assert_history_is_finite(history: engine.History) -> None:
    for name, values in history.metrics.items():
        assert len(values) == history.epochs_run, name
        assert all(math.isfinite(v) for v in values), name


def test_divergence_stops_at_the_first_non_finite_loss_on_a_case_solved_by_hand() -> None:
    # The halving network with lr = 1000: s <- s (1 - 4 * 1000) = -3999 s, so the loss at the
    # start of epoch e is 3999^(2 e). log10(3999) = 3.60195: 3999^84 = 3.6e302 is finite and
    # 3999^86 = 5.9e309 overflows, so epoch 43 is the first non-finite one; the weights
    # (|s| / 2 ~ 3999^43 ~ 1e155) are still finite then.
    recorder = Recorder()
    network = _halving_network()
    history = engine.train(
        network,
        engine.make_optimizer("gd", 1000.0),
        [[1.0]],
        [[0.0]],
        epochs=100,
        observers=[recorder],
        stopping=NON_FINITE_ONLY,
    )
    assert history.stop_reason == "diverged"
    assert history.message == "diverged at epoch 43: train_mse is inf"
    assert history.epochs_run == 43
    _assert_history_is_finite(history)
    assert history.metrics["train_loss"][42] == pytest.approx(3999.0**84, rel=1e-9)
    assert [report["epoch"] for report in recorder.reports] == list(range(43))
    assert recorder.events[-1] == ("end",) and recorder.history is history


@pytest.mark.parametrize("case", ["1-1-1-identity", "3-8-2-sigmoid"])
def test_divergence_of_a_network_with_hidden_layers_is_reported_not_raised(case: str) -> None:
    if case == "1-1-1-identity":
        # The halving problem of above with one identity hidden unit in between.
        network = engine.MLP([1, 1, 1], np.random.default_rng(0), activation="identity", output_activation="identity")
        X, Y = [[1.0]], [[0.0]]
    else:
        network = engine.MLP([3, 8, 2], np.random.default_rng(1), activation="sigmoid", output_activation="identity")
        X, Y = _regression_data(0, n=20)
    recorder = Recorder()
    history = engine.train(
        network,
        engine.make_optimizer("gd", 1000.0),
        X,
        Y,
        epochs=200,
        metrics=["mse"],
        observers=[recorder],
        stopping=NON_FINITE_ONLY,
    )
    assert history.stop_reason == "diverged"
    match = re.fullmatch(r"diverged at epoch (\d+): (train_\w+ is (inf|nan)|a weight is not finite)", history.message)
    assert match, history.message
    assert int(match.group(1)) == history.epochs_run < 200
    _assert_history_is_finite(history)
    assert len(recorder.reports) == history.epochs_run


def test_a_non_finite_validation_loss_counts_as_divergence() -> None:
    # The halving network with lr = 1000 again (s = w + b = (-3999)^(e + 1) after epoch e, w ~ b ~ s / 2),
    # validated on x = 1e10, y = 0: val_loss = (1e10 s / 2)^2 ~ 0.25e20 * 3999^(2 e + 2).
    # After epoch 39 that is 3.6e307 (finite), after epoch 40 it is about 5.7e314: inf. The train loss
    # at epoch 40 (3999^80 = 1.4e288) and the weights (~1e147) are still finite.
    recorder = Recorder()
    network = _halving_network()
    history = engine.train(
        network,
        engine.make_optimizer("gd", 1000.0),
        [[1.0]],
        [[0.0]],
        epochs=100,
        validation=engine.Validation([[1e10]], [[0.0]]),
        observers=[recorder],
        stopping=NON_FINITE_ONLY,
    )
    assert history.stop_reason == "diverged"
    assert history.message.startswith("diverged at epoch 40: ")
    assert "val_mse is inf" in history.message
    assert history.epochs_run == 40
    _assert_history_is_finite(history)
    assert all(math.isfinite(report["validation"]["loss"]) for report in recorder.reports)


# ---------------------------------------------------------------------------------------------
# Observers
# ---------------------------------------------------------------------------------------------


def test_observers_are_called_in_order_with_the_values_of_the_history() -> None:
    X, Y = _regression_data(1)
    X_val, Y_val = _regression_data(2, n=6)
    network = engine.MLP([3, 4, 2], np.random.default_rng(3))
    first, second = Recorder(), Recorder()
    history = engine.train(
        network,
        engine.make_optimizer("momentum", 0.3),
        X,
        Y,
        epochs=6,
        batch_size=4,
        rng=np.random.default_rng(0),
        validation=engine.Validation(X_val, Y_val),
        observers=[first, second],
    )
    for recorder in (first, second):
        assert recorder.events == [("begin",)] + [("epoch", e) for e in range(6)] + [("end",)]
        assert recorder.history is history
        assert [r["train"]["loss"] for r in recorder.reports] == history.metrics["train_loss"]
        assert [r["validation"]["loss"] for r in recorder.reports] == history.metrics["val_loss"]
        assert all(r["lr"] == 0.3 for r in recorder.reports)
    assert history.epochs_run == 6 and history.stop_reason == "completed"
    # The last report's weights are the network's final weights.
    np.testing.assert_array_equal(_flat_report_params(network, first.reports[-1]), network.params)
    # val_loss is measured after the epoch's last update, with the reported weights.
    for report in first.reports:
        loss, _ = _reference_gradient(network, _flat_report_params(network, report), X_val, Y_val)
        assert report["validation"]["loss"] == pytest.approx(loss, rel=1e-12)


def test_without_gradient_observers_the_report_has_no_gradients() -> None:
    X, Y = _regression_data(1)
    for batch_size, rng in ((None, None), (4, np.random.default_rng(0))):
        recorder = Recorder(wants_gradients=False)
        network = engine.MLP([3, 4, 2], np.random.default_rng(3))
        engine.train(
            network,
            engine.make_optimizer("gd", 0.3),
            X,
            Y,
            epochs=2,
            batch_size=batch_size,
            rng=rng,
            observers=[recorder],
        )
        assert len(recorder.reports) == 2
        for report in recorder.reports:
            assert report["grad_weights"] is None and report["grad_biases"] is None


def test_full_batch_reported_gradient_is_the_gradient_at_the_epoch_start_weights() -> None:
    X, Y = _regression_data(5)
    network = engine.MLP([3, 4, 2], np.random.default_rng(8), activation="sigmoid", output_activation="sigmoid")
    recorder = Recorder(wants_gradients=True)
    lr = 0.7
    history = engine.train(network, engine.make_optimizer("gd", lr), X, Y, epochs=4, observers=[recorder])
    start = recorder.start_params
    for epoch, report in enumerate(recorder.reports):
        loss, expected = _reference_gradient(network, start, X, Y)
        reported = _flat_report_gradient(network, report)
        np.testing.assert_allclose(reported, expected, rtol=1e-10, atol=1e-14)
        assert history.metrics["train_loss"][epoch] == pytest.approx(loss, rel=1e-12)
        # gd applied exactly this gradient: end = start - lr * gradient.
        end = _flat_report_params(network, report)
        np.testing.assert_allclose(end, start - lr * expected, rtol=0, atol=1e-14)
        start = end
    assert np.abs(_flat_report_gradient(network, recorder.reports[0])).max() > 1e-3


def test_minibatch_reported_gradient_is_the_mean_of_the_applied_batch_gradients() -> None:
    # 10 samples in batches of 4: 4 + 4 + 2, so the short last batch is included.
    X, Y = _regression_data(6, n=10)
    n, batch_size, lr, epochs, seed = 10, 4, 0.5, 3, 1234
    network = engine.MLP([3, 4, 2], np.random.default_rng(9), activation="sigmoid", output_activation="sigmoid")
    recorder = Recorder(wants_gradients=True)
    history = engine.train(
        network,
        engine.make_optimizer("gd", lr),
        X,
        Y,
        epochs=epochs,
        batch_size=batch_size,
        rng=np.random.default_rng(seed),
        observers=[recorder],
    )

    # Replay the epoch with an identical Generator: one permutation per epoch, batches in order.
    replica = np.random.default_rng(seed)
    params = recorder.start_params.copy()
    orders = []
    for epoch in range(epochs):
        order = replica.permutation(n)
        orders.append(order)
        epoch_start = params
        batch_gradients, weighted_loss = [], 0.0
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            loss, gradient = _reference_gradient(network, params, X[rows], Y[rows])
            batch_gradients.append(gradient)
            weighted_loss += loss * rows.size
            params = params - lr * gradient
        assert len(batch_gradients) == 3
        report = recorder.reports[epoch]
        np.testing.assert_allclose(_flat_report_params(network, report), params, rtol=0, atol=1e-13)
        mean_gradient = np.mean(batch_gradients, axis=0)
        np.testing.assert_allclose(_flat_report_gradient(network, report), mean_gradient, rtol=1e-10, atol=1e-14)
        # The full-batch gradient at the epoch's start is a different vector, so the check above
        # really tells the two definitions apart.
        _, full_batch_gradient = _reference_gradient(network, epoch_start, X, Y)
        assert np.abs(full_batch_gradient - mean_gradient).max() > 1e-4
        # train_loss: the sample-weighted mean of the batch losses, each before its own update.
        assert history.metrics["train_loss"][epoch] == pytest.approx(weighted_loss / n, rel=1e-12)
    assert not np.array_equal(orders[0], orders[1])


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


class _StartAndEndParams(engine.Observer):
    def __init__(self) -> None:
        self.start: list[np.ndarray] = []
        self.end: list[np.ndarray] = []
        self._params: np.ndarray | None = None

    def on_train_begin(self, network: engine.MLP) -> None:
        self._params = network.params
        self.start.append(network.params.copy())

    def on_epoch_end(self, report: engine.EpochReport) -> None:
        self.end.append(self._params.copy())
        self.start.append(self._params.copy())


def test_mse_and_accuracy_metrics_with_a_softmax_classifier() -> None:
    rng = np.random.default_rng(21)
    X = rng.normal(size=(30, 4))
    labels = rng.integers(0, 3, size=30)
    Y = np.eye(3)[labels]
    X_val, labels_val = X[:12] + 0.1, labels[:12]
    Y_val = np.eye(3)[labels_val]
    network = engine.MLP([4, 6, 3], np.random.default_rng(4), activation="tanh", output_activation="softmax")
    observer = _StartAndEndParams()
    history = engine.train(
        network,
        engine.make_optimizer("adam", 0.05),
        X,
        Y,
        epochs=5,
        loss="cross_entropy",
        validation=(X_val, Y_val),
        metrics=["mse", "accuracy"],
        observers=[observer],
    )
    assert set(history.metrics) == {"train_loss", "train_mse", "train_accuracy", "val_loss", "val_mse", "val_accuracy"}
    probe = engine.MLP([4, 6, 3], np.random.default_rng(0), activation="tanh", output_activation="softmax")
    for epoch in range(5):
        # Full batch: train metrics at the epoch's start weights, validation at its end weights.
        probe.params[...] = observer.start[epoch]
        output = probe.predict(X)
        assert history.metrics["train_loss"][epoch] == pytest.approx(
            -np.mean(np.sum(Y * np.log(output), axis=1)), rel=1e-12
        )
        assert history.metrics["train_mse"][epoch] == pytest.approx(np.mean((output - Y) ** 2), rel=1e-12)
        assert history.metrics["train_accuracy"][epoch] == np.mean(output.argmax(axis=1) == labels)
        probe.params[...] = observer.end[epoch]
        output = probe.predict(X_val)
        assert history.metrics["val_mse"][epoch] == pytest.approx(np.mean((output - Y_val) ** 2), rel=1e-12)
        assert history.metrics["val_accuracy"][epoch] == np.mean(output.argmax(axis=1) == labels_val)
    assert history.metrics["train_loss"][-1] < history.metrics["train_loss"][0]


def test_accuracy_of_a_single_sigmoid_output_thresholds_at_one_half() -> None:
    # Hand-set 1-1 sigmoid network a = sigmoid(w x + b) with w = 1, b = 0 and a tiny lr so the
    # start weights are what count: outputs > 0.5 exactly for x > 0.
    # x = [-2, -1, 1, 2, 3], y = [0, 1, 1, 0, 1]: correct on rows 0, 2, 4 -> accuracy 3/5.
    network = engine.MLP([1, 1], np.random.default_rng(0), output_activation="sigmoid")
    network.params[...] = [1.0, 0.0]
    history = engine.train(
        network,
        engine.make_optimizer("gd", 1e-12),
        [[-2.0], [-1.0], [1.0], [2.0], [3.0]],
        [0.0, 1.0, 1.0, 0.0, 1.0],
        epochs=1,
        loss="binary_cross_entropy",
        metrics=["accuracy", "mse"],
    )
    assert history.metrics["train_accuracy"] == [0.6]
    a = 1.0 / (1.0 + np.exp(-np.array([-2.0, -1.0, 1.0, 2.0, 3.0])))
    y = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    assert history.metrics["train_mse"] == [pytest.approx(np.mean((a - y) ** 2), rel=1e-12)]
    assert history.metrics["train_loss"] == [
        pytest.approx(-np.mean(y * np.log(a) + (1 - y) * np.log(1 - a)), rel=1e-12)
    ]


def test_requested_mse_metric_is_reported_even_when_the_loss_is_mse() -> None:
    X, Y = _regression_data(1)
    network = engine.MLP([3, 4, 2], np.random.default_rng(3))
    history = engine.train(
        network, engine.make_optimizer("gd", 0.3), X, Y, epochs=2, loss="mse", validation=(X, Y), metrics=["mse"]
    )
    assert history.metrics["train_mse"] == history.metrics["train_loss"]
    assert history.metrics["val_mse"] == history.metrics["val_loss"]


def test_saturation_with_a_huge_learning_rate_stops_as_diverged() -> None:
    """Sigmoid + mse with a huge rate pins every output at 0 or 1: the loss sits at 0.5 without
    ever becoming NaN. The loop calls that divergence after `saturation_patience` stuck epochs."""
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], float)
    Y = np.array([[0], [1], [1], [0]], float)
    history = engine.train(
        engine.MLP([2, 4, 1], np.random.default_rng(0)),
        engine.make_optimizer("gd", 1e4),
        X,
        Y,
        epochs=500,
        stopping=engine.StoppingRules(saturation_patience=15),
    )
    assert history.stop_reason == "diverged"
    assert "saturated" in history.message and "layer 2" in history.message
    assert history.epochs_run < 50
    assert all(np.isfinite(history.metrics["train_loss"]))
    # A sensible rate that converges is never taken for saturation, nor is a run with the check off.
    for lr, patience in ((2.0, 15), (1e4, 0)):
        history = engine.train(
            engine.MLP([2, 4, 1], np.random.default_rng(0)),
            engine.make_optimizer("gd", lr),
            X,
            Y,
            epochs=500,
            stopping=engine.StoppingRules(saturation_patience=patience),
        )
        assert history.stop_reason == "completed", history.message


# ---------------------------------------------------------------------------------------------
# Stopping on request (how the runner's cooperative interruption reaches the loop)
# ---------------------------------------------------------------------------------------------


class _EpochLog(engine.Observer):
    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.ended: engine.History | None = None

    def on_epoch_end(self, report: engine.EpochReport) -> None:
        self.epochs.append(report.epoch)

    def on_train_end(self, history: engine.History) -> None:
        self.ended = history


def test_a_stop_request_ends_training_after_the_current_mini_batch() -> None:
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(40, 2)), rng.uniform(size=(40, 1))
    network = engine.MLP([2, 3, 1], np.random.default_rng(1))
    asked = []

    def stop_requested() -> bool:
        asked.append(True)
        return len(asked) == 2 * 4 + 3  # four batches per epoch: the third batch of epoch 2

    log = _EpochLog()
    history = engine.train(
        network,
        engine.make_optimizer("gd", 0.5),
        X,
        Y,
        epochs=10,
        batch_size=10,
        rng=np.random.default_rng(2),
        observers=[log],
        stop_requested=stop_requested,
    )
    assert history.stop_reason == "interrupted"
    assert history.epochs_run == 2 and len(history.metrics["train_loss"]) == 2
    assert log.epochs == [0, 1] and log.ended is history
    assert history.message == "interrupted in epoch 2, after 2 complete epoch(s)"
    assert len(asked) == 11  # nothing was asked, or trained, after the stop


def test_a_stop_request_in_full_batch_training_records_no_further_epoch() -> None:
    network = engine.MLP([2, 2, 1], np.random.default_rng(0))
    calls = iter([False, False, False, True])
    history = engine.train(
        network, engine.make_optimizer("gd", 1.0), XOR_X, XOR_Y, epochs=100, stop_requested=lambda: next(calls)
    )
    assert (history.stop_reason, history.epochs_run) == ("interrupted", 3)


def test_the_engine_and_its_callers_share_one_table_of_ranges() -> None:
    from engine.limits import LIMITS

    assert not LIMITS["momentum"].allows(1.0) and LIMITS["momentum"].allows(0.0)
    assert LIMITS["schedule.gamma"].describe() == "it must lie in (0.0, 1.0]"
    assert LIMITS["epochs"].describe() == "it must be an integer >= 1"
    assert LIMITS["lr"].describe() == "it must be a finite number > 0"
    with pytest.raises(ValueError, match=r"^schedule\.gamma=0\.0 is not allowed: it must lie in \(0\.0, 1\.0\]$"):
        engine.Schedule("step", gamma=0.0)
