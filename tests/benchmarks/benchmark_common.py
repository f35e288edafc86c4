"""What the runner and sweep benchmarks share: logging, medians, the environment header, the
``bprun`` executable and a timed run of it, Hydra composition and the report's closing lines.

Standard library only at module level: ``bench_sweeps.py`` times its instrumented child's
start-up from its first line, so importing this must cost next to nothing.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[2]


def log(message: str) -> None:
    """Progress, on stderr (the report itself goes to stdout)."""
    print(message, file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    """The median of the values that are not NaN (NaN if none is)."""
    values = [value for value in values if value == value]
    return statistics.median(values) if values else float("nan")


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def describe_environment(distributions: Sequence[str], load_note: str = "") -> list[str]:
    """Markdown bullets: Python and package versions, cores and load, the git commit."""
    from importlib import metadata

    def git(*arguments: str) -> str:
        try:
            return subprocess.run(["git", *arguments], cwd=REPOSITORY, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""

    commit, dirty = git("rev-parse", "--short", "HEAD") or "?", git("status", "--porcelain", "--untracked-files=no")
    versions = []
    for distribution in distributions:
        try:
            versions.append(f"{distribution} {metadata.version(distribution)}")
        except metadata.PackageNotFoundError:
            pass
    return [
        f"- python {platform.python_version()}, {', '.join(versions)}",
        f"- {os.cpu_count()} logical cores; load average at start {load_average()}{load_note}",
        f"- git {commit}"
        + (" with uncommitted changes to tracked files (so every tracked job also runs `git diff`)" if dirty else ""),
    ]


def bprun_executable() -> str:
    """The ``bprun`` console script of the Python running this benchmark."""
    beside = Path(sys.executable).parent / "bprun"
    found = str(beside) if beside.exists() else shutil.which("bprun")
    if not found:
        raise SystemExit(
            f"{Path(sys.argv[0]).name}: no bprun console script next to this python or on PATH "
            "(pip install -e . in the venv)"
        )
    return found


def bprun_environment(uri: str) -> dict[str, str]:
    """This process's environment for a ``bprun`` tracking to ``uri``: no other ``MLFLOW_`` or
    ``BPRUN_`` variable inherited."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "BPRUN_"))}
    environment["MLFLOW_TRACKING_URI"] = uri
    return environment


def timed_bprun(arguments: list[str], scratch: Path, label: str) -> tuple[float, Path]:
    """Wall seconds of one ``bprun <arguments>`` in a fresh directory under ``scratch``, with a
    SQLite store of its own there (no other ``MLFLOW_`` or ``BPRUN_`` variable inherited), and
    that store's database file. Exits with the command's output when it fails."""
    directory = Path(tempfile.mkdtemp(prefix=re.sub(r"[^\w.]+", "-", label) + "-", dir=scratch))
    database = directory / "mlflow.db"
    environment = bprun_environment(f"sqlite:///{database}")
    started = time.perf_counter()
    result = subprocess.run(
        [bprun_executable(), *arguments], cwd=directory, env=environment, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{label} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds, database


def compose(overrides: list[str]) -> Any:
    """The config ``bprun <overrides>`` would run, composed with Hydra's compose API."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module("runner.conf", version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def print_report(
    title: str,
    environment_lines: list[str],
    sections: list[list[str]],
    verdicts: list[str],
    home: str,
    started: float,
    closing: str = "",
) -> None:
    """The report on stdout: title, environment, sections, targets, and how to reproduce it."""
    print(f"## {title}\n")
    print("\n".join(environment_lines))
    for lines in sections:
        print()
        print("\n".join(lines))
    print("\n### Targets\n")
    for line in verdicts:
        print(f"- {line}")
    python = os.path.relpath(sys.executable) if sys.executable.startswith(home) else sys.executable
    script = os.path.relpath(sys.argv[0]) if os.path.abspath(sys.argv[0]).startswith(home) else sys.argv[0]
    print(
        f"\n{closing}Total {time.perf_counter() - started:.0f} s. Reproduce: "
        f"`cd {shlex.quote(home)} && {shlex.join([python, script, *sys.argv[1:]])}`"
    )
