"""An Optuna sweeper for Hydra: ``bprun -m hydra/sweeper=optuna 'optimizer.lr=tag(log,interval(1e-3,3))'``.

Why not the released ``hydra-optuna-sweeper`` 1.3.0: it pins ``optuna<3`` (2.10.1, unmaintained)
and its SQLite storage fails under SQLAlchemy 2, which MLflow 3 requires. This sweeper is the
small part of it that matters here, on Optuna 4's ask-and-tell API: TPE (seeded) over

- ``interval(a,b)`` (float), ``int(interval(a,b))`` (integer), either with ``tag(log, ...)``;
- ``choice(a,b,c)``, ``a,b,c`` and ``range(a,b[,step])`` (categorical),

given on the command line or in ``hydra.sweeper.params``. Trials run through Hydra's launcher in
batches of ``n_jobs`` (``hydra/launcher=joblib`` runs a batch in parallel). Each job returns its
objective (``runner.app.sweep_objective``: the final ``hydra.sweeper.objective`` metric,
``val_mse`` by default, ``train_mse`` without a validation split); a job that fails returns none
and its trial is told FAIL. The best trial goes to the console, to ``optimization_results.yaml``
in the sweep folder, and to the tags of the sweep's MLflow parent run.

Hydra only accepts sweepers from the ``hydra_plugins`` namespace package, and it lists that
package's modules by scanning directories, which an editable install does not have;
``register`` therefore adds this class to Hydra's plugin registry under that namespace's name.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, Transformer
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from runner.config import clean_value

log = logging.getLogger(__name__)

PLUGIN_NAME = "hydra_plugins.bprun_optuna_sweeper.OptunaSweeper"


def register() -> None:
    """Make ``_target_: hydra_plugins.bprun_optuna_sweeper.OptunaSweeper`` resolve to this class."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()
    plugins.class_name_to_class.setdefault(PLUGIN_NAME, OptunaSweeper)
    sweepers = plugins.plugin_type_to_subclass_list.setdefault(Sweeper, [])
    if OptunaSweeper not in sweepers:
        sweepers.append(OptunaSweeper)


def distribution(override: Override) -> Any:
    """The Optuna distribution a sweep override describes."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if override.is_interval_sweep():
        interval = override.value()
        assert isinstance(interval, IntervalSweep)
        log_scale = "log" in interval.tags
        if isinstance(interval.start, int) and isinstance(interval.end, int):
            return IntDistribution(interval.start, interval.end, log=log_scale)
        return FloatDistribution(float(interval.start), float(interval.end), log=log_scale)
    if override.is_sweep_override():
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    raise ValueError(f"{override.input_line!r} is not a search space")


class OptunaSweeper(Sweeper):
    """Minimizes (or maximizes) the jobs' objective with Optuna's TPE sampler."""

    def __init__(self, n_trials: int = 20, n_jobs: int = 1, seed: int = 0, direction: str = "minimize",
                 objective: str = "val_mse", params: dict[str, str] | None = None) -> None:
        if n_trials < 1 or n_jobs < 1:
            raise ValueError(f"hydra.sweeper.n_trials={n_trials} and n_jobs={n_jobs} must be >= 1")
        if direction not in ("minimize", "maximize"):
            raise ValueError(f"hydra.sweeper.direction={direction!r}: choose minimize or maximize")
        self.n_trials, self.n_jobs, self.seed, self.direction = n_trials, n_jobs, seed, direction
        self.objective = objective
        self.params = dict(params or {})

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def _search_space(self, arguments: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
        parser = OverridesParser.create()
        from_config = [f"{key}={value}" for key, value in self.params.items()]
        space: dict[str, Any] = {}
        fixed: list[str] = []
        for override in parser.parse_overrides([*from_config, *arguments]):
            if override.is_sweep_override():
                space[override.get_key_element()] = distribution(override)
            else:
                fixed.append(override.input_line)
        if not space:
            raise ValueError("the Optuna sweeper needs a search space: for example "
                             "'optimizer.lr=tag(log,interval(1e-3,3))' or 'model.activation=choice(tanh,relu)'")
        return space, fixed

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        space, fixed = self._search_space(arguments)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction=self.direction, sampler=optuna.samplers.TPESampler(seed=self.seed))
        log.info("Optuna: %d trials, %d at a time, TPE seed %d, %s %s over %s", self.n_trials, self.n_jobs,
                 self.seed, self.direction, self.objective, ", ".join(space))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        launched = 0
        while launched < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - launched))]
            # Values as the jobs will train and log them (15 significant digits, see clean_value).
            batch = [[*fixed, *(f"{key}={clean_value(value)}" for key, value in trial.params.items())]
                     for trial in trials]
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=launched)
            for trial, result in zip(trials, results):
                value = result.return_value if result.status == JobStatus.COMPLETED else None
                if isinstance(value, (int, float)) and value == value:  # a number, not NaN
                    study.tell(trial, float(value))
                else:  # the job failed (it returned no objective, or raised)
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
            launched += len(trials)
        self._report(study, sweep_dir)

    def _report(self, study: Any, sweep_dir: Path) -> None:
        import optuna

        completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not completed:
            log.error("Optuna: no trial completed")
            return
        best = study.best_trial
        results = {"objective": self.objective, "direction": self.direction, "best_value": best.value,
                   "best_params": clean_value(best.params), "best_trial": best.number,
                   "completed_trials": len(completed), "trials": len(study.trials)}
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        print(f"Optuna: best {self.objective} = {best.value:.6g} at trial {best.number}: "
              + " ".join(f"{key}={value}" for key, value in results["best_params"].items()))
        self._tag_parent(results)

    @staticmethod
    def _tag_parent(results: dict[str, Any]) -> None:
        from runner.sweep import ENV_PARENT_RUN_ID, ENV_TRACKING_URI

        parent = os.environ.get(ENV_PARENT_RUN_ID)
        if not parent:
            return
        from mlflow.tracking import MlflowClient

        client = MlflowClient(os.environ[ENV_TRACKING_URI])
        client.set_tag(parent, "optuna.best_value", repr(results["best_value"]))
        client.set_tag(parent, "optuna.best_params", json.dumps(results["best_params"]))
        client.set_tag(parent, "optuna.best_trial", str(results["best_trial"]))
