"""Bad input fails early with a ValueError naming the argument, the bad value and what is allowed."""

from __future__ import annotations

import re

import numpy as np
import pytest

import engine

ACTIVATION_NAMES = "identity, leaky_relu, relu, sigmoid, softmax, tanh"


def _network(**options) -> engine.MLP:
    return engine.MLP([3, 4, 2], np.random.default_rng(0), **options)


def _data(n: int = 10, n_inputs: int = 3, n_outputs: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.normal(size=(n, n_inputs)), rng.uniform(size=(n, n_outputs))


def _train(network: engine.MLP | None = None, X=None, Y=None, **options) -> engine.History:
    network = network or _network()
    X_default, Y_default = _data()
    options.setdefault("epochs", 1)
    return engine.train(
        network,
        engine.make_optimizer("gd", 0.1),
        X_default if X is None else X,
        Y_default if Y is None else Y,
        **options,
    )


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------


def test_x_and_y_row_counts_must_match() -> None:
    X, _ = _data(10)
    _, Y = _data(9)
    with pytest.raises(ValueError, match=r"^X has 10 rows but Y has 9: they must match$"):
        _train(X=X, Y=Y)


def test_x_columns_must_match_the_network_inputs() -> None:
    X, Y = _data(n_inputs=4)
    with pytest.raises(ValueError, match=r"^X has 4 columns but the network expects n_inputs=3$"):
        _train(X=X, Y=Y)


def test_y_columns_must_match_the_network_outputs() -> None:
    X, Y = _data(n_outputs=3)
    with pytest.raises(ValueError, match=r"^Y has 3 columns but the network has n_outputs=2$"):
        _train(X=X, Y=Y)


def test_validation_data_is_checked_like_training_data() -> None:
    _X, _Y = _data()
    X_val, Y_val = _data(6)
    with pytest.raises(ValueError, match=r"^validation\.X has 6 rows but validation\.Y has 5: they must match$"):
        _train(validation=engine.Validation(X_val, Y_val[:5]))
    with pytest.raises(ValueError, match=r"^validation\.X has 2 columns but the network expects n_inputs=3$"):
        _train(validation=(X_val[:, :2], Y_val))
    with pytest.raises(ValueError, match=r"^validation\.Y has 3 columns but the network has n_outputs=2$"):
        _train(validation=(X_val, np.zeros((6, 3))))


@pytest.mark.parametrize(
    ("validation", "shown"),
    [("X_val", "str"), ([np.zeros((2, 3)), np.zeros((2, 2))], "list"), ((np.zeros((2, 3)),), "tuple")],
)
def test_validation_must_be_a_validation_or_a_pair(validation, shown: str) -> None:
    expected = (
        rf"^validation of type {shown} is not allowed: it must be a Validation\(X, Y\), an \(X, Y\) tuple or None$"
    )
    with pytest.raises(ValueError, match=expected):
        _train(validation=validation)


def test_predict_checks_the_input_columns() -> None:
    with pytest.raises(ValueError, match=r"^X has 2 columns but the network expects n_inputs=3$"):
        _network().predict(np.zeros((4, 2)))


def test_gradient_check_checks_the_column_counts() -> None:
    X, Y = _data()
    with pytest.raises(ValueError, match=r"^X has 4 columns but the network expects n_inputs=3$"):
        engine.gradient_check(_network(), np.zeros((10, 4)), Y)
    with pytest.raises(ValueError, match=r"^Y has 1 columns but the network has n_outputs=2$"):
        engine.gradient_check(_network(), X, Y[:, :1])


def test_gradient_check_checks_the_row_counts() -> None:
    X, Y = _data()
    with pytest.raises(ValueError, match=r"X has 5 rows but Y has 10"):
        engine.gradient_check(_network(), X[:5], Y)


def test_data_must_be_two_dimensional_and_numeric() -> None:
    with pytest.raises(ValueError, match=r"^X has shape \(2, 2, 3\): it must be 2-D \(n_samples, n_columns\)$"):
        _train(X=np.zeros((2, 2, 3)), Y=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"^X must be numeric: could not convert string to float: 'a'$"):
        _train(X=[["a", "b", "c"]], Y=[[0.0, 1.0]])


def test_a_one_dimensional_y_is_one_column() -> None:
    # Accepted for single-output networks; the column count is checked against n_outputs.
    X, _ = _data()
    network = engine.MLP([3, 1], np.random.default_rng(0))
    history = engine.train(network, engine.make_optimizer("gd", 0.1), X, np.linspace(0, 1, 10), epochs=1)
    assert history.epochs_run == 1
    with pytest.raises(ValueError, match=r"^Y has 1 columns but the network has n_outputs=2$"):
        _train(X=X, Y=np.linspace(0, 1, 10))


# ---------------------------------------------------------------------------------------------
# Non-finite and empty data
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "row", "column", "value", "printed"),
    [
        ("X", 2, 1, np.nan, "nan"),
        ("X", 9, 2, np.inf, "inf"),
        ("Y", 4, 0, -np.inf, "-inf"),
        ("Y", 0, 1, np.nan, "nan"),
        ("validation.X", 3, 0, np.inf, "inf"),
        ("validation.Y", 5, 1, np.nan, "nan"),
    ],
)
def test_non_finite_data_names_the_argument_row_and_column(
    argument: str, row: int, column: int, value: float, printed: str
) -> None:
    X, Y = _data()
    arrays = {"X": X, "Y": Y, "validation.X": X[:6].copy(), "validation.Y": Y[:6].copy()}
    arrays[argument][row, column] = value
    network = _network()
    params_before = network.params.copy()
    expected = (
        rf"^{re.escape(argument)} holds {re.escape(printed)} at row {row}, column {column}: all values must be finite$"
    )
    with pytest.raises(ValueError, match=expected):
        _train(
            network,
            X=arrays["X"],
            Y=arrays["Y"],
            validation=engine.Validation(arrays["validation.X"], arrays["validation.Y"]),
        )
    # Refused before any update.
    np.testing.assert_array_equal(network.params, params_before)


