"""A trained network as an MLflow pyfunc model: raw feature columns in, outputs in target units out.

The saved model holds plain data (layer sizes, activation names, the flat parameter vector, the
column names and the data set's scaling) and rebuilds an ``engine.MLP`` to predict, so its
predictions are the engine's, bit for bit. Loading it needs this package installed (it is in the
model's pip requirements): the pickle refers to ``MLPModel`` by its import path.
"""

import functools
import logging
import warnings
from importlib import metadata
from typing import Any, Protocol

import numpy as np
import pandas as pd

with warnings.catch_warnings():
    # While importing, MLflow 3.17 derives schemas for its own agent types and warns about their
    # `Any` fields. It means to hide that (it swaps warnings.showwarning), which an "error" filter
    # bypasses, so under `-W error` or pytest's filterwarnings=error the import itself would fail.
    warnings.filterwarnings("ignore", message=".*Any type hint is inferred as AnyType", category=UserWarning)
    import mlflow.artifacts
    import mlflow.pyfunc
from mlflow.models import ModelSignature
from mlflow.pyfunc import PyFuncModel, PythonModel  # by name: mypy takes mlflow.pyfunc for MLflow's lazy loader
from mlflow.types import ColSpec, Schema

from engine import MLP
from runner import names
from runner.tracking.store import existing_store

# Distributions the model needs at load time, pinned to the versions it was saved with. Given
# explicitly, MLflow skips inferring them (which imports the model in a subprocess, seconds).
# cloudpickle wrote python_model.pkl, so it is pinned as well.
REQUIREMENTS = ("numpy", "pandas", "mlflow", "cloudpickle", "backprop-runner")
INPUT_EXAMPLE_ROWS = 5


def _float_vector(values: Any) -> np.ndarray | None:
    return None if values is None else np.array(values, dtype=np.float64).reshape(-1)


