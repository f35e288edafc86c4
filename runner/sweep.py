"""Sweeps as one MLflow object: a parent run per multirun, every job's run nested under it.

``SweepCallback`` (registered in ``conf/config.yaml`` under ``hydra.callbacks``) runs in the
process that launches the jobs. Before any job starts it creates the store, the experiment and
the parent run, all at once and in one process: parallel first use of a fresh SQLite file can
corrupt it, and concurrent ``set_experiment`` calls can drop runs into the Default experiment.
It hands the parent to the jobs through environment variables, set in this process: the basic
launcher's jobs run here, and worker processes started later inherit them. When the sweep ends it
attaches the summary to the parent, sets the parent's final status, and makes the command exit
non-zero if any job failed.

For the joblib launcher it also starts, before the parent run, a fork server that imports what a
job needs (``runner.worker_preload``); the workers are forked from it ready to run, where each
would otherwise start a new interpreter and import it all. The server's environment predates the
parent run, so the variables also go into every job's ``hydra.job.env_set``, which Hydra applies
around the job in whatever process runs it. (Like any ``forkserver`` or ``spawn`` worker, the
workers import the command's main script again as ``__mp_main__``; ``bprun`` and
``python -m runner`` guard theirs.)
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from runner.config import clean_value

log = logging.getLogger(__name__)

ENV_PARENT_RUN_ID = "BPRUN_SWEEP_PARENT_RUN_ID"
ENV_EXPERIMENT_ID = "BPRUN_SWEEP_EXPERIMENT_ID"
ENV_TRACKING_URI = "BPRUN_SWEEP_TRACKING_URI"
SWEEP_TAG = "bprun.sweep"
IN_PROCESS_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
JOBLIB_LAUNCHER = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
T = TypeVar("T")


@dataclass(frozen=True)
class SweepContext:
    """The parent run a job belongs to, as the sweep callback announced it."""

    parent_run_id: str
    experiment_id: str
    tracking_uri: str

    @classmethod
    def from_environment(cls) -> "SweepContext | None":
        parent = os.environ.get(ENV_PARENT_RUN_ID)
        if not parent:
            return None
        return cls(parent, os.environ[ENV_EXPERIMENT_ID], os.environ[ENV_TRACKING_URI])


def check_output_folder(folder: str) -> None:
    """Exit with one clear message when Hydra's output folder cannot be written (a read-only
    mount, a full disk), instead of Hydra's traceback after it failed to create it."""
    import tempfile
    from pathlib import Path

    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".bprun-write-check-"):
            pass
    except OSError as error:
        print(f"bprun: cannot write the output folder {folder}: {error.strerror}; nothing was trained "
              "(set hydra.run.dir / hydra.sweep.dir elsewhere)", file=sys.stderr)
        sys.exit(2)


def swept_values(overrides: list[str]) -> dict[str, list[Any] | str]:
    """``{key: [values]}`` for each sweep override (``key=a,b``, ``range(...)``, ``choice(...)``);
    a search space that cannot be listed (``interval(...)``, Optuna's) stays its text."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    swept: dict[str, list[Any] | str] = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            continue
        key = override.get_key_element()
        try:
            swept[key] = [clean_value(value) for value in override.sweep_iterator()]
        except Exception:  # interval() and other continuous spaces have no iterator
            swept[key] = override.input_line.partition("=")[2]
    return swept


def job_params_from_hydra() -> dict[str, str]:
    """``choice.<group>`` params: which option of each config group the job used (``dataset``
    is ``moons``), so that a sweep over groups can be compared by option name."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {f"choice.{group}": str(option) for group, option in choices.items()
            if not group.startswith("hydra/") and option is not None}


