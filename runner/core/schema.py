"""The settings of one run, as typed dataclasses: the schema every config option starts from.

Each YAML option in ``conf/<group>/`` builds on the schema of its group (the Hydra app stores
these classes in Hydra's ConfigStore under ``schema/<group>/<name>``), so wrong types and
unknown keys already fail while Hydra composes. ``runner.core.validation`` checks the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

SYNTHETIC_DATASETS = ("xor", "sine", "moons", "circles", "spirals")
BUILTIN_DATASETS = ("iris", "diabetes", "digits")
CSV_TASKS = ("classification", "regression")


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
    seed: int | None = None  # None: derived from the top-level seed


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
    features: list[str] | None = None  # None: every column that is not a target
    targets: list[str] = MISSING
    task: str = "regression"  # or classification (one target column of labels, one-hot encoded)


DATASET_SCHEMAS: dict[str, type[DatasetConfig]] = {
    **dict.fromkeys(SYNTHETIC_DATASETS, SyntheticDatasetConfig),
    "spirals": SpiralsDatasetConfig,
    **dict.fromkeys(BUILTIN_DATASETS, DatasetConfig),
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
    batch_size: int | None = None  # None: full batch
    dtype: str = "float64"
    loss: str = "mse"
    # Fixed, not "whatever the machine has": OpenBLAS sums in a different order per thread count
    # (1e-13 drift), so a fixed count keeps runs bit-identical across launchers and machines.
    blas_threads: int = 1
    # Epochs of a stuck loss with saturated sigmoid/tanh units before the run counts as diverged.
    saturation_patience: int = 20
    # Stop as diverged once the train loss is more than this many times its first epoch's: 0 off.
    divergence_factor: float = 100.0
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None  # None: sqlite:///<directory bprun started in>/mlflow.db
    experiment: str = "backprop-runner"
    run_name: str | None = None  # None: built from the data set, optimizer and overrides
    # Full weight/gradient tensors every n-th epoch and the last; None: at most MAX_SNAPSHOTS (tensors.py)
    # evenly spaced epochs and the last; 0: never.
    tensors_every: int | None = None
    # Each layer's statistics (norms, update ratio) every n-th epoch and the last; 0: never. The
    # loss and the other metrics are logged every epoch whatever this is.
    layer_stats_every: int = 1
    # The run's plots/ (learning curves, norms); None: every run's but a stacked sweep's members'
    # (the sweep's summary plots all of them).
    plots: bool | None = None
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
