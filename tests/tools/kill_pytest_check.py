"""Kill pytest in the middle of the slow tier and list what it started that is still alive.

Runs ``pytest -m slow tests/test_interruption.py`` (``--pytest-args`` to change it) with a mark
of its own in its environment, which everything pytest starts inherits, at any depth (bprun, its
fork server, workers and resource tracker, pytest-xdist's workers, servers). Once a parallel
sweep's workers are running (or what ``--wait-for`` names), it sends
pytest the signal (SIGKILL by default, as a CI job's timeout does; SIGINT goes to pytest's
process group, as a terminal's Ctrl-C does), waits for pytest to end, then lists every marked
process still alive ``--allowance`` seconds (10) later. Exit status 0 when none is left, 1
otherwise.

    .venv/bin/python tests/tools/kill_pytest_check.py                 # SIGKILL, the guard on
    .venv/bin/python tests/tools/kill_pytest_check.py --no-guard      # the kernel's signals only
    .venv/bin/python tests/tools/kill_pytest_check.py --signal TERM --pytest-args="-n 0 -m slow tests/test_sweeps.py"
    .venv/bin/python tests/tools/kill_pytest_check.py --wait-for "postgres -D" --pytest-args=tests/test_team_server.py
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from guard import NO_GUARD_VARIABLE, marked_processes  # noqa: E402

MARK_VARIABLE = "BACKPROP_RUNNER_KILL_CHECK"  # not BPRUN_: the tests drop those from what they start
START_TIMEOUT = 600  # seconds until a sweep's workers run, on a busy machine
POLL_SECONDS = 0.2


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "(gone)"


def parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def show(pids: list[int]) -> str:
    return "\n".join(f"  {pid} (parent {parent(pid)}): {command_line(pid)[:130]}" for pid in sorted(pids))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--signal", default="KILL", choices=["KILL", "TERM", "INT"])
    parser.add_argument("--no-guard", action="store_true", help="run the session without the guard (guard.py)")
    parser.add_argument("--pytest-args", default="-m slow tests/test_interruption.py")
    parser.add_argument(
        "--wait-for",
        help="kill pytest once a process it started has this in its command line (default: a sweep's workers)",
    )
    parser.add_argument("--py-spy", help="py-spy's path: dump the stacks of what is left")
    parser.add_argument("--allowance", type=float, default=10.0, help="seconds the processes may outlive pytest")
    options = parser.parse_args()

    mark = secrets.token_hex(8)
    environment = {**os.environ, MARK_VARIABLE: mark}
    environment.pop(NO_GUARD_VARIABLE, None)
    if options.no_guard:
        environment[NO_GUARD_VARIABLE] = "1"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *shlex.split(options.pytest_args)]
    print(f"$ {' '.join(command)}{' (no guard)' if options.no_guard else ''}", flush=True)
    pytest = subprocess.Popen(
        command, cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        started = [pid for pid in marked_processes(MARK_VARIABLE, mark) if pid != pytest.pid]
        if options.wait_for is not None:
            if any(options.wait_for in command_line(pid) for pid in started):
                break
        else:
            servers = {pid for pid in started if "multiprocessing.forkserver" in command_line(pid)}
            if sum(parent(pid) in servers for pid in servers) >= 2:  # a sweep's workers, forked from a fork server
                break
        if pytest.poll() is not None or time.monotonic() > deadline:
            print(f"pytest ended (exit {pytest.returncode}) or took too long before the processes to wait for ran")
            return 2
        time.sleep(POLL_SECONDS)
    print(f"{len(started)} processes started by pytest are alive:\n{show(started)}", flush=True)

    signum = getattr(signal, f"SIG{options.signal}")
    killed = time.monotonic()
    if signum == signal.SIGINT:
        os.killpg(pytest.pid, signum)  # a terminal's Ctrl-C goes to the whole foreground group
    else:
        pytest.send_signal(signum)
    pytest.wait()
    ended = time.monotonic()
    print(f"pytest got SIG{options.signal}, exit {pytest.returncode} {ended - killed:.1f} s later", flush=True)
    while (left := marked_processes(MARK_VARIABLE, mark)) and time.monotonic() < ended + options.allowance:
        time.sleep(POLL_SECONDS)
    seconds = time.monotonic() - ended
    if left:
        print(f"{len(left)} processes left {seconds:.1f} s after pytest ended:\n{show(left)}", flush=True)
        for pid in left if options.py_spy else ():
            dumped = subprocess.run([options.py_spy, "dump", "--pid", str(pid)], capture_output=True, text=True)
            print(f"--- stacks of {pid}\n{dumped.stdout}{dumped.stderr}", flush=True)
        for pid in left:  # what the check itself leaves must not outlive it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return 1
    print(f"none left: the last ended {seconds:.1f} s after pytest", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
