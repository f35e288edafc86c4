"""Stacked training (engine.train_stacked): every member's history, reports and final weights bit
for bit those of ``train`` on that member alone, whatever stops it; refusals of members that
cannot stack."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pytest

import engine
from engine.losses import FUSED_OUTPUT_DELTAS, LOSSES, STACKED_FUSED_OUTPUT_DELTAS, STACKED_LOSSES

# ---------------------------------------------------------------------------------------------
# Lone runs against a stacked run
# ---------------------------------------------------------------------------------------------


class Recorder(engine.Observer):
    """Keeps copies of everything it is told (report arrays are live buffers); may stop training
    after ``stop_after`` epochs, as a pruner does."""

    def __init__(self, wants_gradients: bool = True, stop_after: int | None = None) -> None:
        self.wants_gradients = wants_gradients
        self.stop_after = stop_after
        self.events: list[object] = []

    def on_train_begin(self, network: engine.MLP) -> None:
        self.events.append(("begin", network.params.copy()))

    def on_epoch_end(self, report: engine.EpochReport) -> None:
        arrays = [report.weights, report.biases, report.grad_weights or [], report.grad_biases or []]
        self.events.append(
            ("epoch", report.epoch, report.lr, dict(report.train), report.validation and dict(report.validation))
        )
        self.events.append([array.copy() for group in arrays for array in group])

    def on_train_end(self, history: engine.History) -> None:
        self.events.append(("end", history.epochs_run, history.stop_reason))

    def stop_training(self) -> tuple[str, str] | None:
        epochs = sum(1 for event in self.events if isinstance(event, tuple) and event[0] == "epoch")
        if self.stop_after is not None and epochs >= self.stop_after:
            return "pruned", f"pruned after {epochs} epochs"
        return None


@dataclass
class Member:
    """One member: the seed of its initial weights and of its shuffles, its optimizer, its
    stopping rules and when its observer stops it."""

    seed: int
    optimizer: Callable[[], engine.Optimizer]
    stopping: engine.StoppingRules | None = None
    stop_after: int | None = None


@dataclass
class Case:
    sizes: list[int]
    members: list[Member]
    activation: str = "sigmoid"
    output_activation: str = "sigmoid"
    loss: str = "mse"
    dtype: str = "float64"
    epochs: int = 6
    batch_size: int | None = None
    n_samples: int = 40
    metrics: tuple[str, ...] = ()
    validation: bool = False
    init: str = "xavier_uniform"
    data_scale: float = 1.0
    val_scale: float = 1.0


def make_data(n: int, n_inputs: int, n_outputs: int, loss: str, seed: int, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    X = scale * rng.standard_normal((n, n_inputs))
    if loss == "cross_entropy":
        Y = np.eye(n_outputs)[rng.integers(0, n_outputs, n)]
    elif loss == "binary_cross_entropy":
        Y = (rng.uniform(size=(n, n_outputs)) > 0.5).astype(float)
    else:
        Y = rng.uniform(0.1, 0.9, size=(n, n_outputs))
    return X, Y


@dataclass
class Outcome:
    params: np.ndarray
    history: engine.History
    events: list[object]
    rng_state: object


def _setup(case: Case):
    X, Y = make_data(case.n_samples, case.sizes[0], case.sizes[-1], case.loss, 100, case.data_scale)
    validation = None
    if case.validation:
        validation = engine.Validation(*make_data(15, case.sizes[0], case.sizes[-1], case.loss, 101, case.val_scale))
    networks = [
        engine.MLP(
            case.sizes,
            np.random.default_rng(member.seed),
            activation=case.activation,
            output_activation=case.output_activation,
            dtype=case.dtype,
            init=case.init,
        )
        for member in case.members
    ]
    rngs = [np.random.default_rng(1000 + member.seed) for member in case.members]
    recorders = [Recorder(stop_after=member.stop_after) for member in case.members]
    settings = {
        "epochs": case.epochs,
        "loss": case.loss,
        "batch_size": case.batch_size,
        "validation": validation,
        "metrics": case.metrics,
    }
    return X, Y, networks, rngs, recorders, settings


def lone_runs(case: Case, stop_requested: Callable[[], Callable[[], object]] | None = None) -> list[Outcome]:
    """Each member trained alone by ``train``."""
    X, Y, networks, rngs, recorders, settings = _setup(case)
    outcomes = []
    for member, network, rng, recorder in zip(case.members, networks, rngs, recorders):
        history = engine.train(
            network,
            member.optimizer(),
            X,
            Y,
            rng=rng,
            stopping=member.stopping,
            observers=[recorder],
            stop_requested=None if stop_requested is None else stop_requested(),
            **settings,
        )
        outcomes.append(Outcome(network.params.copy(), history, recorder.events, rng.bit_generator.state))
    return outcomes


def stacked_run(case: Case, stop_requested: Callable[[], object] | None = None) -> list[Outcome]:
    """Every member trained at once by ``train_stacked``."""
    X, Y, networks, rngs, recorders, settings = _setup(case)
    histories = engine.train_stacked(
        networks,
        [member.optimizer() for member in case.members],
        X,
        Y,
        rngs=rngs,
        stopping=[member.stopping for member in case.members],
        observers=[[recorder] for recorder in recorders],
        stop_requested=stop_requested,
        **settings,
    )
    return [
        Outcome(network.params.copy(), history, recorder.events, rng.bit_generator.state)
        for network, history, recorder, rng in zip(networks, histories, recorders, rngs)
    ]


def _same(a: object, b: object) -> bool:
    """Equal, arrays bit for bit (NaN where NaN), containers element by element."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b, equal_nan=True)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    return a == b or (a != a and b != b)


