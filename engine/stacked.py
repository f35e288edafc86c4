"""Stacked training: ``M`` networks of one architecture trained at once, each exactly as ``train``
trains it alone.

The members' parameters are stacked on a leading axis, ``(M, n_params)``, and each epoch runs once
for all of them, with the single-network code: the forward pass and backpropagation are ``MLP``'s
own on a ``StackedMLP`` (np.matmul multiplies each member's slice by the BLAS call it gets alone,
element-wise functions and reductions work slice by slice), the updates are the optimizers' own
``step`` with the members' settings as columns (``StackedOptimizer``), the epoch is ``train``'s
(``FullBatch``, ``MiniBatches``), the stopping rules are each member's own. A sweep of small
networks costs one pass of NumPy calls instead of ``M``.

Each member keeps its own network (its initial weights), optimizer settings (learning rate and
schedule, momentum, Adam's betas and eps), generator (its mini-batches are those ``train`` draws
from it), values of the stopping rules, observers and History. The members share, and must, the
architecture and dtype, the optimizer's kind and the kinds of stopping rules; loss, data, batch
size, epochs and metrics are single arguments.

Every member's history, reports and final weights are bit for bit those ``train`` gives it alone
(tests/test_engine_stacked.py). A member that diverges, stops early or is stopped by an observer
leaves the stack after the epoch where ``train`` would have stopped it, with the History
``train`` gives it; the others go on. A stop request stops every member after the same update.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar, cast

import numpy as np
import numpy.typing as npt

from engine.limits import check_limit
from engine.metrics import StackedMetricSums, check_metrics, evaluate
from engine.network import MLP, StackedMLP
from engine.optimizers import Optimizer, StackedOptimizer
from engine.stopping import Divergence, EarlyStoppingWatch, Growth, StackedSaturation, StoppingRules
from engine.training import (
    EpochReport,
    FullBatch,
    History,
    MiniBatches,
    Observer,
    Validation,
    check_data,
    check_stopping,
    empty_history,
    finish_history,
    notify,
    stop_history,
    validation_data,
)

# What every network of a stack must share with the first, besides its class.
SHARED_ARCHITECTURE = ("sizes", "activation", "output_activation", "dtype")

T = TypeVar("T")


def train_stacked(
    networks: Sequence[MLP],
    optimizers: Sequence[Optimizer],
    X: npt.ArrayLike,
    Y: npt.ArrayLike,
    *,
    epochs: int,
    loss: str = "mse",
    batch_size: int | None = None,
    rngs: Sequence[np.random.Generator] | None = None,
    validation: Validation | tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    metrics: Sequence[str] = (),
    stopping: StoppingRules | Sequence[StoppingRules] | None = None,
    observers: Sequence[Sequence[Observer]] = (),
    stop_requested: Callable[[], object] | None = None,
) -> list[History]:
    """Train ``networks`` in place, each with its optimizer, all at once; return their histories.

    Member ``m`` is ``networks[m]`` with ``optimizers[m]``, ``rngs[m]``, ``stopping[m]`` and
    ``observers[m]``, and its History is what ``train(networks[m], optimizers[m], X, Y, ...,
    rng=rngs[m], stopping=stopping[m], observers=observers[m])`` returns, bit for bit, as are its
    final weights and what its observers receive.

    Parameters
    ----------
    networks : sequence of MLP
        Distinct networks of one architecture (sizes, activations) and dtype; at least one.
    optimizers : sequence of Optimizer
        One per network, all of one class; their settings and schedules may differ. Left as they
        are (the optimizer state of stacked training is its own).
    X, Y, epochs, loss, batch_size, validation, metrics, stop_requested
        As for ``train``, for every member. ``stop_requested`` is asked after every update of the
        stack: once it returns something true, every member stops there as ``'interrupted'``.
    rngs : sequence of np.random.Generator, optional
        Mini-batches: one distinct generator per network, which reshuffles its rows every epoch
        as in ``train``. Unused for full-batch training.
    stopping : StoppingRules or sequence of StoppingRules, optional
        One for all, or one per network; their values may differ, not which rules they turn on
        (early stopping for all or none). ``None`` is ``StoppingRules()``.
    observers : sequence of sequences of Observer
        Empty, or one sequence of observers per network, told of its epochs as by ``train``
        (the gradients they receive are views of the stacked buffers).

    Returns
    -------
    list of History, one per network, in order.
    """
    check_limit("epochs", epochs)
    run = _Run.checked(networks, X, Y, loss, metrics, batch_size, validation, stop_requested)
    members = _members(networks, optimizers, rngs, stopping, observers, run)
    template = members[0].network
    # Refuses optimizers of different kinds, before any observer hears of training.
    optimizer = StackedOptimizer([member.optimizer for member in members], template.n_params, template.dtype)
    run.wants_gradients = any(observer.wants_gradients for member in members for observer in member.observers)
    for member in members:
        for observer in member.observers:
            observer.on_train_begin(member.network)
    patience = [member.rules.saturation_patience for member in members]
    saturation = StackedSaturation(template.layer_activations, patience, run.loss)
    # The parameters as the observers leave them at the start, as train trains them.
    params = np.stack([member.network.params for member in members])
    stack: _Stack | None = _Stack(members, params, optimizer, saturation, run)
    try:
        # Overflow and NaN are expected when a member diverges, and caught by the checks.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            for epoch in range(epochs):
                assert stack is not None
                stack = _run_epoch(stack, epoch, epochs)
                if stack is None or stack.interrupted:
                    break
    finally:
        if stack is not None:
            stack.sync()
    if stack is not None:
        for position in range(len(stack.members)):
            stack.finish(position)
    return [member.history for member in members]


@dataclass
class _Run:
    """What every member of a run shares: the checked data and settings."""

    X: np.ndarray
    Y: np.ndarray
    loss: str
    metrics: Sequence[str]
    batch_size: int | None  # None: full batch
    validation: tuple[np.ndarray, np.ndarray] | None
    stop_requested: Callable[[], object] | None
    divergence: Divergence
    wants_gradients: bool = False

    @classmethod
    def checked(
        cls,
        networks: Sequence[MLP],
        X: object,
        Y: object,
        loss: str,
        metrics: Sequence[str],
        batch_size: int | None,
        validation: object,
        stop_requested: Callable[[], object] | None,
    ) -> _Run:
        """The run's settings, checked as ``train`` checks them (against the first network)."""
        if isinstance(networks, MLP) or not isinstance(networks, Sequence) or not networks:
            raise ValueError(f"networks={networks!r} is not allowed: it must be a non-empty sequence of engine MLPs")
        first = networks[0]
        if not isinstance(first, MLP) or isinstance(first, StackedMLP):
            raise ValueError(f"networks[0]={first!r} is not allowed: it must be an engine MLP")
        check_metrics(metrics)
        first.output_delta(loss)  # refuses an unknown loss, or one that does not suit the output layer
        X, Y = check_data(first, X, Y, "X", "Y")
        if batch_size is not None:
            check_limit("batch_size", batch_size)
        full_batch = batch_size is None or batch_size >= X.shape[0]
        return cls(
            X,
            Y,
            loss,
            tuple(metrics),
            None if full_batch else batch_size,
            validation_data(first, validation),
            stop_requested,
            Divergence(loss),
        )