class MLPModel(PythonModel):
    """An engine MLP with the standardization and target scaling of the data it was trained on.

    Parameters
    ----------
    sizes : list of int
        Layer widths ``[n_inputs, hidden..., n_outputs]``.
    activation, output_activation : str
        Engine activation names.
    dtype : str
        ``'float64'`` or ``'float32'``, the network's dtype.
    params : array, shape ``(n_params,)``
        The flat parameter vector, laid out as ``engine.MLP.params``.
    feature_names : list of str
        Input columns, in the network's input order (``n_inputs`` names).
    output_names : list of str
        Output columns (``n_outputs`` names).
    task : str
        ``'classification'`` or ``'regression'``.
    feature_mean, feature_scale : array, shape ``(n_inputs,)``, optional
        Inputs are standardized as ``(x - feature_mean) / feature_scale``; None: used as given.
    target_offset, target_scale : array, shape ``(n_outputs,)``, optional
        Outputs are mapped back as ``y * target_scale + target_offset``; None: returned as computed.
    """

    def __init__(
        self,
        sizes: list[int],
        activation: str,
        output_activation: str,
        dtype: str,
        params: np.ndarray,
        feature_names: list[str],
        output_names: list[str],
        task: str,
        feature_mean: np.ndarray | None = None,
        feature_scale: np.ndarray | None = None,
        target_offset: np.ndarray | None = None,
        target_scale: np.ndarray | None = None,
    ) -> None:
        self.sizes = [int(size) for size in sizes]
        self.activation = str(activation)
        self.output_activation = str(output_activation)
        self.dtype = str(dtype)
        self.params = np.array(params, copy=True).reshape(-1)
        self.feature_names = [str(name) for name in feature_names]
        self.output_names = [str(name) for name in output_names]
        self.task = str(task)
        self.feature_mean = _float_vector(feature_mean)
        self.feature_scale = _float_vector(feature_scale)
        self.target_offset = _float_vector(target_offset)
        self.target_scale = _float_vector(target_scale)
        self._network: MLP | None = None
        self._network = self.network()  # fail now, not at load time, if the pieces do not fit
        if len(self.feature_names) != self.sizes[0] or len(self.output_names) != self.sizes[-1]:
            raise ValueError(
                f"{len(self.feature_names)} feature names and {len(self.output_names)} output names "
                f"do not fit a network of sizes {self.sizes}"
            )

    def __getstate__(self) -> dict[str, Any]:
        # Only plain data goes into the pickle; the engine object is rebuilt after loading.
        state = dict(self.__dict__)
        state["_network"] = None
        return state

    def network(self) -> MLP:
        """The engine MLP carrying the saved parameters (built once, on first use)."""
        if self._network is None:
            network = MLP(
                self.sizes,
                np.random.default_rng(0),
                activation=self.activation,
                output_activation=self.output_activation,
                dtype=self.dtype,
            )
            if self.params.shape != network.params.shape:
                raise ValueError(
                    f"{self.params.size} parameters do not fit a network of sizes {self.sizes} "
                    f"({network.n_params} parameters)"
                )
            network.params[...] = self.params  # in place: the layer views point into this vector
            self._network = network
        return self._network

    def load_context(self, context: Any) -> None:
        self.network()

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Outputs for the rows of ``model_input``, which holds the raw (unstandardized) features.

        Columns are picked by name, so their order does not matter and other columns are ignored.
        Returns a DataFrame with one column per output (class probabilities named after the
        classes, or regression targets in their own units) and the input's index.
        """
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        missing = [name for name in self.feature_names if name not in model_input.columns]
        if missing:
            raise ValueError(
                f"model input is missing the feature column(s) {', '.join(map(repr, missing))}; "
                f"the model needs {', '.join(map(repr, self.feature_names))} "
                f"and got {', '.join(map(repr, map(str, model_input.columns)))}"
            )
        try:
            X = model_input[self.feature_names].to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"the feature columns must be numeric: {error}") from None
        # The same float64 operations as runner.core.datasets.load_dataset, so the network sees the
        # same bits it would have seen in training.
        if self.feature_mean is not None:
            X = (X - self.feature_mean) / self.feature_scale
        Y = self.network().predict(X)
        if self.target_scale is not None:
            Y = Y * self.target_scale + self.target_offset
        return pd.DataFrame(Y.astype(np.float64, copy=False), columns=self.output_names, index=model_input.index)


class TrainingData(Protocol):
    """What a model needs to know about the data its network was trained on (``runner.core``'s
    ``Dataset`` is one)."""

    task: str
    X_train: np.ndarray
    feature_names: list[str]
    target_names: list[str]
    class_names: list[str]
    feature_mean: np.ndarray | None
    feature_scale: np.ndarray | None
    target_offset: np.ndarray | None
    target_scale: np.ndarray | None

    @property
    def n_outputs(self) -> int: ...


def output_names(dataset: TrainingData) -> list[str]:
    """Class names for class probabilities, target names otherwise (xor's single output: 'y')."""
    if dataset.task == "classification" and len(dataset.class_names) == dataset.n_outputs:
        return list(dataset.class_names)
    return list(dataset.target_names)


def model_from(network: MLP, dataset: TrainingData) -> MLPModel:
    """The pyfunc model for ``network`` trained on ``dataset`` (the parameters are copied)."""
    return MLPModel(
        network.sizes,
        network.activation,
        network.output_activation,
        network.dtype.name,
        network.params,
        dataset.feature_names,
        output_names(dataset),
        dataset.task,
        dataset.feature_mean,
        dataset.feature_scale,
        dataset.target_offset,
        dataset.target_scale,
    )


def pip_requirements() -> list[str]:
    """``name==version`` for each of ``REQUIREMENTS``, as installed now."""
    return list(_installed_requirements())


@functools.cache  # looked up once per process: each lookup scans site-packages
def _installed_requirements() -> tuple[str, ...]:
    return tuple(f"{name}=={metadata.version(name)}" for name in REQUIREMENTS)


def save_pyfunc_model(path: str, network: MLP, dataset: TrainingData, *, input_example: bool = True) -> None:
    """Save ``network``, trained on ``dataset``, as an MLflow pyfunc model in the new directory ``path``.

    The signature lists the feature columns in and the output columns (double) out. MLflow
    checks inputs against it before the model sees them, naming missing columns. A feature
    column is ``long`` where the training CSV held whole numbers (what pandas reads it as, and
    MLflow refuses to turn int64 into double), ``double`` otherwise.

    With ``input_example``, the first training rows, mapped back to raw units, are stored too
    (the MLflow UI shows them, ``mlflow models`` uses them as a request template). Pass False
    when training rows must not travel with the model; MLflow then warns that it has no example.
    """
    model = model_from(network, dataset)
    integers = set(getattr(dataset, "integer_features", ()))
    signature = ModelSignature(
        inputs=Schema([ColSpec("long" if name in integers else "double", name) for name in model.feature_names]),
        outputs=Schema([ColSpec("double", name) for name in model.output_names]),
    )
    example = None
    if input_example:
        rows = dataset.X_train[:INPUT_EXAMPLE_ROWS]
        if model.feature_mean is not None:
            rows = rows * model.feature_scale + model.feature_mean
        example = pd.DataFrame(rows, columns=model.feature_names)
        for name in integers:  # the example as the CSV had it
            example[name] = example[name].round().astype(np.int64)
    # MLflow warns on every save that a pickled python_model can run code when loaded. The
    # pickle holds only plain arrays and names (see MLPModel.__getstate__), so on every run
    # that warning would be noise; errors still show.
    pyfunc_logger = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_logger.level
    pyfunc_logger.setLevel(logging.ERROR)
    try:
        mlflow.pyfunc.save_model(
            path=path,
            python_model=model,
            pip_requirements=pip_requirements(),
            signature=signature,
            input_example=example,
            metadata={
                "task": model.task,
                "sizes": model.sizes,
                "activation": model.activation,
                "output_activation": model.output_activation,
                "dtype": model.dtype,
            },
        )
    finally:
        pyfunc_logger.setLevel(level)


def load_model(run_id: str, tracking_uri: str | None = None) -> PyFuncModel:
    """The model a run logged, from any directory: ``tracking_uri`` defaults to where ``bprun``
    logs (``MLFLOW_TRACKING_URI``, else ``mlflow.db`` in the current directory), and a store
    that is not there is refused instead of created. ``model.metadata.get_input_schema()`` lists
    the columns it expects."""
    uri = existing_store(tracking_uri)
    # Downloaded through the given store, not MLflow's global tracking URI (which a runs:/ URI
    # would use, creating ./mlflow.db wherever the caller happens to be).
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=names.MODEL_ARTIFACT, tracking_uri=uri)
    return mlflow.pyfunc.load_model(local)
