"""The tracked part of a run: training inside an MLflow run, with its telemetry and artifacts.

Kept apart from ``runner.core.run`` so that an untracked run never imports MLflow (a second
and a half, and more than half of a tracked process's memory).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import numpy as np
import yaml

from engine import History, Observer
from runner.core.schema import ExperimentConfig
from runner.core.training import Launch, ParentRun, RunResult, Training, default_run_name, final_metrics, run_pointer
from runner.core.validation import settings_dict, settings_yaml
from runner.plots.background import active_helper
from runner.plots.training import save_training_plots
from runner.tracking import names
from runner.tracking.destination import Destination, check_store
from runner.tracking.mlflow_run import TrackedRun, flatten
from runner.tracking.model import save_pyfunc_model
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
    dataset, network = training.dataset, training.network
    tracking = settings.tracking
    config_yaml = settings_yaml(settings)
    params = flatten(settings_dict(settings))
    params["model.layer_sizes"] = network.sizes
    params.update({f"{names.CHOICE_PARAM_PREFIX}{group}": option for group, option in launch.choices.items()})
    fingerprint = dataset.fingerprint()
    tags = {
        names.DATASET: dataset.name,
        names.TASK: dataset.task,
        names.DATA_SOURCE: dataset.source,
        names.DATA_SHA256: fingerprint,
        **provenance_tags(config_yaml, launch.start_dir),
        **launch.tags,
    }
    if destination.sync_target:
        tags[names.SYNC_TARGET] = destination.sync_target
    if parent is None:
        check_store(destination)
        experiment_id = ensure_experiment(destination.uri, tracking.experiment)
    else:  # the sweep created the experiment and its parent run
        if destination.is_server:  # a job after the server went away fails at once, in one line
            check_store(destination)
        experiment_id = parent.experiment_id
        tags[names.PARENT_RUN] = parent.run_id
        tags[names.JOB_OVERRIDES] = json.dumps(list(launch.overrides))  # the job the sweep launched
    run_name = launch.run_name or tracking.run_name or default_run_name(settings)
    history: History | None = None
    with TrackedRun(destination.uri, experiment_id, run_name, params, tags) as run:
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
        if launch.output_dir is not None:
            launch.output_dir.mkdir(parents=True, exist_ok=True)
            (launch.output_dir / names.RUN_POINTER_FILE).write_text(
                run_pointer(run.run_id, destination.uri, experiment_id)
            )
        run.log_dataset(dataset.name, dataset.X_train, dataset.Y_train, fingerprint)
        epoch_metrics = EpochMetrics(run, settings.trainer.loss)
        tensor_writer = None
        if tracking.tensors_every != 0:
            tensor_writer = TensorWriter(
                run.artifact_dir / names.TENSORS_ARTIFACT,
                snapshot_spacing(tracking.tensors_every, settings.trainer.epochs),
                settings.trainer.epochs,
            )
            run.before_flush.append(tensor_writer.sync)
        try:
            # Tensors first: by the time an epoch's metrics are flushed its tensors are written.
            history = training.run([*([tensor_writer] if tensor_writer else []), epoch_metrics, *observers])
        finally:
            if tensor_writer is not None:
                try:
                    tensor_writer.close()
                except OSError as error:  # a full disk: say so once, keep the run's own error
                    log.warning("could not finish the tensor files: %s", error)
            _save_plots(epoch_metrics, run, completed=history is not None and history.stop_reason != "interrupted")
        run.set_tags({names.STOP_REASON: history.stop_reason, names.EPOCHS_RUN: str(history.epochs_run)})
        if history.stop_reason == "diverged":
            run.fail(history.message)
        elif history.stop_reason == "interrupted":
            run.kill(history.message)
        else:
            _save_model(run, network, dataset)
        artifact_bytes = sum(path.stat().st_size for path in run.artifact_dir.rglob("*") if path.is_file())
    return RunResult(
        final_metrics(history, settings.trainer.loss),
        history,
        network,
        dataset,
        run.run_id,
        destination.uri,
        experiment_id,
        artifact_bytes,
    )


def _save_plots(epoch_metrics: EpochMetrics, run: TrackedRun, completed: bool) -> None:
    """Draw the run's plots, by the plot helper of a sweep run in this process when it has one
    (``runner.plots.background``) and the run completed; a plot that cannot be drawn never costs
    the run its status."""
    directory = run.artifact_dir / names.PLOTS_ARTIFACT
    helper = active_helper()
    try:
        if helper is not None and completed:
            try:
                helper.draw(epoch_metrics.series, directory, epoch_metrics.epochs, run.run_id)
                if not run.writes_artifacts_in_place:  # uploaded when the run ends: once drawn
                    run.upload_when_written(names.PLOTS_ARTIFACT, lambda: helper.wait_for(run.run_id))
                return
            except Exception as error:  # the helper is gone: draw here
                log.debug("drawing the plots in-process: %s", error)
        save_training_plots(epoch_metrics.series, directory, epoch_metrics.epochs)
    except Exception as error:  # the metrics are logged; a missing picture is only a warning
        log.warning("could not draw the plots: %s: %s", type(error).__name__, error)


def _save_model(run: TrackedRun, network, dataset) -> None:
    """Final weights as ``weights.npz`` (``W1, b1, W2, b2, ...``) and the pyfunc ``model/``."""
    arrays = {}
    for number, (W, b) in enumerate(zip(network.weights, network.biases), start=1):
        arrays[f"W{number}"], arrays[f"b{number}"] = W, b
    np.savez(run.artifact_dir / names.WEIGHTS_ARTIFACT, **arrays)
    save_pyfunc_model(str(run.artifact_dir / names.MODEL_ARTIFACT), network, dataset)