class SweepCallback(Callback):
    """Creates the parent run of a multirun and closes it with the sweep summary."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_output_folder(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_output_folder(config.hydra.sweep.dir)
        if not config.tracking.enabled:
            return
        launcher = config.hydra.launcher.get("_target_")
        if launcher == IN_PROCESS_LAUNCHER:
            from runner import background_plots

            background_plots.enable()  # the jobs run here, one after the other
        # The server imports what a job needs while this process creates the store and the parent.
        # (With n_jobs=1 joblib runs the jobs here: no workers.)
        worker_server = (launcher == JOBLIB_LAUNCHER and config.hydra.launcher.get("n_jobs") != 1
                         and start_worker_server())
        try:
            context = self._start_parent(config)
        except Exception as error:
            # Hydra would only warn about a failing callback and run every job untracked.
            print(f"bprun: cannot start the sweep's MLflow parent run: {type(error).__name__}: {error}",
                  file=sys.stderr)
            sys.exit(1)
        # Workers forked from the server, which started before the parent existed, learn it from
        # their job's config. Without that channel they start as new processes, which inherit it.
        if worker_server and hand_context_to_jobs(config, context):
            fork_workers_from_server()

    def _start_parent(self, config: DictConfig) -> SweepContext:
        from mlflow.tracking import MlflowClient

        from runner.tracking import SYNC_TARGET_TAG, check_store, ensure_experiment, log_params, run_destination

        tracking = config.tracking
        uri, sync_target = run_destination(tracking.uri, tracking.offline, config.hydra.runtime.cwd)
        check_store(uri, tracking.http_timeout, tracking.http_retries)
        experiment_id = ensure_experiment(uri, tracking.experiment)
        overrides = list(config.hydra.overrides.task)
        swept = swept_values(overrides)
        client = MlflowClient(uri)
        name = "sweep " + " x ".join(swept) if swept else "sweep"
        from runner.doctor import process_tags

        parent = client.create_run(experiment_id, run_name=name, tags={
            **process_tags(),
            SWEEP_TAG: "true",
            "sweep.command": " ".join(["bprun", *sys.argv[1:]]),
            "sweep.swept_keys": json.dumps(list(swept)),
            "sweep.dir": str(config.hydra.sweep.dir),
            **({SYNC_TARGET_TAG: sync_target} if sync_target else {}),
        })
        self.parent_run_id = parent.info.run_id
        log_params(client, self.parent_run_id, {f"sweep.{key}": values for key, values in swept.items()})
        os.environ.update({
            ENV_PARENT_RUN_ID: self.parent_run_id, ENV_EXPERIMENT_ID: experiment_id, ENV_TRACKING_URI: uri,
        })
        log.info("sweep parent run %s in %s", self.parent_run_id, uri)
        return SweepContext(self.parent_run_id, experiment_id, uri)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failed = 0
        try:
            if self.parent_run_id is not None:
                context = SweepContext.from_environment()
                for name in (ENV_PARENT_RUN_ID, ENV_EXPERIMENT_ID, ENV_TRACKING_URI):
                    os.environ.pop(name, None)
                failed = summarize_sweep(context.tracking_uri, self.parent_run_id)
        finally:
            _stop_idle_workers()  # after the summary, which they may have drawn
        if failed:
            print(f"bprun: {failed} job(s) of the sweep failed; see the summary above", file=sys.stderr)
            sys.exit(1)


def hand_context_to_jobs(config: DictConfig, context: SweepContext) -> bool:
    """Add the sweep's environment variables to every job's ``hydra.job.env_set`` (through the
    sweep's Hydra overrides, from which each job's config is composed, in whatever process), so
    that Hydra sets them around each job wherever it runs. Returns False, changing nothing, for
    a value that a quoted override would not carry verbatim (a quote, a backslash or a ``$``,
    which Hydra and OmegaConf interpret)."""
    from omegaconf import read_write

    values = {ENV_PARENT_RUN_ID: context.parent_run_id, ENV_EXPERIMENT_ID: context.experiment_id,
              ENV_TRACKING_URI: context.tracking_uri}
    if any(character in value for value in values.values() for character in "'\\$"):
        return False
    overrides = [f"++hydra.job.env_set.{name}='{value}'" for name, value in values.items()]
    with read_write(config.hydra.overrides):
        config.hydra.overrides.hydra.extend(overrides)
    return True


def start_worker_server() -> bool:
    """Start a fork server that imports what a job needs (``runner.worker_preload``) for the
    joblib launcher's workers; returns False if it could not start. Until
    ``fork_workers_from_server`` the workers would still start as new interpreters, joblib's
    default, each importing it all again (about 2 s of a core, both workers at once)."""
    import multiprocessing
    import multiprocessing.forkserver

    try:
        multiprocessing.set_forkserver_preload(["runner.worker_preload"])
        multiprocessing.forkserver.ensure_running()
    except Exception as error:
        log.debug("no fork server for the joblib workers: %s", error)
        return False
    return True


def fork_workers_from_server() -> None:
    """Make joblib's process pool (loky) start its workers from the fork server."""
    from joblib.externals.loky.backend.context import set_start_method

    set_start_method("forkserver", force=True)