@dataclass
class _Member:
    """One network of a stack and what is its own."""

    network: MLP
    optimizer: Optimizer
    rng: np.random.Generator | None
    observers: Sequence[Observer]
    history: History
    rules: StoppingRules
    loss: str
    growth: Growth = field(init=False)
    watch: EarlyStoppingWatch | None = field(init=False)
    reported: bool = field(init=False)  # observers or early stopping: asked after every epoch
    finished: bool = False

    def __post_init__(self) -> None:
        self.growth = Growth(self.rules.divergence_factor, self.loss)
        early_stopping = self.rules.early_stopping
        self.watch = None if early_stopping is None else EarlyStoppingWatch(early_stopping)
        self.reported = bool(self.observers) or self.watch is not None


def _members(
    networks: Sequence[MLP],
    optimizers: Sequence[Optimizer],
    rngs: Sequence[np.random.Generator] | None,
    stopping: StoppingRules | Sequence[StoppingRules] | None,
    observers: Sequence[Sequence[Observer]],
    run: _Run,
) -> list[_Member]:
    """The members, every argument checked: what must be shared is, and each has its own."""
    count = len(networks)
    _check_networks(networks)
    optimizers = _per_member("optimizers", optimizers, count)  # their kinds: StackedOptimizer checks them
    shuffles = _shuffles(rngs, count, run.batch_size is not None)
    rules = _stopping_rules(stopping, count, run.validation is not None)
    observer_lists = _per_member("observers", observers, count) if len(observers) else [()] * count
    for index, group in enumerate(observer_lists):
        if isinstance(group, Observer) or not isinstance(group, Sequence):
            raise ValueError(
                f"observers[{index}]={group!r} is not allowed: "
                "observers must hold one sequence of observers per network"
            )
    names = StackedMetricSums(run.loss, run.metrics).names
    return [
        _Member(
            network,
            optimizer,
            rng,
            group,
            empty_history(names, run.validation is not None),
            rule,
            run.loss,
        )
        for network, optimizer, rng, group, rule in zip(networks, optimizers, shuffles, observer_lists, rules)
    ]