def test_non_finite_input_to_predict_names_row_and_column() -> None:
    X = np.zeros((3, 3))
    X[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"^X holds nan at row 1, column 2: all values must be finite$"):
        _network().predict(X)


def test_a_one_dimensional_y_with_nan_names_column_0() -> None:
    X, _ = _data()
    y = np.linspace(0, 1, 10)
    y[7] = np.nan
    with pytest.raises(ValueError, match=r"^Y holds nan at row 7, column 0: all values must be finite$"):
        engine.train(engine.MLP([3, 1], np.random.default_rng(0)), engine.make_optimizer("gd", 0.1), X, y, epochs=1)


@pytest.mark.parametrize(
    ("X", "Y", "message"),
    [
        (
            np.zeros((0, 3)),
            np.zeros((0, 2)),
            r"^X has shape \(0, 3\): it must hold at least one sample and one column$",
        ),
        ([], [], r"^X has shape \(0, 1\): it must hold at least one sample and one column$"),
        (
            np.zeros((4, 3)),
            np.zeros((4, 0)),
            r"^Y has shape \(4, 0\): it must hold at least one sample and one column$",
        ),
    ],
    ids=["no-rows", "empty-lists", "no-target-columns"],
)
def test_empty_data_is_refused(X, Y, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _train(X=X, Y=Y)


# ---------------------------------------------------------------------------------------------
# Unknown names
# ---------------------------------------------------------------------------------------------


def test_unknown_hidden_activation() -> None:
    with pytest.raises(ValueError, match=r"^activation='gelu' is not one of: identity, leaky_relu, relu, sigmoid"):
        _network(activation="gelu")


def test_unknown_output_activation() -> None:
    with pytest.raises(ValueError, match=rf"^output_activation='softplus' is not one of: {ACTIVATION_NAMES}$"):
        _network(output_activation="softplus")


def test_unknown_hidden_activation_lists_only_allowed_hidden_activations() -> None:
    with pytest.raises(
        ValueError, match=r"^activation='gelu' is not one of: identity, leaky_relu, relu, sigmoid, tanh$"
    ):
        _network(activation="gelu")


def test_activation_names_are_exact_strings() -> None:
    with pytest.raises(
        ValueError, match=r"^activation='Sigmoid' is not one of: identity, leaky_relu, relu, sigmoid, tanh$"
    ):
        _network(activation="Sigmoid")
    with pytest.raises(ValueError, match=r"^output_activation=None is not one of: "):
        _network(output_activation=None)


def test_unknown_loss() -> None:
    expected = r"^loss='hinge' is not one of: binary_cross_entropy, cross_entropy, mse$"
    with pytest.raises(ValueError, match=expected):
        _train(loss="hinge")
    with pytest.raises(ValueError, match=expected):
        engine.gradient_check(_network(), *_data(), loss="hinge")


def test_unknown_optimizer() -> None:
    with pytest.raises(ValueError, match=r"^optimizer='sgd' is not one of: adam, gd, momentum, nesterov$"):
        engine.make_optimizer("sgd", 0.1)


def test_optimizer_option_it_does_not_take() -> None:
    with pytest.raises(ValueError, match=r"^optimizer='gd' got an option it does not take: .*momentum"):
        engine.make_optimizer("gd", 0.1, momentum=0.9)


def test_train_needs_an_engine_optimizer() -> None:
    with pytest.raises(ValueError, match=r"^optimizer='gd' is not allowed: it must be an engine Optimizer$"):
        engine.train(_network(), "gd", *_data(), epochs=1)


def test_unknown_initializer() -> None:
    with pytest.raises(
        ValueError, match=r"^init='glorot' is not one of: he_normal, he_uniform, normal, xavier_normal, xavier_uniform$"
    ):
        _network(init="glorot")


def test_unknown_schedule() -> None:
    with pytest.raises(
        ValueError, match=r"^schedule\.name='linear' is not one of: constant, cosine, exponential, step$"
    ):
        engine.Schedule("linear")


@pytest.mark.parametrize(
    ("dtype", "shown"), [("float16", "'float16'"), (np.float16, "'float16'"), (int, "'int64'"), ("double", "'double'")]
)
def test_unknown_dtype(dtype, shown: str) -> None:
    with pytest.raises(ValueError, match=rf"^dtype={shown} is not one of: float32, float64$"):
        _network(dtype=dtype)


def test_dtype_accepts_the_numpy_types_too() -> None:
    assert _network(dtype=np.float32).params.dtype == np.float32
    assert _network(dtype=np.dtype("float64")).params.dtype == np.float64


def test_unknown_metric() -> None:
    with pytest.raises(ValueError, match=r"^metrics='f1' is not one of: accuracy, mse$"):
        _train(metrics=["accuracy", "f1"])


def test_evaluate_refuses_an_unknown_metric() -> None:
    with pytest.raises(ValueError, match=r"metrics='f1' is not one of: accuracy, mse"):
        engine.evaluate(_network(), *_data(), "mse", ["f1"])


# ---------------------------------------------------------------------------------------------
# Numbers out of range
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lr", [0, 0.0, -0.1, float("nan"), float("inf"), "0.1", None, True])
def test_learning_rate_must_be_a_finite_positive_number(lr) -> None:
    with pytest.raises(ValueError, match=rf"^lr={re.escape(repr(lr))} is not allowed: it must be a finite number > 0$"):
        engine.make_optimizer("gd", lr)


@pytest.mark.parametrize(
    "sizes",
    [[3, 0, 2], [3, 4, 0], [0, 4, 2], [3, 2.5, 2], [3, 4.0, 2], [3, "4", 2], [3, True, 2], [3], [], [3, -1, 2]],
)
def test_layer_sizes_must_be_at_least_two_integers_of_at_least_one(sizes) -> None:
    expected = (
        rf"^sizes={re.escape(repr(sizes))} is not allowed: it must be a list of at least two integers >= 1 "
        r"\(\[n_inputs, hidden\.\.\., n_outputs\]\)$"
    )
    with pytest.raises(ValueError, match=expected):
        engine.MLP(sizes, np.random.default_rng(0))


@pytest.mark.parametrize("batch_size", [0, -4, 2.5, True])
def test_batch_size_must_be_a_positive_integer(batch_size) -> None:
    with pytest.raises(ValueError, match=rf"^batch_size={batch_size!r} is not allowed: it must be an integer >= 1$"):
        _train(batch_size=batch_size, rng=np.random.default_rng(0))


@pytest.mark.parametrize("epochs", [0, -1, 1.5, True])
def test_epochs_must_be_a_positive_integer(epochs) -> None:
    with pytest.raises(ValueError, match=rf"^epochs={epochs!r} is not allowed: it must be an integer >= 1$"):
        _train(epochs=epochs)


def test_optimizer_hyperparameters_are_range_checked() -> None:
    with pytest.raises(ValueError, match=r"^momentum=1\.0 is not allowed: it must lie in \[0\.0, 1\.0\)$"):
        engine.make_optimizer("momentum", 0.1, momentum=1.0)
    with pytest.raises(ValueError, match=r"^momentum=-0\.1 is not allowed: it must lie in \[0\.0, 1\.0\)$"):
        engine.make_optimizer("nesterov", 0.1, momentum=-0.1)
    with pytest.raises(ValueError, match=r"^beta2=1\.0 is not allowed: it must lie in \[0\.0, 1\.0\)$"):
        engine.make_optimizer("adam", 0.1, beta2=1.0)
    with pytest.raises(ValueError, match=r"^eps=0 is not allowed: it must be a finite number > 0$"):
        engine.make_optimizer("adam", 0.1, eps=0)


def test_schedule_parameters_are_range_checked() -> None:
    with pytest.raises(ValueError, match=r"^schedule\.step_size=0 is not allowed: it must be an integer >= 1$"):
        engine.Schedule("step", step_size=0)
    with pytest.raises(ValueError, match=r"^schedule\.gamma=1\.5 is not allowed: it must lie in \(0\.0, 1\.0\]$"):
        engine.Schedule("exponential", gamma=1.5)
    with pytest.raises(ValueError, match=r"^schedule\.min_lr=-1 is not allowed: it must lie in \[0\.0, inf\)$"):
        engine.Schedule("cosine", min_lr=-1)


def test_initializer_std_and_generator_are_checked() -> None:
    with pytest.raises(ValueError, match=r"^init_std=0 is not allowed: it must be a finite number > 0$"):
        _network(init="normal", init_std=0)
    with pytest.raises(ValueError, match=r"^rng=42 is not allowed: it must be an np\.random\.Generator$"):
        engine.MLP([3, 4, 2], 42)


def test_early_stopping_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"^early_stopping\.patience=0 is not allowed: it must be an integer >= 1$"):
        engine.EarlyStopping(patience=0)
    with pytest.raises(
        ValueError, match=r"^early_stopping\.min_delta=-0\.1 is not allowed: it must lie in \[0\.0, inf\)$"
    ):
        engine.EarlyStopping(min_delta=-0.1)
    with pytest.raises(
        ValueError,
        match=r"^early_stopping needs validation data \(validation=Validation\(X_val, Y_val\)\); none was given$",
    ):
        _train(stopping=engine.StoppingRules(early_stopping=engine.EarlyStopping()))


