"""The grid sweeper (bprun's default): every combination of the swept values, like Hydra's basic
sweeper, with the sweep tracked as one parent MLflow run (``runner.sweeps.sweeper``).

``a=1,2 b=x,y`` runs four jobs; ``range(...)``, ``choice(...)`` and lists of values in
``hydra.sweeper.params`` sweep too. ``max_batch_size`` launches the grid in batches of at most
that many jobs (all at once by default).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from hydra.errors import HydraException
from omegaconf import OmegaConf

from runner import names
from runner.core.validation import clean_value
from runner.sweeps import hydra_name
from runner.sweeps.launching import refuse_setting
from runner.sweeps.resuming import check_unchanged, resume_state
from runner.sweeps.sweeper import PlannedJob, TrackedSweeper

if TYPE_CHECKING:  # MLflow: imported once a sweep needs it
    from runner.sweeps.parent import SweepState

_FLOAT = re.compile(r"^[+-]?\d*\.\d+([eE][+-]?\d+)?$")


def short_float(text: str) -> str:
    """A float as a person types it, to 15 significant digits: ``range(0.1,0.4,0.1)`` yields
    0.30000000000000004, which the job is launched (and Hydra's log shows it) as 0.3."""
    return repr(clean_value(float(text))) if _FLOAT.match(text) else text


@dataclass
class GridSweeperConf:
    """``hydra/sweeper=grid``: every combination of the swept values (``a=1,2 b=x,y``: four jobs)."""

    _target_: str = hydra_name("GridSweeper")
    max_batch_size: int | None = None  # launch the grid in batches of at most this many jobs (None: all at once)
    params: Any = None  # more swept keys, {key: a,b,c} (Any: a dict given on the command line replaces it whole)


class GridSweeper(TrackedSweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None) -> None:
        if max_batch_size is not None and max_batch_size < 1:
            refuse_setting("hydra.sweeper.max_batch_size", max_batch_size, "it must be an integer >= 1, or null")
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})

    def jobs(self, arguments: list[str]) -> list[list[str]]:
        """Every job's overrides, in the order Hydra's basic sweeper runs them."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*(f"{key}={value}" for key, value in self.params.items()), *arguments])
        choices: dict[str, list[str]] = {}
        for override in overrides:
            key = override.get_key_element()
            if override.is_sweep_override():
                if not override.is_discrete_sweep():
                    raise HydraException(
                        f"{override.input_line}: the grid sweeper takes lists of values; "
                        "search intervals with hydra/sweeper=optuna"
                    )
                choices[key] = [f"{key}={short_float(value)}" for value in override.sweep_string_iterator()]
            else:
                choices[key] = [f"{key}={override.get_value_element_as_str()}"]
        return [list(job) for job in itertools.product(*choices.values())]

    def sweep(self, arguments: list[str]) -> Any:
        jobs = self.jobs(arguments)
        self.planned_jobs = len(jobs)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        with self.sweep_lifetime():
            self.run_jobs(GridJobs(self, jobs, self.max_batch_size or len(jobs) or 1, resume_state(self)))


class GridJobs:
    """The grid's jobs in order, for ``run_jobs``. The first batch is composed and validated
    at once: a sweep with a value that does not compose or validate fails before its parent run
    exists."""

    whole_batches = False  # a grid plans nothing from results: each job starts as a slot frees

    def __init__(
        self, sweeper: TrackedSweeper, jobs: list[list[str]], batch_size: int, resumed: SweepState | None = None
    ) -> None:
        self.sweeper, self.batch_size = sweeper, batch_size
        self._supersedes: dict[int, list[str]] = {}
        if resumed is not None:  # a resumed sweep runs the jobs that did not finish, once each
            for job in jobs:
                if tuple(job) in resumed.finished:
                    check_unchanged(sweeper, job, resumed.finished[tuple(job)])
            sweeper.progress.done = len(jobs) - len(
                remaining := [job for job in jobs if tuple(job) not in resumed.finished]
            )
            jobs = remaining
            self._supersedes = {index: resumed.unfinished.get(tuple(job), []) for index, job in enumerate(jobs)}
        self.jobs = jobs
        self._composed = [sweeper.compose(job) for job in jobs[:batch_size]]
        self._next = 0

    def next_job(self) -> PlannedJob | None:
        if self._next >= len(self.jobs):
            return None
        index = self._next
        self._next += 1
        config = self._composed[index] if index < len(self._composed) else self.sweeper.compose(self.jobs[index])
        supersedes = self._supersedes.get(index)
        environment = {names.ENV_SUPERSEDES: ",".join(supersedes)} if supersedes else {}
        return PlannedJob(self.jobs[index], config, index, environment)

    def record(self, tag: Any, result: JobReturn) -> None:
        pass  # a grid plans its jobs whatever their results

    def overrides_of(self, tag: Any) -> list[str]:
        return self.jobs[tag]
