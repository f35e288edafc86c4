"""Backpropagation against central differences, for every activation x output x loss pairing.

Each case builds a float64 network of random widths (fixed seed per case) with 0 to 4 hidden
layers and compares ``engine.gradient_check``'s analytic gradient with its central differences
(epsilon = 1e-6). Multi-output networks are the default because a loss whose value and gradient
average differently only shows up with more than one output (scikit-learn issue #8349).
"""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pytest

import engine
from engine import activations, losses

EPSILON = 1e-6
TOLERANCE = 1e-6
N_SAMPLES = 8
PREACTIVATION_SPREAD = 0.7

HIDDEN_ACTIVATIONS = [name for name in engine.ACTIVATIONS if name != "softmax"]
# Every (loss, output activation) pair the engine accepts: mse takes any output,
# the two cross-entropies exactly one each.
LOSS_OUTPUT_PAIRS = [("mse", output) for output in engine.ACTIVATIONS] + [
    ("cross_entropy", "softmax"),
    ("binary_cross_entropy", "sigmoid"),
]
DEPTHS = [0, 1, 2, 3, 4]


def _cases() -> list:
    cases = []
    for loss, output in LOSS_OUTPUT_PAIRS:
        for depth in DEPTHS:
            # With no hidden layer the hidden activation is never used: one case is enough.
            hiddens = HIDDEN_ACTIVATIONS if depth > 0 else HIDDEN_ACTIVATIONS[:1]
            for hidden in hiddens:
                cases.append(pytest.param(hidden, output, loss, depth, id=f"{loss}-{output}-{hidden}-{depth}h"))
    return cases


def _seed(*parts: object) -> int:
    # Stable across processes (unlike hash()), so every case always draws the same shapes.
    return zlib.crc32("/".join(map(str, parts)).encode())


def _targets(rng: np.random.Generator, loss: str, n_samples: int, n_outputs: int) -> np.ndarray:
    if loss == "cross_entropy":
        return np.eye(n_outputs)[rng.integers(0, n_outputs, size=n_samples)]
    if loss == "binary_cross_entropy":
        # Soft targets exercise both terms of y log a + (1 - y) log(1 - a).
        return rng.uniform(0.0, 1.0, size=(n_samples, n_outputs))
    return rng.normal(0.0, 1.0, size=(n_samples, n_outputs))


def _random_problem(hidden: str, output: str, loss: str, depth: int, n_outputs: int | None = None):
    """A float64 network of random widths with ``depth`` hidden layers, data ``X`` and targets ``Y``.

    The weights are scaled on this very batch so that every pre-activation has spread 0.7 and
    a mean near 0: no sigmoid or softmax saturates (a loss computed from an output within 1e-10
    of 0 or 1 has too few correct digits for central differences), no gradient vanishes through
    four sigmoid layers and most relu units are alive. The check is then a test of backprop, not
    of the conditioning of an unlucky draw.
    """
    shape_and_data_seed, network_seed = np.random.SeedSequence(_seed(hidden, output, loss, depth, n_outputs)).spawn(2)
    rng = np.random.default_rng(shape_and_data_seed)
    n_inputs = int(rng.integers(1, 5))
    widths = [int(w) for w in rng.integers(2, 6, size=depth)]
    if n_outputs is None:
        n_outputs = int(rng.integers(2, 5))
    sizes = [n_inputs, *widths, n_outputs]
    network = engine.MLP(
        sizes, np.random.default_rng(network_seed), activation=hidden, output_activation=output, dtype="float64"
    )
    X = rng.normal(0.0, 1.0, size=(N_SAMPLES, n_inputs))
    Y = _targets(rng, loss, N_SAMPLES, n_outputs)
    a = X
    for layer, (W, b) in enumerate(zip(network.weights, network.biases)):
        W[...] = rng.normal(0.0, 1.0, size=W.shape)
        W /= (a @ W).std(axis=0) / PREACTIVATION_SPREAD
        b[...] = rng.normal(0.0, 0.3, size=b.shape) - (a @ W).mean(axis=0)
        f = engine.ACTIVATIONS[output if layer == network.n_layers - 1 else hidden]
        a = f(a @ W + b)
    return network, X, Y


def _assert_gradients_match(network: engine.MLP, X: np.ndarray, Y: np.ndarray, loss: str) -> None:
    params_before = network.params.copy()
    check = engine.gradient_check(network, X, Y, loss=loss, epsilon=EPSILON)
    assert check.analytic.shape == check.numeric.shape == (network.n_params,)
    # A zero gradient would match trivially: every layer of these problems has a real one.
    for grad_W, grad_b in zip(*network.layer_views(check.numeric)):
        assert np.linalg.norm(grad_W) > 1e-4 and np.linalg.norm(grad_b) > 1e-4
    assert check.max_relative_error < TOLERANCE, (
        f"sizes={network.sizes} max relative error {check.max_relative_error:.3g}; "
        f"per layer (W, b): {check.layer_errors}"
    )
    assert len(check.layer_errors) == network.n_layers
    # gradient_check promises to leave the parameters as it found them.
    np.testing.assert_array_equal(network.params, params_before)


@pytest.mark.parametrize(("hidden", "output", "loss", "depth"), _cases())
def test_backprop_matches_central_differences(hidden: str, output: str, loss: str, depth: int) -> None:
    network, X, Y = _random_problem(hidden, output, loss, depth)
    assert network.n_layers == depth + 1
    assert network.sizes[-1] >= 2  # multi-output
    _assert_gradients_match(network, X, Y, loss)


