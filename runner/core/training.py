"""What a run is made of and what it returns: the seeds, the optimizer, the network's training
arguments, the result, and how a run was started."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import MLP, EpochReport, History, Observer, Optimizer, Schedule, make_optimizer, train
from runner import names
from runner.core.datasets import Dataset, load_dataset
from runner.core.schema import AdamConfig, ExperimentConfig, MomentumConfig
from runner.process.errors import RunError
from runner.tracking.destination import Destination

SEED_PURPOSES = ("data", "split", "init", "shuffle")


class TrainingFailed(RunError):
    """Training ended without a usable result (it diverged); its run ended FAILED."""


@dataclass(frozen=True)
class ParentRun:
    """The sweep parent run a job's run nests under (its store is the job's destination)."""

    run_id: str
    experiment_id: str


@dataclass(frozen=True)
class Launch:
    """How a run was started, recorded with it."""

    overrides: tuple[str, ...] = ()  # as typed on the command line
    choices: dict[str, str] = field(default_factory=dict)  # config group -> option chosen
    output_dir: Path | None = None  # where to leave mlflow_run.json, pointing at the run
    run_name: str | None = None  # default: tracking.run_name, else built from the settings
    start_dir: str = "."  # where the command started (provenance of a user's own repository)
    tags: dict[str, str] = field(default_factory=dict)
    supersedes: tuple[str, ...] = ()  # a resumed sweep's earlier runs of this job, which did not finish


@dataclass
class RunRequest:
    """A run to train, as ``run_training`` takes it (``run_training(**vars(request))``): its
    settings, where to track it, the sweep's parent run, how it was launched, extra observers."""

    settings: ExperimentConfig
    destination: Destination | None
    parent: ParentRun | None = None
    launch: Launch = field(default_factory=Launch)
    observers: Sequence[Observer] = ()


@dataclass
class RunResult:
    """What ``run_training`` returns: the final metrics and what produced them."""

    metrics: dict[str, float]
    history: History
    network: MLP
    dataset: Dataset
    run_id: str | None = None
    tracking_uri: str | None = None
    experiment_id: str | None = None
    artifact_bytes: int | None = None  # what the run's artifacts take (tensors, plots, model)


def make_generators(settings: ExperimentConfig) -> dict[str, np.random.Generator]:
    """One Generator per purpose, spawned from the single config seed.

    Spawning keeps the streams independent: changing the batch size (which changes how much the
    shuffle stream is used) never changes the initial weights. ``dataset.seed``, when set, fixes
    the data and the split on their own so that other seeds can vary around one data set.
    """
    streams = dict(zip(SEED_PURPOSES, np.random.SeedSequence(settings.seed).spawn(len(SEED_PURPOSES))))
    if settings.dataset.seed is not None:
        data_stream, split_stream = np.random.SeedSequence(settings.dataset.seed).spawn(2)
        streams.update(data=data_stream, split=split_stream)
    return {purpose: np.random.default_rng(stream) for purpose, stream in streams.items()}


def load_data(settings: ExperimentConfig) -> Dataset:
    """The data set the settings describe, generated and split exactly as a run does."""
    generators = make_generators(settings)
    return load_dataset(settings.dataset, generators["data"], generators["split"])


def build_optimizer(settings: ExperimentConfig) -> Optimizer:
    """The engine optimizer for ``settings.optimizer`` (options passed by name, never ``_target_``)."""
    config = settings.optimizer
    schedule = Schedule(config.schedule.name, config.schedule.step_size, config.schedule.gamma, config.schedule.min_lr)
    options: dict[str, float] = {}
    if isinstance(config, MomentumConfig):
        options["momentum"] = config.momentum
    if isinstance(config, AdamConfig):
        options.update(beta1=config.beta1, beta2=config.beta2, eps=config.eps)
    return make_optimizer(config.name, config.lr, schedule, **options)


def default_run_name(settings: ExperimentConfig, digits: int = 15) -> str:
    """``<data set>-<optimizer>-lr<lr>-h<hidden sizes>``, the learning rate to ``digits``
    significant digits (fewer for values a sampler drew: ``lr0.727``)."""
    hidden = "x".join(map(str, settings.model.hidden)) or "none"
    return f"{settings.dataset.name}-{settings.optimizer.name}-lr{settings.optimizer.lr:.{digits}g}-h{hidden}"


def final_metrics(history: History, loss: str) -> dict[str, float]:
    """Every metric of the weights training ended with, under its tracked name: the last epoch's,
    or the best epoch's when early stopping restored its weights."""
    epoch = -1 if history.restored_epoch is None else history.restored_epoch
    final = {}
    for key, values in history.metrics.items():
        if values:
            split, name = key.split("_", 1)
            final[names.tracked_metric_name(split, name, loss)] = values[epoch]
    return final


@dataclass
class Training:
    """A network, its optimizer and data, and the engine's ``train`` arguments, ready to run."""

    network: MLP
    optimizer: Optimizer
    dataset: Dataset
    arguments: dict[str, Any]  # train's keyword arguments

    def run(self, observers: Sequence[Observer]) -> History:
        return train(
            self.network,
            self.optimizer,
            self.dataset.X_train,
            self.dataset.Y_train,
            observers=list(observers),
            **self.arguments,
        )


class StopAfter(Observer):
    """Ends training after epoch ``epoch`` as ``(stop_reason, message)``: a stop decided outside
    the run (a pruner's), replayed by a rerun."""

    def __init__(self, epoch: int, stop_reason: str, message: str) -> None:
        self.epoch, self.stop = epoch, (stop_reason, message)
        self.last = -1

    def on_epoch_end(self, report: EpochReport) -> None:
        self.last = report.epoch

    def stop_training(self) -> tuple[str, str] | None:
        return self.stop if self.last >= self.epoch else None


def run_pointer(run_id: str, uri: str, experiment_id: str) -> str:
    """The ``mlflow_run.json`` left in a Hydra output folder, which leads back to its run."""
    return json.dumps({"run_id": run_id, "tracking_uri": uri, "experiment_id": experiment_id})
