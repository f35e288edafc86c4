"""``run(cfg)``: turn a composed config into engine objects, train, and track the run.

This is the testable core of the ``bprun`` command; ``runner.app`` only wraps it for Hydra.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from engine import MLP, EarlyStopping, History, Observer, Schedule, make_optimizer, train
from runner.config import AdamConfig, ConfigError, ExperimentConfig, MomentumConfig, clean_value, validate
from runner.datasets import Dataset, load_dataset
from runner.telemetry import tracked_metric_names

SEED_PURPOSES = ("data", "split", "init", "shuffle")


# Test hook: a job raises at this epoch, so tests can check through the real CLI that a crash is
# recorded (FAILED, traceback) and that the next job in the same process starts clean.
CRASH_TEST_HOOK = "BPRUN_TEST_CRASH_AT_EPOCH"


class _CrashAt(Observer):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, report) -> None:
        if report.epoch == self.epoch:
            raise RuntimeError(f"injected failure at epoch {self.epoch} ({CRASH_TEST_HOOK})")


class TrainingFailed(RuntimeError):
    """Training ended without a usable result (for example it diverged); the run is FAILED."""

    def __init__(self, message: str, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id  # the FAILED run, when tracked


@dataclass
class RunResult:
    """What ``run_experiment`` returns: the final metrics and what produced them."""

    metrics: dict[str, float]
    history: History
    network: MLP
    dataset: Dataset
    run_id: str | None
    tracking_uri: str | None


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


def build_optimizer(settings: ExperimentConfig):
    """The engine optimizer for ``settings.optimizer`` (options passed by name, never ``_target_``)."""
    config = settings.optimizer
    schedule = Schedule(config.schedule.name, config.schedule.step_size, config.schedule.gamma, config.schedule.min_lr)
    options: dict[str, float] = {}
    if isinstance(config, MomentumConfig):
        options["momentum"] = config.momentum
    if isinstance(config, AdamConfig):
        options.update(beta1=config.beta1, beta2=config.beta2, eps=config.eps)
    return make_optimizer(config.name, config.lr, schedule, **options)


def default_run_name(settings: ExperimentConfig) -> str:
    hidden = "x".join(map(str, settings.model.hidden)) or "none"
    return f"{settings.dataset.name}-{settings.optimizer.name}-lr{settings.optimizer.lr:.15g}-h{hidden}"


def final_metrics(history: History, loss: str) -> dict[str, float]:
    """Every metric of the weights training ended with, under its tracked name: the last epoch's,
    or the best epoch's when early stopping restored its weights."""
    epoch = -1 if history.restored_epoch is None else history.restored_epoch
    final = {}
    for key, values in history.metrics.items():
        if values:
            prefix, name = key.split("_", 1)
            final.update(tracked_metric_names({name: values[epoch]}, prefix, loss))
    return final