@pytest.mark.parametrize(
    ("hidden", "output", "loss"),
    [(h, o, l) for l, o in LOSS_OUTPUT_PAIRS if o != "softmax" for h in HIDDEN_ACTIVATIONS],
)
def test_backprop_matches_central_differences_single_output(hidden: str, output: str, loss: str) -> None:
    network, X, Y = _random_problem(hidden, output, loss, depth=1, n_outputs=1)
    assert network.sizes[-1] == 1
    _assert_gradients_match(network, X, Y, loss)


def test_gradient_check_scales_to_the_finite_difference_definition() -> None:
    # E(w) for a 1-1 identity network with mse on one sample is (w x + b - y)^2: at w=2, b=0.5,
    # x=3, y=1 the residual is 5.5, so dE/dw = 2 * 5.5 * 3 = 33 and dE/db = 2 * 5.5 = 11.
    network = engine.MLP([1, 1], np.random.default_rng(0), output_activation="identity")
    network.params[...] = [2.0, 0.5]
    check = engine.gradient_check(network, [[3.0]], [[1.0]], loss="mse", epsilon=EPSILON)
    np.testing.assert_allclose(check.analytic, [33.0, 11.0], rtol=1e-12)
    np.testing.assert_allclose(check.numeric, [33.0, 11.0], rtol=1e-7)


def _wrong_tanh_backward(a: np.ndarray, delta: np.ndarray, scratch: np.ndarray) -> None:
    # 1 - a instead of 1 - a^2: a plausible slip, right sign, wrong value.
    np.subtract(1.0, a, out=scratch)
    delta *= scratch


def test_gradient_check_catches_a_wrong_activation_derivative(monkeypatch: pytest.MonkeyPatch) -> None:
    # The network looks up its backward functions when it is built, so patch before building.
    monkeypatch.setitem(activations.ACTIVATION_BACKWARDS, "tanh", _wrong_tanh_backward)
    network, X, Y = _random_problem("tanh", "identity", "mse", depth=2)
    check = engine.gradient_check(network, X, Y, loss="mse", epsilon=EPSILON)
    assert check.max_relative_error > 1e-2
    # The output layer does not go through tanh', so only the hidden layers are wrong.
    output_weight_error, output_bias_error = check.layer_errors[-1]
    assert output_weight_error < TOLERANCE and output_bias_error < TOLERANCE
    assert max(check.layer_errors[0]) > 1e-2


def _mse_gradient_not_averaged_over_outputs(a: np.ndarray, y: np.ndarray, out: np.ndarray) -> float:
    # scikit-learn #8349: the value averages over samples and outputs, the gradient over samples only.
    np.subtract(a, y, out=out)
    value = float(np.vdot(out, out)) / out.size
    out *= 2.0 / a.shape[0]
    return value


def test_gradient_check_catches_inconsistent_loss_averaging_only_with_several_outputs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(losses.LOSSES, "mse", _mse_gradient_not_averaged_over_outputs)
    single, X1, Y1 = _random_problem("sigmoid", "identity", "mse", depth=1, n_outputs=1)
    assert engine.gradient_check(single, X1, Y1, loss="mse", epsilon=EPSILON).max_relative_error < TOLERANCE
    multi, X3, Y3 = _random_problem("sigmoid", "identity", "mse", depth=1, n_outputs=3)
    # The analytic gradient is 3x too large: relative error (3 - 1) / (3 + 1) = 0.5.
    error = engine.gradient_check(multi, X3, Y3, loss="mse", epsilon=EPSILON).max_relative_error
    assert error == pytest.approx(0.5, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Numerical safety of the activations (pyproject turns any RuntimeWarning into an error)
# ---------------------------------------------------------------------------------------------

EXTREMES = [-1e4, -746.0, -745.0, -710.0, -709.0, -40.0, 0.0, 40.0, 709.0, 710.0, 745.0, 746.0, 1e4]


def test_sigmoid_is_finite_and_warning_free_for_z_in_plus_minus_1e4() -> None:
    z = np.concatenate([np.linspace(-1e4, 1e4, 200_001), EXTREMES])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = activations.sigmoid(z)
    assert np.isfinite(a).all()
    assert ((a >= 0.0) & (a <= 1.0)).all()
    order = np.argsort(z, kind="stable")
    assert (np.diff(a[order]) >= 0.0).all()  # monotone
    assert activations.sigmoid(np.array([0.0]))[0] == 0.5
    assert activations.sigmoid(np.array([1e4]))[0] == 1.0
    assert activations.sigmoid(np.array([-1e4]))[0] < 1e-300
    moderate = np.linspace(-30.0, 30.0, 601)
    np.testing.assert_allclose(activations.sigmoid(moderate), 1.0 / (1.0 + np.exp(-moderate)), rtol=1e-15, atol=0)


def test_sigmoid_in_place_matches_the_out_of_place_result() -> None:
    z = np.linspace(-800.0, 800.0, 1601).reshape(1601, 1)
    expected = activations.sigmoid(z)
    buffer = z.copy()
    result = activations.sigmoid(buffer, buffer)
    assert result is buffer
    np.testing.assert_array_equal(buffer, expected)


def test_sigmoid_is_warning_free_in_float32_too() -> None:
    z = np.concatenate([np.linspace(-1e4, 1e4, 20_001), EXTREMES]).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = activations.sigmoid(z)
    assert a.dtype == np.float32 and np.isfinite(a).all()


def test_softmax_rows_are_finite_distributions_even_for_huge_logits() -> None:
    z = np.array([[1e4, -1e4, 0.0], [800.0, 800.0, 799.0], [-1e4, -1e4, -1e4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = activations.softmax(z)
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-15)
    np.testing.assert_allclose(a[0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(a[1], np.array([1.0, 1.0, np.exp(-1.0)]) / (2.0 + np.exp(-1.0)), rtol=1e-15)
    np.testing.assert_allclose(a[2], [1 / 3, 1 / 3, 1 / 3], rtol=1e-15)
