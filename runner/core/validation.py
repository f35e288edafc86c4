"""Checking a composed config and turning it into typed settings.

``validate`` checks what composition cannot: keys added with ``+`` (Hydra adds them even to a
typed node), allowed values and ranges, and that the chosen loss suits the output layer. It
reports every problem at once, each naming the full key, the bad value and what is allowed.
Ranges of the numbers the engine takes come from the engine's own table (``engine.limits``).

Configs are plain data: nothing here is ever turned into an object through ``_target_``, and a
config carrying one is refused (``runner.core.plain_data``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from engine.activations import ACTIVATIONS
from engine.initializers import INITIALIZERS
from engine.limits import FRACTION, LIMITS, Limit
from engine.losses import LOSSES, REQUIRED_OUTPUT_ACTIVATION
from engine.network import DTYPES
from engine.schedules import SCHEDULE_NAMES
from runner.core.plain_data import refusal, target_keys
from runner.core.schema import (
    CSV_TASKS,
    DATASET_SCHEMAS,
    OPTIMIZER_SCHEMAS,
    CsvDatasetConfig,
    ExperimentConfig,
    TrackingConfig,
)
from runner.process.errors import InvalidInput
from runner.tracking.destination import uri_problem


class ConfigError(InvalidInput):
    """The composed config is invalid; the message lists every problem."""


# Every numeric key and what it may be: the engine's limits for what the engine takes, the
# runner's own for the rest. A key missing from the chosen option (momentum for gd) is skipped.
KEY_LIMITS: dict[str, Limit] = {
    "model.init_std": LIMITS["init_std"],
    "optimizer.lr": LIMITS["lr"],
    "optimizer.momentum": LIMITS["momentum"],
    "optimizer.beta1": LIMITS["beta1"],
    "optimizer.beta2": LIMITS["beta2"],
    "optimizer.eps": LIMITS["eps"],
    "optimizer.schedule.step_size": LIMITS["schedule.step_size"],
    "optimizer.schedule.gamma": LIMITS["schedule.gamma"],
    "optimizer.schedule.min_lr": LIMITS["schedule.min_lr"],
    "trainer.epochs": LIMITS["epochs"],
    "trainer.batch_size": LIMITS["batch_size"],
    "trainer.saturation_patience": LIMITS["saturation_patience"],
    "trainer.divergence_factor": LIMITS["divergence_factor"],
    "trainer.early_stopping.patience": LIMITS["early_stopping.patience"],
    "trainer.early_stopping.min_delta": LIMITS["early_stopping.min_delta"],
    "trainer.blas_threads": Limit(1, integer=True),
    "dataset.val_fraction": FRACTION,
    "dataset.n_samples": Limit(4, integer=True),
    "dataset.noise": Limit(0.0),
    "dataset.classes": Limit(2, integer=True),
    "dataset.seed": Limit(0, integer=True),
    "tracking.http_timeout": Limit(0.0, low_open=True),
    "tracking.http_retries": Limit(0, integer=True),
    "tracking.tensors_every": Limit(0, integer=True),
    "tracking.layer_stats_every": Limit(0, integer=True),
    "seed": Limit(0, integer=True),
}
# The lengths an MLflow store keeps (its experiments.name and runs.name columns).
MAX_EXPERIMENT_NAME = 256
MAX_RUN_NAME = 250
# None is allowed for these (full batch; a data seed derived from the top-level seed).
NULLABLE = {"trainer.batch_size", "dataset.seed", "tracking.tensors_every"}


def clean_value(value: Any) -> Any:
    """Floats rounded to the 15 significant digits a person types: Hydra's
    ``range(0.1,0.4,0.1)`` yields 0.30000000000000004, which should read (and be) 0.3."""
    if isinstance(value, float):
        return float(format(value, ".15g"))
    if isinstance(value, list):
        return [clean_value(item) for item in value]
    if isinstance(value, dict):
        return {key: clean_value(item) for key, item in value.items()}
    return value


def _allowed(names: Any) -> str:
    return ", ".join(sorted(names))


def _lookup(settings: Any, key: str) -> tuple[bool, Any]:
    node = settings
    for part in key.split("."):
        if not hasattr(node, part):
            return False, None
        node = getattr(node, part)
    return True, node


class _Problems(list[str]):
    """What is wrong with the settings, one line each: the key, the bad value, what is allowed."""

    def need(self, ok: bool, key: str, value: Any, allowed: str) -> None:
        if not ok:
            self.append(f"{key}={value!r} is not allowed: {allowed}")

    def choice(self, key: str, value: Any, names: Any) -> None:
        self.need(value in names, key, value, f"choose one of {_allowed(names)}")


def _problems(settings: ExperimentConfig) -> list[str]:
    problems = _Problems()
    for key, limit in KEY_LIMITS.items():
        present, value = _lookup(settings, key)
        if present and not (value is None and key in NULLABLE):
            problems.need(limit.allows(value), key, value, limit.describe())
    _check_model_and_optimizer(settings, problems)
    if isinstance(settings.dataset, CsvDatasetConfig):
        _check_csv(settings.dataset, problems)
    _check_trainer(settings, problems)
    _check_tracking(settings.tracking, problems)
    return problems


def _check_model_and_optimizer(settings: ExperimentConfig, problems: _Problems) -> None:
    model, optimizer = settings.model, settings.optimizer
    problems.need(
        all(size >= 1 for size in model.hidden),
        "model.hidden",
        model.hidden,
        "every hidden layer size must be an integer >= 1 ([] for no hidden layer)",
    )
    problems.choice("model.activation", model.activation, [a for a in ACTIVATIONS if a != "softmax"])
    problems.choice("model.output_activation", model.output_activation, ACTIVATIONS)
    problems.choice("model.init", model.init, INITIALIZERS)
    problems.choice("optimizer.schedule.name", optimizer.schedule.name, SCHEDULE_NAMES)
    if LIMITS["lr"].allows(optimizer.lr):
        problems.need(
            optimizer.schedule.min_lr <= optimizer.lr,
            "optimizer.schedule.min_lr",
            optimizer.schedule.min_lr,
            f"it must lie in [0, optimizer.lr={optimizer.lr}]",
        )


def _check_csv(dataset: CsvDatasetConfig, problems: _Problems) -> None:
    problems.need(
        os.path.isfile(dataset.path),
        "dataset.path",
        dataset.path,
        "it is a folder; name a CSV file in it"
        if os.path.isdir(dataset.path)
        else f"no such file (relative paths start from {os.getcwd()})",
    )
    problems.need(len(dataset.targets) >= 1, "dataset.targets", dataset.targets, "name at least one target column")
    for key, columns in (("dataset.features", dataset.features or []), ("dataset.targets", dataset.targets)):
        twice = sorted({column for column in columns if columns.count(column) > 1})
        problems.need(not twice, key, columns, f"it names {', '.join(map(repr, twice))} more than once")
    both = sorted(set(dataset.features or []) & set(dataset.targets))
    problems.need(
        not both, "dataset.features", dataset.features, f"{', '.join(map(repr, both))} cannot be a feature and a target"
    )
    problems.choice("dataset.task", dataset.task, CSV_TASKS)
    if dataset.task == "classification":
        problems.need(
            len(dataset.targets) == 1,
            "dataset.targets",
            dataset.targets,
            "classification takes exactly one column of class labels",
        )


def _check_trainer(settings: ExperimentConfig, problems: _Problems) -> None:
    trainer, model = settings.trainer, settings.model
    problems.choice("trainer.dtype", trainer.dtype, DTYPES)
    problems.choice("trainer.loss", trainer.loss, LOSSES)
    required = REQUIRED_OUTPUT_ACTIVATION.get(trainer.loss)
    if required is not None and model.output_activation != required:
        problems.append(
            f"trainer.loss={trainer.loss!r} needs model.output_activation='{required}', got {model.output_activation!r}"
        )
    problems.need(
        trainer.divergence_factor == 0 or trainer.divergence_factor > 1,
        "trainer.divergence_factor",
        trainer.divergence_factor,
        "it must be 0 (off) or > 1",
    )
    if trainer.early_stopping.enabled and settings.dataset.val_fraction == 0:
        problems.append("trainer.early_stopping.enabled=True needs a validation split: set dataset.val_fraction > 0")


def _check_tracking(tracking: TrackingConfig, problems: _Problems) -> None:
    if tracking.uri is not None:
        problem = uri_problem(tracking.uri)
        problems.need(problem is None, "tracking.uri", tracking.uri, problem or "")
    problems.need(
        0 < len(tracking.experiment.strip()) <= MAX_EXPERIMENT_NAME,
        "tracking.experiment",
        tracking.experiment,
        f"name an MLflow experiment (1 to {MAX_EXPERIMENT_NAME} characters)",
    )
    if tracking.run_name is not None:
        problems.need(
            len(tracking.run_name) <= MAX_RUN_NAME,
            "tracking.run_name",
            tracking.run_name,
            f"at most {MAX_RUN_NAME} characters",
        )


def validate(cfg: DictConfig | dict[str, Any]) -> ExperimentConfig:
    """Check a composed config (a ``hydra`` node is ignored) and return it as typed settings,
    every interpolation resolved and every float as typed (``clean_value``).

    Raises
    ------
    ConfigError
        Naming every bad key (``optimizer.lr``), its value and what is allowed.
    """
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    try:
        # masked_copy keeps keys of any type a DictConfig holds, though its annotation says str only.
        kept = cast(list[str], [key for key in cfg if key != "hydra"])
        raw = OmegaConf.to_container(OmegaConf.masked_copy(cfg, kept), resolve=True)
    except OmegaConfBaseException as error:  # a bad ${interpolation}
        raise ConfigError(f"{getattr(error, 'full_key', None) or '?'}: {str(error).splitlines()[0]}") from None
    raw = clean_value(raw)
    targets = target_keys(raw)
    if targets:
        raise ConfigError(refusal(targets))
    optimizer_name = raw.get("optimizer", {}).get("name") if isinstance(raw.get("optimizer"), dict) else None
    dataset_name = raw.get("dataset", {}).get("name") if isinstance(raw.get("dataset"), dict) else None
    if optimizer_name not in OPTIMIZER_SCHEMAS:
        raise ConfigError(
            f"optimizer.name={optimizer_name!r} is not allowed: choose one of {_allowed(OPTIMIZER_SCHEMAS)}"
        )
    if dataset_name not in DATASET_SCHEMAS:
        raise ConfigError(f"dataset.name={dataset_name!r} is not allowed: choose one of {_allowed(DATASET_SCHEMAS)}")

    # Merging into the schema of the chosen options catches what '+key=value' slipped past
    # composition: unknown keys, wrong types, missing values.
    schema = _schema(optimizer_name, dataset_name)
    try:
        # Merge the plain container: a typed DictConfig merges its extra keys in silently.
        merged = OmegaConf.merge(schema, OmegaConf.create(raw))
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise ConfigError(
                f"{', '.join(missing)}: required but not set (???); set it on the command line, "
                f"for example {missing[0]}=..."
            )
        settings = OmegaConf.to_object(merged)
        assert isinstance(settings, ExperimentConfig)  # merged is structured by ExperimentConfig
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        message = str(error).split("\n")[0]
        parent = OmegaConf.select(schema, key.rpartition(".")[0]) if "." in key else schema
        if isinstance(error, ConfigKeyError) and isinstance(parent, DictConfig):
            message += f"; allowed keys: {_allowed(parent.keys())}"
        raise ConfigError(f"{key}: {message}") from None
    problems = _problems(settings)
    if problems:
        raise ConfigError("\n".join(problems))
    return settings


@functools.cache
def _schema(optimizer_name: str, dataset_name: str) -> DictConfig:
    """The typed schema of a config with these options, read-only. Built once per pair: building
    it is most of a validation's cost, and ``OmegaConf.merge`` merges into a copy of it."""
    schema = OmegaConf.structured(
        ExperimentConfig(optimizer=OPTIMIZER_SCHEMAS[optimizer_name](), dataset=DATASET_SCHEMAS[dataset_name]())
    )
    assert isinstance(schema, DictConfig)  # a dataclass instance gives a DictConfig
    OmegaConf.set_readonly(schema, True)
    return schema


def settings_yaml(settings: ExperimentConfig) -> str:
    """The settings as YAML: the ``config.yaml`` a run records and a rerun executes."""
    return OmegaConf.to_yaml(OmegaConf.structured(settings))


def settings_dict(settings: ExperimentConfig) -> dict[str, Any]:
    """The settings as nested dicts and lists. ``validate`` has typed every value, so the
    dataclasses' own fields are the plain values (OmegaConf's round trip gives the same dict, a
    hundred times slower, which a stacked sweep pays several times per job)."""
    return dataclasses.asdict(settings)
