"""Sweeps as one MLflow object: a parent run per multirun, every job's run nested under it.

``SweepCallback`` (registered in ``conf/config.yaml`` under ``hydra.callbacks``) runs in the
process that launches the jobs. Once the sweeper has composed the first batch of jobs (so a sweep
whose overrides do not compose leaves nothing in the store), and before any job starts, it creates
the store, the experiment and the parent run, all at once and in one process: parallel first use
of a fresh SQLite file can corrupt it, and concurrent ``set_experiment`` calls can drop runs into
the Default experiment. It hands the parent to the jobs through environment variables, set in this
process: the basic launcher's jobs run here, and worker processes started later inherit them.
When the sweep ends it attaches the summary to the parent, sets the parent's final status, and
makes the command exit non-zero if any job failed.

For the joblib launcher it also starts, as the multirun starts (or sooner, ``runner.cli``), a fork
server that imports what a job needs (``runner.worker_server``, ``runner.worker_preload``); the
workers are forked from it ready to run, where each would otherwise start a new interpreter and
import it all. The parent run is created in a process forked from that server too, and the
summary is made in an idle worker, so that bprun itself never imports MLflow. The server's
environment predates the parent run, so the variables also go into every job's
``hydra.job.env_set``, which Hydra applies around the job in whatever process runs it. (Like
any ``forkserver`` or ``spawn`` worker, these processes import the command's main script again
as ``__mp_main__``; ``bprun`` and ``python -m runner`` guard theirs.)
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
from runner.worker_server import fork_workers_from_server, start_worker_server

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

    def environment(self) -> dict[str, str]:
        """The environment variables that announce this context (``from_environment`` reads them)."""
        return {ENV_PARENT_RUN_ID: self.parent_run_id, ENV_EXPERIMENT_ID: self.experiment_id,
                ENV_TRACKING_URI: self.tracking_uri}


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


# The sweepers and launchers that call ``start_parent_before_launch`` (through the hooks in
# ``runner.app``); with any other, the parent run is created as soon as the multirun starts.
DEFERRING_SWEEPERS = {"hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                      "hydra_plugins.bprun_optuna_sweeper.OptunaSweeper"}
DEFERRING_LAUNCHERS = {IN_PROCESS_LAUNCHER, JOBLIB_LAUNCHER}

# The multirun of this process whose parent run is not created yet.
_awaiting_parent: "SweepCallback | None" = None


@dataclass(frozen=True)
class ParentRunRequest:
    """Everything the parent run is made of, worked out in the bprun process: the run may be
    created in another process (see ``create_parent_run_in_server_child``)."""

    configured_uri: str | None
    offline: bool
    start_dir: str
    http_timeout: float
    http_retries: int
    experiment: str
    run_name: str
    tags: dict[str, str]
    params: dict[str, Any]

    @classmethod
    def from_config(cls, config: DictConfig) -> "ParentRunRequest":
        from runner.doctor import process_tags

        tracking = config.tracking
        swept = swept_values(list(config.hydra.overrides.task))
        return cls(
            configured_uri=tracking.uri, offline=tracking.offline, start_dir=config.hydra.runtime.cwd,
            http_timeout=tracking.http_timeout, http_retries=tracking.http_retries,
            experiment=tracking.experiment,
            run_name="sweep " + " x ".join(swept) if swept else "sweep",
            tags={
                **process_tags(),  # this process's: bprun-doctor checks whether the sweep still runs
                SWEEP_TAG: "true",
                "sweep.command": " ".join(["bprun", *sys.argv[1:]]),
                "sweep.swept_keys": json.dumps(list(swept)),
                "sweep.dir": str(config.hydra.sweep.dir),
            },
            params={f"sweep.{key}": values for key, values in swept.items()},
        )


def create_parent_run(request: ParentRunRequest) -> SweepContext:
    """Create the store (if new), the experiment (if new) and the parent run."""
    from mlflow.tracking import MlflowClient

    from runner.tracking import SYNC_TARGET_TAG, check_store, ensure_experiment, log_params, run_destination

    uri, sync_target = run_destination(request.configured_uri, request.offline, request.start_dir)
    check_store(uri, request.http_timeout, request.http_retries)
    experiment_id = ensure_experiment(uri, request.experiment)
    client = MlflowClient(uri)
    tags = {**request.tags, **({SYNC_TARGET_TAG: sync_target} if sync_target else {})}
    parent = client.create_run(experiment_id, run_name=request.run_name, tags=tags)
    log_params(client, parent.info.run_id, request.params)
    return SweepContext(parent.info.run_id, experiment_id, uri)


class ParentRunFailed(RuntimeError):
    """The parent run could not be created; the message says why."""


def create_parent_run_in_server_child(request: ParentRunRequest) -> SweepContext | None:
    """``create_parent_run`` in a process forked from the workers' fork server, whose MLflow is
    imported already: this process then never imports MLflow in a joblib sweep (about 2.4 s of
    a core, while the server imports the same). None if no such process could do it.

    The child ignores Ctrl-C and SIGTERM and hands the run over explicitly: if bprun stops before
    it has announced the run (``announce``, from which an interrupted sweep is ended), the child
    ends the run KILLED itself, so that no parent run is left RUNNING."""
    import contextlib
    import multiprocessing

    forkserver = multiprocessing.get_context("forkserver")
    ours, theirs = forkserver.Pipe()
    child = forkserver.Process(target=_create_parent_run_for, args=(request, theirs),
                               name="bprun-sweep-parent", daemon=True)
    try:
        try:
            child.start()  # served once the server has imported everything
        except Exception as error:
            log.debug("no process forked from the fork server: %s", error)
            return None
        finally:
            theirs.close()
        try:
            outcome, value = ours.recv()
        except EOFError:  # the child died before answering (killed, out of memory)
            return None
        if outcome == "error":
            raise ParentRunFailed(value)
        announce(value)
        with contextlib.suppress(OSError):
            ours.send("announced")
        child.join()
        return value
    finally:
        ours.close()


def _create_parent_run_for(request: ParentRunRequest, connection: Any) -> None:
    """In the child of ``create_parent_run_in_server_child``."""
    from runner.background_plots import ignore_interrupts

    ignore_interrupts()
    try:
        context = create_parent_run(request)
    except Exception as error:
        connection.send(("error", f"{type(error).__name__}: {error}"))
        return
    try:
        connection.send(("ok", context))
        if connection.recv() == "announced":
            return
    except (EOFError, OSError):
        pass
    end_sweep(context, "KILLED", "interrupted")  # bprun stopped before it took the run over


def announce(context: SweepContext) -> None:
    """Set the sweep's environment variables in this process: the basic launcher's jobs run
    here, workers started as new processes inherit them, and an interrupted sweep is ended
    from them (``end_unfinished_sweep``)."""
    os.environ.update(context.environment())


def start_parent_before_launch(composed_job_configs: list[DictConfig]) -> None:
    """Create the parent run of this process's multirun if it is not created yet. The sweepers
    call this (``runner.app``'s hook) once a batch of jobs has composed, right before it is
    launched: a sweep whose overrides do not compose leaves nothing in the store.
    ``composed_job_configs`` are the configs the joblib workers will run, composed already;
    they get the sweep's context too."""
    global _awaiting_parent
    callback, _awaiting_parent = _awaiting_parent, None
    if callback is not None:
        callback.start_parent(composed_job_configs)


class SweepCallback(Callback):
    """Creates the parent run of a multirun and closes it with the sweep summary."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self._config: DictConfig | None = None
        self._worker_server = False

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_output_folder(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _awaiting_parent
        check_output_folder(config.hydra.sweep.dir)
        if not config.tracking.enabled:
            return
        launcher = config.hydra.launcher.get("_target_")
        if launcher == IN_PROCESS_LAUNCHER:
            from runner import background_plots

            background_plots.enable()  # the jobs run here, one after the other
        # The server imports what a job needs while this process composes the jobs' configs.
        # (With n_jobs=1 joblib runs the jobs here: no workers.)
        self._worker_server = (launcher == JOBLIB_LAUNCHER and config.hydra.launcher.get("n_jobs") != 1
                               and start_worker_server())
        self._config = config
        if launcher in DEFERRING_LAUNCHERS and config.hydra.sweeper.get("_target_") in DEFERRING_SWEEPERS:
            _awaiting_parent = self  # created right before the first batch of jobs is launched
        else:
            self.start_parent([])

    def start_parent(self, composed_job_configs: list[DictConfig]) -> None:
        """Create the parent run and hand it to the jobs; exit if it cannot be created (Hydra
        would only warn about a failing callback and run every job untracked)."""
        config = self._config
        request = ParentRunRequest.from_config(config)
        try:
            context = self._worker_server and create_parent_run_in_server_child(request)
            if not context:
                self._worker_server = False  # it could not fork: workers start as new processes
                context = create_parent_run(request)
        except Exception as error:
            reason = str(error) if isinstance(error, ParentRunFailed) else f"{type(error).__name__}: {error}"
            print(f"bprun: cannot start the sweep's MLflow parent run: {reason}", file=sys.stderr)
            sys.exit(1)
        self.parent_run_id = context.parent_run_id
        announce(context)
        log.info("sweep parent run %s in %s", context.parent_run_id, context.tracking_uri)
        # Workers forked from the server, which started before the parent existed, learn it from
        # their job's config. Without that channel they start as new processes.
        if self._worker_server and hand_context_to_jobs(config, context, composed_job_configs):
            fork_workers_from_server()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _awaiting_parent
        _awaiting_parent = None
        failed = 0
        try:
            if self.parent_run_id is not None:
                context = SweepContext.from_environment()
                failed, table = _run_where_warm(summarize_sweep, context.tracking_uri, self.parent_run_id)
                # The parent has ended. (Stopped before, in a worker or here, bprun ends it KILLED.)
                forget_context()
                print(table)  # ranked by val_mse, train_mse where there is none
        finally:
            _stop_idle_workers()  # after the summary, which they may have made
        if failed:
            print(f"bprun: {failed} job(s) of the sweep failed; see the summary above", file=sys.stderr)
            sys.exit(1)


def hand_context_to_jobs(config: DictConfig, context: SweepContext,
                         composed_job_configs: list[DictConfig] = ()) -> bool:
    """Add the sweep's environment variables to every job's ``hydra.job.env_set``, so that Hydra
    sets them around each job wherever it runs: as ``++hydra.job.env_set.*`` overrides of the
    sweep (``config``), from which any later job config is composed, and into the job configs
    composed already. Returns False, changing nothing, for a value that a quoted override would
    not carry verbatim (a quote, a backslash or a ``$``, which Hydra and OmegaConf interpret)."""
    from omegaconf import open_dict, read_write

    values = context.environment()
    if any(character in value for value in values.values() for character in "'\\$"):
        return False
    overrides = [f"++hydra.job.env_set.{name}='{value}'" for name, value in values.items()]
    for target in (config, *composed_job_configs):
        with read_write(target.hydra), open_dict(target.hydra):
            target.hydra.overrides.hydra.extend(overrides)
            if target is not config:  # as composing with the overrides would have set it
                target.hydra.job.env_set.update(values)
    return True


def _joblib_workers():
    """The joblib launcher's pool of worker processes (loky's reusable executor), if it ran."""
    executors = sys.modules.get("joblib.externals.loky.reusable_executor")
    return getattr(executors, "_executor", None)


def _run_where_warm(function: Callable[..., T], *arguments: Any) -> T:
    """``function(*arguments)`` where MLflow and matplotlib are already imported and warm: in an
    idle joblib worker (this process may not have imported MLflow at all), else here."""
    workers = _joblib_workers()
    if workers is not None:
        from joblib.externals.loky.process_executor import BrokenProcessPool

        try:
            return workers.submit(function, *arguments).result()
        except BrokenProcessPool as error:  # a worker died: do it here
            log.debug("the joblib workers are gone (%s); %s runs here", error, function.__name__)
    return function(*arguments)


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


def summarize_sweep(uri: str, parent_run_id: str) -> tuple[int, str]:
    """Attach the comparison table and plots to the parent run, end the parent FINISHED (or
    FAILED when a job failed); return the number of jobs that did not finish and the table as
    text, for the terminal."""
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
        # The last jobs' plots were drawn meanwhile; the summary's are drawn where they were.
        background_plots.wait()
        with tempfile.TemporaryDirectory() as directory:
            background_plots.call(report.write_report, table, histories, directory)
            client.log_artifacts(parent_run_id, directory, "summary")
        client.set_tag(parent_run_id, "sweep.jobs", str(len(children)))
        client.set_tag(parent_run_id, "sweep.failed_jobs", str(failed))
    finally:
        client.set_terminated(parent_run_id, "FAILED" if failed else "FINISHED")
    return failed, report.format_table(table)


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


def forget_context() -> None:
    """Undo ``announce``: the sweep has ended."""
    for name in (ENV_PARENT_RUN_ID, ENV_EXPERIMENT_ID, ENV_TRACKING_URI):
        os.environ.pop(name, None)


def end_unfinished_sweep(status: str, reason: str) -> bool:
    """End the multirun of this process that stopped before its end (``end_sweep``): after
    Ctrl-C or SIGTERM (KILLED), or an error Hydra reported (FAILED); Hydra skips the sweep's end
    callback then. Does nothing outside a sweep, before its parent run exists, or once the
    sweep's end has run; returns whether it ended one."""
    context = SweepContext.from_environment()
    if context is None:
        return False
    forget_context()
    end_sweep(context, status, reason)
    return True


def end_sweep(context: SweepContext, status: str, reason: str) -> None:
    """End the parent run ``status`` with ``reason``, and any child still RUNNING (its worker was
    stopped with the sweep) too."""
    from mlflow.tracking import MlflowClient

    from runner import report

    client = MlflowClient(context.tracking_uri)
    for child in report.sweep_children(client, context.parent_run_id):
        if child.info.status == "RUNNING":
            client.set_tag(child.info.run_id, "failure_reason", f"its sweep was {reason}")
            client.set_terminated(child.info.run_id, status)
    client.set_tag(context.parent_run_id, "failure_reason", reason)
    client.set_terminated(context.parent_run_id, status)
