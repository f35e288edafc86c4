"""Provenance tags and the pyfunc model: what a run records, and a saved model that predicts
exactly what the engine predicts, from raw features, in process and through the MLflow CLI."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from guard import dying_with_pytest

import runner
from engine import MLP, Schedule, make_optimizer, train
from runner.core.datasets import Dataset, load_dataset
from runner.core.schema import DatasetConfig, SyntheticDatasetConfig
from runner.tracking import provenance

# Before any `import mlflow.pyfunc`: the module imports it with a warning filter (see there).
from runner.tracking.model import model_from, save_pyfunc_model
from runner.tracking.provenance import git_diff, git_state, project_git_state, provenance_tags

TAG_NAME = re.compile(r"^[/\w.\- :]+$")
DATA_DIR = Path(runner.__file__).parent / "data"


def git(directory: Path, *arguments: str) -> str:
    """Run git in ``directory`` with a throwaway identity; return stdout."""
    command = [
        "git",
        "-c",
        "user.name=test",
        "-c",
        "user.email=test@example.com",
        "-c",
        "commit.gpgsign=false",
        *arguments,
    ]
    return subprocess.run(
        command, cwd=directory, check=True, capture_output=True, text=True, preexec_fn=dying_with_pytest()
    ).stdout


def make_repo(directory: Path) -> str:
    """A git repository in ``directory`` with one committed file; returns the commit."""
    directory.mkdir(parents=True, exist_ok=True)
    git(directory, "init", "-q")
    (directory / "data.txt").write_text("one\n")
    git(directory, "add", "data.txt")
    git(directory, "commit", "-q", "-m", "first")
    return git(directory, "rev-parse", "HEAD").strip()


# --- git ---------------------------------------------------------------------------------------
def test_git_state_tracks_commit_and_dirty_for_tracked_changes_only(tmp_path: Path) -> None:
    commit = make_repo(tmp_path / "repo")
    state = git_state(tmp_path / "repo")
    assert state is not None
    assert (state.commit, state.dirty) == (commit, False)
    assert Path(state.root).resolve() == (tmp_path / "repo").resolve()

    (tmp_path / "repo" / "notes.txt").write_text("untracked\n")
    assert git_state(tmp_path / "repo").dirty is False  # untracked files do not count

    (tmp_path / "repo" / "data.txt").write_text("two\n")
    state = git_state(tmp_path / "repo" / ".")
    assert (state.commit, state.dirty) == (commit, True)
    diff = git_diff(state.root)
    assert "-one\n+two\n" in diff
    assert "#   notes.txt\n" in diff

    # The text applies as a patch on top of the commit (git skips the '#' lines).
    (tmp_path / "patch.diff").write_text(diff)
    git(tmp_path / "repo", "checkout", "-q", "data.txt")
    git(tmp_path / "repo", "apply", str(tmp_path / "patch.diff"))
    assert (tmp_path / "repo" / "data.txt").read_text() == "two\n"


def test_git_state_is_none_outside_a_work_tree_and_without_git(tmp_path: Path, monkeypatch) -> None:
    assert git_state(tmp_path) is None
    assert git_state(tmp_path / "does-not-exist") is None
    make_repo(tmp_path / "repo")
    assert git_state(tmp_path / "repo" / ".git") is None  # inside .git is not a work tree
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert git_state(tmp_path / "repo") is None


def test_git_state_before_the_first_commit(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    state = git_state(tmp_path)
    assert state is not None and state.commit is None and state.dirty is False


# --- provenance tags ---------------------------------------------------------------------------
def test_provenance_tags_in_this_checkout(tmp_path: Path) -> None:
    tags = provenance_tags("model:\n  hidden: [8]\n", str(tmp_path))
    for name, value in tags.items():
        assert TAG_NAME.match(name), name
        assert isinstance(value, str) and value, name

    assert re.fullmatch(r"[0-9a-f]{40}", tags["git.commit"])
    project_root = Path(runner.__file__).resolve().parent.parent
    # The commit exists in the checkout the runner package comes from (HEAD itself may move
    # while others commit, so compare with the object store, not with HEAD).
    git(project_root, "cat-file", "-e", f"{tags['git.commit']}^{{commit}}")
    assert Path(project_git_state().root).resolve() == project_root
    assert tags["git.dirty"] in ("true", "false")
    assert not any(name.startswith("cwd_git.") for name in tags)  # tmp_path is in no repository

    assert tags["version.python"] == ".".join(map(str, sys.version_info[:3]))
    for tag, distribution in [
        ("version.numpy", "numpy"),
        ("version.hydra_core", "hydra-core"),
        ("version.omegaconf", "omegaconf"),
        ("version.mlflow", "mlflow"),
        ("version.backprop_runner", "backprop-runner"),
    ]:
        assert tags[tag] == metadata.version(distribution)
    assert tags["config.sha256"] == hashlib.sha256(b"model:\n  hidden: [8]\n").hexdigest()


def test_config_hash_follows_the_config_text(tmp_path: Path) -> None:
    first = provenance_tags("seed: 0\n", str(tmp_path))["config.sha256"]
    assert provenance_tags("seed: 0\n", str(tmp_path))["config.sha256"] == first
    assert provenance_tags("seed: 1\n", str(tmp_path))["config.sha256"] != first


def test_blas_tags_describe_the_library_numpy_loaded() -> None:
    from threadpoolctl import threadpool_info

    tags = provenance.blas_tags()
    blas = [entry for entry in threadpool_info() if entry["user_api"] == "blas"]
    assert blas, "this environment's NumPy wheel bundles OpenBLAS"
    numpy_blas = next(entry for entry in blas if "numpy" in entry["filepath"])
    assert tags["blas.threads"] == str(numpy_blas["num_threads"])
    assert tags["blas.library"].startswith(f"{numpy_blas['internal_api']} {numpy_blas['version']} (")
    assert Path(numpy_blas["filepath"]).name in tags["blas.library"]


def test_a_different_repository_at_the_start_directory_gets_cwd_tags(tmp_path: Path) -> None:
    commit = make_repo(tmp_path / "project")
    (tmp_path / "project" / "configs").mkdir()
    tags = provenance_tags("", str(tmp_path / "project" / "configs"))
    assert tags["cwd_git.commit"] == commit
    assert tags["cwd_git.dirty"] == "false"
    assert tags["git.commit"] != commit

    (tmp_path / "project" / "data.txt").write_text("changed\n")
    assert provenance_tags("", str(tmp_path / "project"))["cwd_git.dirty"] == "true"


def test_starting_inside_the_project_checkout_adds_no_cwd_tags() -> None:
    project_root = Path(runner.__file__).resolve().parent.parent
    tags = provenance_tags("", str(project_root / "conf"))
    assert not any(name.startswith("cwd_git.") for name in tags)


@pytest.fixture
def fresh_project_state():
    """project_git_state is read once per process; these tests move the package around."""
    project_git_state.cache_clear()
    yield
    project_git_state.cache_clear()


def test_code_outside_a_checkout_has_an_unknown_commit(tmp_path: Path, monkeypatch, fresh_project_state) -> None:
    # A wheel installed into site-packages: not a git work tree at all.
    monkeypatch.setattr(runner, "__file__", str(tmp_path / "site-packages" / "runner" / "__init__.py"))
    tags = provenance_tags("", str(tmp_path))
    assert (tags["git.commit"], tags["git.dirty"]) == ("unknown", "unknown")

    # A venv inside some repository (ignored .venv): that repository's commit is not the code's.
    make_repo(tmp_path / "repo")
    (tmp_path / "repo" / ".gitignore").write_text(".venv/\n")
    package = tmp_path / "repo" / ".venv" / "site-packages" / "runner"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.setattr(runner, "__file__", str(package / "__init__.py"))
    project_git_state.cache_clear()
    assert project_git_state() is None
    tags = provenance_tags("", str(tmp_path / "repo"))
    assert tags["git.commit"] == "unknown"
    assert tags["cwd_git.commit"] == git(tmp_path / "repo", "rev-parse", "HEAD").strip()


# --- pyfunc model --------------------------------------------------------------------------------
def trained(dataset: Dataset, hidden: list[int], output_activation: str, loss: str, dtype: str = "float64") -> MLP:
    network = MLP(
        [dataset.n_inputs, *hidden, dataset.n_outputs],
        np.random.default_rng(7),
        activation="tanh",
        output_activation=output_activation,
        dtype=dtype,
    )
    optimizer = make_optimizer("adam", 0.01, Schedule("constant", 1, 1.0, 0.0))
    train(network, optimizer, dataset.X_train, dataset.Y_train, epochs=30, loss=loss)
    return network


def raw_features(filename: str) -> pd.DataFrame:
    """The built-in CSV as a user would hand it over: raw units, the target column included."""
    return pd.read_csv(DATA_DIR / filename, skipinitialspace=True)


def engine_prediction(network: MLP, dataset: Dataset, raw: pd.DataFrame) -> np.ndarray:
    """What the engine predicts for raw rows, standardized the way training data was."""
    X = (raw[dataset.feature_names].to_numpy(dtype=np.float64) - dataset.feature_mean) / dataset.feature_scale
    Y = network.predict(X)
    if dataset.target_scale is not None:
        Y = Y * dataset.target_scale + dataset.target_offset
    return Y


@pytest.fixture(scope="module")
def iris() -> tuple[Dataset, MLP]:
    dataset = load_dataset(DatasetConfig(name="iris"), np.random.default_rng(1), np.random.default_rng(2))
    return dataset, trained(dataset, [8], "softmax", "cross_entropy")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_saved_classifier_predicts_the_engines_probabilities_from_raw_features(tmp_path: Path, dtype: str) -> None:
    import mlflow.pyfunc

    dataset = load_dataset(DatasetConfig(name="iris"), np.random.default_rng(1), np.random.default_rng(2))
    network = trained(dataset, [8], "softmax", "cross_entropy", dtype)
    save_pyfunc_model(str(tmp_path / "model"), network, dataset)
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))

    raw = raw_features("iris.csv")
    predicted = model.predict(raw)  # the 'species' column is ignored
    assert list(predicted.columns) == ["setosa", "versicolor", "virginica"] == dataset.class_names
    assert predicted.dtypes.unique().tolist() == [np.float64]
    assert np.array_equal(predicted.to_numpy(), engine_prediction(network, dataset, raw))

    # The model standardizes the raw rows into exactly the features the network was trained
    # and validated on (the same rows, shuffled by the split).
    X = (raw[dataset.feature_names].to_numpy() - dataset.feature_mean) / dataset.feature_scale
    assert np.array_equal(np.sort(X, axis=0), np.sort(np.vstack([dataset.X_train, dataset.X_val]), axis=0))

    # Columns are found by name, not by position; the input's index is kept.
    shuffled = raw[dataset.feature_names[::-1]].iloc[::-1]
    again = model.predict(shuffled)
    assert again.index.equals(shuffled.index)
    assert np.array_equal(again.to_numpy(), predicted.to_numpy()[::-1])


def test_saved_regressor_predicts_in_target_units(tmp_path: Path) -> None:
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    dataset = load_dataset(DatasetConfig(name="diabetes"), np.random.default_rng(1), np.random.default_rng(2))
    network = trained(dataset, [16], "identity", "mse")
    save_pyfunc_model(str(tmp_path / "model"), network, dataset)
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))

    raw = raw_features("diabetes.csv").drop(columns="progression")
    # pandas reads age, sex, s1, s6 as int64, and the model takes them so: their columns are
    # long in the signature (MLflow never turns int64 into double), the others double.
    assert dataset.integer_features == [name for name in raw.columns if raw[name].dtype == np.int64]
    assert set(dataset.integer_features) >= {"age", "sex"}
    schema = {spec.name: spec.type.name for spec in model.metadata.get_input_schema().inputs}
    assert schema == {name: "long" if name in dataset.integer_features else "double" for name in dataset.feature_names}
    predicted = model.predict(raw)
    assert list(predicted.columns) == ["progression"]
    expected = engine_prediction(network, dataset, raw)
    assert np.array_equal(predicted.to_numpy(), expected)
    # Target units, not the [0, 1] the network was trained on.
    assert predicted["progression"].max() > 10
    # A float for a whole-number column is refused by MLflow, naming the column.
    with pytest.raises(MlflowException, match="age"):
        model.predict(raw.astype(np.float64))


def test_a_runs_model_loads_from_any_directory_without_creating_a_store(tmp_path: Path, compose, monkeypatch) -> None:
    from runner.core.run import run
    from runner.tracking.model import load_model
    from runner.tracking.store import StoreMissing

    (tmp_path / "project").mkdir()
    uri = f"sqlite:///{tmp_path / 'project' / 'mlflow.db'}"
    result = run(compose(["dataset=diabetes", "trainer.epochs=5", "tracking.tensors_every=0"]), tracking_uri=uri)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    model = load_model(result.run_id, uri)
    raw = raw_features("diabetes.csv")
    assert np.array_equal(model.predict(raw).to_numpy(), engine_prediction(result.network, result.dataset, raw))
    with pytest.raises(StoreMissing, match="no MLflow store at"):
        load_model(result.run_id)  # ./mlflow.db: not there, and not created
    assert list(elsewhere.iterdir()) == []


# Saved without an input example (training rows may be private), MLflow asks for one.
@pytest.mark.filterwarnings("ignore:.*An input example was not provided:UserWarning")
def test_xor_output_is_named_y_and_unstandardized_inputs_pass_through(tmp_path: Path) -> None:
    import mlflow.pyfunc

    config = SyntheticDatasetConfig(name="xor", n_samples=8, noise=0.0, val_fraction=0.0, standardize=False)
    dataset = load_dataset(config, np.random.default_rng(1), np.random.default_rng(2))
    assert dataset.feature_mean is None and dataset.target_scale is None
    network = trained(dataset, [2], "sigmoid", "mse")
    save_pyfunc_model(str(tmp_path / "model"), network, dataset, input_example=False)
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    corners = pd.DataFrame({"x0": [0.0, 0.0, 1.0, 1.0], "x1": [0.0, 1.0, 0.0, 1.0]})
    predicted = model.predict(corners)
    assert list(predicted.columns) == ["y"]
    assert np.array_equal(predicted.to_numpy(), network.predict(corners.to_numpy()))


def test_missing_feature_columns_are_named(tmp_path: Path, iris) -> None:
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    dataset, network = iris
    save_pyfunc_model(str(tmp_path / "model"), network, dataset)
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    incomplete = raw_features("iris.csv").drop(columns=["petal_width_cm", "sepal_length_cm"])

    # Loaded through MLflow, the signature check names them first...
    with pytest.raises(MlflowException, match=r"missing inputs \['sepal_length_cm', 'petal_width_cm'\]"):
        model.predict(incomplete)
    # ...and the model itself names them when called directly.
    with pytest.raises(ValueError, match="missing the feature column\\(s\\) 'sepal_length_cm', 'petal_width_cm'"):
        model.unwrap_python_model().predict(None, incomplete)


def test_saved_model_files_pin_requirements_and_describe_columns(tmp_path: Path, iris) -> None:
    from mlflow.models import Model

    dataset, network = iris
    save_pyfunc_model(str(tmp_path / "model"), network, dataset)
    requirements = (tmp_path / "model" / "requirements.txt").read_text().split()
    assert requirements == [
        f"{name}=={metadata.version(name)}" for name in ("numpy", "pandas", "mlflow", "cloudpickle", "backprop-runner")
    ]
    saved = Model.load(str(tmp_path / "model"))
    assert saved.signature.inputs.input_names() == dataset.feature_names
    assert saved.signature.outputs.input_names() == dataset.class_names
    assert saved.metadata == {
        "task": "classification",
        "sizes": [4, 8, 3],
        "activation": "tanh",
        "output_activation": "softmax",
        "dtype": "float64",
    }
    example = json.loads((tmp_path / "model" / "input_example.json").read_text())
    assert example["columns"] == dataset.feature_names
    assert 4.0 < example["data"][0][0] < 8.0  # sepal length in cm: raw units, not standardized


def test_the_pickle_holds_plain_data_and_the_parameters_are_a_copy(iris) -> None:
    import cloudpickle

    dataset, network = iris
    model = model_from(network, dataset)
    restored = cloudpickle.loads(cloudpickle.dumps(model))
    assert restored._network is None
    assert np.array_equal(restored.params, network.params)
    before = network.params.copy()
    network.params += 1.0  # training on after saving must not change the saved model
    try:
        assert np.array_equal(model.params, before)
    finally:
        network.params -= 1.0


@pytest.mark.slow
def test_mlflow_models_predict_cli_gives_the_engines_predictions(tmp_path: Path) -> None:
    dataset = load_dataset(DatasetConfig(name="diabetes"), np.random.default_rng(1), np.random.default_rng(2))
    network = trained(dataset, [8], "identity", "mse")
    save_pyfunc_model(str(tmp_path / "model"), network, dataset)
    # As the data set's own CSV has them: whole numbers in the integer columns.
    raw = raw_features("diabetes.csv").drop(columns="progression").head(25)
    raw.to_csv(tmp_path / "input.csv", index=False)

    mlflow_cli = Path(sys.executable).with_name("mlflow")
    completed = subprocess.run(
        [
            str(mlflow_cli),
            "models",
            "predict",
            "-m",
            str(tmp_path / "model"),
            "-i",
            str(tmp_path / "input.csv"),
            "-t",
            "csv",
            "--env-manager",
            "local",
            "-o",
            str(tmp_path / "out.json"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        preexec_fn=dying_with_pytest(),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    predictions = pd.DataFrame(json.loads((tmp_path / "out.json").read_text())["predictions"])
    assert list(predictions.columns) == ["progression"]
    # The CSV holds the raw values exactly (integers and short decimals), so the engine, given
    # the same rows, must agree; JSON carries 17 significant digits.
    expected = engine_prediction(network, dataset, pd.read_csv(tmp_path / "input.csv"))
    np.testing.assert_allclose(predictions.to_numpy(), expected, rtol=1e-15, atol=0)
