"""Losses, keyed by the names used in configs.

``a`` is the network output and ``y`` the target, both ``(n_samples, n_outputs)``; ``n`` is
n_samples and ``k`` is n_outputs. Each function writes dE/da into ``out`` (same shape as ``a``)
and returns the loss value E, so that value and gradient always share one averaging convention:

- ``mse``: E = 1/(n k) * sum_ik (a_ik - y_ik)^2, averaged over samples *and* outputs;
  dE/da = 2 (a - y) / (n k).
- ``cross_entropy`` (categorical; rows of ``a`` are class probabilities, ``y`` one-hot):
  E = -1/n * sum_ik y_ik log a_ik, summed over classes and averaged over samples;
  dE/da = -y / (n a). Requires a softmax output layer.
- ``binary_cross_entropy`` (each output an independent probability):
  E = -1/(n k) * sum_ik [y log a + (1 - y) log(1 - a)], averaged like mse;
  dE/da = (a - y) / (n k a (1 - a)). Requires a sigmoid output layer.

For the two cross-entropies the output layer uses the fused delta dE/dz = (a - y)/n
(resp. (a - y)/(n k)), which is exact and avoids dividing by probabilities near 0.

``STACKED_LOSSES`` and ``STACKED_FUSED_OUTPUT_DELTAS`` hold the same functions for networks
stacked on a leading axis (``engine.stacked``): ``a`` and ``out`` of shape ``(M, n, k)``, ``y``
of that shape or ``(n, k)`` shared by all members; they return each member's loss as a float64
array of shape ``(M,)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from engine._checks import check_choice

LossFunction = Callable[[np.ndarray, np.ndarray, np.ndarray], float]


def _log_clipped(p: np.ndarray, out: np.ndarray) -> np.ndarray:
    # log(0) would be -inf; the smallest normal float keeps the loss finite and exact elsewhere.
    np.maximum(p, np.finfo(p.dtype).tiny, out=out)
    np.log(out, out=out)
    return out


def mse(a: np.ndarray, y: np.ndarray, out: np.ndarray) -> float:
    """Mean squared error over samples and outputs; writes dE/da = 2 (a - y) / (n k) into ``out``."""
    np.subtract(a, y, out=out)
    count = out.size
    value = float(np.vdot(out, out)) / count
    out *= 2.0 / count
    return value


def cross_entropy(a: np.ndarray, y: np.ndarray, out: np.ndarray) -> float:
    """Categorical cross-entropy, summed over classes, averaged over samples; dE/da = -y / (n a)."""
    n: int = a.shape[0]
    value = -float(np.vdot(y, _log_clipped(a, out))) / n
    np.maximum(a, np.finfo(a.dtype).tiny, out=out)
    np.divide(y, out, out=out)
    out *= -1.0 / n
    return value


def _binary_cross_entropy_value(a: np.ndarray, y: np.ndarray, scratch: np.ndarray) -> float:
    total = float(np.vdot(y, _log_clipped(a, scratch)))
    np.subtract(1.0, a, out=scratch)
    total += float(np.vdot(1.0 - y, _log_clipped(scratch, scratch)))
    return -total / a.size


def binary_cross_entropy(a: np.ndarray, y: np.ndarray, out: np.ndarray) -> float:
    """Binary cross-entropy averaged over samples and outputs; dE/da = (a - y) / (n k a (1 - a))."""
    value = _binary_cross_entropy_value(a, y, out)
    tiny = np.finfo(a.dtype).tiny
    np.maximum(a * (1.0 - a), tiny, out=out)
    np.divide(a - y, out, out=out)
    out *= 1.0 / a.size
    return value


def _softmax_cross_entropy_delta(a: np.ndarray, y: np.ndarray, out: np.ndarray) -> float:
    n: int = a.shape[0]
    value = -float(np.vdot(y, _log_clipped(a, out))) / n
    np.subtract(a, y, out=out)
    out *= 1.0 / n
    return value


def _sigmoid_binary_cross_entropy_delta(a: np.ndarray, y: np.ndarray, out: np.ndarray) -> float:
    value = _binary_cross_entropy_value(a, y, out)
    np.subtract(a, y, out=out)
    out *= 1.0 / a.size
    return value


def member_dots(a: np.ndarray, b: np.ndarray) -> npt.NDArray[np.float64]:
    """``float(np.vdot(a[m], b[m]))`` for every member ``m`` of stacked ``(M, n, k)`` arrays, as a
    float64 array of shape ``(M,)``; either one may be an ``(n, k)`` array shared by all members.

    np.vecdot runs, on each member's contiguous slice, the dot loop np.vdot runs on an array alone
    (BLAS's dot): the same sum in the same order, so each value is the one that member's lone loss
    gets.
    """
    dots: np.ndarray = np.vecdot(a.reshape(*a.shape[:-2], -1), b.reshape(*b.shape[:-2], -1))
    return dots.astype(np.float64)


LOSSES: dict[str, LossFunction] = {
    "mse": mse,
    "cross_entropy": cross_entropy,
    "binary_cross_entropy": binary_cross_entropy,
}

# The output activation each loss requires (None: any).
REQUIRED_OUTPUT_ACTIVATION: dict[str, str | None] = {
    "mse": None,
    "cross_entropy": "softmax",
    "binary_cross_entropy": "sigmoid",
}

# (loss, output activation) -> function writing dE/dz of the output layer into ``out``.
FUSED_OUTPUT_DELTAS: dict[tuple[str, str], LossFunction] = {
    ("cross_entropy", "softmax"): _softmax_cross_entropy_delta,
    ("binary_cross_entropy", "sigmoid"): _sigmoid_binary_cross_entropy_delta,
}


def get_loss(name: str, output_activation: str, argument: str = "loss") -> LossFunction:
    """Return the loss function for ``name``, checking it suits ``output_activation``."""
    check_choice(argument, name, LOSSES)
    required = REQUIRED_OUTPUT_ACTIVATION[name]
    if required is not None and output_activation != required:
        raise ValueError(f"{argument}={name!r} needs output_activation='{required}', got {output_activation!r}")
    return LOSSES[name]


# Stacked members: each function mirrors the function of the same name above, operation for
# operation, on a leading member axis (the sums per member by member_dots, n and k from the last
# two axes), so that every member's value and gradient are bit for bit what it gets alone;
# tests/test_engine_stacked.py compares the two for every loss. A change to one is a change to both.

StackedLossFunction = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _stacked_mse(a: np.ndarray, y: np.ndarray, out: np.ndarray) -> np.ndarray:
    np.subtract(a, y, out=out)
    count: int = out.shape[-2] * out.shape[-1]
    value = member_dots(out, out) / count
    out *= 2.0 / count
    return value


def _stacked_cross_entropy(a: np.ndarray, y: np.ndarray, out: np.ndarray) -> np.ndarray:
    n: int = a.shape[-2]
    value = -member_dots(y, _log_clipped(a, out)) / n
    np.maximum(a, np.finfo(a.dtype).tiny, out=out)
    np.divide(y, out, out=out)
    out *= -1.0 / n
    return value


def _stacked_binary_cross_entropy_value(a: np.ndarray, y: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    total = member_dots(y, _log_clipped(a, scratch))
    np.subtract(1.0, a, out=scratch)
    total += member_dots(1.0 - y, _log_clipped(scratch, scratch))
    size: int = a.shape[-2] * a.shape[-1]
    return -total / size


def _stacked_binary_cross_entropy(a: np.ndarray, y: np.ndarray, out: np.ndarray) -> np.ndarray:
    value = _stacked_binary_cross_entropy_value(a, y, out)
    tiny = np.finfo(a.dtype).tiny
    np.maximum(a * (1.0 - a), tiny, out=out)
    np.divide(a - y, out, out=out)
    out *= 1.0 / (a.shape[-2] * a.shape[-1])
    return value


def _stacked_softmax_cross_entropy_delta(a: np.ndarray, y: np.ndarray, out: np.ndarray) -> np.ndarray:
    n: int = a.shape[-2]
    value = -member_dots(y, _log_clipped(a, out)) / n
    np.subtract(a, y, out=out)
    out *= 1.0 / n
    return value


def _stacked_sigmoid_binary_cross_entropy_delta(a: np.ndarray, y: np.ndarray, out: np.ndarray) -> np.ndarray:
    value = _stacked_binary_cross_entropy_value(a, y, out)
    np.subtract(a, y, out=out)
    out *= 1.0 / (a.shape[-2] * a.shape[-1])
    return value


STACKED_LOSSES: dict[str, StackedLossFunction] = {
    "mse": _stacked_mse,
    "cross_entropy": _stacked_cross_entropy,
    "binary_cross_entropy": _stacked_binary_cross_entropy,
}

STACKED_FUSED_OUTPUT_DELTAS: dict[tuple[str, str], StackedLossFunction] = {
    ("cross_entropy", "softmax"): _stacked_softmax_cross_entropy_delta,
    ("binary_cross_entropy", "sigmoid"): _stacked_sigmoid_binary_cross_entropy_delta,
}
