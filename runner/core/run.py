"""One training run: validated settings in, a trained network and its metrics out, tracked in
MLflow when asked.

``run_training`` knows nothing of Hydra or of sweeps. Everything comes as an argument: the
settings, where to track the run (a ``Destination``; None trains untracked), the parent run a
sweep's job nests under, and how the run was started (``Launch``: overrides, the option chosen
in each config group, a folder to leave a pointer to the run in). The Hydra app and
``bprun-rerun`` both call it.

Everything that can be wrong with the settings or the data raises (``DataError``) before any
MLflow run exists. The run then always ends with a status: FINISHED; FAILED when training
diverged (``TrainingFailed`` is raised after) or crashed (the error is re-raised after); KILLED
when SIGINT or SIGTERM arrived (``Interrupted`` is raised after), training having stopped after
its current mini-batch with every completed epoch logged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig
from threadpoolctl import threadpool_limits

from engine import MLP, EarlyStopping, Observer, StoppingRules, Validation
from runner.core.datasets import Dataset
from runner.core.schema import ExperimentConfig
from runner.core.training import (
    Launch,
    ParentRun,
    RunRequest,
    RunResult,
    Training,
    TrainingFailed,
    build_optimizer,
    final_metrics,
    load_data,
    make_generators,
)
from runner.core.validation import validate
from runner.process import interruption
from runner.tracking.destination import Destination, where_to_look

__all__ = ["Launch", "ParentRun", "RunRequest", "RunResult", "TrainingFailed", "run", "run_training"]


def run_training(
    settings: ExperimentConfig,
    destination: Destination | None,
    *,
    parent: ParentRun | None = None,
    launch: Launch | None = None,
    dataset: Dataset | None = None,
    observers: Sequence[Observer] = (),
) -> RunResult:
    """Train the network ``settings`` describe; track it at ``destination`` (a child of
    ``parent`` when given); return the result. See the module docstring for how it ends.

    ``dataset`` replaces the one the settings name (reruns load it first to check it);
    ``observers`` see every epoch (a progress bar, tests)."""
    launch = launch or Launch()
    interruption.check()  # nothing has started: stopping here leaves nothing behind
    if dataset is None:
        dataset = load_data(settings)
    training = build_training(settings, dataset)
    # A fixed thread count: OpenBLAS sums in another order at another count (results drift by 1e-13).
    with threadpool_limits(limits=settings.trainer.blas_threads, user_api="blas"):
        if destination is None:
            history = training.run(observers)
            result = RunResult(final_metrics(history, settings.trainer.loss), history, training.network, dataset)
        else:
            from runner.core.tracked import tracked_training  # (lazy: an untracked run never imports MLflow)

            result = tracked_training(settings, destination, parent, launch, training, observers)
    return ended(result, parent)


def build_training(settings: ExperimentConfig, dataset: Dataset) -> Training:
    """The network ``settings`` describe, its optimizer and the engine's training arguments."""
    generators = make_generators(settings)
    model, trainer = settings.model, settings.trainer
    network = MLP(
        [dataset.n_inputs, *model.hidden, dataset.n_outputs],
        generators["init"],
        activation=model.activation,
        output_activation=model.output_activation,
        init=model.init,
        init_std=model.init_std,
        dtype=trainer.dtype,
    )
    early_stopping = None
    if trainer.early_stopping.enabled:
        stopping = trainer.early_stopping
        early_stopping = EarlyStopping(stopping.patience, stopping.min_delta, stopping.restore_best_weights)
    validation = None
    if dataset.X_val is not None and dataset.Y_val is not None:  # a data set has both or neither
        validation = Validation(dataset.X_val, dataset.Y_val)
    return Training(
        network,
        build_optimizer(settings),
        dataset,
        {
            "epochs": trainer.epochs,
            "loss": trainer.loss,
            "batch_size": trainer.batch_size,
            "rng": generators["shuffle"],
            "validation": validation,
            "metrics": ["mse"] + (["accuracy"] if dataset.task == "classification" else []),
            "stopping": StoppingRules(
                early_stopping=early_stopping,
                saturation_patience=trainer.saturation_patience,
                divergence_factor=trainer.divergence_factor,
            ),
            "stop_requested": interruption.requested,
        },
    )


def ended(result: RunResult, parent: ParentRun | None) -> RunResult:
    """``result``, once its run has ended; raised instead as ``Interrupted`` when training was
    stopped by a signal, as ``TrainingFailed`` when it diverged (see the module docstring)."""
    if result.history.stop_reason == "interrupted":
        epochs = f"after {result.history.epochs_run} complete epoch(s)"
        interruption.check(
            f"run {result.run_id} ended KILLED {epochs}, each one logged"
            if result.run_id
            else f"training stopped {epochs} (untracked)"
        )
    if result.history.stop_reason == "diverged":
        message = result.history.message
        if result.run_id is not None and result.tracking_uri is not None:
            message += f" (run {result.run_id} ended FAILED"
            if parent is None:  # a sweep says once where to look at all of its runs
                message += f"; see it: {where_to_look(result.tracking_uri, result.experiment_id, result.run_id)}"
            message += ")"
        raise TrainingFailed(message, result.run_id)
    return result


def run(
    cfg: DictConfig | dict[str, Any],
    *,
    tracking_uri: str | None = None,
    start_dir: str | None = None,
    dataset: Dataset | None = None,
    observers: Sequence[Observer] = (),
) -> RunResult:
    """Validate a composed config and run it: the Python way to ``bprun``'s single run.

    The run is tracked as the config's ``tracking`` settings say (``tracking_uri`` overrides the
    store; the default store is ``mlflow.db`` in ``start_dir``, default the current directory),
    or not at all with ``tracking.enabled=false``."""
    settings = validate(cfg)
    start_dir = start_dir or os.getcwd()
    target = None
    if tracking_uri is not None:
        target = Destination(tracking_uri, None, settings.tracking.http_timeout, settings.tracking.http_retries)
    elif settings.tracking.enabled:
        target = Destination.configured(settings.tracking, start_dir)
    return run_training(settings, target, launch=Launch(start_dir=start_dir), dataset=dataset, observers=observers)
