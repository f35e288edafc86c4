"""Activation functions and their backward passes, keyed by the names used in configs.

Rows are samples: ``z`` and ``a`` have shape ``(n_samples, n_units)``, or
``(n_members, n_samples, n_units)`` for networks stacked on a leading axis (``engine.stacked``):
every function works element by element or along the last axis, so a member's slice gets the
values it would get alone.

Every backward pass works from the cached *output* ``a = f(z)`` (never from ``z``), because
that is what the forward pass keeps: for example sigmoid' = a (1 - a). It turns
``delta = dE/da`` into ``dE/dz`` in place, which for element-wise functions is
``delta * f'(z)`` and for softmax the Jacobian-vector product ``a * (delta - sum(delta * a))``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engine._checks import check_choice

LEAKY_RELU_SLOPE = 0.01

# exp(710) overflows float64 (exp(89) float32); sigmoid(-709) ~ 1e-308 (sigmoid(-88) ~ 6e-39) is
# already as small as a normal float of that type gets, so clipping the exponent there changes no
# representable result and keeps exp quiet.
_SIGMOID_EXPONENT_LIMITS = {np.dtype(np.float64): 709.0, np.dtype(np.float32): 88.0}


def sigmoid(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Logistic function a = 1 / (1 + e^(-z)), finite and warning-free for any finite z."""
    out = np.negative(z, out=out)
    np.minimum(out, _SIGMOID_EXPONENT_LIMITS.get(out.dtype, 709.0), out=out)
    np.exp(out, out=out)
    out += 1.0
    # 1 / x by np.divide, not np.reciprocal: the same IEEE division, but NumPy's divide loop is
    # vectorized and its reciprocal loop is not.
    return np.divide(1.0, out, out=out)


def tanh(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Hyperbolic tangent a = tanh(z)."""
    a: np.ndarray = np.tanh(z, out=out)
    return a


def relu(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Rectifier a = max(z, 0)."""
    a: np.ndarray = np.maximum(z, 0.0, out=out)
    return a


def leaky_relu(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """a = z for z > 0, else 0.01 z."""
    a: np.ndarray = np.maximum(z, LEAKY_RELU_SLOPE * z, out=out)
    return a


def identity(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """a = z."""
    if out is None:
        return z.copy()
    if out is not z:
        np.copyto(out, z)
    return out


def softmax(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Row-wise a_k = e^(z_k) / sum_j e^(z_j), shifted by the row maximum so exp never overflows."""
    out = np.subtract(z, z.max(axis=-1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=-1, keepdims=True)
    return out


def _sigmoid_backward(a: np.ndarray, delta: np.ndarray, scratch: np.ndarray) -> None:
    np.subtract(1.0, a, out=scratch)
    scratch *= a
    delta *= scratch


def _tanh_backward(a: np.ndarray, delta: np.ndarray, scratch: np.ndarray) -> None:
    np.multiply(a, a, out=scratch)
    np.subtract(1.0, scratch, out=scratch)
    delta *= scratch


def _relu_backward(a: np.ndarray, delta: np.ndarray, scratch: np.ndarray) -> None:
    # a > 0 exactly where z > 0; the derivative at z = 0 is taken as 0.
    np.greater(a, 0.0, out=scratch)
    delta *= scratch


def _leaky_relu_backward(a: np.ndarray, delta: np.ndarray, scratch: np.ndarray) -> None:
    # With a positive slope, a has the sign of z, so the output alone tells the branch.
    np.greater(a, 0.0, out=scratch)
    scratch *= 1.0 - LEAKY_RELU_SLOPE
    scratch += LEAKY_RELU_SLOPE
    delta *= scratch


def _identity_backward(a: np.ndarray, delta: np.ndarray, scratch: np.ndarray) -> None:
    pass


def _softmax_backward(a: np.ndarray, delta: np.ndarray, scratch: np.ndarray) -> None:
    np.multiply(delta, a, out=scratch)
    delta -= scratch.sum(axis=-1, keepdims=True)
    delta *= a


Activation = Callable[[np.ndarray, np.ndarray | None], np.ndarray]
Backward = Callable[[np.ndarray, np.ndarray, np.ndarray], None]

ACTIVATIONS: dict[str, Activation] = {
    "sigmoid": sigmoid,
    "tanh": tanh,
    "relu": relu,
    "leaky_relu": leaky_relu,
    "identity": identity,
    "softmax": softmax,
}

# backward(a, delta, scratch): delta <- dE/dz given delta = dE/da and the cached output a;
# scratch is a buffer of a's shape the function may overwrite.
ACTIVATION_BACKWARDS: dict[str, Backward] = {
    "sigmoid": _sigmoid_backward,
    "tanh": _tanh_backward,
    "relu": _relu_backward,
    "leaky_relu": _leaky_relu_backward,
    "identity": _identity_backward,
    "softmax": _softmax_backward,
}


def get_activation(name: str, argument: str = "activation") -> tuple[Activation, Backward]:
    """Return ``(forward, backward)`` for ``name``; raise ValueError listing the valid names."""
    check_choice(argument, name, ACTIVATIONS)
    return ACTIVATIONS[name], ACTIVATION_BACKWARDS[name]