def _joblib_workers():
    """The joblib launcher's pool of worker processes (loky's reusable executor), if it ran."""
    executors = sys.modules.get("joblib.externals.loky.reusable_executor")
    return getattr(executors, "_executor", None)


def _draw_where_warm(function: Callable[..., T], *arguments: Any) -> T:
    """``function(*arguments)`` where matplotlib is already imported and warm: in an idle joblib
    worker (about 0.4 s sooner than drawing cold here), else as ``background_plots.call``."""
    from runner import background_plots

    workers = _joblib_workers()
    if workers is not None:
        from joblib.externals.loky.process_executor import BrokenProcessPool

        try:
            return workers.submit(function, *arguments).result()
        except BrokenProcessPool as error:  # a worker died: draw elsewhere
            log.debug("the joblib workers are gone (%s); drawing elsewhere", error)
    return background_plots.call(function, *arguments)


def _stop_idle_workers() -> None:
    """Stop the joblib launcher's worker processes now that every job has returned (each ended
    its own run first). Left alone they are joined at interpreter exit, each tearing down its
    imports first: about a second and a half after the summary, seen in the sweep benchmark."""
    executor = _joblib_workers()
    if executor is None:
        return
    try:
        executor.terminate(kill_workers=True)
    except Exception as error:  # they still stop at exit, as before
        log.debug("could not stop the joblib workers early: %s", error)


def summarize_sweep(uri: str, parent_run_id: str) -> int:
    """Attach the comparison table and plots to the parent run, print the table, end the parent
    FINISHED (or FAILED when a job failed); return the number of jobs that did not finish."""
    import tempfile

    from mlflow.tracking import MlflowClient

    from runner import background_plots, report

    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    swept_keys = json.loads(parent.data.tags.get("sweep.swept_keys", "[]"))
    children = report.sweep_children(client, parent_run_id)
    # A sweep none of whose jobs left a run failed as a whole.
    failed = sum(run.info.status != "FINISHED" for run in children) if children else 1
    try:
        table, histories = report.runs_table(client, children, swept_keys or None)
        print(report.format_table(table))  # ranked by val_mse, train_mse where there is none
        # The last jobs' plots were drawn meanwhile; the summary's are drawn where they were.
        background_plots.wait()
        with tempfile.TemporaryDirectory() as directory:
            _draw_where_warm(report.write_report, table, histories, directory)
            client.log_artifacts(parent_run_id, directory, "summary")
        client.set_tag(parent_run_id, "sweep.jobs", str(len(children)))
        client.set_tag(parent_run_id, "sweep.failed_jobs", str(failed))
    finally:
        client.set_terminated(parent_run_id, "FAILED" if failed else "FINISHED")
    return failed


def record_failed_job(overrides: list[str], reason: str) -> None:
    """A job that failed before its run existed (bad config or data) still gets a FAILED child
    run, so that the sweep summary lists it with its reason."""
    context = SweepContext.from_environment()
    if context is None:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(context.tracking_uri)
    run = client.create_run(context.experiment_id, run_name=" ".join(overrides) or "job", tags={
        "mlflow.parentRunId": context.parent_run_id, "failure_reason": reason[:5000],
        "job.overrides": json.dumps(overrides),
    })
    client.set_terminated(run.info.run_id, "FAILED")


def end_interrupted_sweep() -> None:
    """After Ctrl-C or SIGTERM in a multirun, end the parent run KILLED (Hydra skips the sweep's
    end callback when a job raises). Does nothing outside a sweep."""
    context = SweepContext.from_environment()
    if context is None:
        return
    from mlflow.tracking import MlflowClient

    from runner import report

    client = MlflowClient(context.tracking_uri)
    # Parallel workers are killed with the sweep before they can end their own runs.
    for child in report.sweep_children(client, context.parent_run_id):
        if child.info.status == "RUNNING":
            client.set_tag(child.info.run_id, "failure_reason", "interrupted with its sweep")
            client.set_terminated(child.info.run_id, "KILLED")
    client.set_terminated(context.parent_run_id, "KILLED")
