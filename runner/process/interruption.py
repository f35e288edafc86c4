"""Cooperative interruption: SIGINT and SIGTERM are recorded, and work stops at the next safe point.

An exception raised from a signal handler lands wherever the interpreter happens to be: in the
middle of a ``finally`` that ends an MLflow run, or inside a weakref callback or ``__del__``,
where Python drops it ("Exception ignored in ..."). So bprun's handlers only record the signal.
The training loop asks ``requested()`` after every mini-batch and then ends its run KILLED with
everything it logged; elsewhere (before a run starts, between the jobs of a sweep) ``check()``
raises ``Interrupted`` at a point where nothing is half done. Ending a run is never cut short:
a second signal is reported on stderr and otherwise changes nothing.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: int | None = None
_arrived = 0  # how many signals have arrived, the first and the later ones
_report_signals = False
_stopping_line = "bprun: stopping at the next safe point; every completed epoch is kept"


class Interrupted(BaseException):
    """Raised at a safe point once SIGINT or SIGTERM has been recorded.

    A ``BaseException`` like ``KeyboardInterrupt``: code that catches ``Exception`` (Hydra's job
    runner, a sweep's handling of a failed job) lets it through to the command, which exits
    with ``exit_code``.
    """

    def __init__(self, signum: int, ended: str | None = None) -> None:
        super().__init__(signum)
        self.signum = signum
        self.ended = ended  # what was ended cleanly before stopping, in words, for the user

    @property
    def exit_code(self) -> int:
        """128 + the signal's number: the shell's convention for a process ended by a signal."""
        return 128 + self.signum

    @property
    def verb(self) -> str:
        return "terminated" if self.signum == signal.SIGTERM else "interrupted"


def _record(signum: int, frame: object) -> None:
    global _received, _arrived
    _arrived += 1
    first = _received is None
    if first:
        _received = signum
    if _report_signals:
        # os.write, not print: print is not reentrant, and the main thread may be printing.
        text = (
            f"\n{_stopping_line}\n" if first else "\nbprun: already stopping; the runs are being ended, please wait\n"
        )
        try:
            os.write(2, text.encode())
        except OSError:
            pass


def install(report: bool = False, stopping_line: str | None = None, also: Sequence[int] = ()) -> None:
    """Record SIGINT and SIGTERM (and the signals ``also`` names) in this process from now on
    (call from the main thread). With ``report``, each signal also prints one line on stderr
    saying what happens next (``stopping_line`` for the first one, when given)."""
    global _report_signals, _stopping_line
    _report_signals = report
    if stopping_line is not None:
        _stopping_line = stopping_line
    for signum in (*SIGNALS, *also):
        signal.signal(signum, _record)


def ignore() -> None:
    """Ignore SIGINT and SIGTERM: for a helper process whose parent decides when it ends."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def request(signum: int = signal.SIGTERM) -> None:
    """Record an interruption as if ``signum`` had arrived (from any thread)."""
    global _received
    if _received is None:
        _received = signum


def requested() -> int | None:
    """The signal that asked this process to stop, or None."""
    return _received


def check(ended: str | None = None) -> None:
    """Raise ``Interrupted`` if a signal has been recorded: call it where stopping leaves
    nothing half done. ``ended`` says what was ended cleanly before (for the user)."""
    if _received is not None:
        raise Interrupted(_received, ended)


def reset() -> None:
    """Forget a recorded signal (for a process that runs several commands, such as a test)."""
    global _received
    _received = None


# Test seam: with BPRUN_TEST_SIGNAL_POINT=<name>, the process stops at ``test_point(<name>)``,
# creates the file BPRUN_TEST_SIGNAL_MARKER, and waits there for a signal (at most a minute;
# one that arrived before it reached the point does not count), so that a test can interrupt it
# at that exact point and read back what it leaves behind.
TEST_POINT_VARIABLE = "BPRUN_TEST_SIGNAL_POINT"
TEST_MARKER_VARIABLE = "BPRUN_TEST_SIGNAL_MARKER"
TEST_POINT_WAIT_SECONDS = 60.0


def test_point(name: str) -> None:
    """A named point where tests interrupt the process (see ``TEST_POINT_VARIABLE``)."""
    if os.environ.get(TEST_POINT_VARIABLE) != name:
        return
    arrived = _arrived
    with open(os.environ[TEST_MARKER_VARIABLE], "w") as marker:
        marker.write(f"{os.getpid()}\n")
    deadline = time.monotonic() + TEST_POINT_WAIT_SECONDS
    while _arrived == arrived and time.monotonic() < deadline:
        time.sleep(0.01)
