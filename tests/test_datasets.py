"""Data sets: shapes, splits, scaling with training statistics, seeding, and the user's CSV.

Built-in and synthetic data sets are loaded the way a run loads them: compose the config,
validate it, spawn the seeded generators, ``load_dataset``. CSV files are written to temporary
directories; the loader is called with a ``CsvDatasetConfig`` directly so that files the config
validation would refuse (a missing path) still reach the loader's own checks.
"""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from runner.core.datasets import DataError, Dataset, load_dataset
from runner.core.schema import CsvDatasetConfig
from runner.core.training import make_generators
from runner.core.validation import validate

SYNTHETIC_WITH_NOISE = ("sine", "moons", "circles", "spirals")


@pytest.fixture(scope="module")
def load(compose):
    """``load(name, *overrides)``: the data set a run with ``dataset=name`` would train on."""

    def load_named(name: str, *overrides: str) -> Dataset:
        settings = validate(compose([f"dataset={name}", "tracking=none", *overrides]))
        generators = make_generators(settings)
        return load_dataset(settings.dataset, generators["data"], generators["split"])

    return load_named


def builtin_frame(filename: str) -> pd.DataFrame:
    path = resources.files("runner").joinpath("data", filename)
    with path.open("rb") as raw:
        if filename.endswith(".gz"):
            with gzip.open(raw) as unzipped:
                return pd.read_csv(unzipped)
        return pd.read_csv(raw)


def all_rows(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    if dataset.X_val is None:
        return dataset.X_train, dataset.Y_train
    return np.vstack([dataset.X_train, dataset.X_val]), np.vstack([dataset.Y_train, dataset.Y_val])


def sorted_rows(array: np.ndarray) -> np.ndarray:
    return array[np.lexsort(array.T[::-1])]


def assert_one_hot(Y: np.ndarray, n_classes: int) -> None:
    assert Y.shape[1] == n_classes
    assert set(np.unique(Y)) <= {0.0, 1.0}
    np.testing.assert_array_equal(Y.sum(axis=1), 1.0)


# --- built-in data sets ----------------------------------------------------------------------
def test_iris_has_150_flowers_4_features_3_one_hot_classes(load) -> None:
    dataset = load("iris")
    X, Y = all_rows(dataset)
    assert X.shape == (150, 4)
    assert dataset.task == "classification"
    assert_one_hot(Y, 3)
    np.testing.assert_array_equal(Y.sum(axis=0), [50, 50, 50])
    assert dataset.class_names == ["setosa", "versicolor", "virginica"]
    assert (len(dataset.X_train), len(dataset.X_val)) == (120, 30)


def test_iris_rows_are_the_file_rows_split_without_loss_or_duplication(load) -> None:
    dataset = load("iris", "dataset.standardize=false")
    X, _ = all_rows(dataset)
    frame = builtin_frame("iris.csv")
    expected = frame.drop(columns="species").to_numpy(dtype=float)
    np.testing.assert_array_equal(sorted_rows(X), sorted_rows(expected))


def test_diabetes_has_442_patients_10_features_targets_scaled_on_the_train_split(load) -> None:
    dataset = load("diabetes")
    X, Y = all_rows(dataset)
    assert X.shape == (442, 10)
    assert Y.shape == (442, 1)
    assert dataset.task == "regression"
    # [0, 1] exactly on the training rows; validation rows use the same offset and scale.
    assert dataset.Y_train.min() == 0.0 and dataset.Y_train.max() == 1.0
    progression = builtin_frame("diabetes.csv")["progression"].to_numpy(dtype=float)
    restored = Y * dataset.target_scale + dataset.target_offset
    np.testing.assert_allclose(np.sort(restored[:, 0]), np.sort(progression), rtol=1e-12)
    train_raw = dataset.Y_train * dataset.target_scale + dataset.target_offset
    assert dataset.target_offset[0] == train_raw.min()


def test_digits_has_1797_images_of_64_pixels_and_10_classes(load) -> None:
    dataset = load("digits")
    X, Y = all_rows(dataset)
    assert X.shape == (1797, 64)
    assert_one_hot(Y, 10)
    assert (Y.sum(axis=0) > 150).all()  # every digit is well represented
    assert np.isfinite(X).all()  # constant (always blank) pixels stay finite when standardized


def test_xor_is_the_truth_table_with_no_validation_split(load) -> None:
    dataset = load("xor")
    assert dataset.X_val is None and dataset.Y_val is None
    truth_table = np.array([[0, 0, 0], [0, 1, 1], [1, 0, 1], [1, 1, 0]], dtype=float)
    rows = np.column_stack([dataset.X_train, dataset.Y_train])
    np.testing.assert_array_equal(sorted_rows(rows), truth_table)


def test_spirals_has_one_output_per_class(load) -> None:
    dataset = load("spirals", "dataset.classes=3", "dataset.n_samples=90")
    X, Y = all_rows(dataset)
    assert X.shape == (90, 2)
    assert_one_hot(Y, 3)
    np.testing.assert_array_equal(Y.sum(axis=0), [30, 30, 30])


def test_sine_is_a_regression_with_targets_in_unit_range_on_train(load) -> None:
    dataset = load("sine")
    assert dataset.task == "regression"
    assert dataset.Y_train.min() == 0.0 and dataset.Y_train.max() == 1.0
    assert len(dataset.X_train) + len(dataset.X_val) == 256


# --- splits and scaling ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "overrides", "n_total", "val_fraction", "n_val"),
    [
        ("iris", (), 150, 0.1, 15),
        ("iris", (), 150, 0.5, 75),
        ("moons", ("dataset.n_samples=200",), 200, 0.25, 50),
        ("digits", (), 1797, 0.2, 359),
        ("moons", ("dataset.n_samples=200",), 200, 0.0, 0),
    ],
)
def test_split_sizes_follow_val_fraction(load, name, overrides, n_total, val_fraction, n_val) -> None:
    dataset = load(name, f"dataset.val_fraction={val_fraction}", *overrides)
    n_validation = 0 if dataset.X_val is None else len(dataset.X_val)
    assert n_validation == n_val
    assert len(dataset.X_train) == n_total - n_val
    assert len(dataset.Y_train) == len(dataset.X_train)


