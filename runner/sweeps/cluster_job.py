"""Around a sweep's job in a process that a cluster launcher started (a Ray worker, a submitit
job), and the launchers' shared checks.

In such a process bprun's command never ran, so the job installs bprun's signal handling itself
(``job_process``): a SIGINT or SIGTERM (Ctrl-C forwarded by the launcher, ``scancel``, Ray's
cancel) stops training at the next mini-batch and ends the run KILLED with every completed epoch.
The process's own handlers come back when the job ends: a Ray worker runs other tasks after it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import threading
from collections.abc import Iterator, Sequence

from runner.process import interruption
from runner.process.errors import InvalidInput


class JobsElsewhere(InvalidInput):
    """A launcher that runs jobs on other machines was given a store only this machine has."""


@contextlib.contextmanager
def job_process(launching_dir: str, launcher_pid: int | None = None, also: Sequence[int] = ()) -> Iterator[None]:
    """Run a job here with bprun's signal handling (for SIGINT, SIGTERM and the signals ``also``
    names); in ``launching_dir`` when this machine has it (relative output folders then land
    where the sweep was launched, as with the local launcher). With ``launcher_pid`` (a process
    of this machine), the job stops as if sent SIGTERM once that process is gone, however it
    ended."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {signum: signal.getsignal(signum) for signum in (*interruption.SIGNALS, *also)} if main_thread else {}
    interruption.reset()
    if main_thread:
        interruption.install(also=also)
        # Started deaf to Ctrl-C by its launcher (``started_deaf_to_ctrl_c``): hear it again.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, interruption.SIGNALS)
    if launcher_pid is not None:
        _stop_when_gone(launcher_pid)
    working_dir = os.getcwd()
    if os.path.isdir(launching_dir):
        os.chdir(launching_dir)
    try:
        yield
    finally:
        os.chdir(working_dir)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        interruption.reset()


def _stop_when_gone(pid: int) -> None:
    try:
        process = os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux, or already gone
        if not _alive(pid):
            interruption.request(signal.SIGTERM)
        return

    def watch() -> None:
        select.select([process], [], [])  # readable once the process has ended
        interruption.request(signal.SIGTERM)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        pass
    return True


def local_addresses() -> set[str]:
    """The IP addresses this machine answers to (loopback included)."""
    addresses = {"127.0.0.1", "::1", "localhost"}
    for name in {socket.gethostname(), socket.getfqdn()}:
        with contextlib.suppress(OSError):
            addresses.update(str(info[4][0]) for info in socket.getaddrinfo(name, None))
    return addresses
