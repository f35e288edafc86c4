"""Every epoch's weights, biases and gradients, streamed to ``.npy`` files while a run trains.

For each layer ``l``: ``tensors/layer<l>.weights.npy`` ``(n_logged, fan_in, fan_out)``,
``layer<l>.biases.npy`` ``(n_logged, fan_out)``, ``layer<l>.grad_weights.npy`` and
``layer<l>.grad_biases.npy`` alike, and ``tensors/epochs.npy`` ``(n_logged,)``: the epochs ``e``
with ``e % tensors_every == 0``. Nothing is held in memory; ``load_tensors(run_id)`` or plain
``np.load`` read them back.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import BinaryIO

import mlflow.artifacts
import numpy as np

from engine import MLP, EpochReport, Observer
from runner.tracking import names

TENSOR_KINDS = ("weights", "biases", "grad_weights", "grad_biases")

_NPY_PREFIX_BYTES = 10  # magic (6) + version (2) + header length (2) in .npy format 1.0


def _npy_header(dtype: np.dtype, shape: tuple[int, ...], total_bytes: int) -> bytes:
    """A .npy 1.0 header of exactly ``total_bytes``, padded with spaces as the format allows."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    body = text.ljust(total_bytes - _NPY_PREFIX_BYTES - 1) + "\n"
    return np.lib.format.magic(1, 0) + len(body).to_bytes(2, "little") + body.encode("latin1")


class _GrowingNpy:
    """A .npy file whose first axis grows one record at a time.

    The header is written for the largest possible count, so its length never has to change;
    ``close`` rewrites it with the real count and cuts the file there.
    """

    def __init__(self, path: Path, record_shape: tuple[int, ...], dtype: np.dtype, max_records: int) -> None:
        self.path, self.record_shape, self.dtype = path, record_shape, np.dtype(dtype)
        self.records = 0
        self._file: BinaryIO = open(path, "wb")
        np.lib.format.write_array_header_1_0(
            self._file, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                         "shape": (max_records, *record_shape)})
        self._data_offset = self._file.tell()

    def append(self, record: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(record, self.dtype).data)
        self.records += 1

    def close(self) -> None:
        if self._file.closed:
            return
        record_bytes = self.dtype.itemsize * math.prod(self.record_shape)
        self._file.truncate(self._data_offset + self.records * record_bytes)
        self._file.seek(0)
        self._file.write(_npy_header(self.dtype, (self.records, *self.record_shape), self._data_offset))
        self._file.close()


class TensorWriter(Observer):
    """Streams every ``every``-th epoch's weights, biases and gradients to ``.npy`` files."""

    wants_gradients = True

    def __init__(self, directory: Path, every: int, epochs: int) -> None:
        self.directory, self.every, self.epochs = Path(directory), every, epochs
        self._files: dict[str, _GrowingNpy] = {}
        self._epochs: _GrowingNpy | None = None

    def on_train_begin(self, network: MLP) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        max_records = -(-self.epochs // self.every)
        self._epochs = _GrowingNpy(self.directory / "epochs.npy", (), np.dtype(np.int64), max_records)
        for number, W in enumerate(network.weights, start=1):
            shapes = {"weights": W.shape, "biases": W.shape[1:], "grad_weights": W.shape, "grad_biases": W.shape[1:]}
            for kind, shape in shapes.items():
                self._files[f"layer{number}.{kind}"] = _GrowingNpy(
                    self.directory / f"layer{number}.{kind}.npy", tuple(shape), network.dtype, max_records)

    def on_epoch_end(self, report: EpochReport) -> None:
        if report.epoch % self.every:
            return
        arrays = (report.weights, report.biases, report.grad_weights, report.grad_biases)
        for number in range(1, len(report.weights) + 1):
            for kind, layer_arrays in zip(TENSOR_KINDS, arrays):
                self._files[f"layer{number}.{kind}"].append(layer_arrays[number - 1])
        self._epochs.append(np.int64(report.epoch))

    def close(self) -> None:
        """Finish every file (safe to call twice, and after a failure mid-training)."""
        for handle in self._files.values():
            handle.close()
        if self._epochs is not None:
            self._epochs.close()


def read_tensors(directory: str | Path) -> dict[str, np.ndarray]:
    """Every tensor file in ``directory``: ``{'epochs': ..., 'layer1.weights': ..., ...}``."""
    return {path.name[: -len(".npy")]: np.load(path) for path in sorted(Path(directory).glob("*.npy"))}


def load_tensors(run_id: str, tracking_uri: str | None = None) -> dict[str, np.ndarray]:
    """Download a run's ``tensors/`` artifacts and load them.

    Returns ``{'epochs': (n,), 'layer1.weights': (n, fan_in, fan_out), 'layer1.biases': (n, fan_out),
    'layer1.grad_weights': ..., 'layer1.grad_biases': ..., 'layer2.weights': ...}``.
    ``tracking_uri`` defaults to MLflow's own resolution (``MLFLOW_TRACKING_URI``).
    """
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=names.TENSORS_ARTIFACT,
                                                tracking_uri=tracking_uri)
    return read_tensors(local)