def _check_networks(networks: Sequence[MLP]) -> None:
    first = networks[0]
    for index, network in enumerate(networks):
        if not isinstance(network, MLP) or isinstance(network, StackedMLP):
            raise ValueError(f"networks[{index}]={network!r} is not allowed: it must be an engine MLP")
        for name in SHARED_ARCHITECTURE:
            if getattr(network, name) != getattr(first, name):
                raise ValueError(
                    f"networks[{index}] has {name}={_shown(getattr(network, name))} but networks[0] has "
                    f"{name}={_shown(getattr(first, name))}: the networks of a stack must share their architecture "
                    "(sizes, activation, output_activation) and dtype"
                )
        earlier = next((other for other in range(index) if networks[other] is network), None)
        if earlier is not None:
            raise ValueError(f"networks[{index}] is networks[{earlier}]: each member trains a network of its own")


def _shown(value: object) -> str:
    return repr(value.name) if isinstance(value, np.dtype) else repr(value)


def _per_member(argument: str, values: Sequence[T], count: int) -> list[T]:
    """``values`` as a list, refused unless it has one entry per network."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{argument}={values!r} is not allowed: it must be a sequence with one entry per network")
    if len(values) != count:
        raise ValueError(f"{argument} has {len(values)} entries for {count} networks: it must have one per network")
    return list(values)


def _shuffles(
    rngs: Sequence[np.random.Generator] | None, count: int, mini_batches: bool
) -> list[np.random.Generator | None]:
    """Each member's generator; mini-batches need distinct ones (as ``train`` needs one)."""
    if rngs is None:
        if mini_batches:
            raise ValueError(
                "rngs=None is not allowed: mini-batch training reshuffles every epoch and needs one "
                "np.random.Generator per network"
            )
        return [None] * count
    generators: list[np.random.Generator | None] = list(_per_member("rngs", rngs, count))
    for index, rng in enumerate(generators):
        if mini_batches and not isinstance(rng, np.random.Generator):
            raise ValueError(f"rngs[{index}]={rng!r} is not allowed: it must be an np.random.Generator")
        earlier = next((other for other in range(index) if generators[other] is rng), None)
        if mini_batches and earlier is not None:
            raise ValueError(f"rngs[{index}] is rngs[{earlier}]: each member shuffles with a generator of its own")
    return generators


def _stopping_rules(
    stopping: StoppingRules | Sequence[StoppingRules] | None, count: int, has_validation: bool
) -> list[StoppingRules]:
    """Each member's rules; their values may differ, not which rules they turn on."""
    if stopping is None or isinstance(stopping, StoppingRules):
        rules = [check_stopping(stopping, has_validation)] * count
    else:
        rules = [check_stopping(rule, has_validation) for rule in _per_member("stopping", stopping, count)]
    for index, rule in enumerate(rules):
        if (rule.early_stopping is None) != (rules[0].early_stopping is None):
            with_it, without = (index, 0) if rule.early_stopping is not None else (0, index)
            raise ValueError(
                f"stopping[{with_it}] has early stopping but stopping[{without}] has none: the members of a stack "
                "must turn on the same stopping rules (their values may differ)"
            )
    return rules


class _Shuffles:
    """Each member's own generator, drawing its permutation of the rows every epoch, as it does
    for ``train``: row ``m`` of ``permutation(n)`` is member ``m``'s."""

    def __init__(self, rngs: Sequence[np.random.Generator | None]) -> None:
        self.rngs = [rng for rng in rngs if rng is not None]

    def permutation(self, x: int, /) -> np.ndarray:
        return np.stack([rng.permutation(x) for rng in self.rngs])


