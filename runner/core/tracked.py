"""The tracked part of a run: training inside an MLflow run, with its telemetry and artifacts.

Kept apart from ``runner.core.run`` so that an untracked run never imports MLflow (a second
and a half, and more than half of a tracked process's memory).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
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
from runner.tracking.metric_sinks import MetricBuffer
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
    plots = settings.tracking.plots is not False  # a run alone draws them unless told not to
    with TrackedTraining(settings, destination, parent, launch, training, plots=plots) as tracked:
        history = training.run([*tracked.observers, *observers])
        tracked.trained(history)
    return tracked.result()


class TrackedTraining:
    """A training's MLflow run, as a context manager around the training itself: entering
    creates the run with its params, tags and inputs and makes the telemetry observers
    (``observers``); ``trained(history)`` ends the telemetry and records how training ended (its
    model, when it ended well); leaving ends the run (see ``TrackedRun``), also when training
    raised, with the plots (when ``plots``) and tensors of the epochs it completed. ``metrics``,
    shared by the runs of a stack, writes their values together."""

    def __init__(
        self,
        settings: ExperimentConfig,
        destination: Destination,
        parent: ParentRun | None,
        launch: Launch,
        training: Training,
        metrics: MetricBuffer | None = None,
        *,
        plots: bool,
    ) -> None:
        self.settings, self.destination, self.parent = settings, destination, parent
        self.launch, self.training, self._metrics = launch, training, metrics
        self.plots = plots
        self._history: History | None = None
        self._ended_telemetry = False

    def __enter__(self) -> TrackedTraining:
        settings, destination, launch = self.settings, self.destination, self.launch
        config_yaml = settings_yaml(settings)
        tags = _tags(settings, self.training.dataset, launch, destination, config_yaml)
        if self.parent is None:
            check_store(destination)
            self.experiment_id = ensure_experiment(destination.uri, settings.tracking.experiment)
        else:  # the sweep created the experiment and its parent run
            if destination.is_server:  # a job after the server went away fails at once, in one line
                check_store(destination)
            self.experiment_id = self.parent.experiment_id
            tags[names.PARENT_RUN] = self.parent.run_id
            tags[names.JOB_OVERRIDES] = json.dumps(list(launch.overrides))  # the job the sweep launched
        run_name = launch.run_name or settings.tracking.run_name or default_run_name(settings)
        params = _params(settings, self.training.network, launch)
        # The store's checks can take seconds on a busy machine: a signal that came meanwhile stops
        # the run before it exists, leaving nothing behind.
        interruption.test_point("run-create")
        interruption.check()
        # A server run keeps what the server does not get beside its other files (runner.tracking.unsent).
        unsent_root = launch.output_dir or Path(launch.start_dir)
        self.run = TrackedRun(destination.uri, self.experiment_id, run_name, params, tags, unsent_root, self._metrics)
        self.run.__enter__()
        try:
            self._start(config_yaml, tags[names.DATA_SHA256])
        except BaseException as error:
            self.run.__exit__(type(error), error, error.__traceback__)
            raise
        return self

    def _start(self, config_yaml: str, fingerprint: str) -> None:
        """What the run records before training, and its telemetry observers."""
        run, launch, settings = self.run, self.launch, self.settings
        for earlier in launch.supersedes:  # the sweep's summary and reports count the job once, as this run
            run.set_tags_of(earlier, {names.SUPERSEDED_BY: run.run_id})
        _record_inputs(run, self.training.dataset, launch, config_yaml, fingerprint)
        if launch.output_dir is not None:
            launch.output_dir.mkdir(parents=True, exist_ok=True)
            pointer = run_pointer(run.run_id, self.destination.uri, self.experiment_id)
            (launch.output_dir / names.RUN_POINTER_FILE).write_text(pointer)
        self.epoch_metrics = EpochMetrics(run, settings.trainer.loss, settings.tracking.layer_stats_every)
        self.tensor_writer = None
        if settings.tracking.tensors_every != 0:
            epochs = settings.trainer.epochs
            self.tensor_writer = TensorWriter(
                run.artifacts.directory / names.TENSORS_ARTIFACT,
                snapshot_spacing(settings.tracking.tensors_every, epochs),
                epochs,
            )
            run.metrics.before_flush.append(self.tensor_writer.sync)

    @property
    def observers(self) -> list[Observer]:
        """The telemetry observers, to train with: tensors first, so that by the time an epoch's
        metrics are flushed its tensors are written."""
        return [*([self.tensor_writer] if self.tensor_writer else []), self.epoch_metrics]

    def trained(self, history: History) -> None:
        """Training ended with ``history``: end the telemetry, record how it ended."""
        self._history = history
        self._end_telemetry(completed=history.stop_reason != "interrupted")
        run = self.run
        run.set_tags({names.STOP_REASON: history.stop_reason, names.EPOCHS_RUN: str(history.epochs_run)})
        if history.stop_reason == "diverged":
            run.fail(history.message)
        elif history.stop_reason == "interrupted":
            run.kill(history.message)
        else:
            if history.stop_reason == "pruned":  # the UI shows it apart from runs finished in full
                run.set_tags({names.DESCRIPTION: history.message})
            _save_model(run, self.training.network, self.training.dataset)

    def _end_telemetry(self, completed: bool) -> None:
        """Close the tensor files and draw the plots, once, however training ended."""
        if self._ended_telemetry:
            return
        self._ended_telemetry = True
        if self.tensor_writer is not None:
            self.run.metrics.before_flush.remove(self.tensor_writer.sync)  # the buffer may be a stack's
            try:
                self.tensor_writer.close()
            except OSError as error:  # a full disk: say so once, keep the run's own error
                log.warning("could not finish the tensor files: %s", error)
        if self.plots:
            _save_plots(self.epoch_metrics, self.run, completed)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if error is not None:
                self._end_telemetry(completed=False)
            # Measured before the end: a server run's staged files go once uploaded.
            directory = self.run.artifacts.directory
            self.artifact_bytes = sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())
        finally:
            self.run.__exit__(kind, error, tb)

    def result(self) -> RunResult:
        """What the run returns, once it has ended."""
        assert self._history is not None, "a run's result comes after its training"
        metrics = final_metrics(self._history, self.settings.trainer.loss)
        training = self.training
        return RunResult(
            metrics,
            self._history,
            training.network,
            training.dataset,
            self.run.run_id,
            self.destination.uri,
            self.experiment_id,
            self.artifact_bytes,
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
