"""An Optuna sweeper for Hydra: ``bprun -m hydra/sweeper=optuna 'optimizer.lr=tag(log,interval(1e-3,3))'``.

Why not the released ``hydra-optuna-sweeper`` 1.3.0: it pins ``optuna<3`` (2.10.1, unmaintained)
and its SQLite storage fails under SQLAlchemy 2, which MLflow 3 requires. This sweeper is the
small part of it that matters here, on Optuna 4's ask-and-tell API: TPE (seeded) over

- ``interval(a,b)`` (float), ``int(interval(a,b))`` (integer), either with ``tag(log, ...)``;
- ``choice(a,b,c)``, ``a,b,c`` and ``range(a,b[,step])`` (categorical),

given on the command line or in ``hydra.sweeper.params``. A trial is proposed as soon as the
launcher has a free worker (``hydra.launcher.n_jobs``), the sampler having seen every result told
so far; with ``asynchronous=false``, or on a launcher that only runs batches, trials are proposed
in batches of ``n_jobs``, the next batch once this one has ended. Each job returns its
objective (the final ``hydra.sweeper.objective`` metric, ``val_mse`` by default, ``train_mse``
without a validation split); a job that fails returns none and its trial is told FAIL. The best
trial goes to the console, to ``optimization_results.yaml`` in the sweep folder, and to the tags
of the sweep's MLflow parent run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, Transformer
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from runner import names
from runner.core.validation import clean_value
from runner.process.errors import CommandExit
from runner.sweeps import hydra_name
from runner.sweeps.context import JobReport
from runner.sweeps.launching import SettingRefused, refuse_setting
from runner.sweeps.pruning import PrunerSpec, check_pruner, make_pruner
from runner.sweeps.resuming import check_unchanged, resume_state
from runner.sweeps.sweeper import PlannedJob, TrackedSweeper

if TYPE_CHECKING:  # MLflow: imported once a sweep needs it
    from runner.sweeps.parent import SweepState

log = logging.getLogger(__name__)


def distribution(override: Override) -> Any:
    """The Optuna distribution a sweep override describes."""
    # (lazy: Optuna takes seconds to import, for Optuna sweeps only)
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if override.is_interval_sweep():
        interval = override.value()
        assert isinstance(interval, IntervalSweep)
        log_scale = "log" in interval.tags
        if interval.start is None or interval.end is None or interval.start > interval.end:
            refuse_setting(
                override.get_key_element(),
                (override.input_line or "").partition("=")[2],
                f"an interval's low end ({interval.start}) must not be above its high end ({interval.end})",
            )
        if log_scale and interval.start <= 0:
            refuse_setting(
                override.get_key_element(),
                (override.input_line or "").partition("=")[2],
                "a log-scale interval must start above 0",
            )
        if isinstance(interval.start, int) and isinstance(interval.end, int):
            return IntDistribution(interval.start, interval.end, log=log_scale)
        return FloatDistribution(float(interval.start), float(interval.end), log=log_scale)
    if override.is_sweep_override():
        return CategoricalDistribution(
            [str(value) for value in override.sweep_iterator(transformer=Transformer.encode)]
        )
    raise ValueError(f"{override.input_line!r} is not a search space")


@dataclass
class OptunaSweeperConf:
    """``hydra/sweeper=optuna``: search spaces from the command line and/or ``params`` (key: space,
    in Hydra's sweep syntax)."""

    _target_: str = hydra_name("OptunaSweeper")
    n_trials: int = 20
    n_jobs: int = 1  # trials launched together on a launcher that only runs batches, or when not asynchronous
    # true: a trial is proposed as soon as a worker is free; false: in batches of n_jobs, the next
    # batch once this one has ended, so the same sweep proposes the same trials in every run
    asynchronous: bool = True
    seed: int = 0  # TPE's seed: the same sweep proposes the same trials
    direction: str = "minimize"
    objective: str = "val_mse"  # final metric each job returns; val_* falls back to train_* without a validation split
    params: Any = None  # more search spaces, {key: space} (Any: a dict given on the command line replaces it whole)
    # Stops a trial at the first epoch the pruner says it will not win: none, median, percentile,
    # successive_halving, hyperband; its options (named as in Optuna) in pruner_args.
    pruner: str = "none"
    pruner_args: Any = None


# Significant digits of a sampled value in a job's run name (lr0.727, not lr0.726685588222449);
# the job trains with the value to 15 digits (clean_value), as its params show.
NAME_DIGITS = 3


class Trials:
    """Optuna's trials as a sweep's jobs, for ``run_jobs``: a trial is asked when a slot is
    free, so the sampler has seen every result told so far, and told as its job ends."""

    def __init__(self, sweeper: OptunaSweeper, study: Any, space: dict[str, Any], fixed: list[str]) -> None:
        self.sweeper, self.study, self.space, self.fixed = sweeper, study, space, fixed
        self.batch_size = sweeper.n_jobs
        self.whole_batches = not sweeper.asynchronous
        self.asked = 0
        self.told = 0
        self._batch_start = 0  # the first trial of the batch being planned (whole batches)
        self._overrides: dict[int, list[str]] = {}  # trial number -> its job's overrides
        self._supersedes: dict[tuple[str, ...], list[str]] = {}  # a trial run again: its earlier runs

    def resume(self, resumed: SweepState) -> None:
        """Rebuild the study from a stopped sweep's store: each finished trial told once, with its
        objective per epoch (for a pruner); a trial that did not finish asked again first, with
        the same values, and run as a new run; the rest asked until ``n_trials`` in all."""
        import optuna  # (lazy: imported by the sweep already)

        for overrides, finished in resumed.finished.items():
            check_unchanged(self.sweeper, list(overrides), finished)
            params = self._params(overrides)
            pruned = finished.stop_reason == "pruned"
            self.study.add_trial(
                optuna.trial.create_trial(
                    params=params,
                    distributions={key: self.space[key] for key in params},
                    value=None if pruned else finished.objective,
                    intermediate_values=dict(enumerate(finished.objective_per_epoch)),
                    state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE,
                )
            )
        self.asked = self.told = len(resumed.finished)
        self.sweeper.progress.done = self.asked
        for overrides, run_ids in resumed.unfinished.items():
            if tuple(overrides) not in resumed.finished:
                self.study.enqueue_trial(self._params(overrides))
                self._supersedes[tuple(overrides)] = run_ids

    def _params(self, overrides: Sequence[str]) -> dict[str, Any]:
        """The values of the search space's keys in a trial's overrides."""
        params = {}
        for override in overrides:
            key, _, text = override.partition("=")
            if key in self.space:
                params[key] = _parsed(text, self.space[key])
        return params

    def next_job(self) -> PlannedJob | None:
        if self.asked >= self.sweeper.n_trials:
            return None
        if self.asked == self.told:  # none running: a new batch
            self._batch_start = len(self.study.trials)
        trial = self.study.ask(self.space)
        self.asked += 1
        # Values as the job will train and log them (15 significant digits, see clean_value).
        overrides = [*self.fixed, *(f"{key}={clean_value(value)}" for key, value in trial.params.items())]
        self._overrides[trial.number] = overrides
        environment = {}
        if supersedes := self._supersedes.pop(tuple(overrides), None):
            environment[names.ENV_SUPERSEDES] = ",".join(supersedes)
        if self.sweeper.pruner != "none":
            # A trial of whole batches prunes against the batches before its own only: what it
            # sees is then the same in every run of the sweep.
            seen_before = self._batch_start if self.whole_batches else trial.number
            environment[names.ENV_PRUNER] = self.sweeper.pruner_spec(trial.number, seen_before).to_environment()
        return PlannedJob(overrides, self.sweeper.compose(overrides), trial, environment)

    def record(self, trial: Any, result: JobReturn) -> None:
        import optuna  # (lazy: imported by the sweep already)

        self.told += 1
        report = result.return_value if result.status == JobStatus.COMPLETED else None
        if not isinstance(report, JobReport):  # the job failed
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        for epoch, value in enumerate(report.objective_per_epoch):  # what the sampler and pruner learn from
            if value == value:
                trial.report(value, epoch)
        if report.stop_reason == "pruned":
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif report.objective is not None and report.objective == report.objective:  # a number, not NaN
            self.study.tell(trial, float(report.objective))
        else:  # a run without its objective
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def overrides_of(self, trial: Any) -> list[str]:
        return self._overrides[trial.number]


def sampler_seed(seed: int, done: int) -> int:
    """The sampler's seed for a sweep with ``done`` trials finished before this command: ``seed``
    for a new sweep. A resumed sweep's sampler starts from a seed of its own, derived from both:
    seeded with ``seed`` again, it would propose the stopped sweep's first trials again."""
    if done == 0:
        return seed
    import numpy as np  # (lazy: only a resumed sweep needs it)

    return int(np.random.SeedSequence([seed, done]).generate_state(1)[0])


def _parsed(text: str, distribution: Any) -> Any:
    """A trial's value as its override wrote it, back in its distribution's type."""
    choices = getattr(distribution, "choices", None)
    if choices is not None:
        return next((choice for choice in choices if str(clean_value(choice)) == text), text)
    return int(text) if isinstance(distribution.low, int) and not isinstance(distribution.low, bool) else float(text)


def _values(distribution: Any) -> list[Any]:
    """The values that stand for a distribution: an interval's ends, every choice."""
    choices = getattr(distribution, "choices", None)
    return list(choices) if choices is not None else [distribution.low, distribution.high]


class OptunaSweeper(TrackedSweeper):
    """Minimizes (or maximizes) the jobs' objective with Optuna's TPE sampler."""

    def __init__(
        self,
        n_trials: int = 20,
        n_jobs: int = 1,
        asynchronous: bool = True,
        seed: int = 0,
        direction: str = "minimize",
        objective: str = "val_mse",
        params: dict[str, str] | None = None,
        pruner: str = "none",
        pruner_args: Any = None,
    ) -> None:
        for key, value in (("n_trials", n_trials), ("n_jobs", n_jobs)):
            if value < 1:
                refuse_setting(f"hydra.sweeper.{key}", value, "it must be an integer >= 1")
        if direction not in ("minimize", "maximize"):
            refuse_setting("hydra.sweeper.direction", direction, "choose minimize or maximize")
        self.n_trials, self.n_jobs, self.seed, self.direction = n_trials, n_jobs, seed, direction
        self.asynchronous, self.objective = asynchronous, objective
        self.params = dict(params or {})
        self.pruner, self.pruner_args = pruner, dict(pruner_args or {})

    def pruner_spec(self, trial: int, seen_before: int) -> PrunerSpec:
        """What trial ``trial`` needs to ask the pruner, comparing it with the trials numbered
        below ``seen_before``. The sweep's folder names the study: the same for every trial, and
        for the trials of a resumed sweep (Hyperband puts trials into brackets by the study's
        name and their number)."""
        study = str(self.config.hydra.sweep.dir)
        return PrunerSpec(self.pruner, self.pruner_args, self.objective, self.direction, study, trial, seen_before)

    def _search_space(self, arguments: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
        parser = OverridesParser.create()
        from_config = [f"{key}={value}" for key, value in self.params.items()]
        space: dict[str, Any] = {}
        fixed: list[str] = []
        for override in parser.parse_overrides([*from_config, *arguments]):
            if override.is_sweep_override():
                space[override.get_key_element()] = distribution(override)
            else:
                fixed.append(override.input_line or "")
        if not space:
            raise CommandExit(
                SettingRefused(
                    "the Optuna sweeper needs a search space: for example "
                    "'optimizer.lr=tag(log,interval(1e-3,3))' or 'model.activation=choice(tanh,relu)'"
                )
            )
        self._check_space(space, fixed)
        return space, fixed

    def _check_space(self, space: dict[str, Any], fixed: list[str]) -> None:
        """Refuse a search space any of whose values would be refused in a trial (an interval's
        ends, every choice), before anything runs: each is composed and validated once, the
        other keys at their first value."""
        first = {key: _values(distribution)[0] for key, distribution in space.items()}
        for key, distribution in space.items():
            for value in _values(distribution):
                trial = {**first, key: value}
                overrides = [*fixed, *(f"{name}={clean_value(setting)}" for name, setting in trial.items())]
                try:
                    self.compose(overrides)
                except CommandExit as refused:
                    problem = str(refused.error).partition(": ")[2]
                    raise CommandExit(
                        SettingRefused(
                            f"the search space of {key} holds {clean_value(value)!r}, which a trial "
                            f"cannot take: {problem}"
                        )
                    ) from None

    def sweep(self, arguments: list[str]) -> None:
        import optuna  # (lazy: seconds of imports, for Optuna sweeps only)

        check_pruner(self.pruner, self.pruner_args)
        if self.pruner != "none" and not self.config.tracking.enabled:
            refuse_setting(
                "hydra.sweeper.pruner",
                self.pruner,
                "a pruner reads the trials' epochs from the store: it needs a tracked sweep, not tracking=none",
            )
        space, fixed = self._search_space(arguments)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        log.info(
            "Optuna: %d trials, TPE seed %d, pruner %s, %s %s over %s",
            self.n_trials,
            self.seed,
            self.pruner,
            self.direction,
            self.objective,
            ", ".join(space),
        )
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        self.planned_jobs = self.n_trials
        self.name_digits = NAME_DIGITS
        with self.sweep_lifetime():
            resumed = resume_state(self)
            done = len(resumed.finished) if resumed is not None else 0
            study = optuna.create_study(
                direction=self.direction,
                sampler=optuna.samplers.TPESampler(seed=sampler_seed(self.seed, done)),
                pruner=make_pruner(self.pruner, self.pruner_args),
            )
            trials = Trials(self, study, space, fixed)
            if resumed is not None:
                trials.resume(resumed)
            self.run_jobs(trials)
            self._report(study, sweep_dir)

    def _report(self, study: Any, sweep_dir: Path) -> None:
        import optuna  # (lazy: see sweep)

        completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not completed:
            log.error("Optuna: no trial completed")
            return
        best = study.best_trial
        results = {
            "objective": self.objective,
            "direction": self.direction,
            "best_value": best.value,
            "best_params": clean_value(best.params),
            "best_trial": best.number,
            "completed_trials": len(completed),
            "trials": len(study.trials),
        }
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        print(
            f"Optuna: best {self.objective} = {best.value:.6g} at trial {best.number}: "
            + " ".join(f"{key}={value}" for key, value in results["best_params"].items())
        )
        if self.sweep_run is not None:
            from runner.sweeps.parent import tag_parent  # (lazy: MLflow)

            self.call(
                tag_parent,
                self.sweep_run,
                {
                    "optuna.best_value": repr(results["best_value"]),
                    "optuna.best_params": json.dumps(results["best_params"]),
                    "optuna.best_trial": str(results["best_trial"]),
                },
            )