@pytest.mark.parametrize("name", ["iris", "diabetes", "moons"])
def test_standardization_uses_training_statistics(load, name: str) -> None:
    scaled = load(name)
    raw = load(name, "dataset.standardize=false")  # same seed: the same rows in the same split
    np.testing.assert_allclose(scaled.X_train.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(scaled.X_train.std(axis=0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(scaled.feature_mean, raw.X_train.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(scaled.feature_scale, raw.X_train.std(axis=0), rtol=1e-12)
    # Validation rows are scaled with the training mean and std, not their own.
    np.testing.assert_allclose(
        scaled.X_val, (raw.X_val - raw.X_train.mean(axis=0)) / raw.X_train.std(axis=0), rtol=1e-12, atol=1e-12
    )
    assert not np.allclose(scaled.X_val.mean(axis=0), 0.0, atol=1e-6)


# --- seeds -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [*SYNTHETIC_WITH_NOISE, "iris"])
def test_the_same_seed_gives_identical_arrays(load, name: str) -> None:
    first, second = load(name, "seed=7"), load(name, "seed=7")
    for attribute in ("X_train", "Y_train", "X_val", "Y_val"):
        np.testing.assert_array_equal(getattr(first, attribute), getattr(second, attribute))
    assert first.fingerprint() == second.fingerprint()


@pytest.mark.parametrize("name", SYNTHETIC_WITH_NOISE)
def test_a_different_seed_gives_different_synthetic_data(load, name: str) -> None:
    first, second = load(name, "seed=7"), load(name, "seed=8")
    assert first.X_train.shape == second.X_train.shape
    assert not np.allclose(sorted_rows(all_rows(first)[0]), sorted_rows(all_rows(second)[0]))


def test_a_different_seed_draws_a_different_split_of_a_builtin_set(load) -> None:
    first, second = load("iris", "seed=7"), load("iris", "seed=8")
    assert not np.array_equal(first.X_val, second.X_val)


def test_dataset_seed_fixes_the_data_whatever_the_run_seed(load) -> None:
    first = load("moons", "seed=1", "dataset.seed=5")
    second = load("moons", "seed=2", "dataset.seed=5")
    assert first.fingerprint() == second.fingerprint()


# --- the user's CSV --------------------------------------------------------------------------
def write_csv(directory: Path, text: str, name: str = "table.csv") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def load_csv(
    path: Path,
    targets: list[str],
    *,
    features: list[str] | None = None,
    task: str = "regression",
    val_fraction: float = 0.0,
    standardize: bool = False,
) -> Dataset:
    config = CsvDatasetConfig(
        name="csv",
        path=str(path),
        targets=targets,
        features=features,
        task=task,
        val_fraction=val_fraction,
        standardize=standardize,
    )
    data_rng, split_rng = (np.random.default_rng(seed) for seed in (0, 1))
    return load_dataset(config, data_rng, split_rng)


def test_csv_features_default_to_the_non_target_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "a,y,b,c\n1,10,2,3\n4,20,5,6\n7,40,8,9\n")
    dataset = load_csv(path, ["y"])
    assert dataset.feature_names == ["a", "b", "c"]
    assert dataset.target_names == ["y"]
    np.testing.assert_array_equal(dataset.X_train, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    np.testing.assert_allclose(dataset.Y_train[:, 0], [0.0, 1 / 3, 1.0])  # (y - 10) / 30
    assert dataset.source == str(path)


def test_csv_features_can_be_chosen(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "a,y,b,c\n1,10,2,3\n4,20,5,6\n")
    dataset = load_csv(path, ["y"], features=["c", "a"])
    assert dataset.feature_names == ["c", "a"]
    np.testing.assert_array_equal(dataset.X_train, [[3, 1], [6, 4]])


def test_csv_regression_scales_each_target_on_the_train_split(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "x,y1,y2\n" + "".join(f"{i},{3 * i},{100 - i}\n" for i in range(20)))
    dataset = load_csv(path, ["y1", "y2"], val_fraction=0.25)
    assert dataset.n_outputs == 2
    np.testing.assert_array_equal(dataset.Y_train.min(axis=0), [0.0, 0.0])
    np.testing.assert_array_equal(dataset.Y_train.max(axis=0), [1.0, 1.0])


def test_csv_classification_one_hot_encodes_the_label_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "w,h,animal\n1,2,cat\n3,4,dog\n5,6,cat\n7,8,bird\n")
    dataset = load_csv(path, ["animal"], task="classification")
    assert dataset.task == "classification"
    assert dataset.class_names == ["bird", "cat", "dog"]  # sorted
    np.testing.assert_array_equal(dataset.Y_train, [[0, 1, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(dataset.X_train, [[1, 2], [3, 4], [5, 6], [7, 8]])


def test_csv_through_the_config(load, tmp_path: Path) -> None:
    path = write_csv(tmp_path, "p,q,label\n" + "".join(f"{i},{i % 4},{'ab'[i % 2]}\n" for i in range(40)))
    dataset = load(
        "csv",
        f"dataset.path={path}",
        "dataset.targets=[label]",
        "dataset.task=classification",
        "dataset.val_fraction=0.25",
    )
    assert (len(dataset.X_train), len(dataset.X_val)) == (30, 10)
    assert dataset.feature_names == ["p", "q"]
    assert dataset.class_names == ["a", "b"]
    assert_one_hot(dataset.Y_train, 2)
    np.testing.assert_allclose(dataset.X_train.mean(axis=0), 0.0, atol=1e-12)  # standardize defaults on


# --- bad CSVs --------------------------------------------------------------------------------
# (id, file text or None for no file, targets, task, substrings the message must contain)
BAD_CSVS = [
    ("missing file", None, ["y"], "regression", ["no such file"]),
    ("empty file", "", ["y"], "regression", ["empty"]),
    ("header only", "a,b,y\n", ["y"], "regression", ["no data rows"]),
    ("non-numeric cell", "a,b,y\n1,2,3\n4,x,6\n", ["y"], "regression", ["row 2", "'b'", "'x'"]),
    ("blank cell", "a,b,y\n1,2,3\n4,5,6\n7,,9\n", ["y"], "regression", ["row 3", "'b'", "blank"]),
    ("inf cell", "a,b,y\n1,2,3\ninf,5,6\n", ["y"], "regression", ["row 2", "'a'", "inf"]),
    ("non-numeric target", "a,b,y\n1,2,3\n4,5,high\n", ["y"], "regression", ["row 2", "'y'", "'high'"]),
    ("blank label", "a,b,y\n1,2,cat\n4,5,\n", ["y"], "classification", ["row 2", "'y'", "blank"]),
    ("unknown target column", "a,b,y\n1,2,3\n4,5,6\n", ["z"], "regression", ["'z'", "a, b, y"]),
    ("ragged row", "a,b,y\n1,2,3\n4,5,6,7\n", ["y"], "regression", ["line 3"]),
]


@pytest.mark.parametrize(
    ("text", "targets", "task", "expected"), [case[1:] for case in BAD_CSVS], ids=[case[0] for case in BAD_CSVS]
)
def test_a_bad_csv_raises_data_error_naming_the_file_and_the_place(
    tmp_path: Path, text, targets, task, expected
) -> None:
    path = tmp_path / "bad.csv" if text is None else write_csv(tmp_path, text, "bad.csv")
    with pytest.raises(DataError) as error:
        load_csv(path, targets, task=task)
    message = str(error.value)
    assert str(path) in message, message
    for part in expected:
        assert part in message, message


@pytest.mark.parametrize("n_rows", [1, 2])
def test_too_few_samples_for_the_split_raise_data_error(tmp_path: Path, n_rows: int) -> None:
    # 1 row: nothing to split; 2 rows at 0.2: round(0.4) = 0 validation rows.
    path = write_csv(tmp_path, "a,y\n" + "".join(f"{i},{i}\n" for i in range(n_rows)))
    with pytest.raises(DataError) as error:
        load_csv(path, ["y"], val_fraction=0.2)
    assert f"{n_rows} sample" in str(error.value)


@pytest.mark.parametrize("n_rows", [1, 2])
def test_too_few_samples_for_the_split_names_the_file(tmp_path: Path, n_rows: int) -> None:
    path = write_csv(tmp_path, "a,y\n" + "".join(f"{i},{i}\n" for i in range(n_rows)))
    with pytest.raises(DataError) as error:
        load_csv(path, ["y"], val_fraction=0.2)
    assert str(path) in str(error.value)


def test_a_non_finite_cell_is_quoted_as_written(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "a,b,y\n1,2,3\ninf,5,6\n")
    with pytest.raises(DataError) as error:
        load_csv(path, ["y"])
    assert "np.float64" not in str(error.value), str(error.value)