def _run_epoch(stack: _Stack, epoch: int, epochs: int) -> _Stack | None:
    """One epoch of every member of ``stack``; the stack of those that go on (None when none
    does), ``stack`` itself when they all do or when a stop was requested."""
    lrs = stack.optimizer.start_epoch(epoch, epochs)
    train_values = stack.updates.run_epoch()
    if train_values is None:
        for member in stack.members:
            stop_history(
                member.history, "interrupted", f"interrupted in epoch {epoch}, after {epoch} complete epoch(s)"
            )
        stack.interrupted = True
        return stack
    train = cast(dict[str, np.ndarray], train_values)
    val, problems = stack.validation_and_divergence(epoch, train)
    for position, problem in problems.items():
        stop_history(stack.members[position].history, "diverged", f"diverged at epoch {epoch}: {problem}")
    stack.record(train, val, problems)
    stopped = list(problems)
    for position in stack.reported:
        if position not in problems and stack.report(position, epoch, lrs, train, val):
            stopped.append(position)
    if not stopped:
        return stack
    stack.sync(stopped)
    for position in sorted(stopped):
        stack.finish(position)
    return stack.without(stopped)


class _Stack:
    """The members still training and their stacked state: parameters, optimizer state, the
    epoch of updates, the validation pass, the saturation counts."""

    def __init__(
        self,
        members: list[_Member],
        params: np.ndarray,
        optimizer: StackedOptimizer,
        saturation: StackedSaturation,
        run: _Run,
    ) -> None:
        self.members, self.params, self.optimizer, self.run = members, params, optimizer, run
        self.saturation = saturation
        self.network = StackedMLP(members[0].network, params)
        output_delta = self.network.output_delta(run.loss)
        sums = StackedMetricSums(run.loss, run.metrics)
        self.updates: FullBatch | MiniBatches
        if run.batch_size is None:
            self.updates = FullBatch(self.network, optimizer, run.X, run.Y, output_delta, sums, run.stop_requested)
        else:
            shuffles = _Shuffles([member.rng for member in members])
            self.updates = MiniBatches(
                self.network, optimizer, run.X, run.Y, output_delta, sums, run.stop_requested, run.batch_size, shuffles
            )
        self.grad_views = self.updates.epoch_gradient(run.wants_gradients)
        self.validate: Callable[[], dict[str, float]] | None = None
        if run.validation is not None:
            X_val, Y_val = run.validation
            workspace = self.network.workspace(X_val.shape[0])
            self.validate = lambda: evaluate(self.network, X_val, Y_val, run.loss, run.metrics, workspace)
        self.limits = np.array([member.growth.limit for member in members])
        self.reported = [position for position, member in enumerate(members) if member.reported]
        self.records = {key: [member.history.metrics[key] for member in members] for key in members[0].history.metrics}
        self.interrupted = False

    def without(self, stopped: Sequence[int]) -> _Stack | None:
        """The stack of the members that go on, each with its parameters and optimizer state."""
        keep = np.array([position for position in range(len(self.members)) if position not in set(stopped)], np.intp)
        if not keep.size:
            return None
        self.saturation.select(keep)
        members = [self.members[position] for position in keep.tolist()]
        return _Stack(members, self.params[keep], self.optimizer.select(keep), self.saturation, self.run)

    def validation_and_divergence(
        self, epoch: int, train: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray] | None, dict[int, str]]:
        """The epoch's validation metrics, and why members diverged (position: problem), as each
        member's ``_EpochChecks.validation_and_divergence`` says it: the checks in the same order,
        each member's own rule asked where a test over all members finds it may fire."""
        problems: dict[int, str] = {}
        divergence = self.run.divergence
        # Divergence.check sums a member's parameters by this same reduction, row by row.
        finite = np.isfinite(np.add.reduce(self.params, axis=1))
        for position in _not_finite(train, finite):
            problem = divergence.check("train", _member_values(train, position), self.params[position])
            if problem is not None:
                problems[position] = problem
        losses = train["loss"]
        # Growth.check sets its limit from the first epoch's loss; later, it fires only above it.
        growing = range(len(self.members)) if epoch == 0 else _positions(losses > self.limits)
        for position in growing:
            if position not in problems:
                problem = self.members[position].growth.check(float(losses[position]))
                if problem is not None:
                    problems[position] = problem
        if epoch == 0:
            self.limits = np.array([member.growth.limit for member in self.members])
        val = None
        if self.validate is not None:
            val = cast(dict[str, np.ndarray], self.validate())
            for position in _not_finite(val, np.ones(len(self.members), bool)):
                problem = divergence.check("val", _member_values(val, position))
                if position not in problems and problem is not None:
                    problems[position] = problem
        for position, problem in self.saturation.check(losses, self.updates.layer_outputs).items():
            problems.setdefault(position, problem)
        return val, problems

    def record(self, train: dict[str, np.ndarray], val: dict[str, np.ndarray] | None, skipped: dict[int, str]) -> None:
        """Append the epoch's metrics to the history of every member not in ``skipped``."""
        kept = None if not skipped else [position not in skipped for position in range(len(self.members))]
        for split, values in (("train", train), ("val", val or {})):
            for name, array in values.items():
                lists, numbers = self.records[f"{split}_{name}"], array.tolist()
                if kept is not None:
                    lists = list(itertools.compress(lists, kept))
                    numbers = list(itertools.compress(numbers, kept))
                # list.append mapped over the members: the loop runs in C, a hundred members cost
                # a few microseconds per metric and epoch.
                collections.deque(map(list.append, lists, numbers), maxlen=0)

    def report(
        self,
        position: int,
        epoch: int,
        lrs: np.ndarray,
        train: dict[str, np.ndarray],
        val: dict[str, np.ndarray] | None,
    ) -> bool:
        """Tell the member at ``position`` its epoch, as ``train`` tells it, and ask its early
        stopping; whether it stops."""
        member = self.members[position]
        history = member.history
        if member.observers:
            network = member.network
            # The member's own network holds the epoch's weights while its observers look (they
            # may keep the network from on_train_begin); what they change there is trained on.
            np.copyto(network.params, self.params[position])
            grad_weights, grad_biases = self.grad_views
            report = EpochReport(
                epoch,
                float(lrs[position]),
                _member_values(train, position),
                None if val is None else _member_values(val, position),
                network.weights,
                network.biases,
                None if grad_weights is None else [gradient[position] for gradient in grad_weights],
                None if grad_biases is None else [gradient[position] for gradient in grad_biases],
            )
            requested = notify(member.observers, report)
            np.copyto(self.params[position], network.params)
            if requested is not None:
                stop_history(history, *requested)
                return True
        if member.watch is None or val is None:
            return False
        problem = member.watch.check(epoch, float(val["loss"][position]), self.params[position])
        if problem is None:
            return False
        stop_history(history, "early_stopping", f"early stopping at epoch {epoch}: {problem}")
        return True

    def sync(self, positions: Sequence[int] | None = None) -> None:
        """Copy the stacked parameters of the members at ``positions`` (all by default) into
        their own networks."""
        for position in range(len(self.members)) if positions is None else positions:
            if not self.members[position].finished:  # its weights may be its best epoch's
                np.copyto(self.members[position].network.params, self.params[position])

    def finish(self, position: int) -> None:
        """End the training of the member at ``position`` (its network synced), as ``train`` ends."""
        member = self.members[position]
        member.finished = True
        history = member.history
        history.epochs_run = len(history.metrics["train_loss"])
        finish_history(history, member.watch, member.network.params)
        for observer in member.observers:
            observer.on_train_end(history)


def _not_finite(values: dict[str, np.ndarray], finite: np.ndarray) -> list[int]:
    """Positions where ``finite`` is false or any of ``values`` is not finite (``finite`` is
    overwritten)."""
    for array in values.values():
        finite &= np.isfinite(array)
    return [] if finite.all() else _positions(~finite)


def _positions(mask: np.ndarray) -> list[int]:
    """The positions where ``mask`` holds."""
    if not mask.any():
        return []
    positions: list[int] = np.flatnonzero(mask).tolist()
    return positions


def _member_values(values: dict[str, np.ndarray], position: int) -> dict[str, float]:
    """One member's metrics, as the float dict ``train`` has for it."""
    return {name: float(array[position]) for name, array in values.items()}
