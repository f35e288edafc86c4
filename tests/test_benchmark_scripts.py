"""The benchmark scripts run by hand for minutes, so an error in one shows only when someone runs
it: each must at least import (its names, its imports of the others and of the project)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parent / "benchmarks"


def test_every_benchmark_script_imports() -> None:
    scripts = sorted(path.stem for path in BENCHMARKS.glob("*.py") if path.stem != "conftest")
    assert {"bench_runner", "bench_server", "compare_commits"} <= set(scripts)
    # One fresh interpreter, from the scripts' folder, as `python tests/benchmarks/<script>.py` runs them.
    program = f"import importlib\nfor name in {scripts!r}:\n    importlib.import_module(name)\nprint('imported')"
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=BENCHMARKS, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip() == "imported", result.stderr[-3000:]
