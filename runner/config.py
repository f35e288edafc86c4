"""The typed config schema, its registration in Hydra's ConfigStore, and validation.

Each YAML option in ``conf/<group>/`` starts from a schema stored here under
``schema/<group>/<name>`` (its defaults list says ``/schema/<group>/<name>@_here_``), so wrong
types and unknown keys already fail while Hydra composes. ``validate`` then checks what
composition cannot: keys added with ``+`` (Hydra adds them even to a typed node), allowed
values and ranges, and that the chosen loss suits the output layer. It reports every problem
at once, each naming the full key, the bad value and what is allowed.

Configs are plain data: nothing here is ever turned into an object through ``_target_``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

# The engine's own tables are the single source of allowed names.
from engine.activations import ACTIVATIONS
from engine.initializers import INITIALIZERS
from engine.losses import LOSSES, REQUIRED_OUTPUT_ACTIVATION
from engine.network import DTYPES
from engine.schedules import SCHEDULE_NAMES

SYNTHETIC_DATASETS = ("xor", "sine", "moons", "circles", "spirals")
BUILTIN_DATASETS = ("iris", "diabetes", "digits")
CSV_TASKS = ("classification", "regression")


class ConfigError(ValueError):
    """The composed config is invalid; the message lists every problem."""


# --- model -----------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    """Architecture. Input and output sizes come from the data set."""

    hidden: list[int] = field(default_factory=lambda: [8])
    activation: str = "sigmoid"
    output_activation: str = "sigmoid"
    init: str = "xavier_uniform"
    init_std: float = 0.01  # only for init=normal


# --- optimizer -------------------------------------------------------------------------------
@dataclass
class ScheduleConfig:
    name: str = "constant"
    step_size: int = 10  # step
    gamma: float = 0.5  # step, exponential
    min_lr: float = 0.0  # cosine


@dataclass
class OptimizerConfig:
    name: str = MISSING
    lr: float = MISSING
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class MomentumConfig(OptimizerConfig):
    momentum: float = 0.9


@dataclass
class AdamConfig(OptimizerConfig):
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


OPTIMIZER_SCHEMAS: dict[str, type[OptimizerConfig]] = {
    "gd": OptimizerConfig,
    "momentum": MomentumConfig,
    "nesterov": MomentumConfig,
    "adam": AdamConfig,
}


# --- dataset ---------------------------------------------------------------------------------
@dataclass
class DatasetConfig:
    name: str = MISSING
    val_fraction: float = 0.2
    standardize: bool = True  # features: zero mean, unit variance (training-split statistics)
    seed: Optional[int] = None  # None: derived from the top-level seed


@dataclass
class SyntheticDatasetConfig(DatasetConfig):
    n_samples: int = 200
    noise: float = 0.1


@dataclass
class SpiralsDatasetConfig(SyntheticDatasetConfig):
    classes: int = 2


@dataclass
class CsvDatasetConfig(DatasetConfig):
    path: str = MISSING
    features: Optional[list[str]] = None  # None: every column that is not a target
    targets: list[str] = MISSING
    task: str = "regression"  # or classification (one target column of labels, one-hot encoded)


DATASET_SCHEMAS: dict[str, type[DatasetConfig]] = {
    **{name: SyntheticDatasetConfig for name in SYNTHETIC_DATASETS},
    "spirals": SpiralsDatasetConfig,
    **{name: DatasetConfig for name in BUILTIN_DATASETS},
    "csv": CsvDatasetConfig,
}


# --- trainer, tracking, root -----------------------------------------------------------------
@dataclass
class EarlyStoppingConfig:
    enabled: bool = False
    patience: int = 20
    min_delta: float = 0.0
    restore_best_weights: bool = False


@dataclass
class TrainerConfig:
    epochs: int = 1000
    batch_size: Optional[int] = None  # None: full batch
    dtype: str = "float64"
    loss: str = "mse"
    # Fixed, not "whatever the machine has": OpenBLAS sums in a different order per thread count
    # (1e-13 drift), so a fixed count keeps runs bit-identical across launchers and machines.
    blas_threads: int = 1
    # Epochs of a stuck loss with saturated sigmoid/tanh units before the run counts as diverged.
    saturation_patience: int = 20
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: Optional[str] = None  # None: sqlite:///<directory bprun started in>/mlflow.db
    experiment: str = "backprop-runner"
    run_name: Optional[str] = None  # None: built from the data set, optimizer and overrides
    tensors_every: int = 1  # log full weight/gradient tensors every n-th epoch; 0: never
    offline: bool = False  # keep runs in a local store (mlflow-offline.db); upload later with bprun-sync
    http_timeout: float = 5.0  # seconds an http(s) tracking server may take to answer
    http_retries: int = 2


@dataclass
class ExperimentConfig:
    """The whole composed config, as ``validate`` returns it."""

    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = MISSING
    dataset: DatasetConfig = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 0


def register_schemas() -> None:
    """Store every schema in Hydra's ConfigStore (under ``schema/``) for the YAML options."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="base_config", node=ExperimentConfig)
    store.store(group="schema/model", name="mlp", node=ModelConfig)
    store.store(group="schema/trainer", name="trainer", node=TrainerConfig)
    store.store(group="schema/tracking", name="tracking", node=TrackingConfig)
    for name, schema in OPTIMIZER_SCHEMAS.items():
        store.store(group="schema/optimizer", name=name, node=schema)
    for name, schema in DATASET_SCHEMAS.items():
        store.store(group="schema/dataset", name=name, node=schema)


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