def assert_members_identical(lone: Sequence[Outcome], stacked: Sequence[Outcome]) -> None:
    assert len(lone) == len(stacked)
    for index, (alone, together) in enumerate(zip(lone, stacked)):
        where = f"member {index}"
        assert _same(vars(together.history), vars(alone.history)), f"{where}: {together.history} != {alone.history}"
        assert together.params.dtype == alone.params.dtype
        assert np.array_equal(together.params, alone.params, equal_nan=True), f"{where}: final weights differ"
        assert len(together.events) == len(alone.events), f"{where}: {len(together.events)} != {len(alone.events)}"
        for number, (got, expected) in enumerate(zip(together.events, alone.events)):
            assert _same(got, expected), f"{where}, observer event {number}: {got} != {expected}"
        assert together.rng_state == alone.rng_state, f"{where}: the generator drew differently"


def check(case: Case) -> list[Outcome]:
    """Train every member alone and all stacked; assert they agree bit for bit."""
    lone = lone_runs(case)
    stacked = stacked_run(case)
    assert_members_identical(lone, stacked)
    return lone


def gd(lr: float, **schedule) -> Callable[[], engine.Optimizer]:
    return lambda: engine.make_optimizer("gd", lr, engine.Schedule(**schedule) if schedule else None)


# ---------------------------------------------------------------------------------------------
# Bit for bit, member by member
# ---------------------------------------------------------------------------------------------

