"""Resuming a stopped sweep (``bprun-resume``): what its store holds, and the checks that the jobs
run now are the jobs it started."""

from __future__ import annotations

import dataclasses
import difflib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from runner.core.validation import settings_yaml, validate
from runner.process.errors import CommandError, CommandExit, InvalidInput
from runner.sweeps.overrides import swept_values
from runner.tracking.destination import Destination

if TYPE_CHECKING:  # MLflow: imported once a sweep needs it
    from runner.sweeps.parent import FinishedJob, SweepState
    from runner.sweeps.sweeper import TrackedSweeper


class ResumeRefused(InvalidInput):
    """A stopped sweep cannot be resumed as it is."""


def next_job_number(sweep_dir: Path) -> int:
    """The number after every job's output folder in ``sweep_dir``: a resumed sweep's jobs
    continue the numbering, and never write into a folder that exists."""
    numbers = [int(path.name) for path in sweep_dir.glob("*") if path.is_dir() and path.name.isdigit()]
    return max(numbers, default=-1) + 1


def installed_version() -> str:
    try:
        return version("backprop-runner")
    except PackageNotFoundError:
        return "unknown"


def resume_state(sweeper: TrackedSweeper) -> SweepState | None:
    """The stopped sweep this command continues (``bprun-resume``), read from its store: the
    parent run is this sweep's, the jobs continue its numbering; None for a new sweep."""
    if sweeper.resuming is None:
        return None
    from runner.sweeps.parent import existing_sweep, load_sweep_state  # (lazy: MLflow)

    where = Destination.configured(sweeper.config.tracking, sweeper.config.hydra.runtime.cwd)
    swept = swept_values(list(sweeper.config.hydra.overrides.task))
    try:
        sweep_run = sweeper.call(existing_sweep, where, sweeper.resuming, swept)
    except CommandError as error:
        raise CommandExit(error) from None
    sweeper.sweep_run = dataclasses.replace(sweep_run, size=sweeper.planned_jobs, name_digits=sweeper.name_digits)
    sweeper.parent_to_reopen = True
    sweeper.next_job = next_job_number(Path(str(sweeper.config.hydra.sweep.dir)))
    state = sweeper.call(load_sweep_state, sweeper.sweep_run, sweeper.progress.objective)
    versions = {job.version for job in state.finished.values()} - {installed_version()}
    if versions:
        raise CommandExit(
            ResumeRefused(
                f"the sweep's finished jobs ran with backprop-runner {', '.join(sorted(versions))}, this is "
                f"{installed_version()}: their results would not be comparable with the jobs run now; install "
                "that version to resume it, or start a new sweep"
            )
        )
    return state


def check_unchanged(sweeper: TrackedSweeper, overrides: list[str], finished: FinishedJob) -> None:
    """Refuse to resume when a finished job's config, composed now, differs from what it ran."""
    now = settings_yaml(validate(sweeper.compose(overrides)))
    if now != finished.config_yaml:
        difference = "".join(
            difflib.unified_diff(
                finished.config_yaml.splitlines(keepends=True),
                now.splitlines(keepends=True),
                f"run {finished.run_id}",
                "composed now",
                n=0,
            )
        )
        raise CommandExit(
            ResumeRefused(
                f"the config of job {' '.join(overrides)} changed since its run {finished.run_id} finished "
                f"(the config files, or a default); resuming would mix results of two configs:\n{difference}"
            )
        )
