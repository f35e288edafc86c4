"""Gradient checking: backpropagation against central finite differences."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.network import MLP


@dataclass
class GradientCheck:
    """Result of ``gradient_check``.

    ``analytic`` and ``numeric`` are flat vectors laid out like ``MLP.params``;
    ``layer_errors[l]`` is ``(weight_error, bias_error)`` and ``max_relative_error`` the largest.
    """

    analytic: np.ndarray
    numeric: np.ndarray
    layer_errors: list[tuple[float, float]]
    max_relative_error: float


def _relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    # Norm-wise ||a - n|| / (||a|| + ||n||): element-wise ratios blow up on entries that are
    # themselves at round-off level, which says nothing about the backward pass.
    denominator = np.linalg.norm(analytic) + np.linalg.norm(numeric)
    return float(np.linalg.norm(analytic - numeric) / denominator) if denominator > 0 else 0.0


def gradient_check(
    network: MLP, X: np.ndarray, Y: np.ndarray, loss: str = "mse", epsilon: float = 1e-6
) -> GradientCheck:
    """Compare backpropagation's dE/dparams with central differences (E(p+e) - E(p-e)) / 2e.

    Parameters
    ----------
    network : MLP
        Checked at its current parameters, which are restored afterwards. Use float64.
    X, Y : array, shapes ``(n_samples, n_inputs)`` and ``(n_samples, n_outputs)``
    loss : str
    epsilon : float
        Finite-difference step.
    """
    X = np.asarray(X, network.dtype)
    Y = np.asarray(Y, network.dtype)
    network.check_inputs("X", X)
    network.check_targets("Y", Y)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}: they must match")
    output_delta = network.output_delta(loss)
    workspace = network.workspace(X.shape[0])
    analytic = np.zeros_like(network.params)
    network.gradient(X, Y, output_delta, workspace, *network.layer_views(analytic))

    def loss_at() -> float:
        a = network.forward(X, workspace)
        return output_delta(a, Y, workspace.deltas[-1], workspace.scratch[-1])

    params = network.params
    numeric = np.zeros_like(params)
    for i in range(params.size):
        original = params[i]
        params[i] = original + epsilon
        loss_plus = loss_at()
        params[i] = original - epsilon
        loss_minus = loss_at()
        params[i] = original
        numeric[i] = (loss_plus - loss_minus) / (2.0 * epsilon)

    layer_errors = [
        (_relative_error(aw, nw), _relative_error(ab, nb))
        for aw, ab, nw, nb in zip(*network.layer_views(analytic), *network.layer_views(numeric))
    ]
    worst = max(max(pair) for pair in layer_errors)
    return GradientCheck(analytic, numeric, layer_errors, worst)
