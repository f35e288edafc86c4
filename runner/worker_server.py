"""The fork server of the joblib launcher's workers: started once per sweep, it imports what a
job needs (``runner.worker_preload``), and the workers are forked from it ready to run.

Standard library only at import time: ``runner.cli`` starts the server before Hydra is imported.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# Hydra's flags that print something instead of running jobs.
NO_JOB_FLAGS = {"-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "-i", "--info", "-sc",
                "--shell-completion"}


def joblib_workers_requested(arguments: list[str]) -> bool:
    """Whether a command line asks for a tracked multirun on the joblib launcher with more than
    one worker, as far as its own overrides tell. ``runner.cli.main`` then starts the workers'
    fork server before anything else: its imports are the critical path of such a sweep's
    start, and they begin about half a second sooner than at the multirun's start. A wrong
    guess costs little either way: ``SweepCallback`` starts the server if the composed config
    asks for it (starting it twice is a no-op), and a server nobody uses only spends some of the
    other core on imports."""
    if not {"-m", "--multirun"} & set(arguments) or NO_JOB_FLAGS & set(arguments):
        return False
    overrides = {}
    for argument in arguments:
        key, equals, value = argument.lstrip("+").partition("=")
        if equals:
            overrides[key] = value.strip().lower()  # the last one counts, as with Hydra
    return (overrides.get("hydra/launcher") == "joblib" and overrides.get("hydra.launcher.n_jobs") != "1"
            and overrides.get("tracking") != "none" and overrides.get("tracking.enabled") != "false")


def start_worker_server() -> bool:
    """Start a fork server that imports what a job needs (``runner.worker_preload``) for the
    joblib launcher's workers; returns False if it could not start. Until
    ``fork_workers_from_server`` the workers would still start as new interpreters, joblib's
    default, each importing it all again (about 2 s of a core, both workers at once)."""
    import multiprocessing
    import multiprocessing.forkserver
    import signal

    # Ctrl-C reaches the whole process group, the server too: it inherits "ignore" (Python's
    # start-up would otherwise die on it with a traceback) until its preload ends. Meanwhile a
    # Ctrl-C for bprun itself is held back, not lost: Linux queues blocked signals even if ignored.
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        multiprocessing.set_forkserver_preload(["runner.worker_preload"])
        multiprocessing.forkserver.ensure_running()
    except Exception as error:
        log.debug("no fork server for the joblib workers: %s", error)
        return False
    finally:
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return True


def fork_workers_from_server() -> None:
    """Make joblib's process pool (loky) start its workers from the fork server."""
    from joblib.externals.loky.backend.context import set_start_method

    set_start_method("forkserver", force=True)
