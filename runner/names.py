"""The names bprun writes into MLflow and reads back, and the environment variables that carry a
sweep to its jobs: defined here once, used everywhere.

The full schema (what each tag, metric and artifact means) is in ``docs/tracking.md``.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from typing import Any

# --- tags MLflow itself defines --------------------------------------------------------------
PARENT_RUN = "mlflow.parentRunId"  # nests a sweep's job runs under its parent in the UI
RUN_NAME = "mlflow.runName"
EXPERIMENT_KIND = "mlflow.experimentKind"

# --- a run ------------------------------------------------------------------------------------
DATASET = "dataset"
TASK = "task"
DATA_SOURCE = "data_source"
DATA_SHA256 = "data.sha256"
STOP_REASON = "stop_reason"
EPOCHS_RUN = "epochs_run"
FAILURE_REASON = "failure_reason"
CONFIG_SHA256 = "config.sha256"
# Which process runs the run, so that bprun-doctor can tell whether it is still alive.
HOST = "bprun.host"
PID = "bprun.pid"
PROCESS_START = "bprun.process_start"

# --- provenance (runner.tracking.provenance; docs/tracking.md says what each one means) -------
GIT_TAG_PREFIX = "git."
GIT_COMMIT = "git.commit"
GIT_DIRTY = "git.dirty"
CWD_GIT_COMMIT = "cwd_git.commit"
CWD_GIT_DIRTY = "cwd_git.dirty"
VERSION_TAG_PREFIX = "version."
VERSION_PYTHON = "version.python"
VERSION_NUMPY = "version.numpy"
VERSION_HYDRA_CORE = "version.hydra_core"
VERSION_OMEGACONF = "version.omegaconf"
VERSION_MLFLOW = "version.mlflow"
VERSION_BACKPROP_RUNNER = "version.backprop_runner"
BLAS_TAG_PREFIX = "blas."
BLAS_LIBRARY = "blas.library"
BLAS_THREADS = "blas.threads"

# --- a sweep's parent run ---------------------------------------------------------------------
SWEEP = "bprun.sweep"  # "true" on a sweep's parent run
SWEEP_COMMAND = "sweep.command"
SWEEP_ARGV = "sweep.argv"  # JSON list: the command line's arguments, exactly (bprun-resume runs it again)
SWEEP_CWD = "sweep.cwd"  # the folder the sweep was started in (its relative paths start there)
SUPERSEDED_BY = "bprun.superseded_by"  # a job's run that a resumed sweep ran again: the new run's id
SWEPT_KEYS = "sweep.swept_keys"  # JSON list of the keys the sweep varies
SWEEP_DIR = "sweep.dir"
SWEEP_JOBS = "sweep.jobs"
SWEEP_FAILED_JOBS = "sweep.failed_jobs"
SWEEP_STACKS = "sweep.stacks"  # hydra/launcher=stacked: how the sweep's jobs were stacked
SWEEP_VIEW = "sweep.view"  # the page of the sweep's saved view in the MLflow UI
DESCRIPTION = "mlflow.note.content"  # a run's description in the MLflow UI
SWEEP_BEST_RUN = "sweep.best_run_id"  # the job whose objective is the best so far
SWEEP_BEST_RUN_NAME = "sweep.best_run_name"
BEST_PREFIX = "best_"  # the parent's metric best_<objective>: the best objective so far, step = jobs ended
JOB_OVERRIDES = "job.overrides"  # JSON list of a job's overrides
SWEEP_PARAM_PREFIX = "sweep."  # params sweep.<key>: the values a sweep gives <key>
CHOICE_PARAM_PREFIX = "choice."  # params choice.<group>: the option of each config group

# --- reruns and offline runs ------------------------------------------------------------------
RERUN_OF = "rerun_of"
RERUN_RESULT = "rerun.result"
RERUN_OVERRIDES = "rerun.overrides"
REQUEUED = "bprun.requeued"  # "true": the cluster stopped the job and requeued it, which started a new run
REQUEUE_OF = "bprun.requeue_of"  # a requeued job's new run: the run its job had before
SYNC_TARGET = "bprun.sync_target"  # an offline run: the server it is meant for
SYNCED_AS = "bprun.synced_as"  # an offline run already uploaded: <server>#<run id>
SYNCED_FROM = "bprun.synced_from"  # an uploaded copy: the offline run's id

# --- metrics --------------------------------------------------------------------------------
# What sweeps and reports rank runs by; a run without a validation split stands in its train_ twin.
DEFAULT_RANKING_METRIC = "val_mse"
# Each layer's statistics, logged every epoch as layer<l>/<statistic> (layers numbered from 1).
WEIGHT_NORM = "weight_norm"
BIAS_NORM = "bias_norm"
GRAD_WEIGHT_NORM = "grad_weight_norm"
GRAD_BIAS_NORM = "grad_bias_norm"
UPDATE_RATIO = "update_ratio"
LAYER_STATISTICS = (WEIGHT_NORM, BIAS_NORM, GRAD_WEIGHT_NORM, GRAD_BIAS_NORM, UPDATE_RATIO)
_LAYER_PREFIX = "layer"

# --- artifacts --------------------------------------------------------------------------------
CONFIG_ARTIFACT = "config.yaml"  # the validated config the run executed; what a rerun runs
OVERRIDES_ARTIFACT = "overrides.yaml"
GIT_DIFF_ARTIFACT = "git_diff.patch"
TRACEBACK_ARTIFACT = "traceback.txt"
WEIGHTS_ARTIFACT = "weights.npz"
MODEL_ARTIFACT = "model"
TENSORS_ARTIFACT = "tensors"
PLOTS_ARTIFACT = "plots"
SUMMARY_ARTIFACT = "summary"
RUN_POINTER_FILE = "mlflow_run.json"  # written into a Hydra output folder: which run it made

# --- environment variables --------------------------------------------------------------------
# A sweep's job learns its parent run from these, set in its hydra.job.env_set by the sweeper,
# so that they travel with the job's config to whatever process or machine runs it.
ENV_PARENT_RUN_ID = "BPRUN_PARENT_RUN_ID"
ENV_EXPERIMENT_ID = "BPRUN_EXPERIMENT_ID"
ENV_SWEEP_TRACKING_URI = "BPRUN_TRACKING_URI"
ENV_SWEEP_SIZE = "BPRUN_SWEEP_SIZE"  # how many jobs the sweep runs: a job's [k/N] label
ENV_JOB_POSITION = "BPRUN_JOB_POSITION"  # the k of a job's [k/N] label: jobs of the sweep started so far
ENV_NAME_DIGITS = "BPRUN_NAME_DIGITS"  # significant digits of a float in a job's run name
ENV_SWEPT_KEYS = "BPRUN_SWEPT_KEYS"  # the keys a job's sweep varies, comma-separated (its run's name shows them)
ENV_SWEEP_SYNC_TARGET = "BPRUN_SYNC_TARGET"
ENV_RESUME_PARENT = "BPRUN_RESUME_PARENT"  # bprun-resume: the parent run of the sweep to continue
ENV_PRUNER = "BPRUN_PRUNER"  # an Optuna trial: its pruner, objective and number (runner.sweeps.pruning)
TRIAL = "optuna.trial"  # an Optuna trial's run: its number in the study
ENV_SUPERSEDES = "BPRUN_SUPERSEDES"  # a resumed job: the ids of its runs that did not finish, comma-separated
ENV_REQUEUE_OF = "BPRUN_REQUEUE_OF"  # a requeued job: the run it had before (names.REQUEUE_OF)
# MLflow's own: the store, and its http client's timeout and retries (read at every request).
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_HTTP_TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"
ENV_HTTP_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
# Test hook: a job raises at this epoch, so that tests can check through the real CLI that a
# crash is recorded (FAILED, traceback) and that the next job starts clean.
ENV_CRASH_AT_EPOCH = "BPRUN_TEST_CRASH_AT_EPOCH"
# Test hook: a job pauses after this epoch until the test removes the file <pid>.paused it
# creates in the folder ENV_PAUSE_FOLDER names, so that a test can act at a known epoch.
ENV_PAUSE_AT_EPOCH = "BPRUN_TEST_PAUSE_AT_EPOCH"
ENV_PAUSE_FOLDER = "BPRUN_TEST_PAUSE_FOLDER"


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A config's settings by dotted key, as runs name their params: ``{'optimizer': {'lr': 1}}``
    -> ``{'optimizer.lr': 1}``; lists stay values."""
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


