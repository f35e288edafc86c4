"""Input bprun refuses: before anything runs, in one line that names the key or file, the bad
value and what is allowed, with exit 2, leaving no store, no run and no output folder behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import cli

pytestmark = pytest.mark.slow

OPTUNA = ("-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "trainer.epochs=2")

# (name, arguments, what the one line must say, with the key or file first)
REFUSALS = [
    (
        "an unknown store scheme",
        ("tracking.uri=garbage://x",),
        "tracking.uri='garbage://x' is not allowed: bprun tracks runs in sqlite:///PATH",
    ),
    (
        "a SQLite file in a folder that does not exist",
        ("tracking.uri=sqlite:////nonexistent/dir/x.db",),
        "cannot write the MLflow store /nonexistent/dir/x.db: its folder /nonexistent/dir does not exist",
    ),
    (
        "an Optuna interval whose ends are reversed",
        (*OPTUNA, "optimizer.lr=interval(2,1)"),
        "optimizer.lr='interval(2,1)' is not allowed: an interval's low end (2.0) must not be above its high end",
    ),
    (
        "an Optuna interval reaching outside the key's range",
        (*OPTUNA, "optimizer.lr=interval(-1,1)"),
        "the search space of optimizer.lr holds -1.0, which a trial cannot take: optimizer.lr=-1.0 is not allowed",
    ),
    (
        "an Optuna choice a trial cannot take",
        (*OPTUNA, "model.activation=choice(tanh,relux)"),
        "the search space of model.activation holds 'relux'",
    ),
    (
        "no Optuna trials",
        (*OPTUNA, "optimizer.lr=interval(0.1,1)", "hydra.sweeper.n_trials=0"),
        "hydra.sweeper.n_trials=0 is not allowed: it must be an integer >= 1",
    ),
    (
        "an unknown pruner",
        (*OPTUNA, "optimizer.lr=interval(0.1,1)", "hydra.sweeper.pruner=medain"),
        "hydra.sweeper.pruner='medain' is not allowed: choose one of none, median, percentile, successive_halving, "
        "hyperband",
    ),
    (
        "an option the pruner does not take",
        (
            *OPTUNA,
            "optimizer.lr=interval(0.1,1)",
            "hydra.sweeper.pruner=median",
            "+hydra.sweeper.pruner_args={warmup:3}",
        ),
        "hydra.sweeper.pruner_args.warmup is not allowed: the median pruner takes n_startup_trials, n_warmup_steps",
    ),
    ("no workers", ("-m", "hydra.launcher.n_jobs=0", "seed=0,1"), "hydra.launcher.n_jobs=0 is not allowed"),
    ("negative workers", ("-m", "hydra.launcher.n_jobs=-1", "seed=0,1"), "hydra.launcher.n_jobs=-1 is not allowed"),
    ("a hidden size of 0", ("model.hidden=[0]",), "model.hidden=[0] is not allowed"),
    ("no epochs", ("trainer.epochs=0",), "trainer.epochs=0 is not allowed: it must be an integer >= 1"),
    ("a learning rate that is not a number", ("optimizer.lr=nan",), "optimizer.lr=nan is not allowed"),
    ("a sweep with a bad value", ("-m", "seed=0,1", "trainer.epochs=0"), "trainer.epochs=0 is not allowed"),
]


@pytest.mark.parametrize(("name", "arguments", "said"), REFUSALS, ids=[case[0] for case in REFUSALS])
def test_a_refusal_is_one_line_exit_2_and_leaves_nothing(
    name: str, arguments: tuple, said: str, tmp_path: Path
) -> None:
    cwd = tmp_path / "cwd"
    result = cli(*arguments, cwd=cwd, uri=None)
    assert result.returncode == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bprun: "), result.output
    assert said in lines[0], result.output
    assert "Error in call to target" not in result.stderr
    assert sorted(path.name for path in cwd.iterdir()) == [], "nothing is left in the working directory"


def test_a_csv_naming_a_column_twice_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "twice.csv"
    data.write_text("a,a,y\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n")
    cwd = tmp_path / "cwd"
    result = cli("dataset=csv", f"dataset.path={data}", "dataset.targets=[y]", cwd=cwd, uri=None)
    assert result.returncode == 2, result.output
    assert (
        result.stderr.strip()
        == f"bprun: {data}: the header names 'a' more than once; give every column a name of its own"
    )
    assert list(cwd.iterdir()) == []


def test_a_folder_given_as_the_csv_file_is_named_a_folder(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    result = cli("dataset=csv", f"dataset.path={tmp_path}", "dataset.targets=[y]", cwd=cwd, uri=None)
    assert result.returncode == 2, result.output
    assert f"dataset.path='{tmp_path}' is not allowed: it is a folder; name a CSV file in it" in result.stderr
    assert list(cwd.iterdir()) == []
