"""A long-running program started by a bprun command (a tracking server) that ends with it.

The program runs in a process group of its own, so that stopping it reaches whatever it starts
in turn (MLflow's server runs its web server as a child). The command stops the group when it
ends normally or on Ctrl-C; if the command itself is killed outright, the kernel sends the
program SIGTERM (``PR_SET_PDEATHSIG``), and the program stops its own children.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any

from runner.process import lifetime


def start(command: Sequence[str], environment: dict[str, str], **options: Any) -> subprocess.Popen:
    """``command`` in a session of its own, ending when this process ends; ``options`` go to
    ``subprocess.Popen`` (``cwd``, ``stdout``, ...)."""
    return subprocess.Popen(
        list(command),
        env=environment,
        start_new_session=True,
        preexec_fn=lifetime.dying_with_this_process(signal.SIGTERM),
        **options,
    )


def stop(process: subprocess.Popen, grace_seconds: float = 15.0) -> int:
    """SIGTERM to the program's group, SIGKILL after ``grace_seconds``; its exit code."""
    for signum, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            break
        try:
            return process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return process.wait()
