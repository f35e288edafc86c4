"""Where a case-4 batch of bench_engine.py goes (784-512-256-10, batch 256, float64, 2 BLAS threads).

    python tests/benchmarks/case4_breakdown.py

Times each step of one mini-batch in isolation (median of 60 after a warm-up): the row gather,
the whole backpropagation, the eight matrix products alone and each of them, the sigmoid, the
bias add and reduce, the gd update and the epoch-gradient sum an observer asks for; then the
2048x2048 matmul rate the engine's FLOP-share target is measured against.
"""

from __future__ import annotations

import time

import numpy as np
from threadpoolctl import threadpool_limits

from engine.activations import sigmoid
from engine.network import MLP
from engine.optimizers import make_optimizer

SIZES = [784, 512, 256, 10]
BATCH = 256


def median_ms(step, repeats: int = 60) -> float:
    for _ in range(5):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def main() -> None:
    rng = np.random.default_rng(0)
    network = MLP(SIZES, rng)
    X, Y = rng.random((8192, SIZES[0])), rng.random((8192, SIZES[-1]))
    workspace, output_delta = network.workspace(BATCH), network.output_delta("mse")
    grads = np.zeros_like(network.params)
    grad_weights, grad_biases = network.layer_views(grads)
    grad_sum = np.zeros_like(grads)
    optimizer = make_optimizer("gd", 0.1)
    optimizer.reset(network.n_params, network.dtype)
    rows = rng.permutation(8192)[:BATCH]
    W, A, D = network.weights, [workspace.inputs, *workspace.activations[:-1]], workspace.deltas

    def gather():
        X.take(rows, axis=0, out=workspace.inputs, mode="clip")
        Y.take(rows, axis=0, out=workspace.targets, mode="clip")

    def gradient():
        network.gradient(workspace.inputs, workspace.targets, output_delta, workspace, grad_weights, grad_biases)

    products = [
        (
            f"forward {l}",
            (lambda l=l: np.matmul(A[l], W[l], out=workspace.activations[l])),
            2 * BATCH * SIZES[l] * SIZES[l + 1],
        )
        for l in range(3)
    ]
    products += [
        (
            f"weight gradient {l}",
            (lambda l=l: np.matmul(A[l].T, D[l], out=grad_weights[l])),
            2 * BATCH * SIZES[l] * SIZES[l + 1],
        )
        for l in (2, 1, 0)
    ]
    products += [
        (
            f"input gradient {l}",
            (lambda l=l: np.matmul(D[l], W[l].T, out=D[l - 1])),
            2 * BATCH * SIZES[l] * SIZES[l + 1],
        )
        for l in (2, 1)
    ]
    flops = sum(count for _, _, count in products)

    def all_products():
        for _, product, _ in products:
            product()

    with threadpool_limits(2):
        batch = median_ms(
            lambda: (gather(), gradient(), optimizer.step(network.params, grads), grad_sum.__iadd__(grads))
        )
        print(f"whole batch                  {batch:7.3f} ms  {flops / batch / 1e6:6.1f} GFLOP/s")
        products_ms = median_ms(all_products)
        print(f"the 8 products               {products_ms:7.3f} ms  {flops / products_ms / 1e6:6.1f} GFLOP/s")
        for name, step in [
            ("gather rows", gather),
            ("backpropagation", gradient),
            ("gd update", lambda: optimizer.step(network.params, grads)),
            ("epoch-gradient sum", lambda: grad_sum.__iadd__(grads)),
            ("sigmoid 256x512", lambda: sigmoid(workspace.activations[0], workspace.activations[0])),
            ("bias add 256x512", lambda: workspace.activations[0].__iadd__(network.biases[0])),
            ("bias reduce 256x512", lambda: np.add.reduce(D[0], axis=0, out=grad_biases[0])),
        ]:
            print(f"{name:28s} {median_ms(step):7.3f} ms")
        for name, product, count in products:
            ms = median_ms(product)
            print(f"  {name:26s} {ms:7.3f} ms  {count / ms / 1e6:6.1f} GFLOP/s")
        a = np.random.default_rng(1).random((2048, 2048))
        c = np.empty_like(a)
        reference = 2 * 2048**3 / median_ms(lambda: np.matmul(a, a, out=c), 10) / 1e6
        print(
            f"2048x2048 matmul             {reference:6.1f} GFLOP/s; whole batch at "
            f"{flops / batch / 1e6 / reference:.0%} of it, the products alone at "
            f"{flops / products_ms / 1e6 / reference:.0%}"
        )


if __name__ == "__main__":
    main()