OPTIMIZER_MEMBERS = {
    "gd": [Member(1, gd(0.5)), Member(2, gd(1.5)), Member(3, gd(0.05))],
    "momentum": [
        Member(1, lambda: engine.make_optimizer("momentum", 0.1, momentum=0.9)),
        Member(2, lambda: engine.make_optimizer("momentum", 0.3, momentum=0.5)),
        Member(3, lambda: engine.make_optimizer("momentum", 0.02, momentum=0.0)),
        Member(4, lambda: engine.make_optimizer("momentum", 0.7, momentum=0.99)),
    ],
    "nesterov": [
        Member(1, lambda: engine.make_optimizer("nesterov", 0.1, momentum=0.8)),
        Member(2, lambda: engine.make_optimizer("nesterov", 0.4, momentum=0.3)),
        Member(5, lambda: engine.make_optimizer("nesterov", 0.05, momentum=0.95)),
    ],
    "adam": [
        Member(1, lambda: engine.make_optimizer("adam", 0.01)),
        Member(2, lambda: engine.make_optimizer("adam", 0.05, beta1=0.8, beta2=0.99, eps=1e-6)),
        Member(3, lambda: engine.make_optimizer("adam", 0.002, beta1=0.95, beta2=0.9999, eps=1e-3)),
        Member(4, lambda: engine.make_optimizer("adam", 0.1, beta1=0.0, beta2=0.5)),
        Member(5, lambda: engine.make_optimizer("adam", 0.01)),
    ],
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("batch_size", [None, 16, 7], ids=["full-batch", "batches-of-16", "batches-of-7"])
@pytest.mark.parametrize("optimizer", list(OPTIMIZER_MEMBERS))
def test_every_optimizer_trains_each_member_as_alone(optimizer: str, batch_size: int | None, dtype: str) -> None:
    case = Case(
        [3, 9, 2],
        OPTIMIZER_MEMBERS[optimizer],
        activation="tanh",
        dtype=dtype,
        batch_size=batch_size,
        metrics=("mse", "accuracy"),
        validation=True,
    )
    lone = check(case)
    assert all(outcome.history.epochs_run == 6 for outcome in lone)
    # The members really differ: otherwise equality would prove little.
    assert len({outcome.params.tobytes() for outcome in lone}) == len(lone)


ACTIVATION_CASES = [
    ("sigmoid", "sigmoid", "mse"),
    ("tanh", "tanh", "mse"),
    ("relu", "identity", "mse"),
    ("leaky_relu", "identity", "mse"),
    ("identity", "tanh", "mse"),
    ("sigmoid", "relu", "mse"),
    ("leaky_relu", "softmax", "mse"),
    ("tanh", "softmax", "cross_entropy"),
    ("relu", "sigmoid", "binary_cross_entropy"),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("batch_size", [None, 8])
@pytest.mark.parametrize(("activation", "output_activation", "loss"), ACTIVATION_CASES)
def test_every_activation_and_loss_trains_each_member_as_alone(
    activation: str, output_activation: str, loss: str, batch_size: int | None, dtype: str
) -> None:
    members = [
        Member(11, lambda: engine.make_optimizer("momentum", 0.2, momentum=0.5)),
        Member(12, lambda: engine.make_optimizer("momentum", 0.05, momentum=0.9)),
        Member(13, lambda: engine.make_optimizer("momentum", 0.5, momentum=0.1)),
    ]
    case = Case(
        [4, 7, 5, 3],
        members,
        activation=activation,
        output_activation=output_activation,
        loss=loss,
        dtype=dtype,
        batch_size=batch_size,
        metrics=("accuracy", "mse"),
        validation=True,
        init="he_normal",
    )
    check(case)


SCHEDULE_MEMBERS = {
    "constant": [{}, {}, {}],
    "step": [{"step_size": 2, "gamma": 0.5}, {"step_size": 1, "gamma": 0.9}, {"step_size": 3, "gamma": 0.1}],
    "exponential": [{"gamma": 0.7}, {"gamma": 0.95}, {"gamma": 0.3}],
    "cosine": [{"min_lr": 0.0}, {"min_lr": 0.01}, {"min_lr": 0.2}],
    "mixed": [{"name": "cosine", "min_lr": 0.05}, {"name": "step", "step_size": 2}, {}],
}


@pytest.mark.parametrize("optimizer", ["gd", "adam"])
@pytest.mark.parametrize("schedule", list(SCHEDULE_MEMBERS))
def test_every_schedule_gives_each_member_its_own_rates(schedule: str, optimizer: str) -> None:
    def make(lr: float, values: dict) -> Callable[[], engine.Optimizer]:
        values = {"name": schedule, **values} if schedule != "mixed" else values
        return lambda: engine.make_optimizer(optimizer, lr, engine.Schedule(**values))

    lrs = (0.9, 0.3, 1.7) if optimizer == "gd" else (0.01, 0.003, 0.02)
    members = [Member(20 + i, make(lr, values)) for i, (lr, values) in enumerate(zip(lrs, SCHEDULE_MEMBERS[schedule]))]
    lone = check(Case([2, 6, 1], members, epochs=7, batch_size=9))
    rates = [
        [event[2] for event in outcome.events if isinstance(event, tuple) and event[0] == "epoch"] for outcome in lone
    ]
    assert len({tuple(member_rates) for member_rates in rates}) == 3


def test_xor_members_of_a_sweep_each_train_as_alone() -> None:
    # The benchmark's case: 2-8-1 sigmoid networks, mse, gd, full batch, lr values x seeds.
    X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    Y = np.array([[0.0], [1.0], [1.0], [0.0]])
    settings = [(lr, seed) for lr in (0.5, 2.0, 8.0) for seed in (0, 1)]
    alone = []
    for lr, seed in settings:
        network = engine.MLP([2, 8, 1], np.random.default_rng(seed))
        history = engine.train(network, engine.make_optimizer("gd", lr), X, Y, epochs=300)
        alone.append((network.params, history))
    networks = [engine.MLP([2, 8, 1], np.random.default_rng(seed)) for _, seed in settings]
    histories = engine.train_stacked(
        networks, [engine.make_optimizer("gd", lr) for lr, _ in settings], X, Y, epochs=300
    )
    for (params, history), network, together in zip(alone, networks, histories):
        assert np.array_equal(network.params, params)
        assert vars(together) == vars(history)


def test_a_wide_network_whose_products_blas_may_split_between_threads() -> None:
    members = [Member(1, gd(0.1)), Member(2, gd(0.3)), Member(3, gd(0.03))]
    case = Case([300, 96, 10], members, epochs=2, batch_size=128, n_samples=300, metrics=("accuracy",))
    check(replace(case, loss="cross_entropy", output_activation="softmax"))


def test_a_single_member_stack_is_train() -> None:
    check(Case([3, 4, 2], [Member(7, gd(0.4))], batch_size=6, metrics=("mse",), validation=True))


def test_a_stack_learns() -> None:
    # Not only equal to train: a stack of converging members ends with low losses.
    X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    Y = np.array([[0.0], [1.0], [1.0], [0.0]])
    networks = [engine.MLP([2, 4, 1], np.random.default_rng(seed), init="xavier_normal") for seed in (3, 4)]
    histories = engine.train_stacked(networks, [engine.make_optimizer("gd", 5.0)] * 2, X, Y, epochs=2000)
    assert all(history.metrics["train_loss"][-1] < 0.01 for history in histories)


def test_the_stacked_loss_functions_give_each_member_its_lone_value_and_gradient() -> None:
    rng = np.random.default_rng(0)
    for dtype in (np.float64, np.float32):
        a = rng.uniform(0.01, 0.99, size=(4, 13, 3)).astype(dtype)
        a_softmax = (a / a.sum(axis=-1, keepdims=True)).astype(dtype)
        y = np.eye(3, dtype=dtype)[rng.integers(0, 3, size=13)]
        pairs = [(LOSSES[name], STACKED_LOSSES[name], name) for name in LOSSES]
        pairs += [(FUSED_OUTPUT_DELTAS[key], STACKED_FUSED_OUTPUT_DELTAS[key], key) for key in FUSED_OUTPUT_DELTAS]
        assert len(pairs) == len(STACKED_LOSSES) + len(STACKED_FUSED_OUTPUT_DELTAS)
        for lone, stacked, name in pairs:
            outputs = a_softmax if "softmax" in name or name == "cross_entropy" else a
            for targets in (y, np.stack([np.roll(y, shift, axis=0) for shift in range(4)])):
                out = np.empty_like(outputs)
                values = stacked(outputs, targets, out)
                for member in range(4):
                    alone = np.empty_like(outputs[member])
                    value = lone(outputs[member], targets if targets.ndim == 2 else targets[member], alone)
                    assert values[member] == value, name
                    assert np.array_equal(out[member], alone), name


# ---------------------------------------------------------------------------------------------
# Members that stop: each where train stops it, the others unchanged
# ---------------------------------------------------------------------------------------------


def _stops(lone: Sequence[Outcome]) -> list[tuple[str, int]]:
    return [(outcome.history.stop_reason, outcome.history.epochs_run) for outcome in lone]


@pytest.mark.parametrize(("batch_size", "later_lr"), [(None, 3.0), (10, 0.5)])
def test_a_member_that_overflows_stops_diverged_where_train_stops_it(batch_size: int | None, later_lr: float) -> None:
    no_growth_check = engine.StoppingRules(divergence_factor=0.0)  # let them overflow
    members = [
        Member(1, gd(0.01)),
        Member(2, gd(1e3), no_growth_check),
        Member(3, gd(0.03)),
        Member(4, gd(later_lr), no_growth_check),
    ]
    case = Case([2, 8, 1], members, activation="identity", output_activation="identity", epochs=60)
    lone = check(replace(case, batch_size=batch_size, metrics=("mse",)))
    stops = _stops(lone)
    assert stops[0] == ("completed", 60) and stops[2] == ("completed", 60)
    assert stops[1][0] == "diverged" and stops[3][0] == "diverged" and stops[1][1] < stops[3][1] < 60
    assert re.search(r"is (inf|nan)|a weight is not finite", lone[1].history.message)


def test_a_member_whose_loss_grows_past_its_factor_stops_diverged() -> None:
    members = [
        Member(1, gd(0.05)),
        Member(2, gd(2.0), engine.StoppingRules(divergence_factor=10.0)),
        Member(3, gd(2.0), engine.StoppingRules(divergence_factor=1e6)),
    ]
    lone = check(Case([1, 8, 1], members, activation="relu", output_activation="identity", epochs=40))
    assert lone[0].history.stop_reason == "completed"
    assert "more than 10 times its first value" in lone[1].history.message
    assert lone[1].history.epochs_run < lone[2].history.epochs_run


def test_a_member_whose_validation_loss_overflows_stops_diverged() -> None:
    members = [Member(1, gd(0.01)), Member(2, gd(0.6), engine.StoppingRules(divergence_factor=0.0)), Member(3, gd(0.1))]
    case = Case([2, 8, 1], members, activation="identity", output_activation="identity", epochs=100)
    lone = check(replace(case, validation=True, val_scale=1e10))  # the validation loss overflows first
    assert lone[0].history.stop_reason == lone[2].history.stop_reason == "completed"
    assert lone[1].history.stop_reason == "diverged" and "val_mse is inf" in lone[1].history.message


def test_a_member_that_saturates_stops_diverged_after_its_own_patience() -> None:
    members = [
        Member(1, gd(1.0), engine.StoppingRules(saturation_patience=5)),
        Member(2, gd(1e4), engine.StoppingRules(saturation_patience=5)),
        Member(3, gd(1e4), engine.StoppingRules(saturation_patience=9)),
        Member(4, gd(1e4), engine.StoppingRules(saturation_patience=0)),
    ]
    lone = check(Case([2, 4, 1], members, epochs=60, n_samples=4))
    assert [outcome.history.stop_reason for outcome in lone] == ["completed", "diverged", "diverged", "completed"]
    assert "saturated" in lone[1].history.message
    assert lone[1].history.epochs_run < lone[2].history.epochs_run


@pytest.mark.parametrize("batch_size", [None, 12])
def test_members_stop_early_each_at_its_own_patience_and_restore_their_best_weights(batch_size: int | None) -> None:
    def rules(patience: int, restore: bool) -> engine.StoppingRules:
        return engine.StoppingRules(
            early_stopping=engine.EarlyStopping(patience=patience, restore_best_weights=restore)
        )

    members = [
        Member(1, gd(3.0), rules(2, True)),
        Member(2, gd(0.01), rules(3, False)),
        Member(3, gd(6.0), rules(1, True)),
        Member(4, gd(4.0), rules(4, False)),
    ]
    case = Case([3, 12, 2], members, activation="tanh", epochs=80, batch_size=batch_size, validation=True)
    lone = check(replace(case, n_samples=30))
    stops = _stops(lone)
    assert any(reason == "early_stopping" for reason, _ in stops), stops
    assert len({epochs for _, epochs in stops}) > 1, stops
    assert any(outcome.history.restored_epoch is not None for outcome in lone)


STOPPING_OPTIMIZERS = {
    "gd": lambda lr, option: engine.make_optimizer("gd", lr),
    "momentum": lambda lr, option: engine.make_optimizer("momentum", lr / 4, momentum=option),
    "adam": lambda lr, option: engine.make_optimizer("adam", lr / 20, beta1=option),
}


@pytest.mark.parametrize("optimizer", list(STOPPING_OPTIMIZERS))
def test_a_member_stopped_by_its_observer_leaves_the_others_training(optimizer: str) -> None:
    # The members that stay keep their optimizer state when the stack loses one.
    def make(lr: float, option: float) -> Callable[[], engine.Optimizer]:
        return lambda: STOPPING_OPTIMIZERS[optimizer](lr, option)

    members = [
        Member(1, make(0.5, 0.9), stop_after=3),
        Member(2, make(0.2, 0.5)),
        Member(3, make(0.9, 0.7), stop_after=1),
        Member(4, make(0.4, 0.0)),
    ]
    lone = check(Case([3, 5, 2], members, epochs=8, batch_size=11, validation=True, metrics=("mse",)))
    assert _stops(lone) == [("pruned", 3), ("completed", 8), ("pruned", 1), ("completed", 8)]
    assert lone[0].history.message == "pruned after 3 epochs"


class Shrinker(Recorder):
    """Halves its network's weights after every second epoch: what an observer changes in the
    network it was given is trained on, alone and stacked."""

    def on_train_begin(self, network: engine.MLP) -> None:
        super().on_train_begin(network)
        self.network = network

    def on_epoch_end(self, report: engine.EpochReport) -> None:
        super().on_epoch_end(report)
        if report.epoch % 2:
            self.network.params *= 0.5


def test_what_an_observer_changes_in_its_network_is_trained_on() -> None:
    X, Y = make_data(30, 3, 2, "mse", 0)
    outcomes = []
    for stacked in (False, True):
        networks = [engine.MLP([3, 6, 2], np.random.default_rng(seed)) for seed in range(3)]
        optimizers = [engine.make_optimizer("momentum", lr) for lr in (0.1, 0.3, 0.5)]
        observers = [Shrinker(), Recorder(), Shrinker()]
        if stacked:
            engine.train_stacked(networks, optimizers, X, Y, epochs=6, observers=[[each] for each in observers])
        else:
            for network, optimizer, observer in zip(networks, optimizers, observers):
                engine.train(network, optimizer, X, Y, epochs=6, observers=[observer])
        outcomes.append(([network.params.copy() for network in networks], [each.events for each in observers]))
    assert _same(outcomes[0], outcomes[1])


def test_members_stopping_in_the_same_epoch_and_every_member_stopping() -> None:
    members = [Member(1, gd(0.5), stop_after=2), Member(2, gd(0.2), stop_after=2), Member(3, gd(0.9), stop_after=4)]
    lone = check(Case([3, 5, 2], members, epochs=8))
    assert _stops(lone) == [("pruned", 2), ("pruned", 2), ("pruned", 4)]


# ---------------------------------------------------------------------------------------------
# Interruption: every member stops after the same update
# ---------------------------------------------------------------------------------------------


def _stop_at(update: int) -> Callable[[], bool]:
    calls = []

    def stop_requested() -> bool:
        calls.append(True)
        return len(calls) == update

    return stop_requested


@pytest.mark.parametrize(("batch_size", "update"), [(None, 4), (10, 11), (10, 1), (7, 13)])
def test_a_stop_request_stops_every_member_after_the_same_update(batch_size: int | None, update: int) -> None:
    members = [
        Member(1, lambda: engine.make_optimizer("adam", 0.01)),
        Member(2, lambda: engine.make_optimizer("adam", 0.1)),
    ]
    members.append(Member(3, lambda: engine.make_optimizer("adam", 0.03), stop_after=1))
    case = Case([2, 6, 1], members, epochs=10, batch_size=batch_size, validation=True)
    lone = lone_runs(case, stop_requested=lambda: _stop_at(update))
    stacked = stacked_run(case, stop_requested=_stop_at(update))
    assert_members_identical(lone, stacked)
    batches = 1 if batch_size is None else -(-case.n_samples // batch_size)
    epoch = (update - 1) // batches
    for outcome in stacked[:2]:
        assert outcome.history.stop_reason == "interrupted"
        assert outcome.history.message == f"interrupted in epoch {epoch}, after {epoch} complete epoch(s)"
    # The member its observer stopped after the first epoch left before the request.
    expected = ("pruned", 1) if epoch >= 1 else ("interrupted", 0)
    assert (stacked[2].history.stop_reason, stacked[2].history.epochs_run) == expected


def test_a_stop_request_is_asked_once_per_update_of_the_stack() -> None:
    calls = []
    networks = [engine.MLP([2, 3, 1], np.random.default_rng(seed)) for seed in range(3)]
    X, Y = make_data(20, 2, 1, "mse", 0)
    engine.train_stacked(
        networks,
        [engine.make_optimizer("gd", 0.1) for _ in networks],
        X,
        Y,
        epochs=3,
        batch_size=8,
        rngs=[np.random.default_rng(seed) for seed in range(3)],
        stop_requested=lambda: calls.append(True),
    )
    assert len(calls) == 3 * 3


# ---------------------------------------------------------------------------------------------
# What cannot stack is refused, naming what differs
# ---------------------------------------------------------------------------------------------


def _refused(match: str, networks=None, optimizers=None, **options) -> None:
    X, Y = make_data(10, 3, 2, "mse", 0)
    networks = networks or [engine.MLP([3, 4, 2], np.random.default_rng(seed)) for seed in range(2)]
    optimizers = optimizers or [engine.make_optimizer("gd", 0.1) for _ in networks]
    options.setdefault("epochs", 2)
    with pytest.raises(ValueError, match=match):
        engine.train_stacked(networks, optimizers, X, Y, **options)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"sizes": [3, 5, 2]}, r"^networks\[1\] has sizes=\[3, 5, 2\] but networks\[0\] has sizes=\[3, 4, 2\]: "),
        ({"activation": "tanh"}, r"^networks\[1\] has activation='tanh' but networks\[0\] has activation='sigmoid': "),
        (
            {"output_activation": "identity"},
            r"output_activation='identity' but networks\[0\] has output_activation='sigmoid': ",
        ),
        ({"dtype": "float32"}, r"^networks\[1\] has dtype='float32' but networks\[0\] has dtype='float64': "),
    ],
)
def test_networks_of_different_architectures_or_dtypes_are_refused(options: dict, match: str) -> None:
    first = engine.MLP([3, 4, 2], np.random.default_rng(0))
    settings = {"sizes": [3, 4, 2], **options}
    other = engine.MLP(settings.pop("sizes"), np.random.default_rng(1), **settings)
    _refused(match + "the networks of a stack must share their architecture", networks=[first, other])