def hydra_overrides() -> list[str]:
    """The command-line overrides of the current Hydra job ([] outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def run(cfg: DictConfig) -> dict[str, float]:
    """Validate ``cfg``, train the network it describes, track it; return the final metrics
    (``train_mse``, ``val_mse``, ...). See ``run_experiment`` for everything else."""
    return run_experiment(cfg).metrics


def run_experiment(cfg: DictConfig, start_dir: str | None = None, show_progress: bool = False,
                   extra_observers: Sequence[Observer] = (), dataset: Dataset | None = None,
                   tracking_uri: str | None = None, extra_tags: dict[str, str] | None = None) -> RunResult:
    """Validate ``cfg``, train the network it describes, and track it in MLflow.

    ``start_dir`` anchors the default SQLite store (default: the current directory);
    ``tracking_uri`` overrides where the run goes and ``extra_tags`` are added to it (reruns);
    ``extra_observers`` and ``dataset`` (used instead of the one ``cfg`` names) are hooks for
    benchmarks and tests.

    Everything that can be wrong with the config or the data raises (``ConfigError``,
    ``DataError``) before any MLflow run exists. A diverged training ends its run FAILED and
    raises ``TrainingFailed``.
    """
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.create(clean_value(OmegaConf.to_container(cfg, resolve=True)))
    except OmegaConfBaseException as error:  # a bad ${interpolation}
        raise ConfigError(f"{getattr(error, 'full_key', None) or '?'}: {str(error).splitlines()[0]}") from None
    settings = validate(cfg)
    generators = make_generators(settings)
    if dataset is None:
        dataset = load_dataset(settings.dataset, generators["data"], generators["split"])
    model, trainer = settings.model, settings.trainer
    network = MLP(
        [dataset.n_inputs, *model.hidden, dataset.n_outputs], generators["init"],
        activation=model.activation, output_activation=model.output_activation,
        init=model.init, init_std=model.init_std, dtype=trainer.dtype,
    )
    optimizer = build_optimizer(settings)
    early_stopping = None
    if trainer.early_stopping.enabled:
        stopping = trainer.early_stopping
        early_stopping = EarlyStopping(stopping.patience, stopping.min_delta, stopping.restore_best_weights)
    extra_metrics = ["mse"] + (["accuracy"] if dataset.task == "classification" else [])

    observers: list[Observer] = list(extra_observers)
    if os.environ.get(CRASH_TEST_HOOK):
        observers.append(_CrashAt(int(os.environ[CRASH_TEST_HOOK])))
    if show_progress:
        from runner.progress import ProgressBar

        observers.append(ProgressBar(trainer.epochs, trainer.loss))
    train_arguments = dict(
        epochs=trainer.epochs, loss=trainer.loss, batch_size=trainer.batch_size, rng=generators["shuffle"],
        X_val=dataset.X_val, Y_val=dataset.Y_val, metrics=extra_metrics, early_stopping=early_stopping,
        saturation_patience=trainer.saturation_patience,
    )
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=trainer.blas_threads, user_api="blas"):
        if not settings.tracking.enabled:
            history = train(network, optimizer, dataset.X_train, dataset.Y_train, observers=observers,
                            **train_arguments)
            result = RunResult(final_metrics(history, trainer.loss), history, network, dataset, None, None)
        else:
            result = _tracked_training(cfg, settings, network, optimizer, dataset, observers, train_arguments,
                                       start_dir or os.getcwd(), tracking_uri, extra_tags or {})
    if result.history.stop_reason == "diverged":
        raise TrainingFailed(result.history.message, result.run_id)
    return result


def _tracked_training(cfg: DictConfig, settings: ExperimentConfig, network: MLP, optimizer, dataset: Dataset,
                      observers: list[Observer], train_arguments: dict, start_dir: str,
                      tracking_uri: str | None, extra_tags: dict[str, str]) -> RunResult:
    """Train inside an MLflow run: metrics every epoch, tensors streamed to the artifact
    directory, then plots, weights and the model. Plots and tensors are also written when
    training fails or is interrupted."""
    from runner.provenance import git_diff, project_git_state, provenance_tags
    from runner.sweep import SweepContext, job_params_from_hydra
    from runner.telemetry import EpochMetrics, TensorWriter
    from runner.tracking import SYNC_TARGET_TAG, MlflowRun, check_store, ensure_experiment, flatten, run_destination

    tracking = settings.tracking
    config_yaml = OmegaConf.to_yaml(cfg)
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    params["model.layer_sizes"] = network.sizes
    params.update(job_params_from_hydra())
    fingerprint = dataset.fingerprint()
    tags = {"dataset": dataset.name, "task": dataset.task, "data_source": dataset.source,
            "data.sha256": fingerprint, **provenance_tags(config_yaml, start_dir), **extra_tags}
    sweep = SweepContext.from_environment()
    uri, sync_target = (tracking_uri, None) if tracking_uri else run_destination(
        tracking.uri, tracking.offline, start_dir)
    if sync_target:
        tags[SYNC_TARGET_TAG] = sync_target
    if sweep is not None and tracking_uri is None:
        # The parent process checked the store and created it, the experiment and the parent run
        # before any job started.
        uri, experiment_id = sweep.tracking_uri, sweep.experiment_id
        tags["mlflow.parentRunId"] = sweep.parent_run_id
    else:
        check_store(uri, tracking.http_timeout, tracking.http_retries)
        experiment_id = ensure_experiment(uri, tracking.experiment)
    history = None
    with MlflowRun(uri, experiment_id, tracking.run_name or default_run_name(settings), params, tags) as tracked_run:
        text_artifacts = {
            "config.yaml": config_yaml,
            "overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(hydra_overrides())),
        }
        source = project_git_state()
        if source is not None and source.dirty:
            # The commit alone does not give back the code that ran; the diff does.
            text_artifacts["git_diff.patch"] = git_diff(source.root)
        tracked_run.write_text_artifacts(text_artifacts)
        _point_hydra_folder_at(tracked_run)
        tracked_run.log_dataset(dataset, fingerprint)
        epoch_metrics = EpochMetrics(tracked_run, settings.trainer.loss)
        tensor_writer = None
        if tracking.tensors_every:
            tensor_writer = TensorWriter(tracked_run.artifact_dir / "tensors", tracking.tensors_every,
                                         settings.trainer.epochs)
        try:
            history = train(network, optimizer, dataset.X_train, dataset.Y_train,
                            observers=[epoch_metrics, *([tensor_writer] if tensor_writer else []), *observers],
                            **train_arguments)
        finally:
            if tensor_writer is not None:
                try:
                    tensor_writer.close()
                except OSError as error:  # a full disk: say so once, keep the run's own error
                    logging.getLogger(__name__).warning("could not finish the tensor files: %s", error)
            # A completed run's plots may be drawn while the next job trains (runner.background_plots);
            # a failed or interrupted one draws them here, before its process may end.
            _save_plots(epoch_metrics, tracked_run.artifact_dir / "plots", tracked_run.run_id,
                        in_background=history is not None and tracked_run.writes_artifacts_in_place)
        tracked_run.set_tags({"stop_reason": history.stop_reason, "epochs_run": str(history.epochs_run)})
        if history.stop_reason == "diverged":
            tracked_run.fail(history.message)
        else:
            _save_model(tracked_run.artifact_dir, network, dataset)
    return RunResult(final_metrics(history, settings.trainer.loss), history, network, dataset,
                     tracked_run.run_id, uri)


def _save_plots(epoch_metrics, directory: Path, run_id: str, in_background: bool) -> None:
    """Draw the run's plots, in the helper process if ``in_background`` and ``bprun`` enabled it;
    a plot that cannot be drawn never costs the run its status."""
    from runner import background_plots
    from runner.plots import save_training_plots

    try:
        if in_background and background_plots.enabled():
            try:
                background_plots.submit(epoch_metrics.series, directory, epoch_metrics.epochs, run_id)
                return
            except Exception as error:  # no helper process (process limits, say): draw them here
                logging.getLogger(__name__).debug("drawing the plots in-process: %s", error)
        save_training_plots(epoch_metrics.series, directory, epoch_metrics.epochs)
    except Exception as error:  # the metrics are logged; a missing picture is not worth a FAILED run
        logging.getLogger(__name__).warning("could not draw the plots: %s: %s", type(error).__name__, error)


def _point_hydra_folder_at(tracked_run) -> None:
    """Write ``mlflow_run.json`` into the Hydra job's output folder, so that the folder alone
    leads back to its MLflow run (``bprun-rerun outputs/...``)."""
    import json

    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    folder = Path(HydraConfig.get().runtime.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mlflow_run.json").write_text(json.dumps(
        {"run_id": tracked_run.run_id, "tracking_uri": tracked_run.uri, "experiment_id": tracked_run.experiment_id}))


def _save_model(directory, network: MLP, dataset: Dataset) -> None:
    """Final weights as ``weights.npz`` (``W1, b1, W2, b2, ...``) and the pyfunc ``model/``."""
    arrays = {}
    for number, (W, b) in enumerate(zip(network.weights, network.biases), start=1):
        arrays[f"W{number}"], arrays[f"b{number}"] = W, b
    np.savez(directory / "weights.npz", **arrays)
    from runner.pyfunc_model import save_pyfunc_model

    save_pyfunc_model(str(directory / "model"), network, dataset)
