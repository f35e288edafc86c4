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

This module fetches and runs; ``runner.reports.comparison`` decides, from plain values, what
differs. ``rerun_run`` reruns one run of an open store and returns its ``RerunReport``, the unit
a loop over many runs calls.

Which artifacts a run has is decided by MLflow's listing of them: one it never logged (the
``weights.npz`` of a diverged run) is absent and compared as such; one it lists that cannot be
downloaded or read raises ``ArtifactUnavailable`` (exit 1), so a failing store never reads as a
difference.

Exit codes: 0 identical, 1 different (or no verdict: an artifact could not be fetched), 2 cannot
rerun or refused (nothing was trained), 3 rerun done but nothing to compare (a folder of an
untracked ``tracking=none`` run).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from threadpoolctl import threadpool_limits

from engine import Observer
from runner import names
from runner.core.datasets import DataError, Dataset
from runner.core.run import Launch, TrainingFailed, run_training
from runner.core.schema import ExperimentConfig
from runner.core.training import StopAfter, load_data
from runner.core.validation import ConfigError, clean_value, settings_yaml, validate
from runner.process import interruption
from runner.process.errors import EXIT_FAILED, CommandError, InvalidInput
from runner.reports.comparison import (
    NOT_RECORDED,
    Comparison,
    RunRecord,
    compare_runs,
    compares_final_weights,
    is_compared_metric,
    provenance_warnings,
    uncommitted_changes_matter,
    uncommitted_changes_warning,
)
from runner.tracking.destination import Destination, resolve_tracking_uri
from runner.tracking.history import metric_history
from runner.tracking.provenance import git_diff, project_git_state, provenance_tags
from runner.tracking.search import sweep_jobs
from runner.tracking.store import StoreMissing, open_store

log = logging.getLogger(__name__)

EXIT_IDENTICAL = 0
EXIT_DIFFERENT = 1
EXIT_CANNOT_RERUN = 2
EXIT_NOT_COMPARED = 3
RUN_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
NOT_COMPARED = "not compared"


class RerunError(InvalidInput):
    """The rerun cannot start (no such store, run, folder or config); nothing was trained."""


class RerunRefused(RerunError):
    """The data the run would read now is not the data the original trained on."""


class ArtifactUnavailable(CommandError):
    """A run's artifacts cannot be listed, or one it lists cannot be downloaded or read: there
    is no verdict. ``rerun`` is (original id, rerun id) when the rerun was already trained (it
    stays in the store, untagged); otherwise nothing was rerun."""

    exit_code = EXIT_FAILED

    def __init__(self, run_id: str, artifact: str, problem: str, rerun: tuple[str, str] | None = None) -> None:
        self.run_id, self.artifact, self.problem, self.rerun = run_id, artifact, problem, rerun
        outcome = "nothing was rerun"
        if rerun is not None:
            outcome = f"the rerun {rerun[1]} of {rerun[0]} was trained and stays in the store without one"
        super().__init__(
            f"run {run_id}: {problem}, so there is no verdict; {outcome}. Check that the store and its "
            "artifact storage are reachable and readable, then run bprun-rerun again"
        )

    def after_training(self, original_id: str, rerun_id: str) -> ArtifactUnavailable:
        """The same failure, saying that the rerun ``rerun_id`` of ``original_id`` was trained."""
        return ArtifactUnavailable(self.run_id, self.artifact, self.problem, (original_id, rerun_id))


@dataclass
class RerunReport:
    """The outcome of rerunning one run (``rerun``, ``rerun_run``): which run, its rerun, the
    verdict. ``comparison`` is None when there was nothing to compare."""

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
        return NOT_COMPARED if self.comparison is None else self.comparison.result

    @property
    def identical(self) -> bool:
        return self.comparison is not None and self.comparison.identical

    @property
    def exit_code(self) -> int:
        if self.comparison is None:
            return EXIT_NOT_COMPARED
        return EXIT_IDENTICAL if self.comparison.identical else EXIT_DIFFERENT

    def summary(self) -> str:
        """One line: ``identical``, ``different: first at epoch ...``, or ``nothing to compare: ...``."""
        if self.comparison is None:
            shown = ", ".join(f"{name}={value:.6g}" for name, value in sorted(self.metrics.items()))
            return f"nothing to compare: {self.not_compared_reason}; the rerun gave {shown}"
        return self.comparison.describe()


