"""Training throughput of the engine against PyTorch (CPU) and scikit-learn's MLPRegressor.

Run from the repository root (needs the ``bench`` extras: torch and scikit-learn)::

    .venv/bin/python tests/benchmarks/bench_engine.py            # all cases, 5 repetitions
    .venv/bin/python tests/benchmarks/bench_engine.py --cases 1 4 --repeats 3

Every framework trains the same architecture on the same float64 data with plain SGD (no
momentum, no weight decay), the same batch size and number of epochs, a reshuffle every epoch
and two threads (``threadpool_limits(2)`` for NumPy/OpenBLAS and scikit-learn,
``torch.set_num_threads(2)`` for PyTorch). The loss is the mean squared error. The engine and
PyTorch use sigmoid hidden *and* output layers and start from the same weights;
scikit-learn's ``MLPRegressor`` always has an identity output layer (its fixed design, there is
no option), so on that side the output layer skips one sigmoid and its derivative, and it
starts from its own initial weights.

The engine runs with an observer that asks for gradients (``wants_gradients = True``), so it
also pays for the epoch gradient it reports; the targets are stated for that setting.

Timing covers the training call only (``train``, the PyTorch epoch loop, ``fit``): building the
model and the data is outside. Each case is first run once per framework as a warm-up; then the
frameworks take turns, ``--repeats`` times, and the table shows medians. Samples/s is
``n_samples * epochs / seconds``. The ratios of the fastest runs and the 1-minute load average
are printed too: on a shared machine, other processes slow two-thread BLAS down by 2-10x in
bursts, which shows up as a wide [min, max] spread.

The FLOP line compares the engine on case 4 with a 2048 x 2048 float64 matrix product in NumPy,
timed between the rounds of runs. The engine's count per sample is ``2 * fan_in * fan_out`` for
each forward, weight-gradient and input-gradient product of every layer (the first layer needs
no input gradient); element-wise work is not counted. Beside it, the same run times the matrix
products of one case-4 batch alone (``ProductsClock``): the share an engine would reach if all its
other work were free, the ceiling for any engine built on NumPy's matmul.

To compare the engine with another commit's on the same four cases (no torch or scikit-learn
needed), run ``ab_engine.py --reference COMMIT``: both engines in one process, runs alternating.

The OpenBLAS core type is whatever the environment selects; the output prints
``OPENBLAS_CORETYPE``. To benchmark without an inherited override, unset it for this command
only: ``env -u OPENBLAS_CORETYPE .venv/bin/python tests/benchmarks/bench_engine.py``.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:  # running the file directly, without an installed package
    sys.path.insert(0, str(REPOSITORY))

from engine import MLP, Observer, make_optimizer, train  # noqa: E402

THREADS = 2
DIGITS = REPOSITORY / "runner" / "data" / "digits.csv.gz"
MATMUL_SIZE = 2048

# (framework, case number) -> required ratio engine/peer; and the share of the matmul FLOP rate.
TARGETS = {
    ("torch", 1): 3.0,
    ("torch", 2): 2.0,
    ("torch", 3): 2.0,
    ("torch", 4): 1.0,
    ("sklearn", 1): 2.0,
    ("sklearn", 2): 2.0,
    ("sklearn", 3): 2.0,
    ("sklearn", 4): 1.0,
}
FLOP_TARGET = 0.70
FLOP_CASE = 4


@dataclass
class Case:
    number: int
    title: str
    sizes: list[int]
    X: np.ndarray
    Y: np.ndarray
    batch_size: int
    epochs: int
    lr: float

    @property
    def n_samples(self) -> int:
        return self.X.shape[0]

    @property
    def full_batch(self) -> bool:
        return self.batch_size >= self.n_samples


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes)[labels]


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The project's copy of the UCI digits: standardized pixels, one-hot digit targets."""
    with gzip.open(DIGITS, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", skiprows=1)
    pixels, digits = table[:, :-1], table[:, -1].astype(int)
    spread = pixels.std(axis=0)
    spread[spread == 0.0] = 1.0  # constant border pixels: centre them, do not divide by zero
    return (pixels - pixels.mean(axis=0)) / spread, one_hot(digits, 10)


def make_case(number: int) -> Case:
    if number == 1:
        X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
        Y = np.array([[0.0], [1.0], [1.0], [0.0]])
        return Case(1, "2-2-1 XOR, full batch", [2, 2, 1], X, Y, 4, 2000, 1.0)
    if number == 2:
        rng = np.random.default_rng(0)
        X = rng.uniform(-np.pi, np.pi, size=(1024, 1))
        Y = 0.5 + 0.4 * np.sin(X)  # inside (0, 1), where a sigmoid output can reach it
        return Case(2, "1-16-1 sine", [1, 16, 1], X, Y, 32, 20, 0.5)
    if number == 3:
        X, Y = load_digits()
        return Case(3, "64-128-64-10 digits", [64, 128, 64, 10], X, Y, 64, 10, 0.5)
    if number == 4:
        rng = np.random.default_rng(0)
        X = rng.standard_normal((8192, 784))
        Y = one_hot(rng.integers(0, 10, size=8192), 10)
        return Case(4, "784-512-256-10 random", [784, 512, 256, 10], X, Y, 256, 2, 0.1)
    raise ValueError(f"no case {number}")


def flops_per_sample(sizes: list[int]) -> int:
    """Multiply-adds x 2 of one forward and backward pass (no input gradient for layer 0)."""
    total = 0
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        products = 2 if layer == 0 else 3
        total += products * 2 * fan_in * fan_out
    return total


class GradientWatcher(Observer):
    """Asks for the epoch gradients and keeps references to them: cheap, but it makes the
    engine compute and report them, which is the setting the targets are stated for."""

    wants_gradients = True

    def __init__(self) -> None:
        self.epochs_seen = 0
        self.last_gradients = None

    def on_epoch_end(self, report) -> None:
        self.epochs_seen += 1
        self.last_gradients = (report.grad_weights, report.grad_biases)


def initial_engine_network(case: Case, seed: int) -> MLP:
    return MLP(case.sizes, np.random.default_rng(seed), activation="sigmoid", output_activation="sigmoid")


def run_engine(case: Case, seed: int) -> tuple[float, float]:
    """Seconds of one training run and the last epoch's training loss (MSE)."""
    network = initial_engine_network(case, seed)
    optimizer = make_optimizer("gd", case.lr)
    watcher = GradientWatcher()
    shuffle_rng = np.random.default_rng(seed + 1)
    start = time.perf_counter()
    history = train(
        network,
        optimizer,
        case.X,
        case.Y,
        epochs=case.epochs,
        loss="mse",
        batch_size=case.batch_size,
        rng=shuffle_rng,
        observers=[watcher],
    )
    elapsed = time.perf_counter() - start
    if watcher.epochs_seen != case.epochs or history.stop_reason != "completed":
        raise RuntimeError(f"engine run of case {case.number} ended early: {history.message}")
    return elapsed, history.metrics["train_loss"][-1]


def run_torch(case: Case, seed: int) -> tuple[float, float]:
    import torch
    from torch import nn

    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(case.sizes[:-1], case.sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.Sigmoid()]
    model = nn.Sequential(*layers).double()
    # Same starting point as the engine (nn.Linear stores W transposed), so that losses compare.
    reference = initial_engine_network(case, seed)
    with torch.no_grad():
        for linear, W, b in zip(model[::2], reference.weights, reference.biases):
            linear.weight.copy_(torch.from_numpy(W.T.copy()))
            linear.bias.copy_(torch.from_numpy(b.copy()))
    X = torch.from_numpy(np.ascontiguousarray(case.X))
    Y = torch.from_numpy(np.ascontiguousarray(case.Y))
    loss_function = nn.MSELoss()  # mean over samples and outputs, like the engine's mse
    optimizer = torch.optim.SGD(model.parameters(), lr=case.lr)
    generator = torch.Generator().manual_seed(seed + 1)
    n, batch_size = case.n_samples, case.batch_size

    start = time.perf_counter()
    for _ in range(case.epochs):
        order = None if case.full_batch else torch.randperm(n, generator=generator)
        loss_sum = 0.0
        for first in range(0, n, batch_size):
            if order is None:
                inputs, targets = X, Y
            else:
                rows = order[first : first + batch_size]
                inputs, targets = X[rows], Y[rows]
            optimizer.zero_grad()
            loss = loss_function(model(inputs), targets)
            loss.backward()
            optimizer.step()
            # The engine reports the epoch's mean training loss; do the same work here.
            loss_sum += loss.item() * inputs.shape[0]
        epoch_loss = loss_sum / n
    return time.perf_counter() - start, epoch_loss


def run_sklearn(case: Case, seed: int) -> tuple[float, float]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor

    model = MLPRegressor(
        hidden_layer_sizes=tuple(case.sizes[1:-1]),
        activation="logistic",
        solver="sgd",
        alpha=0.0,
        batch_size=case.batch_size,
        learning_rate="constant",
        learning_rate_init=case.lr,
        momentum=0.0,
        nesterovs_momentum=False,
        max_iter=case.epochs,
        shuffle=True,
        random_state=seed,
        early_stopping=False,
        tol=0.0,
        n_iter_no_change=case.epochs + 1,  # never stop before max_iter
    )
    Y = case.Y.ravel() if case.Y.shape[1] == 1 else case.Y  # a column would raise a warning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter reached: on purpose
        start = time.perf_counter()
        model.fit(case.X, Y)
        elapsed = time.perf_counter() - start
    if model.n_iter_ != case.epochs:
        raise RuntimeError(f"scikit-learn stopped case {case.number} after {model.n_iter_} epochs")
    # loss_ is half the mean squared error (over samples and outputs) of an identity output.
    return elapsed, 2.0 * model.loss_


FRAMEWORKS: dict[str, Callable[[Case, int], tuple[float, float]]] = {
    "engine": run_engine,
    "torch": run_torch,
    "sklearn": run_sklearn,
}


class MatmulClock:
    """Times a 2048 x 2048 float64 product ``A @ B`` into a preallocated output.

    The benchmark calls ``measure()`` after every round of timed runs, so that the reference
    rate is sampled across the same stretch of time as the engine (on a shared machine the
    rate drifts with other load); ``rate()`` is the median FLOP/s.
    """

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.A = rng.standard_normal((MATMUL_SIZE, MATMUL_SIZE))
        self.B = rng.standard_normal((MATMUL_SIZE, MATMUL_SIZE))
        self.C = np.empty_like(self.A)
        self.seconds: list[float] = []

    def measure(self) -> None:
        start = time.perf_counter()
        np.matmul(self.A, self.B, out=self.C)
        self.seconds.append(time.perf_counter() - start)

    def rate(self) -> float:
        return 2.0 * MATMUL_SIZE**3 / statistics.median(self.seconds)


class ProductsClock:
    """Times the matrix products of one mini-batch alone, nothing else (no activations, loss,
    update or data): forward ``a @ W``, weight gradient ``a.T @ delta`` and input gradient
    ``delta @ W.T`` of every layer (none for layer 0), with the engine's layouts, into
    preallocated outputs. Their FLOP rate is what the engine would reach if everything else
    were free: the ceiling of the FLOP share for any engine whose products are NumPy's matmul.
    Sampled between the rounds of timed runs, like ``MatmulClock``.
    """

    BATCHES = 8  # per sample, so that each sample lasts about as long as one 2048^2 product

    def __init__(self, sizes: list[int], batch: int) -> None:
        rng = np.random.default_rng(0)
        self.weights = [rng.standard_normal((fan_in, fan_out)) for fan_in, fan_out in itertools.pairwise(sizes)]
        self.inputs = [rng.standard_normal((batch, width)) for width in sizes[:-1]]  # X, a_1, ...
        self.deltas = [rng.standard_normal((batch, width)) for width in sizes[1:]]
        self.outputs = [np.empty((batch, width)) for width in sizes[1:]]
        self.input_gradients = [np.empty((batch, width)) for width in sizes[:-1]]
        self.weight_gradients = [np.empty_like(weight) for weight in self.weights]
        self.flops = flops_per_sample(sizes) * batch
        self.seconds: list[float] = []

    def products(self) -> None:
        for layer, weight in enumerate(self.weights):
            np.matmul(self.inputs[layer], weight, out=self.outputs[layer])
        for layer in reversed(range(len(self.weights))):
            np.matmul(self.inputs[layer].T, self.deltas[layer], out=self.weight_gradients[layer])
            if layer > 0:
                np.matmul(self.deltas[layer], self.weights[layer].T, out=self.input_gradients[layer])

    def measure(self) -> None:
        start = time.perf_counter()
        for _ in range(self.BATCHES):
            self.products()
        self.seconds.append((time.perf_counter() - start) / self.BATCHES)

    def rate(self) -> float:
        return self.flops / statistics.median(self.seconds)


def describe_environment() -> list[str]:
    import sklearn
    import torch

    blas = [
        f"{i['internal_api']} {i['version']} ({i.get('architecture', '?')})"
        for i in threadpool_info()
        if i["user_api"] == "blas" and "numpy" in i["filepath"]
    ]
    return [
        f"python {platform.python_version()}, numpy {np.__version__} [{', '.join(blas)}], "
        f"torch {torch.__version__}, scikit-learn {sklearn.__version__}",
        f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores; "
        f"threads: {THREADS} each; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case and framework")
    parser.add_argument("--cases", type=int, nargs="+", default=[1, 2, 3, 4], choices=[1, 2, 3, 4])
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    import torch

    torch.set_num_threads(THREADS)
    load_before = os.getloadavg()[0]
    with threadpool_limits(limits=THREADS):
        cases = [make_case(number) for number in sorted(set(args.cases))]
        seconds: dict[tuple[str, int], list[float]] = {}
        final_loss: dict[tuple[str, int], float] = {}
        matmul = MatmulClock()
        matmul.measure()  # warm-up, not kept
        matmul.seconds.clear()
        flop_case = next((case for case in cases if case.number == FLOP_CASE), None)
        products = ProductsClock(flop_case.sizes, flop_case.batch_size) if flop_case else None
        if products:
            products.measure()  # warm-up, not kept
            products.seconds.clear()
        for case in cases:
            for run in FRAMEWORKS.values():
                run(case, seed=1)  # warm-up: imports, allocator, BLAS thread start
            for _repeat in range(args.repeats):
                # Frameworks take turns so that a slow phase of the machine hits all of them.
                for name, run in FRAMEWORKS.items():
                    elapsed, loss = run(case, seed=1)
                    seconds.setdefault((name, case.number), []).append(elapsed)
                    final_loss[name, case.number] = loss
                matmul.measure()
                if products and case is flop_case:
                    products.measure()
            print(f"case {case.number} done", file=sys.stderr, flush=True)
        while len(matmul.seconds) < 5:
            matmul.measure()
        while products and len(products.seconds) < 5:
            products.measure()
        matmul_rate = matmul.rate()
    load_after = os.getloadavg()[0]

    def throughput(name: str, case: Case) -> float:
        return case.n_samples * case.epochs / statistics.median(seconds[name, case.number])

    print("\n".join(describe_environment()))
    print()
    print("| case | engine samples/s | torch samples/s | sklearn samples/s | engine/torch | engine/sklearn |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    verdicts = []
    for case in cases:
        rates = {name: throughput(name, case) for name in FRAMEWORKS}
        ratios = {peer: rates["engine"] / rates[peer] for peer in ("torch", "sklearn")}
        print(
            f"| {case.number}. {case.title} (n={case.n_samples}, batch {case.batch_size}, "
            f"{case.epochs} epochs) | {rates['engine']:,.0f} | {rates['torch']:,.0f} | "
            f"{rates['sklearn']:,.0f} | {ratios['torch']:.2f}x | {ratios['sklearn']:.2f}x |"
        )
        for peer, ratio in ratios.items():
            target = TARGETS[peer, case.number]
            verdicts.append(
                f"case {case.number} engine/{peer} {ratio:.2f}x, target >= {target:g}x: "
                + ("met" if ratio >= target else "NOT met")
            )

    print()
    print(
        f"medians of {args.repeats} timed runs after one warm-up; seconds per run [min, median, max] "
        "and the last run's final-epoch training MSE:"
    )
    for case in cases:
        for name in FRAMEWORKS:
            times = seconds[name, case.number]
            print(
                f"  case {case.number} {name:8s} [{min(times):.4f}, {statistics.median(times):.4f}, "
                f"{max(times):.4f}] s   train mse {final_loss[name, case.number]:.6g}"
            )
    print(
        "  (sklearn: identity output layer, its own initial weights and its own loss scaling "
        "(half the MSE, gradients not divided by n_outputs) at the same lr, so its MSE is not "
        "comparable)"
    )
    # On a shared machine other load only ever adds time, so the fastest run is the least
    # disturbed one; shown beside the medians, not instead of them.
    print(
        "ratios of the fastest runs: "
        + "; ".join(
            f"case {case.number} engine/torch "
            f"{min(seconds['torch', case.number]) / min(seconds['engine', case.number]):.2f}x, engine/sklearn "
            f"{min(seconds['sklearn', case.number]) / min(seconds['engine', case.number]):.2f}x"
            for case in cases
        )
    )

    print()
    print(
        f"numpy {MATMUL_SIZE}x{MATMUL_SIZE} float64 matmul: {matmul_rate / 1e9:.1f} GFLOP/s "
        f"(median of {len(matmul.seconds)}, taken between the rounds of timed runs)"
    )
    if flop_case is not None:
        engine_rate = flops_per_sample(flop_case.sizes) * throughput("engine", flop_case)
        share = engine_rate / matmul_rate
        print(
            f"engine on case {FLOP_CASE}: {engine_rate / 1e9:.1f} GFLOP/s = {100 * share:.0f}% of the "
            f"matmul rate ({flops_per_sample(flop_case.sizes):,} FLOP/sample)"
        )
        fastest_share = (
            flops_per_sample(flop_case.sizes)
            * flop_case.n_samples
            * flop_case.epochs
            / min(seconds["engine", FLOP_CASE])
        ) / (2.0 * MATMUL_SIZE**3 / min(matmul.seconds))
        print(f"  (fastest engine run against the fastest matmul: {100 * fastest_share:.0f}%)")
        ceiling = products.rate() / matmul_rate
        print(
            f"the case's {flop_case.batch_size}-row batch, its matrix products alone (nothing else): "
            f"{products.rate() / 1e9:.1f} GFLOP/s = {100 * ceiling:.0f}% of the matmul rate (median of "
            f"{len(products.seconds)}): the ceiling of the share for an engine on NumPy's matmul; "
            f"the engine reaches {100 * share / ceiling:.0f}% of it"
        )
        verdicts.append(
            f"case {FLOP_CASE} FLOP share {100 * share:.0f}%, target >= {100 * FLOP_TARGET:.0f}%: "
            + ("met" if share >= FLOP_TARGET else "NOT met")
        )

    print()
    print(
        f"load average (1 min) before/after: {load_before:.2f} / {load_after:.2f}"
        + ("  -- other processes were busy: expect noisy times" if max(load_before, load_after) > 0.5 else "")
    )
    print()
    print("targets:")
    for verdict in verdicts:
        print(f"  {verdict}")
    print()
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable
    print(f"command: cd {shlex.quote(os.getcwd())} && {shlex.join([python, *sys.argv])}")


if __name__ == "__main__":
    main()