def test_optimizers_of_different_kinds_are_refused() -> None:
    optimizers = [engine.make_optimizer("momentum", 0.1), engine.make_optimizer("nesterov", 0.1)]
    _refused(r"^optimizers\[1\] is Nesterov but optimizers\[0\] is Momentum: .* of one kind", optimizers=optimizers)


def test_one_network_twice_is_refused() -> None:
    network = engine.MLP([3, 4, 2], np.random.default_rng(0))
    _refused(r"^networks\[1\] is networks\[0\]: each member trains a network of its own", networks=[network, network])


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"optimizers": [engine.make_optimizer("gd", 0.1)]}, r"^optimizers has 1 entries for 2 networks"),
        ({"batch_size": 4}, r"^rngs=None is not allowed: mini-batch training .* one np\.random\.Generator per network"),
        ({"batch_size": 4, "rngs": [np.random.default_rng(0)]}, r"^rngs has 1 entries for 2 networks"),
        ({"observers": [Recorder()]}, r"^observers has 1 entries for 2 networks"),
        ({"observers": [Recorder(), Recorder()]}, r"^observers\[0\]=.* one sequence of observers per network"),
        ({"stopping": [engine.StoppingRules()]}, r"^stopping has 1 entries for 2 networks"),
        ({"epochs": 0}, r"^epochs=0 is not allowed"),
        ({"loss": "cross_entropy"}, r"^loss='cross_entropy' needs output_activation='softmax'"),
    ],
)
def test_arguments_that_do_not_give_one_per_member_are_refused(options: dict, match: str) -> None:
    _refused(match, **options)


def test_a_shared_generator_is_refused_for_mini_batches() -> None:
    rng = np.random.default_rng(0)
    _refused(
        r"^rngs\[1\] is rngs\[0\]: each member shuffles with a generator of its own", batch_size=4, rngs=[rng, rng]
    )


def test_stopping_rules_of_different_kinds_are_refused() -> None:
    X_val, Y_val = make_data(5, 3, 2, "mse", 1)
    stopping = [engine.StoppingRules(), engine.StoppingRules(early_stopping=engine.EarlyStopping(patience=3))]
    _refused(
        r"^stopping\[1\] has early stopping but stopping\[0\] has none: .* same stopping rules",
        stopping=stopping,
        validation=(X_val, Y_val),
    )
