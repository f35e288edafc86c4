"""Check that the working-tree engine computes what a reference commit's engine computed.

Performance work on ``engine/`` must not change its math. This script extracts ``engine/`` from a
git commit (default ``HEAD``: it checks uncommitted work) as a package named ``engine_reference``,
trains both engines from the same seeds on a grid of configurations
(every activation, loss and optimizer, a schedule, full batch and mini-batches with a smaller
last batch, float64 and float32, metrics, validation, early stopping, divergence and saturation,
an observer that asks for gradients) and compares how training ended (reason, epochs, best and
restored epoch, message), the final parameters, every recorded metric, every epoch's reported
gradient and the predictions. Each engine is called with the ``train`` signature it has. It
also runs ``gradient_check`` on the current engine for every activation x loss pair with
several outputs.

Run from the repository root::

    .venv/bin/python tests/benchmarks/check_engine_equivalence.py [--reference COMMIT]

Exit status 0 when every float64 difference is at round-off level (relative 1e-12), both engines
report the same metrics and stop alike, and every gradient check passes; it also says which
configurations are bit-identical. Against a commit older than a deliberate change of behaviour
(say, a metric added to the history) the report names that difference and fails.
"""

from __future__ import annotations

import argparse
import inspect
import io
import math
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

import engine  # noqa: E402

DEFAULT_REFERENCE = "HEAD"
TOLERANCE = {"float64": 1e-12, "float32": 1e-4}  # relative to the largest magnitude compared
GRADIENT_CHECK_TOLERANCE = 1e-6


