"""Data sets: synthetic ones generated from a seed, the built-in CSVs, and a user's own CSV.

Every loader returns a ``Dataset`` already split into training and validation rows, with
features standardized and regression targets rescaled to [0, 1] using training-split
statistics only (so nothing about the validation rows leaks into training). Class labels
are one-hot encoded; xor keeps its classic single 0/1 output.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from runner.core.schema import CsvDatasetConfig, DatasetConfig, SpiralsDatasetConfig, SyntheticDatasetConfig
from runner.process.errors import InvalidInput

if TYPE_CHECKING:
    import pandas as pd

BUILTIN_FILES = {
    "iris": ("iris.csv", "species", "classification"),
    "diabetes": ("diabetes.csv", "progression", "regression"),
    "digits": ("digits.csv.gz", "digit", "classification"),
}


class DataError(InvalidInput):
    """The data cannot be used; the message names the file, row and column where it can."""


@dataclass
class Dataset:
    """Training and validation arrays (rows are samples) and what they mean.

    ``feature_mean``/``feature_scale`` undo nothing by themselves: a model applied to raw
    features computes ``(x - feature_mean) / feature_scale`` first; predictions map back to
    target units as ``y * target_scale + target_offset``.
    """

    name: str
    task: str  # "classification" or "regression"
    X_train: np.ndarray
    Y_train: np.ndarray
    X_val: np.ndarray | None
    Y_val: np.ndarray | None
    feature_names: list[str]
    target_names: list[str]
    class_names: list[str] = field(default_factory=list)
    feature_mean: np.ndarray | None = None
    feature_scale: np.ndarray | None = None
    target_offset: np.ndarray | None = None
    target_scale: np.ndarray | None = None
    source: str = ""  # file path or generator description
    # Features whose CSV column holds whole numbers: pandas reads them as int64, and a model
    # served from these data takes them so.
    integer_features: list[str] = field(default_factory=list)

    @property
    def n_inputs(self) -> int:
        return int(self.X_train.shape[1])

    @property
    def n_outputs(self) -> int:
        return int(self.Y_train.shape[1])

    def fingerprint(self) -> str:
        """sha256 over the training and validation arrays (shapes, dtypes and bytes)."""
        digest = hashlib.sha256()
        for array in (self.X_train, self.Y_train, self.X_val, self.Y_val):
            if array is not None:
                digest.update(f"{array.shape}{array.dtype}".encode())
                digest.update(np.ascontiguousarray(array).data)  # the buffer itself: no copy of the data
        return digest.hexdigest()


# --- synthetic generators: (rng, n_samples, noise, config) -> (X, labels or targets) ---------
def _xor(rng: np.random.Generator, n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    X = corners[np.arange(n) % 4]
    if noise > 0:
        X = X + rng.normal(0.0, noise, X.shape)
    y = (corners[np.arange(n) % 4].sum(axis=1) == 1).astype(float)
    return X, y[:, None]


def _sine(rng: np.random.Generator, n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    x = rng.uniform(-np.pi, np.pi, n)
    y = np.sin(x) + rng.normal(0.0, noise, n) if noise > 0 else np.sin(x)
    return x[:, None], y[:, None]


def _moons(rng: np.random.Generator, n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    outer = n // 2
    angle_outer = np.linspace(0.0, np.pi, outer)
    angle_inner = np.linspace(0.0, np.pi, n - outer)
    X = np.vstack(
        [
            np.column_stack([np.cos(angle_outer), np.sin(angle_outer)]),
            np.column_stack([1.0 - np.cos(angle_inner), 0.5 - np.sin(angle_inner)]),
        ]
    )
    X += rng.normal(0.0, noise, X.shape)
    return X, np.repeat([0, 1], [outer, n - outer])


def _circles(rng: np.random.Generator, n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    outer = n // 2
    angle = rng.uniform(0.0, 2 * np.pi, n)
    radius = np.where(np.arange(n) < outer, 1.0, 0.5)
    X = np.column_stack([radius * np.cos(angle), radius * np.sin(angle)])
    X += rng.normal(0.0, noise, X.shape)
    return X, np.repeat([0, 1], [outer, n - outer])


def _spirals(rng: np.random.Generator, n: int, noise: float, classes: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(n) % classes
    t = rng.uniform(0.0, 1.0, n)
    angle = 3.0 * np.pi * t + 2 * np.pi * labels / classes
    X = np.column_stack([t * np.cos(angle), t * np.sin(angle)])
    X += rng.normal(0.0, noise * 0.2, X.shape)
    return X, labels


def _one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    one_hot: np.ndarray = np.eye(n_classes)[labels]
    return one_hot


def _generate(
    config: SyntheticDatasetConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, str, list[str]]:
    n, noise = config.n_samples, config.noise
    if config.name == "xor":
        X, Y = _xor(rng, n, noise)
        return X, Y, "classification", []
    if config.name == "sine":
        X, Y = _sine(rng, n, noise)
        return X, Y, "regression", []
    if config.name == "spirals":
        assert isinstance(config, SpiralsDatasetConfig)  # DATASET_SCHEMAS types spirals so
        X, labels = _spirals(rng, n, noise, config.classes)
        classes = config.classes
    else:
        X, labels = (_moons if config.name == "moons" else _circles)(rng, n, noise)
        classes = 2
    return X, _one_hot(labels, classes), "classification", [str(c) for c in range(classes)]


# --- CSV files -------------------------------------------------------------------------------
def read_table(
    path: str, features: list[str] | None, targets: list[str], task: str
) -> tuple[np.ndarray, np.ndarray, list[str], list[str], list[str], list[str]]:
    """Read a CSV with a header row; return features, targets, their names, the class names
    and the integer feature columns, or raise DataError.

    Classification takes one label column and one-hot encodes it (classes sorted).
    """
    import pandas as pd  # (lazy: only CSV data sets need pandas, slow to import)

    _check_text(path)
    try:
        # Only an empty cell is missing: "NaN" or "null" written in a cell is reported as written.
        frame = pd.read_csv(path, skipinitialspace=True, keep_default_na=False, na_values=[""])
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty (expected a header row and data rows)") from None
    except pd.errors.ParserError as error:
        raise DataError(f"{path}: not a well-formed CSV ({str(error).strip()})") from None
    if frame.empty:
        raise DataError(f"{path}: no data rows below the header")
    columns = [str(c) for c in frame.columns]
    unknown = [c for c in targets + (features or []) if c not in columns]
    if unknown:
        raise DataError(f"{path}: no column {', '.join(map(repr, unknown))}; the columns are {', '.join(columns)}")
    features = features if features is not None else [c for c in columns if c not in targets]
    if not features:
        raise DataError(f"{path}: no feature columns left besides the targets {targets}")
    X = _numeric(frame[features], path)
    integers = [name for name in features if pd.api.types.is_integer_dtype(frame[name])]
    class_names: list[str] = []
    if task == "classification":
        labels = frame[targets[0]]
        if labels.isna().any():
            row = int(np.flatnonzero(labels.isna().to_numpy())[0])
            raise DataError(f"{path}: blank label at data row {row + 1}, column {targets[0]!r}")
        class_names = sorted(map(str, labels.unique()))
        index = {name: i for i, name in enumerate(class_names)}
        Y = _one_hot(np.array([index[str(v)] for v in labels]), len(class_names))
    else:
        Y = _numeric(frame[targets], path)
    return X, Y, features, list(targets), class_names, integers


# Larger values overflow while the data are standardized or rescaled (their squares exceed the
# largest double), and no network input or target is meant to be that large.
LARGEST_VALUE = 1e150


def _check_text(path: str) -> None:
    """Refuse, naming the file, what ``read_csv`` would fail on with a decoding error: a
    compressed file under a plain name, or text that is not UTF-8; and a row with fewer cells
    than the header (pandas fills those cells in silently), and a header that names a column
    twice."""
    try:
        with open(path, "rb") as file:
            head = file.read(2)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: a folder, not a CSV file") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read the file ({error.strerror})") from None
    compressed = head == b"\x1f\x8b"
    if compressed and not path.endswith(".gz"):
        raise DataError(f"{path}: the file is gzip-compressed; name it {Path(path).name}.gz or decompress it")
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as text:
            rows = csv.reader(text, skipinitialspace=True)
            header = next(rows, None)
            twice = sorted({name for name in header or [] if header is not None and header.count(name) > 1})
            if twice:  # pandas would rename the second one (a.1) and train on it silently
                raise DataError(
                    f"{path}: the header names {', '.join(map(repr, twice))} more than once; give every column a "
                    "name of its own"
                )
            for number, row in enumerate(rows, start=1):
                if header is not None and row and len(row) < len(header):
                    raise DataError(f"{path}: data row {number} has {len(row)} cell(s), the header {len(header)}")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at position "
            f"{error.start}); save it as UTF-8"
        ) from None


def _numeric(frame: pd.DataFrame, path: str) -> np.ndarray:
    import pandas as pd  # (lazy: see read_table)

    values: np.ndarray = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values) | (np.abs(values) > LARGEST_VALUE)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raw = frame.iat[row, column]
        # As written in the file: a cell that parsed to inf is shown as 'inf', not np.float64(inf).
        shown = repr(raw) if isinstance(raw, str) else repr(str(raw))
        if pd.isna(raw):
            what = "blank"
        elif np.isfinite(values[row, column]):
            what = f"{shown} is too large (at most {LARGEST_VALUE:g} in absolute value)"
        else:
            what = f"{shown} is not a finite number"
        hint = ""
        if isinstance(raw, str) and not pd.isna(raw) and pd.isna(pd.to_numeric(raw, errors="coerce")):
            hint = " (text labels? dataset.task=classification takes a column of class names)"
        raise DataError(f"{path}: data row {row + 1}, column {frame.columns[column]!r}: {what}{hint}")
    return values


def _builtin_path(filename: str) -> str:
    return str(resources.files("runner").joinpath("data", filename))


# --- splitting and scaling -------------------------------------------------------------------
def _split(
    X: np.ndarray, Y: np.ndarray, val_fraction: float, rng: np.random.Generator, source: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    n = X.shape[0]
    n_val = round(n * val_fraction)
    if val_fraction > 0 and (n_val < 1 or n - n_val < 1):
        raise DataError(
            f"{source}: {n} sample(s) cannot be split with dataset.val_fraction={val_fraction} "
            "(both training and validation need at least one sample)"
        )
    if n_val == 0:
        return X, Y, None, None
    order = rng.permutation(n)
    val, train = order[:n_val], order[n_val:]
    return X[train], Y[train], X[val], Y[val]


def load_dataset(config: DatasetConfig, data_rng: np.random.Generator, split_rng: np.random.Generator) -> Dataset:
    """Build the data set ``config`` describes, split and scaled.

    ``data_rng`` generates synthetic samples; ``split_rng`` draws the validation rows.
    """
    class_names: list[str] = []
    integer_features: list[str] = []
    if config.name in BUILTIN_FILES or config.name == "csv":
        if config.name == "csv":
            assert isinstance(config, CsvDatasetConfig)  # DATASET_SCHEMAS types csv so
            path, features, targets, task = (
                os.path.abspath(config.path),
                config.features,
                list(config.targets),
                config.task,
            )
        else:
            filename, target, task = BUILTIN_FILES[config.name]
            path, features, targets = _builtin_path(filename), None, [target]
        X, Y, feature_names, target_names, class_names, integer_features = read_table(path, features, targets, task)
        source = path
    else:
        assert isinstance(config, SyntheticDatasetConfig)  # DATASET_SCHEMAS types every other name so
        X, Y, task, class_names = _generate(config, data_rng)
        feature_names = [f"x{i}" for i in range(X.shape[1])]
        target_names = ["y"] if Y.shape[1] == 1 else [f"class_{c}" for c in class_names]
        source = f"generated {config.name}(n_samples={config.n_samples}, noise={config.noise})"
    X_train, Y_train, X_val, Y_val = _split(X, Y, config.val_fraction, split_rng, source)
    dataset = Dataset(
        config.name,
        task,
        X_train,
        Y_train,
        X_val,
        Y_val,
        feature_names,
        target_names,
        class_names,
        source=source,
        integer_features=integer_features,
    )
    if config.standardize:
        mean = X_train.mean(axis=0)
        scale = X_train.std(axis=0)
        scale[scale == 0] = 1.0  # constant columns (blank digit pixels) stay 0 instead of NaN
        dataset.feature_mean, dataset.feature_scale = mean, scale
        dataset.X_train = (X_train - mean) / scale
        if X_val is not None:
            dataset.X_val = (X_val - mean) / scale
    if task == "regression":
        low, high = Y_train.min(axis=0), Y_train.max(axis=0)
        span = np.where(high > low, high - low, 1.0)
        dataset.target_offset, dataset.target_scale = low, span
        dataset.Y_train = (Y_train - low) / span
        if Y_val is not None:
            dataset.Y_val = (Y_val - low) / span
    return dataset
