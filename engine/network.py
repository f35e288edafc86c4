"""A dense multi-layer perceptron: forward pass, backpropagation, prediction.

Rows are samples. Layer ``l`` maps ``a_prev`` of shape ``(n, fan_in)`` to
``z = a_prev @ W + b`` and ``a = f(z)``, with ``W`` of shape ``(fan_in, fan_out)`` and ``b`` of
shape ``(fan_out,)``.

All weights and biases live in one flat vector, ``MLP.params``; ``weights[l]`` and
``biases[l]`` are views into it. Gradients and optimizer state use the same layout, so an
optimizer updates every layer with a handful of vector operations whatever the depth, which
matters most for small networks where per-call overhead dominates.

``StackedMLP`` holds several networks of one architecture with their parameters stacked on a
leading axis, ``(M, n_params)``; its forward pass and backpropagation are MLP's own code, which
works on a leading member axis as on none (see ``StackedMLP``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, cast

import numpy as np
import numpy.typing as npt

from engine._checks import as_finite_2d, check_choice
from engine.activations import ACTIVATIONS, get_activation
from engine.initializers import get_initializer
from engine.losses import (
    FUSED_OUTPUT_DELTAS,
    LOSSES,
    STACKED_FUSED_OUTPUT_DELTAS,
    STACKED_LOSSES,
    LossFunction,
    get_loss,
)

DTYPES = {"float64": np.float64, "float32": np.float32}
# Softmax couples a layer's units; it only makes sense as the output layer of a classifier.
HIDDEN_ACTIVATIONS = {name: f for name, f in ACTIVATIONS.items() if name != "softmax"}

# (a_out, y, delta_out, scratch) -> loss value; writes dE/dz of the output layer into delta_out.
OutputDelta = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float]


def check_dtype(dtype: object) -> np.dtype:
    """Return the NumPy dtype for ``'float64'``/``'float32'``; raise ValueError otherwise."""
    name = np.dtype(cast("npt.DTypeLike", dtype)).name if isinstance(dtype, (type, np.dtype)) else dtype
    check_choice("dtype", name, DTYPES)
    return np.dtype(DTYPES[cast(str, name)])


class Workspace:
    """Preallocated buffers for forward and backward passes over batches of ``rows`` samples.

    ``activations[l]``, ``deltas[l]`` (dE/dz) and ``scratch[l]`` all have shape
    ``(*lead, rows, sizes[l + 1])``; ``inputs``/``targets`` receive mini-batches gathered from the
    data. ``lead`` is ``()`` for one network, ``(M,)`` for M stacked ones (each its own batch).
    """

    def __init__(self, sizes: Sequence[int], rows: int, dtype: np.dtype, lead: tuple[int, ...] = ()) -> None:
        self.rows = rows
        self.activations = [np.empty((*lead, rows, width), dtype) for width in sizes[1:]]
        self.deltas = [np.empty((*lead, rows, width), dtype) for width in sizes[1:]]
        self.scratch = [np.empty((*lead, rows, width), dtype) for width in sizes[1:]]
        self.inputs = np.empty((*lead, rows, sizes[0]), dtype)
        self.targets = np.empty((*lead, rows, sizes[-1]), dtype)


class MLP:
    """Dense feed-forward network trained by backpropagation.

    Parameters
    ----------
    sizes : list of int
        Layer widths ``[n_inputs, hidden_1, ..., n_outputs]``; at least two entries, each >= 1.
    rng : np.random.Generator
        Source of the initial weights (the global NumPy RNG is never used).
    activation : str
        Hidden-layer activation, a key of ``engine.activations.ACTIVATIONS``.
    output_activation : str
        Output-layer activation.
    init : str
        Weight initializer, a key of ``engine.initializers.INITIALIZERS``; biases start at 0.
    init_std : float
        Standard deviation for ``init='normal'``.
    dtype : {'float64', 'float32'}
        Floating type of parameters and computations.
    """

    # Where output_delta takes the loss functions from (a StackedMLP: their stacked counterparts).
    loss_functions: ClassVar[Mapping[str, LossFunction]] = LOSSES
    fused_output_deltas: ClassVar[Mapping[tuple[str, str], LossFunction]] = FUSED_OUTPUT_DELTAS

    def __init__(
        self,
        sizes: Sequence[int],
        rng: np.random.Generator,
        *,
        activation: str = "sigmoid",
        output_activation: str = "sigmoid",
        init: str = "xavier_uniform",
        init_std: float = 0.01,
        dtype: str = "float64",
    ) -> None:
        sizes = list(sizes) if isinstance(sizes, (list, tuple)) else sizes
        if (
            not isinstance(sizes, list)
            or len(sizes) < 2
            or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and int(s) >= 1 for s in sizes)
        ):
            raise ValueError(
                f"sizes={sizes!r} is not allowed: it must be a list of at least two integers >= 1 "
                "([n_inputs, hidden..., n_outputs])"
            )
        if activation == "softmax":
            raise ValueError("activation='softmax' is only allowed as output_activation")
        check_choice("activation", activation, HIDDEN_ACTIVATIONS)
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng={rng!r} is not allowed: it must be an np.random.Generator")
        hidden_forward, hidden_backward = get_activation(activation, "activation")
        output_forward, output_backward = get_activation(output_activation, "output_activation")
        initializer = get_initializer(init, init_std)

        self.sizes = [int(s) for s in sizes]
        self.activation = activation
        self.output_activation = output_activation
        self.dtype = check_dtype(dtype)
        self.layer_activations = [activation] * (self.n_layers - 1) + [output_activation]
        self._forwards = [hidden_forward] * (self.n_layers - 1) + [output_forward]
        self._backwards = [hidden_backward] * (self.n_layers - 1) + [output_backward]

        self.params = np.zeros(self.n_params, self.dtype)
        self.weights, self.biases = self.layer_views(self.params)
        for weight in self.weights:
            # Drawn in float64 so that float32 and float64 networks start from the same values.
            weight[...] = initializer(rng, weight.shape[0], weight.shape[1], init_std)

    @property
    def n_layers(self) -> int:
        """Number of weight layers (hidden layers + 1)."""
        return len(self.sizes) - 1

    @property
    def n_params(self) -> int:
        """Total number of weights and biases."""
        return sum((fan_in + 1) * fan_out for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:]))

    def layer_views(self, flat: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Split a flat vector laid out like ``params`` into per-layer ``(W, b)`` views.

        Layer ``l`` holds ``W`` (``fan_in * fan_out`` values, row-major) followed by ``b``. A
        leading axis of ``flat`` (stacked networks) stays in front: ``(M, fan_in, fan_out)`` and
        ``(M, fan_out)``.
        """
        weights, biases = [], []
        lead = flat.shape[:-1]
        offset = 0
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:]):
            weights.append(flat[..., offset : offset + fan_in * fan_out].reshape(*lead, fan_in, fan_out))
            offset += fan_in * fan_out
            biases.append(flat[..., offset : offset + fan_out])
            offset += fan_out
        return weights, biases

    def workspace(self, rows: int) -> Workspace:
        """Buffers for passes over ``rows`` samples at a time (of each member, when stacked)."""
        return Workspace(self.sizes, rows, self.dtype, self.params.shape[:-1])

    def forward(self, X: np.ndarray, workspace: Workspace) -> np.ndarray:
        """Forward pass of ``X`` (``(rows, n_inputs)``); returns the output ``(rows, n_outputs)``.

        Every layer's output ``a`` stays in ``workspace.activations`` for the backward pass.
        """
        a = X
        for W, b, f, out in zip(self.weights, self.biases, self._forwards, workspace.activations):
            np.matmul(a, W, out=out)
            out += b
            a = f(out, out)
        return a

    def output_delta(self, loss: str) -> OutputDelta:
        """The function giving the loss and dE/dz of the output layer for loss ``loss``."""
        get_loss(loss, self.output_activation)
        loss_function = self.loss_functions[loss]
        fused = self.fused_output_deltas.get((loss, self.output_activation))
        if fused is not None:
            return lambda a, y, delta, scratch: fused(a, y, delta)
        backward = self._backwards[-1]

        def chained(a: np.ndarray, y: np.ndarray, delta: np.ndarray, scratch: np.ndarray) -> float:
            value = loss_function(a, y, delta)  # delta <- dE/da
            backward(a, delta, scratch)  # delta <- dE/dz
            return value

        return chained

    def gradient(
        self,
        X: np.ndarray,
        Y: np.ndarray,
        output_delta: OutputDelta,
        workspace: Workspace,
        grad_weights: list[np.ndarray],
        grad_biases: list[np.ndarray],
    ) -> float:
        """Backpropagation: write dE/dW and dE/db of every layer, return the loss E.

        ``X`` is ``(rows, n_inputs)`` and ``Y`` ``(rows, n_outputs)``. Going backwards from the
        output, ``delta_l = dE/dz_l``; then ``grad_W_l = a_(l-1)^T delta_l``,
        ``grad_b_l = sum over rows of delta_l`` and ``delta_(l-1) = (delta_l W_l^T) * f'(a_(l-1))``.

        Written for a leading member axis too (``.mT``, rows as axis -2): on a StackedMLP each
        member's slice goes through the same products and sums as a network alone.
        """
        self.forward(X, workspace)
        activations, deltas, scratch = workspace.activations, workspace.deltas, workspace.scratch
        last = self.n_layers - 1
        value = output_delta(activations[last], Y, deltas[last], scratch[last])
        for layer in range(last, -1, -1):
            delta = deltas[layer]
            a_prev = X if layer == 0 else activations[layer - 1]
            np.matmul(a_prev.mT, delta, out=grad_weights[layer])
            # grad_b = delta.sum(axis=-2), by the ufunc reduction that ndarray.sum wraps: once per layer
            # and batch, its Python wrapper costs as much as the sum itself on small networks.
            np.add.reduce(delta, axis=-2, out=grad_biases[layer])
            if layer > 0:
                np.matmul(delta, self.weights[layer].mT, out=deltas[layer - 1])
                self._backwards[layer - 1](activations[layer - 1], deltas[layer - 1], scratch[layer - 1])
        return value

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Network output for ``X`` (``(n_samples, n_inputs)``) as a new ``(n_samples, n_outputs)`` array."""
        X = as_finite_2d("X", X, self.dtype)
        self.check_inputs("X", X)
        return self.forward(X, self.workspace(X.shape[0])).copy()

    def check_inputs(self, argument: str, X: np.ndarray) -> None:
        """Raise unless ``X`` has ``n_inputs`` columns."""
        if X.shape[1] != self.sizes[0]:
            raise ValueError(f"{argument} has {X.shape[1]} columns but the network expects n_inputs={self.sizes[0]}")

    def check_targets(self, argument: str, Y: np.ndarray) -> None:
        """Raise unless ``Y`` has ``n_outputs`` columns."""
        if Y.shape[1] != self.sizes[-1]:
            raise ValueError(f"{argument} has {Y.shape[1]} columns but the network has n_outputs={self.sizes[-1]}")


class StackedMLP(MLP):
    """``M`` networks of one architecture trained side by side (``engine.stacked``).

    ``params`` has shape ``(M, n_params)``, row ``m`` laid out like member ``m``'s
    ``MLP.params``; ``weights[l]`` ``(M, fan_in, fan_out)`` and ``biases[l]`` ``(M, 1, fan_out)``
    (broadcast over each member's rows) are views into it, and ``layer_views`` splits any
    ``(M, n_params)`` array alike (biases ``(M, fan_out)``). ``forward`` and ``gradient`` are
    MLP's: np.matmul multiplies each member's slice by the same BLAS call as the member's own
    arrays alone, the element-wise functions and the reductions over rows or units work slice by
    slice, so every member's numbers are bit for bit its own. The loss functions are the stacked
    ones (``engine.losses.STACKED_LOSSES``): ``output_delta`` and ``gradient`` return each
    member's loss, an array of shape ``(M,)``, where MLP's return a float.
    """

    # The stacked functions return arrays where MLP's return floats; the training loop hands the
    # value on to the metric sums (engine.metrics.StackedMetricSums) without looking at it.
    loss_functions = cast(Mapping[str, LossFunction], STACKED_LOSSES)
    fused_output_deltas = cast(Mapping[tuple[str, str], LossFunction], STACKED_FUSED_OUTPUT_DELTAS)

    def __init__(self, template: MLP, params: np.ndarray) -> None:
        # Not MLP.__init__: the parameters are the members' (``params``), not drawn by an
        # initializer; the architecture is ``template``'s, which every member shares.
        if params.ndim != 2 or params.shape[1] != template.n_params or params.dtype != template.dtype:
            raise ValueError(
                f"params of shape {params.shape} and dtype {params.dtype} do not stack networks of "
                f"{template.n_params} {template.dtype} parameters"
            )
        self.sizes = list(template.sizes)
        self.activation, self.output_activation = template.activation, template.output_activation
        self.dtype = template.dtype
        self.layer_activations = list(template.layer_activations)
        self._forwards, self._backwards = template._forwards, template._backwards
        self.params = params
        self.weights, biases = self.layer_views(params)
        self.biases = [b[:, None, :] for b in biases]

    @property
    def members(self) -> int:
        """How many networks are stacked."""
        return int(self.params.shape[0])
