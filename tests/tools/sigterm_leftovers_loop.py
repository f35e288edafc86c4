"""Reproduce a process of bprun's session outliving bprun after SIGTERM to its process group.

Each trial starts ``bprun -m hydra.launcher.n_jobs=2 dataset=digits trainer.epochs=60
optimizer.lr=0.1,0.5,1.0,2.0`` in a session of its own, waits for the first tensor file, waits
``--delay`` seconds more (a reproduction aid, not a test: the moment is what is being varied),
sends SIGTERM to the group and looks for processes of the session ``--linger`` seconds after
bprun exited. Each leftover is printed with its parent, signal masks and open files (and its
Python stacks with ``--py-spy``). A trial whose bprun ended before the signal is not counted.

    .venv/bin/python tests/tools/sigterm_leftovers_loop.py --trials 40
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import Background, session_processes, wait_until

ARGS = ("-m", "hydra.launcher.n_jobs=2", "dataset=digits", "trainer.epochs=60", "optimizer.lr=0.1,0.5,1.0,2.0")


def describe(pid: str) -> str:
    proc = Path("/proc", pid)
    try:
        status = dict(line.split(":\t", 1) for line in (proc / "status").read_text().splitlines() if ":\t" in line)
        fds = []
        for fd in (proc / "fd").iterdir():
            try:
                fds.append(f"{fd.name}->{os.readlink(fd)}")
            except OSError:
                pass
        cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
    except OSError as error:
        return f"{pid}: gone ({error})"
    keys = ("PPid", "State", "SigBlk", "SigIgn", "SigCgt")
    return f"{pid}: {cmd}\n    " + " ".join(f"{k}={status.get(k, '?').strip()}" for k in keys) + f"\n    fds: {fds}"


def dump_stacks(session: int, py_spy: str | None) -> None:
    """The Python stacks of the session's processes (with py-spy, where given)."""
    if not py_spy:
        return
    for entry in session_processes(session):
        pid = entry.partition(":")[0]
        dumped = subprocess.run([py_spy, "dump", "--pid", pid], capture_output=True, text=True, timeout=60)
        print(f"  --- stacks of {entry[:120]}\n{dumped.stdout}{dumped.stderr}", flush=True)


def trial(number: int, base: Path, delay: float, linger: float, py_spy: str | None) -> list[str] | None:
    """The processes left behind (None: bprun ended before the signal)."""
    cwd = base / f"trial-{number}"
    process = Background(*ARGS, cwd=cwd, uri=f"sqlite:///{cwd}/mlflow.db", label="bprun")
    try:
        wait_until(
            lambda: any(cwd.glob("mlartifacts/**/artifacts/tensors/*.npy")),
            300,
            "the first tensor file",
            process,
            interval=0.05,
        )
        time.sleep(delay)
        if not process.running():
            print(f"trial {number}: bprun had ended {delay:.1f} s after the first tensor file, not counted", flush=True)
            return None
        sent = process.signal(signal.SIGTERM, group=True)
        try:
            process.popen.wait(timeout=60)
        except subprocess.TimeoutExpired:
            print(f"trial {number}: bprun still running 60 s after SIGTERM", flush=True)
            dump_stacks(process.pid, py_spy)
        result = process.wait(sent, timeout=60)
        deadline = time.monotonic() + linger
        while (left := session_processes(process.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        details = [describe(entry.partition(":")[0]) for entry in left]
        status = "LEFT " + str(len(left)) if left else "clean"
        print(
            f"trial {number}: SIGTERM {delay:.1f} s after the first tensor file, exit {result.returncode}, {status}",
            flush=True,
        )
        for line in details:
            print("  " + line, flush=True)
        if left:
            dump_stacks(process.pid, py_spy)
        if result.returncode != 143:
            print(result.output[-3000:], flush=True)
        return left
    finally:
        process.kill_everything()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=40, help="trials whose bprun got the signal")
    parser.add_argument("--delay", type=float, default=3.0, help="seconds after the first tensor file")
    parser.add_argument("--jitter", type=float, default=1.0, help="+- seconds added to --delay at random")
    parser.add_argument("--linger", type=float, default=10.0)
    parser.add_argument("--py-spy", help="py-spy's path: dump the stacks of a hung bprun and of leftovers")
    options = parser.parse_args()
    leaks = signalled = 0
    with tempfile.TemporaryDirectory(prefix="sigterm-loop-") as base:
        number = 0
        while signalled < options.trials:
            delay = max(0.0, options.delay + random.uniform(-options.jitter, options.jitter))
            left = trial(number, Path(base), delay, options.linger, options.py_spy)
            number += 1
            if left is not None:
                signalled += 1
                leaks += bool(left)
    print(f"{leaks} of {signalled} trials left processes behind ({number - signalled} more ended first)", flush=True)


if __name__ == "__main__":
    main()
