"""Runs trained as stacks: runs that differ only in their learning rate, optimizer settings,
stopping values and seed, on the same data, trained at once by ``engine.train_stacked``, each
still a run of its own with the history, telemetry, model and status it gets trained alone.

``stack_key`` says which settings must be equal within a stack: all but ``PER_MEMBER`` (the run's
name, and ``seed`` as far as the data it gives are the same: the members of a stack are checked to
have the same data by its fingerprint). ``run_stacks`` trains a batch of runs as few stacks as
that allows and returns each run's outcome, in order: its ``RunResult``, or the error a run alone
would have raised (``TrainingFailed`` for one that diverged). A signal stops every member of a
stack after the same mini-batch, each run ending KILLED, then raises ``Interrupted``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from threadpoolctl import threadpool_limits

from engine import History, Observer, train_stacked
from runner.core.datasets import Dataset
from runner.core.run import build_training, ended
from runner.core.schema import ExperimentConfig
from runner.core.training import RunRequest, RunResult, Training, final_metrics, load_data
from runner.core.validation import settings_dict
from runner.names import flatten
from runner.process import interruption

if TYPE_CHECKING:  # MLflow: imported once a stack is tracked
    from runner.core.tracked import TrackedTraining
    from runner.tracking.metric_sinks import MetricBuffer

# The settings whose values may differ within a stack: each member trains with its own.
PER_MEMBER = (
    "seed",  # its initial weights and mini-batches (its data must be the stack's)
    "optimizer.lr",
    "optimizer.momentum",
    "optimizer.beta1",
    "optimizer.beta2",
    "optimizer.eps",
    "optimizer.schedule.step_size",
    "optimizer.schedule.gamma",
    "optimizer.schedule.min_lr",
    "trainer.early_stopping.patience",
    "trainer.early_stopping.min_delta",
    "tracking.run_name",
)


def stack_key(settings: ExperimentConfig) -> str:
    """What the runs of a stack share: every setting but those of ``PER_MEMBER``."""
    shared = {key: value for key, value in flatten(settings_dict(settings)).items() if key not in PER_MEMBER}
    return json.dumps(shared, sort_keys=True, default=str)


@dataclass
class Member:
    """A run of a stack: what it trains with, and once tracked, its MLflow run."""

    position: int  # in the batch given to run_stacks
    request: RunRequest
    training: Training
    tracked: TrackedTraining | None = None
    observers: list[Observer] = field(default_factory=list)


def run_stacks(requests: Sequence[RunRequest]) -> tuple[list[RunResult | Exception], list[list[int]]]:
    """Train ``requests`` as stacks; return each one's outcome, in order, and the stacks (the
    positions of their members) in the order they trained."""
    outcomes: list[RunResult | Exception | None] = [None] * len(requests)
    stacks: dict[tuple[str, str], list[Member]] = {}
    datasets: dict[str, Dataset] = {}
    for position, request in enumerate(requests):
        interruption.check()
        try:
            dataset = _dataset(request.settings, datasets)
            member = Member(position, request, build_training(request.settings, dataset))
        except Exception as error:  # refused data: this run fails alone, as it would alone
            outcomes[position] = error
            continue
        stacks.setdefault((stack_key(request.settings), dataset.fingerprint()), []).append(member)
    for members in stacks.values():
        for member, outcome in zip(members, _train_stack(members)):
            outcomes[member.position] = outcome
    assert all(outcome is not None for outcome in outcomes)
    return [outcome for outcome in outcomes if outcome is not None], [
        [member.position for member in members] for members in stacks.values()
    ]


def _dataset(settings: ExperimentConfig, loaded: dict[str, Dataset]) -> Dataset:
    """The run's data set, loaded once for the runs that give the same one (the same data set
    settings, and the same seed where the data depend on it)."""
    seed = settings.dataset.seed if settings.dataset.seed is not None else settings.seed
    key = json.dumps([settings_dict(settings)["dataset"], seed], sort_keys=True, default=str)
    if key not in loaded:
        loaded[key] = load_data(settings)
    return loaded[key]


def _train_stack(members: list[Member]) -> list[RunResult | Exception]:
    """One stack: each member's run started (a run that cannot start fails alone), trained at
    once, each run ended as a run trained alone ends."""
    outcomes: dict[int, RunResult | BaseException] = {}
    settings = members[0].request.settings
    shared = _shared_metrics(members)
    started = []
    for member in members:
        try:
            _start(member, shared)
            started.append(member)
        except Exception as error:
            outcomes[member.position] = error
    failure: BaseException | None = None
    histories: list[History] = []
    if started:
        try:
            with threadpool_limits(limits=settings.trainer.blas_threads, user_api="blas"):
                histories = _train(started)
        except BaseException as error:  # a crash or Ctrl-C: every member's run ends with it
            failure = error
    for index, member in enumerate(started):
        outcomes[member.position] = _end(member, histories[index] if failure is None else None, failure)
    if shared is not None:
        shared.sink.close()
    results: list[RunResult | Exception] = []
    for member in members:  # a stop request, Ctrl-C: raised once every member's run has ended
        outcome = outcomes[member.position]
        if not isinstance(outcome, (RunResult, Exception)):
            raise outcome
        results.append(outcome)
    return results


def _shared_metrics(members: list[Member]) -> MetricBuffer | None:
    """One metric buffer for the members' runs on a local SQLite store, so that a flush writes
    every member's values in one transaction; None otherwise (each run its own)."""
    destination = members[0].request.destination
    if destination is None or destination.is_server or len(members) == 1:
        return None
    from mlflow.tracking import MlflowClient  # (lazy: see _start)

    from runner.tracking.metric_sinks import STACK_FLUSH_SIZE, MetricBuffer, open_sink

    sink = open_sink(destination.uri, MlflowClient(destination.uri), lambda call, *a: call(*a), None)
    # A write of many runs' values touches index pages of every run: fewer, larger transactions
    # cost less per value than a lone run's flush size would give.
    return MetricBuffer(sink, min(sink.flush_size * len(members), STACK_FLUSH_SIZE))


