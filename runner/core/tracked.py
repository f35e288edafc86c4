"""The tracked part of a run: training inside an MLflow run, with its telemetry and artifacts.

Kept apart from ``runner.core.run`` so that an untracked run never imports MLflow (a second
and a half, and more than half of a tracked process's memory).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from engine import MLP, History, Observer
from runner import names
from runner.core.datasets import Dataset
from runner.core.schema import ExperimentConfig
from runner.core.training import Launch, ParentRun, RunResult, Training, default_run_name, final_metrics, run_pointer
from runner.core.validation import settings_dict, settings_yaml
from runner.plots.background import active_helper
from runner.plots.training import save_training_plots
from runner.process import interruption
from runner.tracking.destination import Destination, check_store
from runner.tracking.mlflow_run import TrackedRun
from runner.tracking.model import save_pyfunc_model
from runner.tracking.params import flatten
from runner.tracking.provenance import git_diff, project_git_state, provenance_tags
from runner.tracking.store import ensure_experiment
from runner.tracking.telemetry import EpochMetrics
from runner.tracking.tensors import TensorWriter, snapshot_spacing

log = logging.getLogger(__name__)


def tracked_training(
    settings: ExperimentConfig,
    destination: Destination,
    parent: ParentRun | None,
    launch: Launch,
    training: Training,
    observers: Sequence[Observer],
) -> RunResult:
    """Train inside a new MLflow run at ``destination``: metrics every epoch, tensors streamed
    into the artifact folder, then plots, weights and the model. Plots and tensors are also
    written when training fails or is interrupted."""
    config_yaml = settings_yaml(settings)
    tags = _tags(settings, training.dataset, launch, destination, config_yaml)
    if parent is None:
        check_store(destination)
        experiment_id = ensure_experiment(destination.uri, settings.tracking.experiment)
    else:  # the sweep created the experiment and its parent run
        if destination.is_server:  # a job after the server went away fails at once, in one line
            check_store(destination)
        experiment_id = parent.experiment_id
        tags[names.PARENT_RUN] = parent.run_id
        tags[names.JOB_OVERRIDES] = json.dumps(list(launch.overrides))  # the job the sweep launched
    run_name = launch.run_name or settings.tracking.run_name or default_run_name(settings)
    params = _params(settings, training.network, launch)
    # The store's checks can take seconds on a busy machine: a signal that came meanwhile stops
    # the run before it exists, leaving nothing behind.
    interruption.test_point("run-create")
    interruption.check()
    # A server run keeps what the server does not get beside its other files (runner.tracking.unsent).
    unsent_root = launch.output_dir or Path(launch.start_dir)
    with TrackedRun(destination.uri, experiment_id, run_name, params, tags, unsent_root) as run:
        for earlier in launch.supersedes:  # the sweep's summary and reports count the job once, as this run
            run.set_tags_of(earlier, {names.SUPERSEDED_BY: run.run_id})
        _record_inputs(run, training.dataset, launch, config_yaml, tags[names.DATA_SHA256])
        if launch.output_dir is not None:
            launch.output_dir.mkdir(parents=True, exist_ok=True)
            pointer = run_pointer(run.run_id, destination.uri, experiment_id)
            (launch.output_dir / names.RUN_POINTER_FILE).write_text(pointer)
        history = _train_with_telemetry(run, settings, training, observers)
        run.set_tags({names.STOP_REASON: history.stop_reason, names.EPOCHS_RUN: str(history.epochs_run)})
        if history.stop_reason == "diverged":
            run.fail(history.message)
        elif history.stop_reason == "interrupted":
            run.kill(history.message)
        else:
            if history.stop_reason == "pruned":  # the UI shows it apart from runs finished in full
                run.set_tags({names.DESCRIPTION: history.message})
            _save_model(run, training.network, training.dataset)
        artifact_bytes = sum(path.stat().st_size for path in run.artifacts.directory.rglob("*") if path.is_file())
    metrics = final_metrics(history, settings.trainer.loss)
    return RunResult(
        metrics, history, training.network, training.dataset, run.run_id, destination.uri, experiment_id, artifact_bytes
    )


def _params(settings: ExperimentConfig, network: MLP, launch: Launch) -> dict[str, Any]:
    """The run's params: every setting by its dotted key, the layer sizes, the option chosen in
    each config group."""
    params = flatten(settings_dict(settings))
    params["model.layer_sizes"] = network.sizes
    params.update({f"{names.CHOICE_PARAM_PREFIX}{group}": option for group, option in launch.choices.items()})
    return params


def _tags(
    settings: ExperimentConfig, dataset: Dataset, launch: Launch, destination: Destination, config_yaml: str
) -> dict[str, str]:
    """The run's tags: its data, its provenance, and how it was launched."""
    tags = {
        names.DATASET: dataset.name,
        names.TASK: dataset.task,
        names.DATA_SOURCE: dataset.source,
        names.DATA_SHA256: dataset.fingerprint(),
        **provenance_tags(config_yaml, launch.start_dir),
        **launch.tags,
    }
    if destination.sync_target:
        tags[names.SYNC_TARGET] = destination.sync_target
    return tags