@functools.cache  # called for every value of every epoch: worked out once per name
def layer_metric(layer: int, statistic: str) -> str:
    """The metric of ``statistic`` (one of ``LAYER_STATISTICS``) of layer ``layer``, numbered
    from 1: ``layer2/grad_weight_norm``. The ``/`` groups a layer's charts in the MLflow UI."""
    return f"{_LAYER_PREFIX}{layer}/{statistic}"


def layer_of(metric: str) -> int | None:
    """The layer number of a ``layer_metric`` name, None for any other metric."""
    prefix, slash, _ = metric.partition("/")
    digits = prefix[len(_LAYER_PREFIX) :]
    return int(digits) if slash and prefix.startswith(_LAYER_PREFIX) and digits.isdigit() else None


# A run logs its loss and accuracy as 1_loss/<name> and 2_accuracy/<name> (1_loss/train_mse): the
# MLflow UI puts a metric in the section named by the text before its last "/", orders the
# sections by name, and puts the metrics without a "/" after them all; so a run's page and the
# chart view open on the loss, then the accuracy, then the layer<l>/ statistics. Everything else
# (reports, objectives, the command line) calls them by their short names (train_mse).
LOSS_SECTION = "1_loss"
ACCURACY_SECTION = "2_accuracy"
_SECTIONS = (LOSS_SECTION, ACCURACY_SECTION)


@functools.cache  # called for every value of every epoch: worked out once per name
def logged_metric_name(name: str) -> str:
    """The name a run logs the loss or accuracy metric ``name`` under: ``1_loss/train_mse``."""
    if "/" in name:
        return name
    return f"{ACCURACY_SECTION if name.endswith('_accuracy') else LOSS_SECTION}/{name}"


def short_metric_name(logged: str) -> str:
    """A logged metric's short name: ``train_mse`` for ``1_loss/train_mse``; any other unchanged."""
    section, slash, name = logged.partition("/")
    return name if slash and section in _SECTIONS else logged


def metric_key(logged: Collection[str], name: str) -> str | None:
    """The key under which a run's ``logged`` metrics hold the metric ``name`` (a short name):
    its logged name, or ``name`` itself in a store written before the sections; None if neither."""
    for key in (logged_metric_name(name), name):
        if key in logged:
            return key
    return None


def tracked_metric_name(split: str, engine_name: str, loss: str) -> str:
    """The metric name a run logs for the engine's ``engine_name`` of ``split`` (train, val): the
    loss is logged as ``<split>_mse`` when it is mse, else as ``<split>_loss``."""
    return f"{split}_{'mse' if engine_name == 'loss' and loss == 'mse' else engine_name}"