def _start(member: Member, shared: MetricBuffer | None) -> None:
    request = member.request
    member.observers = list(request.observers)
    if request.destination is not None:
        from runner.core.tracked import TrackedTraining  # (lazy: an untracked stack never imports MLflow)

        # A member draws its plots only when told to: the sweep's summary plots every member.
        plots = request.settings.tracking.plots is True
        tracked = TrackedTraining(
            request.settings, request.destination, request.parent, request.launch, member.training, shared, plots=plots
        )
        member.tracked = tracked.__enter__()
        member.observers = [*tracked.observers, *member.observers]


def _train(members: list[Member]) -> list[History]:
    first = members[0].training.arguments
    return train_stacked(
        [member.training.network for member in members],
        [member.training.optimizer for member in members],
        members[0].training.dataset.X_train,
        members[0].training.dataset.Y_train,
        epochs=first["epochs"],
        loss=first["loss"],
        batch_size=first["batch_size"],
        rngs=[member.training.arguments["rng"] for member in members],
        validation=first["validation"],
        metrics=first["metrics"],
        stopping=[member.training.arguments["stopping"] for member in members],
        observers=[member.observers for member in members],
        stop_requested=first["stop_requested"],
    )


def _end(member: Member, history: History | None, failure: BaseException | None) -> RunResult | BaseException:
    """End the member's run as ``run_training`` ends a run alone; its outcome: its result, or
    what a run alone would raise (``Interrupted`` too, which the stack raises once all ended)."""
    request, training = member.request, member.training
    tracked = member.tracked
    try:
        if failure is not None:
            if tracked is not None:  # ends the run FAILED (raising RunCrashed) or KILLED
                tracked.__exit__(type(failure), failure, failure.__traceback__)
            return failure
        assert history is not None
        if tracked is None:
            loss = request.settings.trainer.loss
            return ended(RunResult(final_metrics(history, loss), history, training.network, training.dataset), None)
        tracked.trained(history)
        tracked.__exit__(None, None, None)
        return ended(tracked.result(), request.parent)
    except BaseException as error:
        return error
