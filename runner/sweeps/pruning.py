"""Pruning an Optuna sweep's trials that will not win: Optuna's pruners, asked every epoch.

``hydra.sweeper.pruner`` names one of ``PRUNERS`` (``none`` by default), with its main options in
``hydra.sweeper.pruner_args`` (named as in Optuna). The sweeper hands each trial the pruner, the
trial's number and the objective (``PrunerSpec``, through the job's environment); the job builds
its pruner's view of the study from what the store holds of the sweep's other trials (their
objective after every epoch: trials run in other processes, on other machines, and the store is
what they share), each replayed through the pruner epoch by epoch so that a pruner that keeps
state in the trials (successive halving's rungs) has it. The job reports its own objective every
epoch and stops at the first epoch the pruner says it will not win: its run ends FINISHED with
``stop_reason=pruned``, its metrics, tensors and model kept (``Pruning``). The sweeper tells the
study the trial was pruned.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from engine import EpochReport, Observer
from runner import names
from runner.process.errors import CommandExit
from runner.sweeps.launching import SettingRefused

# bprun's name -> Optuna's class in optuna.pruners; "none" never prunes.
PRUNERS = {
    "none": None,
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
}


@dataclass(frozen=True)
class PrunerSpec:
    """What a trial needs to ask the pruner: which pruner, how the study optimizes, where the
    other trials are (the sweep's parent run, whose name is also the study's), and its number."""

    pruner: str
    args: dict[str, Any] = field(default_factory=dict)
    objective: str = names.DEFAULT_RANKING_METRIC
    direction: str = "minimize"
    study: str = ""
    trial: int = 0
    seen_before: int = 0  # the other trials it compares with are those numbered below this

    def to_environment(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_environment(cls, text: str) -> PrunerSpec:
        return cls(**json.loads(text))


def check_pruner(pruner: str, args: dict[str, Any]) -> None:
    """Refuse, before anything runs, a pruner bprun does not know or an option it does not take."""
    if pruner not in PRUNERS:
        raise CommandExit(
            SettingRefused(f"hydra.sweeper.pruner={pruner!r} is not allowed: choose one of {', '.join(PRUNERS)}")
        )
    if PRUNERS[pruner] is None:
        if args:
            raise CommandExit(
                SettingRefused(f"hydra.sweeper.pruner_args={args} is not allowed: pruner=none takes none")
            )
        return
    allowed = list(inspect.signature(_pruner_class(pruner)).parameters)
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise CommandExit(
            SettingRefused(
                f"hydra.sweeper.pruner_args.{unknown[0]} is not allowed: the {pruner} pruner takes {', '.join(allowed)}"
            )
        )
    try:
        make_pruner(pruner, args)
    except (TypeError, ValueError) as error:
        raise CommandExit(SettingRefused(f"hydra.sweeper.pruner_args={args} is not allowed: {error}")) from None


def _pruner_class(pruner: str) -> Any:
    import optuna  # (lazy: seconds of imports, for Optuna sweeps only)

    return getattr(optuna.pruners, str(PRUNERS[pruner]))


def make_pruner(pruner: str, args: dict[str, Any]) -> Any:
    """Optuna's pruner ``pruner`` with ``args``; Optuna's ``NopPruner`` for ``none``."""
    import optuna  # (lazy: see _pruner_class)

    if PRUNERS[pruner] is None:
        return optuna.pruners.NopPruner()
    return _pruner_class(pruner)(**args)


@dataclass(frozen=True)
class OtherTrial:
    """What the store holds of one of the sweep's other trials."""

    number: int
    pruned: bool
    objective_per_epoch: tuple[float, ...]


class Pruning(Observer):
    """A trial's pruner, asked after every epoch (see the module docstring). ``others`` are the
    sweep's trials that ended, read from the store when the job started."""

    def __init__(self, spec: PrunerSpec, loss: str, others: list[OtherTrial]) -> None:
        import optuna  # (lazy: see _pruner_class)

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.spec, self.loss = spec, loss
        self.study = optuna.create_study(
            study_name=spec.study,
            direction=spec.direction,
            sampler=optuna.samplers.RandomSampler(seed=0),  # asked for no values: a trial here is its epochs
            pruner=make_pruner(spec.pruner, spec.args),
        )
        known = {other.number: other for other in others if other.number < spec.seen_before}
        for number in range(spec.trial):  # the same numbers as the sweeper's study: brackets follow them
            _replay(optuna, self.study, known.get(number))
        self.trial = self.study.ask()
        self._decision: tuple[str, str] | None = None

    def on_epoch_end(self, report: EpochReport) -> None:
        value = objective_of(report, self.spec.objective, self.loss)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(value, report.epoch)
        if self.trial.should_prune():
            self._decision = (
                "pruned",
                f"pruned at epoch {report.epoch} by the {self.spec.pruner} pruner: {self.spec.objective}={value:.6g}",
            )

    def stop_training(self) -> tuple[str, str] | None:
        return self._decision


def _replay(optuna: Any, study: Any, other: OtherTrial | None) -> None:
    """Add a trial that ended to the local study as it ran: its objective reported epoch by epoch,
    the pruner asked after each (a pruner keeps what it learns, such as a successive-halving
    rung's values, in the trials), then told how it ended. A trial still running, failed, or
    not to be seen keeps its number as a failed trial, which pruners leave out."""
    trial = study.ask()
    if other is None or not other.objective_per_epoch:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return
    for epoch, value in enumerate(other.objective_per_epoch):
        trial.report(value, epoch)
        trial.should_prune()  # what the trial did next is known: its answer only records the rung
    if other.pruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(trial, other.objective_per_epoch[-1])


def objective_of(report: EpochReport, objective: str, loss: str) -> float | None:
    """The epoch's value of the sweep's objective, named as runs log it (``val_mse``), or of its
    ``train_`` twin when there is no validation split."""
    for split, values in (("val", report.validation), ("train", report.train)):
        for engine_name, value in (values or {}).items():
            tracked = names.tracked_metric_name(split, engine_name, loss)
            if tracked == objective or (split == "train" and tracked == objective.replace("val_", "train_", 1)):
                return value
    return None