# --- a run's artifacts -----------------------------------------------------------------------
def _reason(error: BaseException) -> str:
    """The error's type and the first line of its message (MLflow's can run to many lines)."""
    lines = str(getattr(error, "message", None) or error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


class RunArtifacts:
    """The artifacts of one run, copied on demand into ``scratch``.

    Which artifacts exist is MLflow's listing of the run (read once): one not listed was never
    logged, and reads as None. One listed that cannot be downloaded or read raises
    ``ArtifactUnavailable``: a store that fails must never pass for a run that logged nothing.
    """

    def __init__(self, client: MlflowClient, run_id: str, scratch: Path) -> None:
        self.client, self.run_id = client, run_id
        self.directory = scratch / run_id
        self._listed: frozenset[str] | None = None

    def _unavailable(self, artifact: str, problem: str, error: BaseException) -> ArtifactUnavailable:
        return ArtifactUnavailable(self.run_id, artifact, f"{problem} ({_reason(error)})")

    def has(self, artifact: str) -> bool:
        """Whether the run logged ``artifact`` (a top-level file or folder of its artifacts)."""
        if self._listed is None:
            try:
                listed = self.client.list_artifacts(self.run_id)
            except (MlflowException, OSError) as error:
                problem = f"cannot list its artifacts in {self.client.tracking_uri} (looking for {artifact})"
                raise self._unavailable(artifact, problem, error) from error
            self._listed = frozenset(info.path for info in listed)
        return artifact in self._listed

    def download(self, artifact: str) -> Path | None:
        """A local copy of ``artifact``; None when the run never logged it."""
        if not self.has(artifact):
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            return Path(self.client.download_artifacts(self.run_id, artifact, str(self.directory)))
        except (MlflowException, OSError) as error:
            raise self._unavailable(
                artifact, f"cannot download {artifact} from {self.client.tracking_uri}", error
            ) from error

    def text(self, artifact: str) -> str | None:
        """The text of ``artifact``; None when the run never logged it."""
        path = self.download(artifact)
        if path is None:
            return None
        try:
            return path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise self._unavailable(artifact, f"cannot read its {artifact}", error) from error

    def weights(self) -> dict[str, np.ndarray] | None:
        """The arrays of ``weights.npz`` (``W1, b1, ...``); None when the run saved none."""
        path = self.download(names.WEIGHTS_ARTIFACT)
        if path is None:
            return None
        try:
            with np.load(path) as archive:
                return {name: archive[name] for name in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise self._unavailable(
                names.WEIGHTS_ARTIFACT, f"cannot read its {names.WEIGHTS_ARTIFACT}", error
            ) from error


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


def _load_data(settings: ExperimentConfig, what: str) -> Dataset:
    try:
        return load_data(settings)
    except DataError as error:
        raise RerunRefused(f"cannot load the data of {what}: {error}") from None


# --- provenance ------------------------------------------------------------------------------
def _current_provenance(settings: ExperimentConfig) -> dict[str, str]:
    # blas.threads is the count inside training, which a run fixes the same way.
    with threadpool_limits(limits=settings.trainer.blas_threads, user_api="blas"):
        return provenance_tags(settings_yaml(settings), os.getcwd())


def _uncommitted_changes(artifacts: RunArtifacts) -> str | None:
    """Compare the original's recorded uncommitted changes with the current tree's."""
    state = project_git_state()
    if state is None:
        return None
    recorded = artifacts.text(names.GIT_DIFF_ARTIFACT)
    if recorded is None:
        return (
            f"git.diff: run {artifacts.run_id} had uncommitted changes but has no {names.GIT_DIFF_ARTIFACT} "
            "artifact: they cannot be compared with the current ones"
        )
    return uncommitted_changes_warning(recorded, git_diff(state.root))


def _warn(report_warnings: list[str], message: str) -> None:
    report_warnings.append(message)
    log.warning("%s", message)


def _provenance(tags: dict[str, str], settings: ExperimentConfig, artifacts: RunArtifacts) -> list[str]:
    """Warn (and return the lines) about how the code and libraries differ from the original's."""
    warnings: list[str] = []
    current = _current_provenance(settings)
    for line in provenance_warnings(tags, current):
        _warn(warnings, line)
    if uncommitted_changes_matter(tags, current):
        changed_code = _uncommitted_changes(artifacts)
        if changed_code:
            _warn(warnings, changed_code)
    return warnings


# --- the rerun -------------------------------------------------------------------------------
def _check_tolerance(tolerance: float) -> None:
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance={tolerance!r}: it must be a finite number >= 0")


def rerun(
    source: str, *, tracking_uri: str | None = None, tolerance: float = 0.0, overrides: Sequence[str] = ()
) -> RerunReport | SweepRerun:
    """Re-execute a tracked run from its record and compare the result with the original.

    ``source`` is a run id or a Hydra output folder; a sweep's parent run reruns every finished
    job of the sweep (``rerun_sweep``). The store is ``tracking_uri`` when given,
    else the one the folder's ``mlflow_run.json`` names, else ``MLFLOW_TRACKING_URI``, else
    ``./mlflow.db``; a missing SQLite file is an error, never created. ``tolerance``: values
    with ``|a - b| > tolerance`` differ (0: bit for bit). ``overrides`` (``["seed=5"]``) change
    the loaded config, a test hook for a deliberately perturbed rerun.

    Raises ``RerunError`` when the rerun cannot start and ``RerunRefused`` when the data differ
    from the original's (in both cases nothing was trained), and ``ArtifactUnavailable`` when an
    artifact the compared runs list cannot be fetched.
    """
    _check_tolerance(tolerance)
    origin = _locate(str(source), tracking_uri)
    if origin.run_id is None:
        return _rerun_untracked(str(source), origin, overrides)
    assert origin.tracking_uri is not None  # _locate names the store of every run it finds
    try:
        client = open_store(origin.tracking_uri)
    except StoreMissing as error:
        raise RerunError(str(error)) from None
    if _original_run(client, origin.run_id).data.tags.get(names.SWEEP) == "true":
        return rerun_sweep(client, origin.run_id, tolerance)
    return rerun_run(
        client, origin.run_id, tolerance=tolerance, overrides=overrides, start_dir=origin.start_dir(), source=source
    )


@dataclass
class SweepRerun:
    """The outcome of rerunning every finished job of a sweep (``rerun_sweep``): a row per job,
    its report or why it has none."""

    parent_run_id: str
    rows: list[tuple[str, str, RerunReport | None, str]]  # (run id, run name, report, error)

    @property
    def identical(self) -> bool:
        return bool(self.rows) and all(report is not None and report.identical for _, _, report, _ in self.rows)

    @property
    def exit_code(self) -> int:
        return EXIT_IDENTICAL if self.identical else EXIT_DIFFERENT

    def summary(self) -> str:
        """A table, one line per job, then one verdict for the sweep."""
        lines = ["job run                           name                              verdict"]
        for run_id, name, report, error in self.rows:
            verdict = report.summary() if report is not None else f"no verdict: {error}"
            lines.append(f"{run_id:<33} {name[:33]:<33} {verdict}")
        same = sum(report is not None and report.identical for _, _, report, _ in self.rows)
        lines.append(
            f"sweep {self.parent_run_id}: {'identical' if self.identical else 'different'} "
            f"({same} of {len(self.rows)} finished job(s) identical)"
        )
        return "\n".join(lines)


def rerun_sweep(client: MlflowClient, parent_run_id: str, tolerance: float = 0.0) -> SweepRerun:
    """Rerun every job of a sweep whose run finished, each into the store, and compare each."""
    rows: list[tuple[str, str, RerunReport | None, str]] = []
    for run in sweep_jobs(client, parent_run_id):
        if run.info.status != "FINISHED":
            continue
        interruption.check(f"{len(rows)} job(s) of the sweep rerun before it stopped")
        try:
            report = rerun_run(
                client, run.info.run_id, tolerance=tolerance, start_dir=run.data.tags.get(names.SWEEP_CWD)
            )
            rows.append((run.info.run_id, run.info.run_name or "", report, ""))
        except CommandError as error:  # this job has no verdict; the others still get theirs
            rows.append((run.info.run_id, run.info.run_name or "", None, str(error)))
    if not rows:
        raise RerunRefused(f"the sweep {parent_run_id} has no finished job to rerun")
    return SweepRerun(parent_run_id, rows)


def _rerun_untracked(source: str, origin: _Origin, overrides: Sequence[str]) -> RerunReport:
    """A folder without ``mlflow_run.json``: rerun its ``.hydra/config.yaml`` without tracking,
    since there is no record to compare with or attach the rerun to."""
    config, folder = origin.hydra_config, str(origin.folder)
    assert config is not None  # _locate returns an untracked origin only with its folder
    cfg = _load_config(config, overrides)
    note = _locate_csv(cfg, None, origin.start_dir())
    if note:
        log.info("%s", note)
    cfg.tracking.enabled = False
    settings = _validated(cfg, folder)
    result = run_training(settings, None, dataset=_load_data(settings, folder))
    return RerunReport(
        source,
        None,
        None,
        None,
        None,
        None,
        metrics=result.metrics,
        not_compared_reason=f"{folder} has no mlflow_run.json (the run was not tracked), "
        "so its .hydra/config.yaml was rerun untracked",
    )


def rerun_run(
    client: MlflowClient,
    run_id: str,
    *,
    tolerance: float = 0.0,
    overrides: Sequence[str] = (),
    start_dir: str | None = None,
    source: str | None = None,
) -> RerunReport:
    """Rerun run ``run_id`` of the store ``client`` reads, into that store, and compare.

    One run, one report: a caller rerunning many runs (every job of a sweep) calls this in a
    loop with one client, and collects the reports, or the errors, per run. ``start_dir`` is
    where the original started (a relative CSV path is relative to it); ``source`` is what the
    report names as the source (default: the run id). Raises as ``rerun`` does.
    """
    _check_tolerance(tolerance)
    original = _original_run(client, run_id)
    experiment = client.get_experiment(original.info.experiment_id).name
    tags = dict(original.data.tags)
    with tempfile.TemporaryDirectory(prefix="bprun-rerun-") as scratch:
        artifacts = RunArtifacts(client, run_id, Path(scratch))
        settings = _settings(tags, artifacts, experiment, overrides, start_dir)
        warnings = _provenance(tags, settings, artifacts)
        dataset = _checked_data(settings, run_id, tags, overrides, warnings)
        # Everything the original contributes to the comparison, before anything is trained.
        with_weights = compares_final_weights(original.info.status)
        before = _record(client, original, artifacts, with_weights)
        if not any(before.histories.values()):
            raise RerunRefused(
                f"run {run_id} has no metric history to compare a rerun with (it ended before its first "
                "epoch was logged); nothing was rerun"
            )
        observers = _replayed_stop(original.data.tags)
        rerun_id, metrics = _train(settings, client.tracking_uri, run_id, overrides, dataset, observers)
        try:
            rerun_artifacts = RunArtifacts(client, rerun_id, Path(scratch))
            after = _record(client, client.get_run(rerun_id), rerun_artifacts, with_weights)
        except ArtifactUnavailable as error:
            raise error.after_training(run_id, rerun_id) from error
    comparison = compare_runs(before, after, tolerance)
    uri = client.tracking_uri
    report = RerunReport(source or run_id, run_id, rerun_id, uri, experiment, comparison, warnings, metrics)
    client.set_tag(rerun_id, names.RERUN_RESULT, report.result)
    # Otherwise the UI shows two runs of the same name; the default name describes the config.
    client.set_tag(rerun_id, names.RUN_NAME, f"rerun of {original.info.run_name or run_id}")
    return report


def _original_run(client: MlflowClient, run_id: str) -> Any:
    try:
        return client.get_run(run_id)
    except MlflowException as error:
        raise RerunError(f"no run {run_id} in {client.tracking_uri} ({error.message})") from None


def _settings(
    tags: dict[str, str],
    artifacts: RunArtifacts,
    experiment: str,
    overrides: Sequence[str],
    start_dir: str | None,
) -> ExperimentConfig:
    """The settings the rerun trains: the original's recorded config, into its experiment."""
    what = f"run {artifacts.run_id}"
    config_path = artifacts.download(names.CONFIG_ARTIFACT)
    if config_path is None:
        raise RerunError(
            f"{what} has no {names.CONFIG_ARTIFACT} artifact: it was not made by bprun, or failed before "
            "training started; there is nothing to rerun"
        )
    cfg = _load_config(config_path, overrides)
    # Into the original's experiment (its store comes in as the client's) and tracked, whatever
    # the config says: the rerun is compared with, and filed beside, the original.
    cfg.tracking.experiment = experiment
    cfg.tracking.enabled = True
    note = _locate_csv(cfg, tags.get(names.DATA_SOURCE), start_dir)
    if note:
        log.info("%s", note)
    return _validated(cfg, what)


def _checked_data(
    settings: ExperimentConfig, run_id: str, tags: dict[str, str], overrides: Sequence[str], warnings: list[str]
) -> Dataset:
    """The data set the rerun trains on, refused when it is not the data the original trained on."""
    dataset = _load_data(settings, f"run {run_id}")
    recorded = tags.get(names.DATA_SHA256)
    if recorded is None:
        _warn(warnings, f"run {run_id} recorded no data fingerprint ({names.DATA_SHA256}): the data cannot be checked")
        return dataset
    if dataset.fingerprint() == recorded:
        return dataset
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


def _replayed_stop(tags: dict[str, str]) -> list[Observer]:
    """What decided outside the run where it stopped, done again: a trial its pruner stopped
    stops after the same epoch (its pruner read other runs, which a rerun does not have)."""
    if tags.get(names.STOP_REASON) != "pruned" or not tags.get(names.EPOCHS_RUN, "").isdigit():
        return []
    return [StopAfter(int(tags[names.EPOCHS_RUN]) - 1, "pruned", tags.get(names.DESCRIPTION, "pruned"))]


def _train(
    settings: ExperimentConfig,
    uri: str,
    run_id: str,
    overrides: Sequence[str],
    dataset: Dataset,
    observers: Sequence[Observer] = (),
) -> tuple[str, dict[str, float]]:
    """Train the rerun as a run of its own in the original's store, never a child of a sweep;
    returns its run id and final metrics (none when it diverged)."""
    extra_tags = {names.RERUN_OF: run_id}
    if overrides:
        extra_tags[names.RERUN_OVERRIDES] = json.dumps(list(overrides))
    launch = Launch(overrides=tuple(overrides), start_dir=os.getcwd(), tags=extra_tags)
    try:
        result = run_training(settings, Destination(uri), launch=launch, dataset=dataset, observers=observers)
        rerun_id, metrics = result.run_id, result.metrics
    except TrainingFailed as failure:  # diverged, like the original may have: compare its FAILED run
        rerun_id, metrics = failure.run_id, {}
    assert rerun_id is not None  # run_training gives every run at a destination an id
    return rerun_id, metrics


def _record(client: MlflowClient, run: Any, artifacts: RunArtifacts, with_weights: bool) -> RunRecord:
    """What the comparison needs of ``run``: status, tags, compared histories and, when they are
    compared, its final weights."""
    run_id = run.info.run_id
    histories = {  # by short name: an original logged before the sections compares with its rerun
        names.short_metric_name(key): metric_history(client, run_id, key).as_dict()
        for key in run.data.metrics
        if is_compared_metric(names.short_metric_name(key))
    }
    weights = artifacts.weights() if with_weights else None
    return RunRecord(run.info.status, dict(run.data.tags), histories, weights)
