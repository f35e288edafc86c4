"""The ``bprun`` command (also ``python -m runner``): the Hydra app around ``run_experiment``.

Kept thin on purpose: composition is Hydra's, the work is ``runner.experiment``'s. Heavy
imports (mlflow, pandas) happen only once a job actually runs, so ``bprun --help`` and
``bprun --cfg job`` stay fast.
"""

from __future__ import annotations

import errno
import os
import sys

import hydra
from omegaconf import DictConfig

from runner import background_plots, optuna_sweeper
from runner.config import ConfigError, register_schemas

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1

register_schemas()
optuna_sweeper.register()

# The only Hydra callback bprun runs (conf/config.yaml); see _refuse_foreign_callbacks.
ALLOWED_CALLBACKS = {"runner.sweep.SweepCallback"}


def _refuse_foreign_callbacks() -> None:
    """Hydra instantiates every ``hydra.callbacks`` entry of the composed config, from any config
    file (a preset in a user's --config-dir included), before a job or a check of ours runs.
    Configs are data: refuse any callback but ours at that point. (Hydra 1.3.8 is pinned; a test
    covers this.)"""
    from hydra._internal import callbacks as hydra_callbacks
    from omegaconf import OmegaConf

    original_init = hydra_callbacks.Callbacks.__init__
    if getattr(original_init, "bprun_checked", False):
        return

    def checked_init(self, config: DictConfig | None = None) -> None:
        entries = OmegaConf.select(config, "hydra.callbacks") if config is not None else None
        foreign = [f"hydra.callbacks.{name}._target_={entry.get('_target_')}"
                   for name, entry in (entries or {}).items() if entry.get("_target_") not in ALLOWED_CALLBACKS]
        if foreign:
            print(f"bprun: refusing {', '.join(foreign)}: configs are plain data and are never "
                  "instantiated; remove '_target_'", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        original_init(self, config)

    checked_init.bprun_checked = True
    hydra_callbacks.Callbacks.__init__ = checked_init


# Job configs the basic sweeper composed up front that their launcher has not used yet. Bounded,
# so that a grid of thousands of jobs does not hold every config: beyond it, jobs are composed
# again as Hydra would.
COMPOSED_UP_FRONT_LIMIT = 256
_composed_up_front: dict[tuple[int, tuple[str, ...]], DictConfig] = {}


class _ComposedOverrides(list):
    """One job's overrides (what Hydra's launchers expect), carrying the config the sweeper
    composed from them to the joblib worker that runs the job."""

    def __init__(self, overrides: list[str], composed: DictConfig) -> None:
        super().__init__(overrides)
        self.composed = composed


def _compose_each_job_once() -> None:
    """Hydra's basic sweeper composes every job's config before the first job runs (so that a bad
    override fails the sweep before anything is trained), and then the launcher composes it again
    when the job starts: about 90 ms each, twice per job. Hand the launcher the config already
    composed: ``load_sweep_config`` returns the same result for the same master config and
    overrides. The basic launcher finds it in this process; the joblib launcher's workers get it
    with the job's overrides (``_ComposedOverrides``, read by ``_execute_joblib_job``). (Hydra
    1.3.8 and hydra-joblib-launcher 1.2.0 are pinned; ``tests/test_sweeps.py`` checks that each
    job is composed once and gets its own values.)"""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher
    from hydra.plugins.sweeper import Sweeper

    from runner.sweep import JOBLIB_LAUNCHER, start_parent_before_launch

    original_load = ConfigLoaderImpl.load_sweep_config
    if getattr(original_load, "bprun_once", False):
        return

    def validate_batch_is_legal(self: Sweeper, batch) -> None:
        loader = self.hydra_context.config_loader
        launcher = getattr(self, "launcher", None)
        in_process = isinstance(launcher, BasicLauncher)
        in_workers = _class_path(launcher) == JOBLIB_LAUNCHER and _patch_joblib_launcher()
        for_workers = []
        for index, overrides in enumerate(batch):
            config = loader.load_sweep_config(master_config=self.config, sweep_overrides=list(overrides))
            if in_process and len(_composed_up_front) < COMPOSED_UP_FRONT_LIMIT:
                _composed_up_front[(id(self.config), tuple(overrides))] = config
            elif in_workers and index < COMPOSED_UP_FRONT_LIMIT:
                batch[index] = _ComposedOverrides(list(overrides), config)
                for_workers.append(config)
        # Every job of the batch composed: the sweep is valid, and its parent run can be created.
        start_parent_before_launch(for_workers)

    def load_sweep_config(self: ConfigLoaderImpl, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        composed = _composed_up_front.pop((id(master_config), tuple(sweep_overrides)), None)
        return composed if composed is not None else original_load(self, master_config, sweep_overrides)

    load_sweep_config.bprun_once = True
    Sweeper.validate_batch_is_legal = validate_batch_is_legal
    ConfigLoaderImpl.load_sweep_config = load_sweep_config


def _class_path(instance: object) -> str:
    """``module.Class`` of ``instance``, as a launcher's ``_target_`` names it."""
    return f"{type(instance).__module__}.{type(instance).__qualname__}"


# The joblib launcher's own execute_job, as imported before _patch_joblib_launcher replaced it.
_hydra_execute_joblib_job = None


def _patch_joblib_launcher() -> bool:
    """Have the joblib launcher run its jobs through ``_execute_joblib_job``; False if it cannot."""
    global _hydra_execute_joblib_job
    try:
        from hydra_plugins.hydra_joblib_launcher import _core
    except ImportError:
        return False
    if _hydra_execute_joblib_job is None:
        _hydra_execute_joblib_job = _core.execute_job
        _core.execute_job = _execute_joblib_job
    return True


def _execute_joblib_job(idx: int, overrides: list[str], hydra_context, config: DictConfig, task_function,
                        singleton_state) -> object:
    """Hydra's joblib ``execute_job``, in the worker, on the config composed up front."""
    _compose_each_job_once()  # in this process too: its load_sweep_config looks up the config first
    composed = getattr(overrides, "composed", None)
    if composed is not None:
        _composed_up_front[(id(config), tuple(overrides))] = composed
    if _hydra_execute_joblib_job is not None:  # joblib ran the job in this process (n_jobs=1)
        execute = _hydra_execute_joblib_job
    else:
        from hydra_plugins.hydra_joblib_launcher._core import execute_job as execute
    return execute(idx, overrides, hydra_context, config, task_function, singleton_state)


@hydra.main(version_base="1.3", config_path="pkg://runner.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    """One job. Returns the objective an optimizing sweeper minimizes (``sweep_objective``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from runner.datasets import DataError
    from runner.experiment import TrainingFailed, run_experiment
    from runner.tracking import StoreUnavailable

    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        # The directory bprun started in, even if hydra.job.chdir=true moved the job elsewhere.
        result = run_experiment(cfg, start_dir=HydraConfig.get().runtime.cwd,
                                show_progress=_interactive_single_run())
    except (ConfigError, DataError) as error:
        if in_sweep:
            return _failed_job(f"invalid input: {error}", run_exists=False)
        # SystemExit passes through Hydra's error reporting untouched: one message, no traceback.
        print(f"bprun: invalid input, nothing was trained or logged:\n{error}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except StoreUnavailable as error:
        if in_sweep:
            return _failed_job(str(error), run_exists=False)
        print(f"bprun: nothing was trained: {error}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except TrainingFailed as error:
        if in_sweep:
            return _failed_job(f"training failed: {error}", run_exists=error.run_id is not None)
        print(f"bprun: training failed: {error}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    except Exception as error:
        if not in_sweep:
            if _out_of_space(error):
                print("bprun: training stopped: No space left on device (or the store's disk is full); the "
                      "database is intact and keeps what was logged; bprun-doctor marks the run KILLED if "
                      "its status could not be written", file=sys.stderr)
                sys.exit(EXIT_FAILED)
            raise
        # The other jobs go on. If the job's run exists it already ended FAILED with this error;
        # if the error came first (say, a bad interpolation), a FAILED run is recorded for it.
        return _failed_job(f"{type(error).__name__}: {error}",
                           run_exists=getattr(error, "tracked_run_id", None) is not None)
    print(summary(result))
    return sweep_objective(result.metrics, HydraConfig.get().sweeper.get("objective", "val_mse"))


def _out_of_space(error: BaseException) -> bool:
    """Whether ``error`` or one it arose from is a full (or read-only) disk; SQLite reports that
    as 'database or disk is full' through MLflow's own exception."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            return True
        if "database or disk is full" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def sweep_objective(metrics: dict[str, float], name: str = "val_mse") -> float | None:
    """What a sweep optimizes: the final value of metric ``name``; a val_ metric falls back to
    its train_ twin when the data set has no validation split (xor)."""
    if name in metrics:
        return metrics[name]
    return metrics.get(name.replace("val_", "train_", 1)) if name.startswith("val_") else None


def _failed_job(reason: str, run_exists: bool) -> None:
    """In a sweep a failed job must not stop the others (Hydra's basic sweeper would abort at the
    first raised error and skip the sweep's end): report it, record it, return no objective."""
    from runner.experiment import hydra_overrides
    from runner.sweep import record_failed_job

    print(f"bprun: job failed: {reason}", file=sys.stderr)
    if not run_exists:
        record_failed_job(hydra_overrides(), reason)
    return None


def _interactive_single_run() -> bool:
    """Show a progress bar only to a person watching one run (not in logs, not in sweeps)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return sys.stderr.isatty() and HydraConfig.get().mode != RunMode.MULTIRUN


def summary(result) -> str:
    """A few lines for the terminal: final metrics, the run id, how to open the dashboard."""
    from runner.tracking import dashboard_command

    shown = ", ".join(f"{name}={value:.6g}" for name, value in sorted(result.metrics.items()))
    lines = [f"bprun: {result.history.message}: {shown}"]
    if result.run_id:
        lines.append(f"  MLflow run {result.run_id} in {result.tracking_uri}")
        lines.append(f"  dashboard: {dashboard_command(result.tracking_uri)}")
    return "\n".join(lines)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run ends KILLED with everything logged so far."""


# The signal that interrupted bprun, if one did: Hydra and OmegaConf can turn the exception it
# raises into an error of their own (a Ctrl-C in the middle of composing a config), which must
# still end bprun as an interruption.
_interrupted_by: int | None = None


def _raise_interrupt(signum: int, frame: object) -> None:
    import signal

    global _interrupted_by
    _interrupted_by = signum
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _exit_interrupted(terminated: bool, run_ended: bool) -> None:
    """End the sweep in progress KILLED, say what was ended (``run_ended``: a single run's own
    clean-up ended it), and exit 130 (Ctrl-C) or 143 (SIGTERM)."""
    import signal

    # A second Ctrl-C (people press it twice) or SIGTERM must not cut the clean-up short: it
    # ends the runs KILLED, and cut short it would leave them RUNNING, with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from runner.sweep import end_unfinished_sweep

    sweep_ended = end_unfinished_sweep("KILLED", "interrupted")
    ended = ("the sweep and its running jobs were ended KILLED" if sweep_ended
             else "the run was ended KILLED" if run_ended else None)
    print(f"\nbprun: {'terminated' if terminated else 'interrupted'}; "
          + (f"{ended} with every completed epoch logged" if ended else "no MLflow run had started"),
          file=sys.stderr)
    # 128 + the signal number: the shell's convention for a process ended by a signal.
    sys.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))


def main() -> None:
    """bprun itself, behind ``runner.cli.main``."""
    import gc
    import logging
    import signal

    # MLflow logs store migrations and model-signature checks at INFO on every run; the summary
    # line says what matters. Warnings and errors still show. (MLflow sets its logger's level
    # from this variable when it is imported, undoing a setLevel made before.)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Configs are data: refuse any override that would have Hydra instantiate something, even in
    # Hydra's own tree (hydra.callbacks...), which Hydra instantiates before any job sees it.
    targets = [argument for argument in sys.argv[1:] if "_target_" in argument]
    if targets:
        print(f"bprun: refusing {', '.join(targets)}: configs are plain data and are never instantiated; "
              "remove '_target_'", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    _refuse_foreign_callbacks()
    _compose_each_job_once()
    # By default SIGTERM kills the process on the spot and MLflow leaves the run RUNNING forever.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when started ignoring it
        signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        _hydra_main()
        # Everything imported so far lives until exit; without this the interpreter's last
        # collections walk it all (about a second after a tracked run, seen in the benchmarks).
        gc.freeze()
    except KeyboardInterrupt as interrupt:
        _exit_interrupted(isinstance(interrupt, Terminated), getattr(interrupt, "tracked_run_id", None) is not None)
    except SystemExit as exit_:
        if _interrupted_by is not None:  # the interruption came back as Hydra's error report
            _exit_interrupted(_interrupted_by == signal.SIGTERM, run_ended=False)
        if exit_.code not in (None, 0):  # how Hydra stops on an error, a sweep's included
            from runner.sweep import end_unfinished_sweep

            end_unfinished_sweep("FAILED", "stopped by an error (see bprun's error output)")
        raise
    finally:
        background_plots.shutdown()  # every completed run's plots are on disk when bprun exits
