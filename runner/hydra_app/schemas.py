"""The run's settings schema (``runner.core.schema``) in Hydra's ConfigStore, where the YAML
options of ``conf/`` find it (``/schema/<group>/<name>@_here_`` in their defaults lists)."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from runner.core.schema import (
    DATASET_SCHEMAS,
    OPTIMIZER_SCHEMAS,
    ExperimentConfig,
    ModelConfig,
    TrackingConfig,
    TrainerConfig,
)


def register_schemas() -> None:
    store = ConfigStore.instance()
    store.store(name="base_config", node=ExperimentConfig)
    store.store(group="schema/model", name="mlp", node=ModelConfig)
    store.store(group="schema/trainer", name="trainer", node=TrainerConfig)
    store.store(group="schema/tracking", name="tracking", node=TrackingConfig)
    for name, optimizer_schema in OPTIMIZER_SCHEMAS.items():
        store.store(group="schema/optimizer", name=name, node=optimizer_schema)
    for name, dataset_schema in DATASET_SCHEMAS.items():
        store.store(group="schema/dataset", name=name, node=dataset_schema)