def import_reference(commit: str, directory: Path):
    """Extract ``engine/`` at ``commit`` into ``directory/engine_reference`` and import it.

    ``commit`` may also be a folder holding a copy of the engine package (its ``.py`` files),
    for instance the working tree's engine with one change undone."""
    package = directory / "engine_reference"
    if Path(commit).is_dir():
        shutil.copytree(commit, package, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        archive = subprocess.run(
            ["git", "-C", str(REPOSITORY), "archive", "--format=tar", commit, "engine"],
            check=True,
            capture_output=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(directory, filter="data")
        (directory / "engine").rename(package)
    for module in package.glob("*.py"):
        source = module.read_text()
        module.write_text(re.sub(r"\bfrom engine(\.| import)", r"from engine_reference\1", source))
    sys.path.insert(0, str(directory))
    import engine_reference

    return engine_reference


class GradientRecorder:
    """Copies every epoch's reported gradient (reports hold views of live buffers)."""

    wants_gradients = True

    def __init__(self) -> None:
        self.gradients: list[np.ndarray] = []

    def on_train_begin(self, network) -> None:
        pass

    def on_epoch_end(self, report) -> None:
        self.gradients.append(np.concatenate([g.ravel() for g in report.grad_weights + report.grad_biases]))

    def on_train_end(self, history) -> None:
        pass

    def stop_training(self):  # asked by engines that let an observer end training
        return None


def make_data(n_samples: int, n_inputs: int, n_outputs: int, loss: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_inputs))
    if loss == "cross_entropy":
        Y = np.eye(n_outputs)[rng.integers(0, n_outputs, n_samples)]
    elif loss == "binary_cross_entropy":
        Y = (rng.uniform(size=(n_samples, n_outputs)) > 0.5).astype(float)
    else:
        Y = rng.uniform(0.1, 0.9, size=(n_samples, n_outputs))
    return X, Y


# name, sizes, hidden activation, output activation, loss, optimizer (name, lr, options),
# schedule, batch size (None: full batch), epochs, dtype, metrics, validation, early stopping, observe
CONFIGS = [
    (
        "xor-like full batch gd",
        [2, 2, 1],
        "sigmoid",
        "sigmoid",
        "mse",
        ("gd", 2.0, {}),
        None,
        None,
        200,
        "float64",
        (),
        False,
        None,
        True,
    ),
    (
        "sine mini-batch gd",
        [1, 16, 1],
        "sigmoid",
        "sigmoid",
        "mse",
        ("gd", 0.5, {}),
        None,
        32,
        5,
        "float64",
        ("mse",),
        False,
        None,
        True,
    ),
    (
        "digits-like mse, remainder batch",
        [64, 32, 16, 10],
        "sigmoid",
        "sigmoid",
        "mse",
        ("gd", 0.5, {}),
        None,
        50,
        4,
        "float64",
        ("accuracy",),
        True,
        None,
        True,
    ),
    (
        "softmax cross-entropy momentum",
        [8, 12, 4],
        "tanh",
        "softmax",
        "cross_entropy",
        ("momentum", 0.1, {"momentum": 0.9}),
        ("step", 2),
        16,
        6,
        "float64",
        ("mse", "accuracy"),
        True,
        None,
        True,
    ),
    (
        "bce nesterov relu",
        [5, 9, 7, 3],
        "relu",
        "sigmoid",
        "binary_cross_entropy",
        ("nesterov", 0.05, {"momentum": 0.8}),
        ("cosine", 1),
        20,
        6,
        "float64",
        ("accuracy",),
        True,
        None,
        False,
    ),
    (
        "adam leaky_relu identity output",
        [6, 10, 2],
        "leaky_relu",
        "identity",
        "mse",
        ("adam", 0.01, {}),
        ("exponential", 1),
        25,
        6,
        "float64",
        (),
        True,
        (2, 0.0, True),
        True,
    ),
    (
        "mse on softmax output",
        [4, 6, 3],
        "sigmoid",
        "softmax",
        "mse",
        ("gd", 0.3, {}),
        None,
        None,
        30,
        "float64",
        ("accuracy",),
        False,
        None,
        True,
    ),
    (
        "identity hidden, tanh output",
        [3, 5, 2],
        "identity",
        "tanh",
        "mse",
        ("momentum", 0.05, {}),
        None,
        7,
        5,
        "float64",
        (),
        False,
        None,
        True,
    ),
    (
        "float32 sigmoid mini-batch",
        [10, 20, 5],
        "sigmoid",
        "sigmoid",
        "mse",
        ("gd", 0.5, {}),
        None,
        16,
        4,
        "float32",
        ("mse",),
        True,
        None,
        True,
    ),
    (
        "saturation: sigmoid gd with a huge rate",
        [2, 4, 1],
        "sigmoid",
        "sigmoid",
        "mse",
        ("gd", 1e4, {}),
        None,
        None,
        300,
        "float64",
        (),
        False,
        None,
        True,
    ),
    (
        "divergence: validation loss overflows",
        [2, 8, 1],
        "identity",
        "identity",
        "mse",
        ("gd", 0.5, {}),
        None,
        None,
        300,
        "float64",
        ("mse",),
        True,
        (50, 0.0, True),
        True,
    ),
    (
        "divergence: NaN weights mid-epoch",
        [2, 8, 1],
        "identity",
        "identity",
        "mse",
        ("gd", 0.5, {}),
        None,
        32,
        5,
        "float64",
        (),
        False,
        None,
        True,
    ),
    (
        "wide 784-64-10 mini-batch",
        [784, 64, 10],
        "sigmoid",
        "sigmoid",
        "mse",
        ("gd", 0.1, {}),
        None,
        128,
        2,
        "float64",
        (),
        False,
        None,
        True,
    ),
]


def validation_and_stopping(package, X_val, Y_val, rule) -> dict[str, object]:
    """The validation and stopping arguments of ``package.train``, in the signature it has: the
    grouped ``validation=`` and ``stopping=`` (whose default saturation patience is the old
    keyword's, 20), or the separate keywords of engines before them. The growth check is off
    where an engine has it: it only ends a diverging run sooner, which engines without it cannot
    match (tests/test_engine_stopping.py checks it)."""
    if "validation" in inspect.signature(package.train).parameters:
        growth = {"divergence_factor": 0.0} if "divergence_factor" in package.StoppingRules.__dataclass_fields__ else {}
        return {
            "validation": None if X_val is None else package.Validation(X_val, Y_val),
            "stopping": package.StoppingRules(early_stopping=rule, **growth),
        }
    return {"X_val": X_val, "Y_val": Y_val, "early_stopping": rule}


def train_one(package, config, seed: int = 7) -> dict[str, object]:
    (
        _name,
        sizes,
        activation,
        output_activation,
        loss,
        (optimizer_name, lr, options),
        schedule,
        batch_size,
        epochs,
        dtype,
        metrics,
        validation,
        early_stopping,
        observe,
    ) = config
    X, Y = make_data(300, sizes[0], sizes[-1], loss, seed)
    X_val, Y_val = make_data(60, sizes[0], sizes[-1], loss, seed + 1) if validation else (None, None)
    network = package.MLP(
        sizes, np.random.default_rng(seed), activation=activation, output_activation=output_activation, dtype=dtype
    )
    if schedule is not None:
        schedule_object = package.Schedule(name=schedule[0], step_size=schedule[1])
    else:
        schedule_object = None
    optimizer = package.make_optimizer(optimizer_name, lr, schedule_object, **options)
    rule = package.EarlyStopping(*early_stopping) if early_stopping else None
    recorder = GradientRecorder()
    history = package.train(
        network,
        optimizer,
        X,
        Y,
        epochs=epochs,
        loss=loss,
        batch_size=batch_size,
        rng=np.random.default_rng(seed + 2),
        metrics=metrics,
        observers=[recorder] if observe else [],
        **validation_and_stopping(package, X_val, Y_val, rule),
    )
    with np.errstate(all="ignore"):  # a diverged network predicts NaN or inf
        result = {"params": network.params.copy(), "predictions": network.predict(X)}
    for key, values in history.metrics.items():
        result[f"history {key}"] = np.array(values)
    if recorder.gradients:
        result["epoch gradients"] = np.stack(recorder.gradients)
    result["stop"] = (
        history.stop_reason,
        history.epochs_run,
        history.best_epoch,
        getattr(history, "restored_epoch", None),
        history.message,
    )
    return result


def compare(reference: dict, current: dict, dtype: str) -> tuple[bool, str]:
    """(equivalent within tolerance, verdict in words)."""
    if reference["stop"] != current["stop"]:
        return False, f"DIFFERENT ending: {reference['stop']} -> {current['stop']}"
    identical, worst = True, 0.0
    for key in reference.keys() & current.keys() - {"stop"}:
        expected, got = reference[key], current[key]
        if expected.shape != got.shape:
            return False, f"DIFFERENT shape of {key}: {expected.shape} -> {got.shape}"
        # A diverged run's weights may hold NaN or inf: the same non-finite value in the same place counts as equal.
        same = (expected == got) | (np.isnan(expected) & np.isnan(got))
        identical &= bool(same.all())
        finite = np.isfinite(expected)
        if not np.array_equal(finite | same, np.ones_like(finite)):
            worst = math.inf  # a non-finite value where the other engine has another
            continue
        scale = max(float(np.max(np.abs(expected[finite]), initial=0.0)), np.finfo(expected.dtype).tiny)
        worst = max(worst, float(np.max(np.abs(expected[~same] - got[~same]), initial=0.0)) / scale)
    close = worst <= TOLERANCE[dtype]
    verdict = (
        "bit-identical"
        if identical
        else f"round-off ({worst:.1e} relative)"
        if close
        else f"DIFFERENT ({worst:.1e} relative)"
    )
    if reference.keys() != current.keys():
        # A deliberate change of what is reported is not a performance change: say so, and fail.
        added = sorted(current.keys() - reference.keys())
        removed = sorted(reference.keys() - current.keys())
        return False, f"DIFFERENT results reported (added {added}, removed {removed}); shared ones {verdict}"
    return close, verdict


def gradient_checks() -> list[tuple[str, float]]:
    results = []
    pairs = [(a, "sigmoid", "mse") for a in ("sigmoid", "tanh", "relu", "leaky_relu", "identity")]
    pairs += [("sigmoid", out, "mse") for out in ("tanh", "identity", "softmax", "relu")]
    pairs += [("tanh", "softmax", "cross_entropy"), ("sigmoid", "sigmoid", "binary_cross_entropy")]
    for hidden, output, loss in pairs:
        X, Y = make_data(7, 4, 3, loss, seed=3)
        network = engine.MLP([4, 5, 3], np.random.default_rng(3), activation=hidden, output_activation=output)
        check = engine.gradient_check(network, X, Y, loss)
        results.append((f"{hidden}/{output}/{loss}", check.max_relative_error))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default=DEFAULT_REFERENCE, help="git commit of the reference engine")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        reference_package = import_reference(args.reference, Path(directory))
        ok = True
        print(f"working tree vs engine at {args.reference}:")
        for config in CONFIGS:
            close, verdict = compare(train_one(reference_package, config), train_one(engine, config), config[9])
            ok &= close
            print(f"  {config[0]:40s} {config[9]}: {verdict}")
    print("gradient checks (max relative error, must be < 1e-6):")
    for name, error in gradient_checks():
        ok &= error < GRADIENT_CHECK_TOLERANCE
        print(f"  {name:40s} {error:.2e}" + ("" if error < GRADIENT_CHECK_TOLERANCE else "  FAIL"))
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
