"""The built wheel carries the config tree and the data sets, and bprun runs from it alone.

An editable install finds conf/ in the checkout; a wheel only has what pyproject.toml ships
(a wheel of packages = ["runner", "engine"] alone would have no conf/ at all).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from guard import dying_with_pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
        check=True,
        timeout=600,
        preexec_fn=dying_with_pytest(),
    )
    (path,) = out.glob("backprop_runner-*.whl")
    return path


def test_the_wheel_ships_configs_data_and_console_scripts(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "runner/conf/config.yaml",
        "runner/conf/model/mlp.yaml",
        "runner/conf/hydra/help/bprun.yaml",
        "runner/conf/experiment/iris_classifier.yaml",
        "runner/sweeps/plugins.py",
        "hydra_plugins/bprun/__init__.py",
        "runner/data/iris.csv",
        "runner/data/diabetes.csv",
        "runner/data/digits.csv.gz",
        "engine/network.py",
    ):
        assert expected in names, expected
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for script in (
        "bprun = runner.commands.bprun:main",
        "bprun-report =",
        "bprun-rerun =",
        "bprun-doctor =",
        "bprun-sync =",
    ):
        assert script in text


def test_bprun_runs_from_the_unpacked_wheel(wheel: Path, tmp_path: Path) -> None:
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    work = tmp_path / "work"
    work.mkdir()
    environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    environment["PYTHONPATH"] = str(unpacked)  # ahead of the editable install's finder
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import runner, sys; assert runner.__file__.startswith(sys.argv[1]), runner.__file__;"
            "from runner.commands.bprun import main; "
            "sys.argv = ['bprun', 'dataset=iris', 'trainer.epochs=3', 'tracking=none']; main()",
            str(unpacked),
        ],
        cwd=work,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=dying_with_pytest(),
    )
    assert result.returncode == 0, result.stderr
    assert "completed 3 epochs" in result.stdout


def test_the_installed_extras_are_consistent() -> None:
    """The test install (``.[test,ray,slurm]``) is one of the documented combinations: pip finds
    no broken requirement in it (the ray extra's cloudpickle 2 included)."""
    checked = subprocess.run(
        [sys.executable, "-m", "pip", "check"],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=dying_with_pytest(),
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
