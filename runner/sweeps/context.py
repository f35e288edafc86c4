"""What a sweep's job needs to know about its sweep, and the one channel it travels through.

The sweeper puts these values into every job's ``hydra.job.env_set`` (as ``++hydra.job.env_set``
overrides of the job). Hydra records them in the job's ``.hydra/hydra.yaml`` and sets them
around the job in whatever process or machine runs it; the Hydra app reads them from the job's
config. Standard library only: the Hydra app imports this before any job runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from runner import names

# Characters a quoted Hydra override value does not carry verbatim (quotes and backslashes are
# escapes, ${ an interpolation), percent-encoded in the values below.
_ENCODED = {"%": "%25", "'": "%27", "\\": "%5C", "$": "%24"}


@dataclass(frozen=True)
class SweepRun:
    """A sweep's parent run: its id, its experiment, and the store its jobs write to (with the
    server an offline store's runs are meant for, and the http client's settings)."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    sync_target: str | None = None
    http_settings: tuple[tuple[str, str], ...] = ()  # MLflow's own variables, (name, value)
    swept_keys: tuple[str, ...] = ()  # the keys whose values vary between the sweep's jobs
    size: int | None = None  # how many jobs the sweep runs (a grid's size, Optuna's n_trials)
    name_digits: int | None = None  # significant digits of a float in a job's name (Optuna's samples)

    def job_environment(self) -> dict[str, str]:
        """The variables a job of this sweep gets (see ``from_job_environment``)."""
        environment = {
            names.ENV_PARENT_RUN_ID: self.run_id,
            names.ENV_EXPERIMENT_ID: self.experiment_id,
            names.ENV_SWEEP_TRACKING_URI: _encode(self.tracking_uri),
        }
        if self.sync_target:
            environment[names.ENV_SWEEP_SYNC_TARGET] = _encode(self.sync_target)
        environment.update(self.http_settings)
        if self.swept_keys:
            environment[names.ENV_SWEPT_KEYS] = _encode(",".join(self.swept_keys))
        if self.size is not None:
            environment[names.ENV_SWEEP_SIZE] = str(self.size)
        if self.name_digits is not None:
            environment[names.ENV_NAME_DIGITS] = str(self.name_digits)
        return environment

    def job_overrides(self) -> list[str]:
        """``job_environment`` as overrides a job is launched with."""
        return [f"++hydra.job.env_set.{name}='{value}'" for name, value in self.job_environment().items()]

    @classmethod
    def from_job_environment(cls, environment: Mapping[str, str]) -> SweepRun | None:
        """The sweep a job belongs to, from its ``hydra.job.env_set``; None outside a sweep."""
        if not environment.get(names.ENV_PARENT_RUN_ID):
            return None
        sync_target = environment.get(names.ENV_SWEEP_SYNC_TARGET)
        http = tuple(
            (name, str(environment[name]))
            for name in (names.ENV_HTTP_TIMEOUT, names.ENV_HTTP_RETRIES)
            if name in environment
        )
        swept = _decode(str(environment.get(names.ENV_SWEPT_KEYS, "")))
        size, digits = environment.get(names.ENV_SWEEP_SIZE), environment.get(names.ENV_NAME_DIGITS)
        return cls(
            str(environment[names.ENV_PARENT_RUN_ID]),
            str(environment[names.ENV_EXPERIMENT_ID]),
            _decode(str(environment[names.ENV_SWEEP_TRACKING_URI])),
            _decode(str(sync_target)) if sync_target else None,
            http,
            tuple(key for key in swept.split(",") if key),
            int(size) if size else None,
            int(digits) if digits else None,
        )


@dataclass(frozen=True)
class JobReport:
    """What a sweep's job returns to its sweeper (Hydra's ``JobReturn.return_value``): the
    objective an optimizing sweeper minimizes or maximizes (None when the run has no value of
    it) and the metric that gave it (``train_mse`` for ``val_mse`` without a validation split),
    the objective after every epoch (for a pruner), and the run."""

    objective: float | None
    run_id: str | None
    run_name: str
    status: str  # FINISHED, or FAILED when training diverged
    stop_reason: str
    epochs_run: int
    seconds: float
    objective_per_epoch: tuple[float, ...] = ()
    objective_name: str = names.DEFAULT_RANKING_METRIC


def encoded(text: str) -> str:
    """A value for a job's ``hydra.job.env_set``, as an override carries it (``decoded`` reads it)."""
    return _encode(text)


def decoded(text: str) -> str:
    return _decode(text)


def _encode(text: str) -> str:
    return "".join(_ENCODED.get(character, character) for character in text)


def _decode(text: str) -> str:
    for character, code in reversed(_ENCODED.items()):  # %25 last: it may precede the others' codes
        text = text.replace(code, character)
    return text
