"""Every process the tests start ends when pytest ends, however pytest ends: at the end of the
run, on Ctrl-C, on SIGTERM, or on SIGKILL (a CI job's timeout).

Two means, the second covering what the first cannot reach:

- What a test starts itself (the CLI, a server) gets ``dying_with_pytest()`` as its
  ``preexec_fn``: the kernel sends it SIGKILL when the pytest process that started it ends
  (``PR_SET_PDEATHSIG``, Linux; a server gets SIGTERM, so that it stops its own web workers).
  bprun's processes end with bprun (its workers' lifelines; its fork server dies with it), so
  this reaches a sweep's workers too. pytest-xdist's workers die with the controller the same way
  (``die_with_controller``).
- The guard: a process started with the test session, in a session of its own (so that a Ctrl-C
  or a kill of pytest's process group leaves it running), that reads a pipe of which pytest holds
  the only write end. The pipe closes when pytest ends, whatever ended it; the guard then kills
  every process whose environment carries the session's mark (``SESSION_VARIABLE``, put in
  pytest's environment when the session starts, and so inherited by whatever is started later,
  at any depth): what outlives its parent (Ray's daemons, a server's web workers), pytest-xdist's
  workers, anything the first means missed.

PostgreSQL's throwaway cluster (``postgres.py``) has a watchdog of its own, which stops it and
deletes its folder: it and the cluster are started without the mark (``without_mark``).

``BPRUN_TEST_NO_GUARD=1`` runs the session without the guard, to see that the first means alone
suffice (``tests/tools/kill_pytest_check.py``).

Run as a script, this module is the guard: ``python guard.py <mark>``, reading its stdin.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

SESSION_VARIABLE = "BACKPROP_RUNNER_TEST_SESSION"
NO_GUARD_VARIABLE = "BPRUN_TEST_NO_GUARD"
# How many times the guard looks for marked processes after killing the ones it found (a process
# may start another while it is being killed).
GUARD_ROUNDS = 50
GUARD_ROUND_SECONDS = 0.1

_guard_pipe: int | None = None  # pytest's end of the guard's pipe, open until pytest ends


def dying_with_pytest(signum: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn``: the process gets ``signum`` when this pytest process ends."""
    from runner.process.lifetime import dying_with_this_process

    return dying_with_this_process(signum)


def start_session() -> None:
    """In the pytest process that runs the session (the controller under pytest-xdist): mark the
    environment and start the guard."""
    global _guard_pipe
    mark = secrets.token_hex(8)
    os.environ[SESSION_VARIABLE] = mark
    if os.environ.get(NO_GUARD_VARIABLE) == "1":
        return
    reader, _guard_pipe = os.pipe()  # not inherited: no process started later holds it open
    try:
        # Not a Popen: pytest never waits for the guard, which outlives it.
        os.posix_spawn(
            sys.executable,
            [sys.executable, str(Path(__file__).resolve()), mark],
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, reader, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
        )
    finally:
        os.close(reader)


def die_with_controller(controller: int) -> None:
    """In a pytest-xdist worker: die with the controller, if that started it (its default way);
    otherwise, or if the controller is gone already, the guard sees to it."""
    from runner.process.lifetime import die_with_parent

    if os.getppid() == controller:
        die_with_parent(signal.SIGKILL, controller)


def without_mark() -> dict[str, str]:
    """This process's environment without the session's mark: for processes that have a watchdog
    of their own, which the guard must leave to do its work."""
    return {key: value for key, value in os.environ.items() if key != SESSION_VARIABLE}


def marked_processes(variable: str, value: str) -> list[int]:
    """Live (not zombie) processes whose environment has ``variable=value``, this one excepted."""
    entry = f"{variable}={value}".encode()
    found = []
    for path in Path("/proc").iterdir():
        if not path.name.isdigit() or int(path.name) == os.getpid():
            continue
        try:
            if (path / "stat").read_text().rpartition(")")[2].split()[0] == "Z":
                continue
            environment = (path / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if entry in environment:
            found.append(int(path.name))
    return found


def _guard(mark: str) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    while sys.stdin.buffer.read(65536):  # until pytest ends: nothing is ever written
        pass
    for _ in range(GUARD_ROUNDS):
        found = marked_processes(SESSION_VARIABLE, mark)
        if not found:
            return
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(GUARD_ROUND_SECONDS)


if __name__ == "__main__":
    _guard(sys.argv[1])
