"""The shape of the code: the import contracts in pyproject.toml (``[tool.importlinter]``) hold,
and every package of ``runner/`` is one of the layers they name."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from guard import dying_with_pytest

ROOT = Path(__file__).resolve().parent.parent


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_the_import_contracts_hold() -> None:
    command = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    result = subprocess.run(
        [sys.executable, "-c", command, "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=dying_with_pytest(),
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert f"Contracts: {len(contracts())} kept, 0 broken." in result.stdout, result.stdout[-3000:]


def test_every_package_of_runner_is_a_layer() -> None:
    (layers,) = [contract["layers"] for contract in contracts() if contract["type"] == "layers"]
    packages = {f"runner.{path.parent.name}" for path in (ROOT / "runner").glob("*/__init__.py")}
    modules = {f"runner.{path.stem}" for path in (ROOT / "runner").glob("*.py")}  # a layer may be one module
    assert packages <= set(layers) <= packages | modules, (sorted(packages - set(layers)), sorted(set(layers)))