# --- validation ------------------------------------------------------------------------------
def _allowed(names: Any) -> str:
    return ", ".join(sorted(names))


def _problems(cfg: ExperimentConfig) -> list[str]:
    problems: list[str] = []

    def need(ok: bool, key: str, value: Any, allowed: str) -> None:
        if not ok:
            problems.append(f"{key}={value!r} is not allowed: {allowed}")

    def choice(key: str, value: Any, names: Any) -> None:
        need(value in names, key, value, f"choose one of {_allowed(names)}")

    def positive(key: str, value: float) -> None:
        need(math.isfinite(value) and value > 0, key, value, "it must be a finite number > 0")

    def fraction(key: str, value: float, closed_high: bool = False) -> None:
        ok = 0 <= value <= 1 if closed_high else 0 <= value < 1
        need(ok, key, value, f"it must lie in [0, 1{']' if closed_high else ')'}")

    model, optimizer, dataset, trainer = cfg.model, cfg.optimizer, cfg.dataset, cfg.trainer
    need(all(size >= 1 for size in model.hidden), "model.hidden", model.hidden,
         "every hidden layer size must be an integer >= 1 ([] for no hidden layer)")
    choice("model.activation", model.activation, [a for a in ACTIVATIONS if a != "softmax"])
    choice("model.output_activation", model.output_activation, ACTIVATIONS)
    choice("model.init", model.init, INITIALIZERS)
    positive("model.init_std", model.init_std)

    positive("optimizer.lr", optimizer.lr)
    choice("optimizer.schedule.name", optimizer.schedule.name, SCHEDULE_NAMES)
    need(optimizer.schedule.step_size >= 1, "optimizer.schedule.step_size", optimizer.schedule.step_size,
         "it must be an integer >= 1")
    need(0 < optimizer.schedule.gamma <= 1, "optimizer.schedule.gamma", optimizer.schedule.gamma,
         "it must lie in (0, 1]")
    if optimizer.lr > 0:
        need(0 <= optimizer.schedule.min_lr <= optimizer.lr, "optimizer.schedule.min_lr",
             optimizer.schedule.min_lr, f"it must lie in [0, optimizer.lr={optimizer.lr}]")
    if isinstance(optimizer, MomentumConfig):
        fraction("optimizer.momentum", optimizer.momentum)
    if isinstance(optimizer, AdamConfig):
        fraction("optimizer.beta1", optimizer.beta1)
        fraction("optimizer.beta2", optimizer.beta2)
        positive("optimizer.eps", optimizer.eps)

    fraction("dataset.val_fraction", dataset.val_fraction)
    if isinstance(dataset, SyntheticDatasetConfig):
        need(dataset.n_samples >= 4, "dataset.n_samples", dataset.n_samples, "it must be an integer >= 4")
        need(math.isfinite(dataset.noise) and dataset.noise >= 0, "dataset.noise", dataset.noise,
             "it must be a finite number >= 0")
    if isinstance(dataset, SpiralsDatasetConfig):
        need(dataset.classes >= 2, "dataset.classes", dataset.classes, "it must be an integer >= 2")
    if isinstance(dataset, CsvDatasetConfig):
        need(os.path.isfile(dataset.path), "dataset.path", dataset.path,
             f"no such file (relative paths start from {os.getcwd()})")
        need(len(dataset.targets) >= 1, "dataset.targets", dataset.targets, "name at least one target column")
        choice("dataset.task", dataset.task, CSV_TASKS)
        if dataset.task == "classification":
            need(len(dataset.targets) == 1, "dataset.targets", dataset.targets,
                 "classification takes exactly one column of class labels")

    need(trainer.epochs >= 1, "trainer.epochs", trainer.epochs, "it must be an integer >= 1")
    need(trainer.batch_size is None or trainer.batch_size >= 1, "trainer.batch_size", trainer.batch_size,
         "it must be an integer >= 1, or null for full batch")
    choice("trainer.dtype", trainer.dtype, DTYPES)
    need(trainer.saturation_patience >= 0, "trainer.saturation_patience", trainer.saturation_patience,
         "it must be an integer >= 0 (0 turns the check off)")
    need(trainer.blas_threads >= 1, "trainer.blas_threads", trainer.blas_threads, "it must be an integer >= 1")
    choice("trainer.loss", trainer.loss, LOSSES)
    required = REQUIRED_OUTPUT_ACTIVATION.get(trainer.loss)
    if required is not None and model.output_activation != required:
        problems.append(
            f"trainer.loss={trainer.loss!r} needs model.output_activation='{required}', "
            f"got {model.output_activation!r}"
        )
    need(trainer.early_stopping.patience >= 1, "trainer.early_stopping.patience",
         trainer.early_stopping.patience, "it must be an integer >= 1")
    need(trainer.early_stopping.min_delta >= 0, "trainer.early_stopping.min_delta",
         trainer.early_stopping.min_delta, "it must be >= 0")
    if trainer.early_stopping.enabled and dataset.val_fraction == 0:
        problems.append("trainer.early_stopping.enabled=True needs a validation split: "
                        "set dataset.val_fraction > 0")
    need(bool(cfg.tracking.experiment.strip()), "tracking.experiment", cfg.tracking.experiment,
         "name an MLflow experiment (a non-empty string)")
    need(cfg.tracking.http_timeout > 0, "tracking.http_timeout", cfg.tracking.http_timeout,
         "it must be a number of seconds > 0")
    need(cfg.tracking.http_retries >= 0, "tracking.http_retries", cfg.tracking.http_retries,
         "it must be an integer >= 0")
    need(cfg.tracking.tensors_every >= 0, "tracking.tensors_every", cfg.tracking.tensors_every,
         "it must be an integer >= 0 (0 turns tensor logging off)")
    need(cfg.seed >= 0, "seed", cfg.seed, "it must be an integer >= 0")
    if cfg.dataset.seed is not None:
        need(cfg.dataset.seed >= 0, "dataset.seed", cfg.dataset.seed, "it must be an integer >= 0 or null")
    return problems