def test_stopping_rules_are_checked() -> None:
    with pytest.raises(ValueError, match=r"^saturation_patience=-1 is not allowed: it must be an integer >= 0$"):
        engine.StoppingRules(saturation_patience=-1)
    with pytest.raises(ValueError, match=r"^saturation_patience=2\.5 is not allowed: it must be an integer >= 0$"):
        engine.StoppingRules(saturation_patience=2.5)
    with pytest.raises(
        ValueError, match=r"^early_stopping=5 is not allowed: it must be an engine EarlyStopping or None$"
    ):
        engine.StoppingRules(early_stopping=5)
    with pytest.raises(
        ValueError,
        match=r"^stopping=\{'saturation_patience': 5\} is not allowed: it must be an engine StoppingRules or None$",
    ):
        _train(stopping={"saturation_patience": 5})


# ---------------------------------------------------------------------------------------------
# Combinations that do not make sense
# ---------------------------------------------------------------------------------------------


def test_softmax_is_not_a_hidden_activation() -> None:
    with pytest.raises(ValueError, match=r"^activation='softmax' is only allowed as output_activation$"):
        _network(activation="softmax")


@pytest.mark.parametrize("output", ["sigmoid", "identity", "tanh", "relu", "leaky_relu"])
def test_cross_entropy_needs_a_softmax_output(output: str) -> None:
    expected = rf"^loss='cross_entropy' needs output_activation='softmax', got '{output}'$"
    with pytest.raises(ValueError, match=expected):
        _train(_network(output_activation=output), Y=np.eye(2)[np.arange(10) % 2], loss="cross_entropy")
    with pytest.raises(ValueError, match=expected):
        engine.gradient_check(_network(output_activation=output), *_data(), loss="cross_entropy")


@pytest.mark.parametrize("output", ["softmax", "identity", "tanh"])
def test_binary_cross_entropy_needs_a_sigmoid_output(output: str) -> None:
    with pytest.raises(
        ValueError, match=rf"^loss='binary_cross_entropy' needs output_activation='sigmoid', got '{output}'$"
    ):
        _train(_network(output_activation=output), loss="binary_cross_entropy")
