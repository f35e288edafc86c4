"""Rerunning a tracked run from its MLflow record and checking that it repeats (``bprun-rerun``).

``bprun-rerun RUN_ID_OR_FOLDER [--tolerance X] [--tracking-uri URI]``

The source is an MLflow run id or a Hydra output folder (``outputs/<date>/<time>``, its
``.hydra`` subfolder, or one job folder of a multirun), whose ``mlflow_run.json`` names the run
and its store. The rerun:

1. fetches the run's ``config.yaml`` artifact (the composed config the job ran);
2. warns, before running, about every provenance tag that differs from the original's
   (``git.commit``, ``git.dirty``, ``version.*``, ``blas.*``: ``key: old -> new``), and when
   both trees are dirty but their uncommitted changes differ from ``git_diff.patch``;
3. loads the data set as the run would and refuses (``RerunRefused``, exit 2) when its
   fingerprint differs from the original's ``data.sha256`` (a CSV changed);
4. trains again into the original's store and experiment, as a new run tagged
   ``rerun_of=<run id>`` (never a child of a sweep, even when the original was one);
5. compares every ``train_*``/``val_*`` metric history epoch by epoch, the number of epochs,
   the run status and the final weights (``weights.npz``), tags the new run
   ``rerun.result=identical|different``, and says where the first difference is.

Exit codes: 0 identical, 1 different, 2 cannot rerun or refused (nothing was trained), 3 rerun
done but nothing to compare (a folder of an untracked ``tracking=none`` run).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow.artifacts
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from threadpoolctl import threadpool_limits

from runner import names
from runner.core.datasets import DataError
from runner.core.run import Launch, TrainingFailed, run_training
from runner.core.schema import ExperimentConfig
from runner.core.training import load_data
from runner.core.validation import ConfigError, clean_value, settings_yaml, validate
from runner.process.errors import InvalidInput
from runner.tracking.destination import Destination, resolve_tracking_uri
from runner.tracking.history import metric_history
from runner.tracking.provenance import git_diff, project_git_state, provenance_tags
from runner.tracking.store import StoreMissing, open_store

log = logging.getLogger(__name__)

EXIT_IDENTICAL = 0
EXIT_DIFFERENT = 1
EXIT_CANNOT_RERUN = 2
EXIT_NOT_COMPARED = 3

# Provenance that can change the numbers. cwd_git.* describes where a command was started, not
# the code that ran; config.sha256 changes whenever the rerun adjusts the config (experiment
# name, a CSV path made absolute), and the config itself is the artifact we rerun.
COMPARED_TAG_PREFIXES = ("git.", "version.", "blas.")
COMPARED_METRIC_PREFIXES = ("train_", "val_")
# At one epoch several metrics usually differ together; name the one people look at first.
METRIC_PRIORITY = ("mse", "loss", "accuracy")
RUN_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
NOT_RECORDED = "not recorded"


class RerunError(InvalidInput):
    """The rerun cannot start (no such store, run, folder or config); nothing was trained."""


class RerunRefused(RerunError):
    """The data the run would read now is not the data the original trained on."""


@dataclass(frozen=True)
class Difference:
    """One place where original and rerun disagree: ``where`` is ``"train_mse"`` (with
    ``epoch``) or ``"layer1 weights"``; a value is None when that side has none."""

    where: str
    epoch: int | None
    original: float | None
    rerun: float | None


@dataclass
class Comparison:
    """What comparing two runs found. ``first`` is the earliest differing (epoch, metric);
    ``largest`` the largest absolute difference over every epoch of every metric and every
    weight (0.0 and None when all agree exactly); ``mismatches`` lists differences of shape:
    epoch counts, statuses, missing metrics, epochs, weight arrays."""

    tolerance: float
    first: Difference | None = None
    largest: float = 0.0
    largest_where: str | None = None
    weights_differ: bool = False
    mismatches: list[str] = field(default_factory=list)
    epochs_compared: int = 0  # the epochs of the original's history that were compared
    weights_compared: bool = False
    note: str = ""  # what was left out of the comparison, and why

    @property
    def identical(self) -> bool:
        return self.first is None and not self.weights_differ and not self.mismatches

    def consider(self, difference: float, where: str) -> None:
        if difference > self.largest:
            self.largest, self.largest_where = difference, where


@dataclass
class RerunReport:
    """The outcome of ``rerun``. ``comparison`` is None when there was nothing to compare."""

    source: str
    original_run_id: str | None
    rerun_run_id: str | None
    tracking_uri: str | None
    experiment: str | None
    comparison: Comparison | None
    warnings: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    not_compared_reason: str = ""

    @property
    def result(self) -> str:
        """``identical``, ``different`` or ``not compared``."""
        if self.comparison is None:
            return "not compared"
        return "identical" if self.comparison.identical else "different"

    @property
    def identical(self) -> bool:
        return self.result == "identical"

    @property
    def exit_code(self) -> int:
        return {"identical": EXIT_IDENTICAL, "different": EXIT_DIFFERENT}.get(self.result, EXIT_NOT_COMPARED)

    def summary(self) -> str:
        """One line: ``identical``, ``different: first at epoch ...``, or ``nothing to compare: ...``."""
        comparison = self.comparison
        if comparison is None:
            shown = ", ".join(f"{name}={value:.6g}" for name, value in sorted(self.metrics.items()))
            return f"nothing to compare: {self.not_compared_reason}; the rerun gave {shown}"
        largest = ""
        if comparison.largest_where is not None:
            largest = f"largest absolute difference {comparison.largest:.3g} ({comparison.largest_where})"
        extent = f"{comparison.epochs_compared} epoch(s)" + (
            " and the final weights" if comparison.weights_compared else ""
        )
        extent += f" compared; {comparison.note}" if comparison.note else " compared"
        if comparison.identical:
            if not largest:
                return f"identical ({extent})"
            return f"identical within tolerance {comparison.tolerance:g} ({extent}): {largest}"
        parts = []
        first = comparison.first
        if first is not None:
            parts.append(
                f"first at epoch {first.epoch} in {first.where} "
                f"(original {_show(first.original)}, rerun {_show(first.rerun)})"
            )
        elif comparison.weights_differ:
            parts.append("every compared metric agrees but the final weights differ")
        if largest:
            parts.append(largest)
        parts.extend(comparison.mismatches)
        return "different: " + "; ".join(parts) + f" ({extent})"


def _show(value: float | None) -> str:
    # repr: the shortest text that round-trips, so two different floats never print alike.
    return "none" if value is None else repr(float(value))


# --- comparing -------------------------------------------------------------------------------
def _metric_order(name: str) -> tuple[int, int, str]:
    prefix, _, rest = name.partition("_")
    rank = METRIC_PRIORITY.index(rest) if rest in METRIC_PRIORITY else len(METRIC_PRIORITY)
    return rank, 0 if prefix == "train" else 1, name


def _differs(original: float, rerun: float, tolerance: float) -> tuple[bool, float]:
    """(differs, |a - b|); equal infinities and two NaNs agree, one NaN against a number does not."""
    if original == rerun or (math.isnan(original) and math.isnan(rerun)):
        return False, 0.0
    difference = abs(original - rerun)
    if math.isnan(difference):
        difference = math.inf
    return difference > tolerance, difference


def compare_histories(
    original: dict[str, dict[int, float]], rerun: dict[str, dict[int, float]], comparison: Comparison
) -> None:
    """Compare ``{metric: {epoch: value}}`` of every metric the original has, into ``comparison``.

    The first difference is the lowest epoch at which any metric differs by more than the
    tolerance or exists on one side only; among metrics differing at that epoch the mse comes
    first, then the loss, then the accuracy, train before val.
    """
    for name in sorted(original, key=_metric_order):
        theirs = rerun.get(name)
        if theirs is None:
            comparison.mismatches.append(f"the rerun has no {name}")
            continue
        ours = original[name]
        comparison.epochs_compared = max(comparison.epochs_compared, len(ours))
        for epoch in sorted(set(ours) | set(theirs)):
            a, b = ours.get(epoch), theirs.get(epoch)
            if a is None or b is None:
                differs = True
            else:
                differs, difference = _differs(a, b, comparison.tolerance)
                comparison.consider(difference, f"{name} at epoch {epoch}")
            if differs and (comparison.first is None or epoch < comparison.first.epoch):
                comparison.first = Difference(name, epoch, a, b)


def _array_label(name: str) -> str:
    """``W1`` -> ``layer1 weights``, ``b2`` -> ``layer2 biases``."""
    match = re.fullmatch(r"([Wb])(\d+)", name)
    if not match:
        return name
    return f"layer{match.group(2)} {'weights' if match.group(1) == 'W' else 'biases'}"


def compare_weights(
    original: dict[str, np.ndarray] | None, rerun: dict[str, np.ndarray] | None, comparison: Comparison
) -> None:
    """Compare the final weight arrays (``W1, b1, ...``) elementwise into ``comparison``."""
    if original is None and rerun is None:
        return  # neither run saved weights (both diverged): the statuses tell the rest
    if original is None or rerun is None:
        comparison.mismatches.append(f"only the {'rerun' if original is None else 'original'} saved weights.npz")
        comparison.weights_differ = True
        return
    for name in sorted(set(original) | set(rerun), key=lambda n: (n[1:], n)):
        label = _array_label(name)
        if name not in original or name not in rerun:
            comparison.mismatches.append(f"{label} exist only in the {'rerun' if name not in original else 'original'}")
            comparison.weights_differ = True
            continue
        a, b = np.asarray(original[name], dtype=float), np.asarray(rerun[name], dtype=float)
        if a.shape != b.shape:
            comparison.mismatches.append(f"{label} have shape {a.shape} in the original, {b.shape} in the rerun")
            comparison.weights_differ = True
            continue
        if a.size == 0:
            continue
        agree = (a == b) | (np.isnan(a) & np.isnan(b))
        with np.errstate(invalid="ignore"):
            difference = np.where(agree, 0.0, np.abs(a - b))
        difference[np.isnan(difference)] = math.inf
        largest = float(difference.max())
        comparison.consider(largest, label)
        if largest > comparison.tolerance:
            comparison.weights_differ = True


# --- where the original is -------------------------------------------------------------------
@dataclass(frozen=True)
class _Origin:
    """The run to rerun: its id and store, or (untracked) the folder whose config to rerun."""

    run_id: str | None
    tracking_uri: str | None
    folder: Path | None = None

    @property
    def hydra_config(self) -> Path | None:
        return self.folder / ".hydra" / "config.yaml" if self.folder else None

    def start_dir(self) -> str | None:
        """The directory the original command started in (Hydra records it), if known."""
        if self.folder is None or not (self.folder / ".hydra" / "hydra.yaml").is_file():
            return None
        hydra_yaml = OmegaConf.load(self.folder / ".hydra" / "hydra.yaml")
        return OmegaConf.select(hydra_yaml, "hydra.runtime.cwd", default=None)


def _locate(source: str, tracking_uri: str | None) -> _Origin:
    path = Path(source)
    if path.exists():
        folder = path if path.is_dir() else path.parent
        if folder.name == ".hydra":
            folder = folder.parent
        folder = folder.resolve()
        pointer = folder / "mlflow_run.json"
        if pointer.is_file():
            try:
                recorded = json.loads(pointer.read_text())
                run_id, recorded_uri = recorded["run_id"], recorded["tracking_uri"]
            except (ValueError, KeyError, TypeError) as error:
                raise RerunError(f"{pointer}: not a run pointer written by bprun ({error})") from None
            return _Origin(run_id, tracking_uri or recorded_uri, folder)
        if (folder / ".hydra" / "config.yaml").is_file():
            return _Origin(None, None, folder)
        if (folder / "multirun.yaml").is_file():
            jobs = sorted(
                p.name for p in folder.iterdir() if (p / ".hydra").is_dir() or (p / "mlflow_run.json").is_file()
            )
            raise RerunError(
                f"{folder} is a whole sweep; pass one job's folder: " + ", ".join(str(folder / job) for job in jobs)
            )
        raise RerunError(
            f"{folder} is not a Hydra output folder: it has neither mlflow_run.json nor .hydra/config.yaml"
        )
    if not RUN_ID_PATTERN.match(source):
        raise RerunError(f"{source!r} is neither an existing folder nor an MLflow run id (32 hex digits)")
    return _Origin(source, tracking_uri or resolve_tracking_uri(None, os.getcwd()))


# --- preparing the config and the data -------------------------------------------------------
def _load_config(path: Path, overrides: Sequence[str]) -> DictConfig:
    """The config file as a run sees it (floats cleaned), with ``overrides`` applied."""
    cfg = OmegaConf.create(clean_value(OmegaConf.to_container(OmegaConf.load(path), resolve=True)))
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    return cfg


def _locate_csv(cfg: DictConfig, data_source: str | None, start_dir: str | None) -> str | None:
    """A relative CSV path was relative to the directory the original started in, which need not
    be the current one. Point it at the first file that exists among the original's absolute
    ``data_source`` and the path under the start directory Hydra recorded; the fingerprint
    check then decides whether it holds the same data. Returns a line saying what changed."""
    dataset = cfg.get("dataset")
    if not isinstance(dataset, DictConfig) or dataset.get("name") != "csv":
        return None
    path = dataset.get("path")
    if not isinstance(path, str) or os.path.isabs(path):
        return None
    for candidate in (data_source, os.path.join(start_dir, path) if start_dir else None):
        if candidate and os.path.isfile(candidate):
            if os.path.abspath(path) == os.path.abspath(candidate):
                return None
            dataset.path = os.path.abspath(candidate)
            return f"dataset.path {path!r} is relative to where the original started: reading {dataset.path}"
    return None


def _validated(cfg: DictConfig, what: str) -> ExperimentConfig:
    try:
        return validate(cfg)
    except ConfigError as error:
        raise RerunError(f"the config of {what} does not validate any more:\n{error}") from None


def _load_data(settings: ExperimentConfig, what: str):
    try:
        return load_data(settings)
    except DataError as error:
        raise RerunRefused(f"cannot load the data of {what}: {error}") from None


# --- provenance ------------------------------------------------------------------------------
def provenance_warnings(original_tags: dict[str, str], current_tags: dict[str, str]) -> list[str]:
    """``key: old -> new`` for every compared provenance tag that differs."""
    keys = {key for key in (*original_tags, *current_tags) if key.startswith(COMPARED_TAG_PREFIXES)}
    lines = []
    for key in sorted(keys):
        old, new = original_tags.get(key, NOT_RECORDED), current_tags.get(key, NOT_RECORDED)
        if old != new:
            lines.append(f"{key}: {old} -> {new}")
    return lines


def _diff_by_file(patch: str) -> dict[str, str]:
    """``{path: that file's part of the diff}``. The ``#`` lines git_diff puts first name untracked
    files, which come and go (outputs, notes) without changing the code that runs; diff lines
    themselves never start with ``#``."""
    files: dict[str, str] = {}
    current = None
    for line in patch.splitlines(keepends=True):
        if line.startswith("#"):
            continue
        if line.startswith("diff --git "):
            current = line.rstrip("\n").rpartition(" b/")[2]
            files[current] = ""
        if current is not None:
            files[current] += line
    return files


def _uncommitted_changes_warning(original_tags: dict[str, str], current_tags: dict[str, str], download) -> str | None:
    """Same commit, both dirty: the tags agree, yet the code may not. Compare the diffs file by file."""
    if not (
        original_tags.get("git.dirty") == current_tags.get("git.dirty") == "true"
        and original_tags.get("git.commit") == current_tags.get("git.commit")
    ):
        return None
    recorded = download(names.GIT_DIFF_ARTIFACT)
    state = project_git_state()
    if recorded is None or state is None:
        return None
    then, now = _diff_by_file(Path(recorded).read_text()), _diff_by_file(git_diff(state.root))
    changed = sorted(name for name in set(then) | set(now) if then.get(name) != now.get(name))
    if not changed:
        return None
    return (
        f"git.diff: the uncommitted changes differ from the original's (artifact git_diff.patch) in "
        f"{', '.join(changed)}"
    )


def _current_provenance(settings: ExperimentConfig) -> dict[str, str]:
    # blas.threads is the count inside training, which a run fixes the same way.
    with threadpool_limits(limits=settings.trainer.blas_threads, user_api="blas"):
        return provenance_tags(settings_yaml(settings), os.getcwd())


def _warn(report_warnings: list[str], message: str) -> None:
    report_warnings.append(message)
    log.warning("%s", message)


# --- the rerun -------------------------------------------------------------------------------
def rerun(
    source: str, *, tracking_uri: str | None = None, tolerance: float = 0.0, overrides: Sequence[str] = ()
) -> RerunReport:
    """Re-execute a tracked run from its record and compare the result with the original.

    ``source`` is a run id or a Hydra output folder. The store is ``tracking_uri`` when given,
    else the one the folder's ``mlflow_run.json`` names, else ``MLFLOW_TRACKING_URI``, else
    ``./mlflow.db``; a missing SQLite file is an error, never created. ``tolerance``: values
    with ``|a - b| > tolerance`` differ (0: bit for bit). ``overrides`` (``["seed=5"]``) change
    the loaded config, a test hook for a deliberately perturbed rerun.

    Raises ``RerunError`` when the rerun cannot start and ``RerunRefused`` when the data differ
    from the original's; in both cases nothing was trained.
    """
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance={tolerance!r}: it must be a finite number >= 0")
    origin = _locate(str(source), tracking_uri)
    if origin.run_id is None:
        return _rerun_untracked(str(source), origin, overrides)
    try:
        client = open_store(origin.tracking_uri)
    except StoreMissing as error:
        raise RerunError(str(error)) from None
    with tempfile.TemporaryDirectory(prefix="bprun-rerun-") as scratch:
        return _rerun_tracked(str(source), origin, client, tolerance, overrides, Path(scratch))


def _rerun_untracked(source: str, origin: _Origin, overrides: Sequence[str]) -> RerunReport:
    """A folder without ``mlflow_run.json``: rerun its ``.hydra/config.yaml`` without tracking,
    since there is no record to compare with or attach the rerun to."""
    cfg = _load_config(origin.hydra_config, overrides)
    note = _locate_csv(cfg, None, origin.start_dir())
    if note:
        log.info("%s", note)
    cfg.tracking.enabled = False
    settings = _validated(cfg, str(origin.folder))
    dataset = _load_data(settings, str(origin.folder))
    result = run_training(settings, None, dataset=dataset)
    return RerunReport(
        source,
        None,
        None,
        None,
        None,
        None,
        metrics=result.metrics,
        not_compared_reason=f"{origin.folder} has no mlflow_run.json (the run was not tracked), "
        "so its .hydra/config.yaml was rerun untracked",
    )


def _rerun_tracked(
    source: str, origin: _Origin, client: MlflowClient, tolerance: float, overrides: Sequence[str], scratch: Path
) -> RerunReport:
    uri, run_id = origin.tracking_uri, origin.run_id
    try:
        original = client.get_run(run_id)
    except MlflowException as error:
        raise RerunError(f"no run {run_id} in {uri} ({error.message})") from None
    tags = original.data.tags
    experiment = client.get_experiment(original.info.experiment_id)

    def download(artifact: str, run: str = run_id) -> str | None:
        return _download(run, artifact, uri, scratch / run)

    config_path = download(names.CONFIG_ARTIFACT)
    if config_path is None:
        raise RerunError(
            f"run {run_id} has no config.yaml artifact: it was not made by bprun, or failed before "
            "training started; there is nothing to rerun"
        )
    cfg = _load_config(Path(config_path), overrides)
    # Into the original's experiment (its store comes in as tracking_uri) and tracked, whatever
    # the config says: the rerun is compared with, and filed beside, the original.
    cfg.tracking.experiment = experiment.name
    cfg.tracking.enabled = True
    note = _locate_csv(cfg, tags.get(names.DATA_SOURCE), origin.start_dir())
    if note:
        log.info("%s", note)
    what = f"run {run_id}"
    settings = _validated(cfg, what)

    warnings: list[str] = []
    current = _current_provenance(settings)
    for line in provenance_warnings(dict(tags.items()), current):
        _warn(warnings, line)
    changed_code = _uncommitted_changes_warning(tags, current, download)
    if changed_code:
        _warn(warnings, changed_code)

    dataset = _load_data(settings, what)
    recorded = tags.get(names.DATA_SHA256)
    if recorded is None:
        _warn(warnings, f"run {run_id} recorded no data fingerprint (data.sha256): the data cannot be checked")
    elif dataset.fingerprint() != recorded:
        original_source = tags.get(names.DATA_SOURCE, NOT_RECORDED)
        now = "" if dataset.source == original_source else f" (read now from {dataset.source})"
        cause = (f"the overrides {' '.join(overrides)} change it, or " if overrides else "") + (
            "the file changed since the run"
            if os.path.isfile(dataset.source)
            else "the code generating it changed since the run"
        )
        raise RerunRefused(
            f"refusing to rerun {run_id}: the data differ from the data it trained on ({cause}), "
            "so the rerun could not reproduce it.\n"
            f"  data source: {original_source}{now}\n"
            f"  data.sha256 of the original: {recorded}\n"
            f"  data.sha256 now:             {dataset.fingerprint()}"
        )

    # What there is to compare, before anything is trained.
    histories = {
        name: _history(client, run_id, name)
        for name in original.data.metrics
        if name.startswith(COMPARED_METRIC_PREFIXES)
    }
    if not any(histories.values()):
        raise RerunRefused(
            f"run {run_id} has no metric history to compare a rerun with (it ended before its first "
            "epoch was logged); nothing was rerun"
        )

    extra_tags = {names.RERUN_OF: run_id}
    if overrides:
        extra_tags[names.RERUN_OVERRIDES] = json.dumps(list(overrides))
    # A rerun is a run of its own in the original's store, never a child of a sweep.
    launch = Launch(overrides=tuple(overrides), start_dir=os.getcwd(), tags=extra_tags)
    try:
        result = run_training(settings, Destination(uri), launch=launch, dataset=dataset)
        rerun_id = result.run_id
        metrics = result.metrics
    except TrainingFailed as failure:  # diverged, like the original may have: compare its FAILED run
        rerun_id = failure.run_id
        metrics = {}
    new = client.get_run(rerun_id)

    comparison = Comparison(tolerance)
    stopped_early = original.info.status == "KILLED"
    if stopped_early:
        # Interrupted or killed: its history is a prefix of what the config trains; compare that.
        last = max((max(history) for history in histories.values() if history), default=-1)
        histories_of_rerun = {
            name: {epoch: value for epoch, value in _history(client, rerun_id, name).items() if epoch <= last}
            for name in histories
            if name in new.data.metrics
        }
        comparison.note = (
            f"the original was KILLED after {last + 1} epoch(s), so only those, and no final weights, are compared"
        )
    else:
        histories_of_rerun = {name: _history(client, rerun_id, name) for name in histories if name in new.data.metrics}
        if original.info.status != new.info.status:
            comparison.mismatches.append(f"status: original {original.info.status}, rerun {new.info.status}")
        old_epochs, new_epochs = tags.get(names.EPOCHS_RUN), new.data.tags.get(names.EPOCHS_RUN)
        if old_epochs != new_epochs:
            comparison.mismatches.append(
                f"the original ran {old_epochs or 'an unknown number of'} epochs, the rerun {new_epochs}"
            )
    compare_histories(histories, histories_of_rerun, comparison)
    if not stopped_early:
        compare_weights(
            _weights(download(names.WEIGHTS_ARTIFACT)), _weights(download(names.WEIGHTS_ARTIFACT, rerun_id)), comparison
        )
        comparison.weights_compared = True

    report = RerunReport(source, run_id, rerun_id, uri, experiment.name, comparison, warnings, metrics)
    client.set_tag(rerun_id, names.RERUN_RESULT, report.result)
    # Otherwise the UI shows two runs of the same name; the default name describes the config.
    client.set_tag(rerun_id, names.RUN_NAME, f"rerun of {original.info.run_name or run_id}")
    return report


def _download(run_id: str, artifact: str, uri: str, directory: Path) -> str | None:
    """Local path of one artifact of a run, or None when the run has no such artifact."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        return mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact, dst_path=str(directory), tracking_uri=uri
        )
    except (MlflowException, OSError):
        return None


def _history(client: Any, run_id: str, name: str) -> dict[int, float]:
    """``{epoch: value}``; on a repeated step the later value wins, as in the MLflow UI."""
    return metric_history(client, run_id, name).as_dict()


def _weights(path: str | None) -> dict[str, np.ndarray] | None:
    if path is None:
        return None
    with np.load(path) as archive:
        return {name: archive[name] for name in archive.files}