def _record_inputs(run: TrackedRun, dataset: Dataset, launch: Launch, config_yaml: str, fingerprint: str) -> None:
    """What the run executes: its config, overrides and uncommitted changes, and its data."""
    text_artifacts = {
        names.CONFIG_ARTIFACT: config_yaml,
        names.OVERRIDES_ARTIFACT: yaml.safe_dump(list(launch.overrides)),
    }
    source = project_git_state()
    if source is not None and source.dirty:
        # The commit alone does not give back the code that ran; the diff does.
        text_artifacts[names.GIT_DIFF_ARTIFACT] = git_diff(source.root)
    # Uploaded at once to a server: a run whose process or server dies still has its config.
    run.write_text_artifacts(text_artifacts, upload_now=True)
    run.log_dataset(dataset.name, dataset.X_train, dataset.Y_train, fingerprint)


def _train_with_telemetry(
    run: TrackedRun, settings: ExperimentConfig, training: Training, observers: Sequence[Observer]
) -> History:
    """Train with every epoch's metrics logged and its tensors streamed; the plots are drawn
    however training ends."""
    epoch_metrics = EpochMetrics(run, settings.trainer.loss, settings.tracking.layer_stats_every)
    tensor_writer = None
    if settings.tracking.tensors_every != 0:
        epochs = settings.trainer.epochs
        tensor_writer = TensorWriter(
            run.artifacts.directory / names.TENSORS_ARTIFACT,
            snapshot_spacing(settings.tracking.tensors_every, epochs),
            epochs,
        )
        run.metrics.before_flush.append(tensor_writer.sync)
    completed = False
    try:
        # Tensors first: by the time an epoch's metrics are flushed its tensors are written.
        history = training.run([*([tensor_writer] if tensor_writer else []), epoch_metrics, *observers])
        completed = history.stop_reason != "interrupted"
    finally:
        if tensor_writer is not None:
            try:
                tensor_writer.close()
            except OSError as error:  # a full disk: say so once, keep the run's own error
                log.warning("could not finish the tensor files: %s", error)
        _save_plots(epoch_metrics, run, completed)
    return history


def _save_plots(epoch_metrics: EpochMetrics, run: TrackedRun, completed: bool) -> None:
    """Draw the run's plots, by the plot helper of a sweep run in this process when it has one
    (``runner.plots.background``) and the run completed; a plot that cannot be drawn never costs
    the run its status."""
    directory = run.artifacts.directory / names.PLOTS_ARTIFACT
    helper = active_helper()
    try:
        if helper is not None and completed:
            try:
                helper.draw(epoch_metrics.series, directory, epoch_metrics.steps, run.run_id)
                # A server gets them once drawn, at the run's end.
                run.artifacts.upload_when_written(names.PLOTS_ARTIFACT, lambda: helper.wait_for(run.run_id))
                return
            except Exception as error:  # the helper is gone: draw here
                log.debug("drawing the plots in-process: %s", error)
        save_training_plots(epoch_metrics.series, directory, epoch_metrics.steps)
    except Exception as error:  # the metrics are logged; a missing picture is only a warning
        log.warning("could not draw the plots: %s: %s", type(error).__name__, error)


def _save_model(run: TrackedRun, network: MLP, dataset: Dataset) -> None:
    """Final weights as ``weights.npz`` (``W1, b1, W2, b2, ...``) and the pyfunc ``model/``."""
    arrays = {}
    for number, (W, b) in enumerate(zip(network.weights, network.biases), start=1):
        arrays[f"W{number}"], arrays[f"b{number}"] = W, b
    # allow_pickle is named (as its default) so that no array name can set it.
    np.savez(run.artifacts.directory / names.WEIGHTS_ARTIFACT, allow_pickle=True, **arrays)
    save_pyfunc_model(str(run.artifacts.directory / names.MODEL_ARTIFACT), network, dataset)
