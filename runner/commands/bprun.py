"""``bprun`` (also ``python -m runner``): the Hydra app, with bprun's signals, errors and exit codes.

Signal handlers come first, before anything slow is imported: from then on SIGINT and SIGTERM
are recorded and the work stops at its next safe point (``runner.process.interruption``), so a
Ctrl-C at any moment after Python's own start-up ends the command with one line and exit 130
(143 for SIGTERM). A command line that asks for parallel workers starts their fork server next,
so that its imports overlap Hydra's start-up; both happen before Hydra itself is imported.
"""

from __future__ import annotations

import gc
import os
import sys
import traceback

from runner.commands.common import quiet_mlflow
from runner.core.plain_data import refusal, refused_overrides
from runner.process import interruption
from runner.process.errors import EXIT_FAILED, EXIT_INVALID, CommandError, CommandExit
from runner.sweeps import WORKER_PRELOAD

# Hydra's flags that print something instead of running jobs.
NO_JOB_FLAGS = {"-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "-i", "--info", "-sc", "--shell-completion"}


def main() -> None:
    interruption.install(report=True)
    quiet_mlflow()  # first: the workers' fork server inherits the environment it sets
    arguments = sys.argv[1:]
    # Configs are data: refuse anything that would have Hydra instantiate an object, even in
    # Hydra's own tree (hydra.callbacks...), which Hydra instantiates before any job sees it.
    targets = refused_overrides(arguments)
    if targets:
        print(f"bprun: {refusal(targets)}", file=sys.stderr)
        sys.exit(EXIT_INVALID)
    if {"-sc", "--shell-completion"} & set(arguments) and not any(
        argument.startswith(("install=", "uninstall=", "query=")) for argument in arguments
    ):
        print(
            "bprun: --shell-completion needs what to do: install=bash (or zsh, fish), uninstall=bash or "
            'query=...; for example: eval "$(bprun -sc install=bash)"',
            file=sys.stderr,
        )
        sys.exit(EXIT_INVALID)
    if parallel_workers_requested(arguments):
        # (lazy: multiprocessing's import comes after the signal handlers, not before them)
        from runner.process.children import start_forkserver

        # Optuna's trials import Optuna for their pruner: once, in the server, for every worker.
        optuna = ("optuna",) if any(argument.lstrip("+") == "hydra/sweeper=optuna" for argument in arguments) else ()
        start_forkserver((*WORKER_PRELOAD, *optuna))
    interruption.test_point("startup")
    sys.exit(run(arguments))


def run(arguments: list[str]) -> int:
    """Run the Hydra app on ``sys.argv``; return the exit code."""
    quiet_mlflow()  # the summary lines say what matters (again: ``run`` is also called in-process)
    # Hydra then raises what it would print with its own traceback formatting: bprun says it in one
    # line instead. Someone who set the variable themselves gets Hydra's full tracebacks.
    full_tracebacks = bool(os.environ.get("HYDRA_FULL_ERROR"))
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        from runner.hydra_app.app import main as hydra_main  # (lazy: after the handlers, see above)
        from runner.hydra_app.errors import describe, is_config_error
        from runner.hydra_app.help import print_help
        from runner.hydra_app.shorthand import expand

        sys.argv = [sys.argv[0], *expand(arguments)]  # model.hidden=4, trainer.epochs=1e3
        interruption.check()
        # The app's --help page is bprun's to render (runner.hydra_app.help); Hydra does the rest.
        if not print_help(sys.argv[1:]):
            hydra_main()
        interruption.check()  # recorded where nothing checked it (bprun --cfg job, say)
    except interruption.Interrupted as stop:
        print(f"bprun: {stop.verb}; {stop.ended or 'no MLflow run had started'}", file=sys.stderr)
        return stop.exit_code
    except CommandExit as exit_:
        print(f"bprun: {exit_.error}", file=sys.stderr)
        return _ended(exit_.error.exit_code)
    except CommandError as error:  # raised where nothing wrapped it (ending a stopped sweep)
        print(f"bprun: {error}", file=sys.stderr)
        return error.exit_code
    except Exception as error:
        if full_tracebacks:
            raise
        if is_config_error(error):
            print(f"bprun: {describe(error)}", file=sys.stderr)
            return _ended(EXIT_INVALID)
        print(f"bprun: the run crashed: {type(error).__name__}: {error}", file=sys.stderr)
        traceback.print_exception(error)
        return EXIT_FAILED
    # Everything imported lives until exit; without this the interpreter's last collections walk
    # it all (about a second after a tracked run).
    gc.freeze()
    return 0


def _ended(code: int) -> int:
    """``code``, once a command that refused its input has removed the output folders it made."""
    if code == EXIT_INVALID:
        from runner.hydra_app.callbacks import remove_refused_output  # (lazy: imported by then, see run)

        remove_refused_output()
    return code


def parallel_workers_requested(arguments: list[str]) -> bool:
    """Whether a command line asks for a multirun on the local launcher with more than one
    worker, as far as its own overrides tell (a wrong guess only starts an idle server)."""
    if not {"-m", "--multirun"} & set(arguments) or NO_JOB_FLAGS & set(arguments):
        return False
    overrides = {}
    for argument in arguments:
        key, equals, value = argument.lstrip("+").partition("=")
        if equals:
            overrides[key] = value.strip().lower()  # the last one counts, as with Hydra
    jobs = overrides.get("hydra.launcher.n_jobs", "1")
    return overrides.get("hydra/launcher", "local") == "local" and jobs.isdigit() and int(jobs) > 1