def _find_target_keys(node: Any, path: str = "") -> list[str]:
    """Full keys of every ``_target_`` in a plain container."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            full = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                found.append(full)
            found.extend(_find_target_keys(value, full))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(_find_target_keys(value, f"{path}[{index}]"))
    return found


def validate(cfg: DictConfig) -> ExperimentConfig:
    """Check a composed config and return it as typed dataclasses.

    Raises
    ------
    ConfigError
        Naming every bad key (``optimizer.lr``), its value and what is allowed.
    """
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    raw = OmegaConf.to_container(cfg, resolve=False)
    raw.pop("hydra", None)
    targets = _find_target_keys(raw)
    if targets:
        raise ConfigError(
            f"{', '.join(targets)}: configs are plain data and are never instantiated; remove '_target_'"
        )
    optimizer_name = raw.get("optimizer", {}).get("name") if isinstance(raw.get("optimizer"), dict) else None
    dataset_name = raw.get("dataset", {}).get("name") if isinstance(raw.get("dataset"), dict) else None
    if optimizer_name not in OPTIMIZER_SCHEMAS:
        raise ConfigError(f"optimizer.name={optimizer_name!r} is not allowed: choose one of "
                          f"{_allowed(OPTIMIZER_SCHEMAS)}")
    if dataset_name not in DATASET_SCHEMAS:
        raise ConfigError(f"dataset.name={dataset_name!r} is not allowed: choose one of {_allowed(DATASET_SCHEMAS)}")

    # Merging into a fresh schema for the chosen options catches what '+key=value' slipped past
    # composition: unknown keys, wrong types, missing values.
    schema = OmegaConf.structured(ExperimentConfig(
        optimizer=OPTIMIZER_SCHEMAS[optimizer_name](), dataset=DATASET_SCHEMAS[dataset_name]()
    ))
    try:
        # Merge the plain container: a typed DictConfig merges its extra keys in silently.
        merged = OmegaConf.merge(schema, OmegaConf.create(raw))
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise ConfigError(f"{', '.join(missing)}: required but not set (???); set it on the command line, "
                              f"for example {missing[0]}=...")
        typed: ExperimentConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        message = str(error).split("\n")[0]
        parent = OmegaConf.select(schema, key.rpartition(".")[0]) if "." in key else schema
        if isinstance(error, ConfigKeyError) and isinstance(parent, DictConfig):
            message += f"; allowed keys: {_allowed(parent.keys())}"
        raise ConfigError(f"{key}: {message}") from None
    problems = _problems(typed)
    if problems:
        raise ConfigError("\n".join(problems))
    return typed
