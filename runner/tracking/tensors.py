"""Every epoch's weights, biases and gradients, streamed to ``.npy`` files while a run trains.

For each layer ``l``: ``tensors/layer<l>.weights.npy`` ``(n_logged, fan_in, fan_out)``,
``layer<l>.biases.npy`` ``(n_logged, fan_out)``, ``layer<l>.grad_weights.npy`` and
``layer<l>.grad_biases.npy`` alike, and ``tensors/epochs.npy`` ``(n_logged,)``: the epochs kept,
every ``tensors_every``-th (by default as many as keep ``MAX_SNAPSHOTS``) and the last one.
Only the latest epoch is held in memory; ``load_tensors(run_id)`` or plain ``np.load`` read
them back.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

import mlflow.artifacts
import numpy as np
from numpy.typing import ArrayLike

from engine import MLP, EpochReport, Observer
from runner import names
from runner.tracking.store import existing_store

TENSOR_KINDS = ("weights", "biases", "grad_weights", "grad_biases")
# Records a run keeps by default (``tracking.tensors_every=null``), the last epoch on top: enough
# to follow the weights through training, at a bounded cost (a digits run of 300 epochs would
# otherwise write 45 MB).
MAX_SNAPSHOTS = 100

_NPY_PREFIX_BYTES = 10  # magic (6) + version (2) + header length (2) in .npy format 1.0


def _npy_header(dtype: np.dtype, shape: tuple[int, ...], total_bytes: int) -> bytes:
    """A .npy 1.0 header of exactly ``total_bytes``, padded with spaces as the format allows."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    body = text.ljust(total_bytes - _NPY_PREFIX_BYTES - 1) + "\n"
    return np.lib.format.magic(1, 0) + len(body).to_bytes(2, "little") + body.encode("latin1")


class _GrowingNpy:
    """A .npy file whose first axis grows one record at a time, readable whatever stops the
    process that writes it.

    Records are written unbuffered (in the operating system as soon as ``append`` returns). The
    header's count is rewritten in place by ``sync(records)``, never beyond the records appended,
    so it never claims a record that is not there: after SIGKILL or a full disk the file loads
    with the records last synced (anything after them is ignored). The header is sized for the
    largest possible count, so its length never changes. ``close(records)`` writes the final
    count and cuts the file there.
    """

    def __init__(self, path: Path, record_shape: tuple[int, ...], dtype: np.dtype, max_records: int) -> None:
        self.path, self.record_shape, self.dtype = path, record_shape, np.dtype(dtype)
        self.records = 0
        self._synced = -1
        self._record_bytes = self.dtype.itemsize * math.prod(record_shape)
        self._file = open(path, "wb", buffering=0)  # noqa: SIM115 (open across appends; close() ends it)
        widest = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (max_records, *record_shape),
        }
        np.lib.format.write_array_header_1_0(self._file, widest)
        self._data_offset = self._file.tell()
        self.sync(0)

    def append(self, record: ArrayLike) -> None:
        data = np.ascontiguousarray(record, self.dtype).data.cast("B")
        while data:  # a raw write may write less than asked
            data = data[self._file.write(data) :]
        self.records += 1

    def sync(self, records: int) -> None:
        """Make the header count the first ``records`` records (at most those appended)."""
        records = min(records, self.records)
        if records != self._synced:
            header = _npy_header(self.dtype, (records, *self.record_shape), self._data_offset)
            os.pwrite(self._file.fileno(), header, 0)
            self._synced = records

    def close(self, records: int) -> None:
        """Keep the first ``records`` records and nothing after them."""
        if self._file.closed:
            return
        try:
            self.sync(records)
            self._file.truncate(self._data_offset + self._synced * self._record_bytes)
        finally:
            self._file.close()


def snapshot_spacing(every: int | None, epochs: int) -> int:
    """Every how many epochs the tensors are kept: ``every``, or with None as many epochs as
    keep at most ``MAX_SNAPSHOTS`` records (the last epoch comes on top)."""
    return every if every is not None else max(1, -(-epochs // MAX_SNAPSHOTS))


class TensorWriter(Observer):
    """Streams every ``every``-th epoch's weights, biases and gradients to ``.npy`` files, and
    the last epoch's, whichever it is (training may stop early)."""

    wants_gradients = True

    def __init__(self, directory: Path, every: int, epochs: int) -> None:
        self.directory, self.every, self.epochs = Path(directory), every, epochs
        self._files: dict[str, _GrowingNpy] = {}
        self._epochs: _GrowingNpy | None = None
        self.complete = 0  # epochs whose every file got its record (a full disk can stop one half way)
        # The latest epoch that is not on the schedule, kept in case it is the last one.
        self._latest: list[np.ndarray] = []
        self._latest_epoch: int | None = None

    def on_train_begin(self, network: MLP) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        max_records = -(-self.epochs // self.every) + 1
        self._epochs = _GrowingNpy(self.directory / "epochs.npy", (), np.dtype(np.int64), max_records)
        for number, W in enumerate(network.weights, start=1):
            shapes = dict(zip(TENSOR_KINDS, (W.shape, W.shape[1:], W.shape, W.shape[1:])))
            for kind, shape in shapes.items():  # in TENSOR_KINDS order, as on_epoch_end lists the arrays
                self._files[f"layer{number}.{kind}"] = _GrowingNpy(
                    self.directory / f"layer{number}.{kind}.npy", tuple(shape), network.dtype, max_records
                )

    def on_epoch_end(self, report: EpochReport) -> None:
        # wants_gradients: the engine reports every epoch's gradients to this observer.
        assert report.grad_weights is not None and report.grad_biases is not None
        arrays = [
            layer_arrays[number]
            for number in range(len(report.weights))
            for layer_arrays in (report.weights, report.biases, report.grad_weights, report.grad_biases)
        ]
        if report.epoch % self.every == 0:
            self._write(report.epoch, arrays)
            self._latest_epoch = None
            return
        if not self._latest:  # copies: the network's own arrays change with the next epoch
            self._latest = [array.copy() for array in arrays]
        else:
            for kept, array in zip(self._latest, arrays):
                np.copyto(kept, array)
        self._latest_epoch = report.epoch

    def on_train_end(self, history: object) -> None:
        if self._latest_epoch is not None:
            self._write(self._latest_epoch, self._latest)
            self._latest_epoch = None

    def _write(self, epoch: int, arrays: list[np.ndarray]) -> None:
        """One epoch's record in every file; ``arrays`` come in the files' order (layer by
        layer, ``TENSOR_KINDS`` in each)."""
        for file, array in zip(self._files.values(), arrays, strict=True):
            file.append(array)
        assert self._epochs is not None  # on_train_begin opens the files before the first epoch
        self._epochs.append(np.int64(epoch))
        self.complete += 1

    def sync(self) -> None:
        """Make every file's header count the epochs written so far (the run calls this before
        each metric flush, so the tensors never end before the metrics)."""
        for handle in self._handles():
            handle.sync(self.complete)

    def close(self) -> None:
        """Finish every file (safe to call twice, and after a failure mid-training)."""
        problem = None
        for handle in self._handles():
            try:
                handle.close(self.complete)
            except OSError as error:  # a full disk: the other files still get closed
                problem = problem or error
        if problem is not None:
            raise problem

    def _handles(self) -> list[_GrowingNpy]:
        return [*self._files.values(), *([self._epochs] if self._epochs is not None else [])]


def _layout(path: Path) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """(dtype, shape of one record, records the header counts, offset of the data) of a file."""
    with open(path, "rb") as file:
        version = np.lib.format.read_magic(file)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(file)
        if fortran_order or not shape:
            raise ValueError(f"{path}: not a file of records")
        return dtype, tuple(shape[1:]), shape[0], file.tell()


def _complete_records(path: Path) -> int:
    """Records the header counts that are really in the file (a header written for more, by an
    earlier writer or a lost page after a power cut, is not believed)."""
    dtype, record_shape, counted, offset = _layout(path)
    record_bytes = dtype.itemsize * math.prod(record_shape)
    present = (path.stat().st_size - offset) // record_bytes if record_bytes else counted
    return min(counted, present)


def _records_to_keep(directory: Path, last_epoch: int | None) -> int:
    """The records every file of ``directory`` holds, up to epoch ``last_epoch`` if given."""
    paths = sorted(directory.glob("*.npy"))
    if not paths:
        return 0
    keep = min(_complete_records(path) for path in paths)
    if last_epoch is not None and (directory / "epochs.npy").is_file():
        epochs = _read(directory / "epochs.npy", keep)
        keep = int(np.searchsorted(epochs, last_epoch, side="right"))
    return keep


def _read(path: Path, records: int) -> np.ndarray:
    dtype, record_shape, _, offset = _layout(path)
    data = np.fromfile(path, dtype=dtype, count=records * math.prod(record_shape), offset=offset)
    return data.reshape((records, *record_shape))


def read_tensors(directory: str | Path, last_epoch: int | None = None) -> dict[str, np.ndarray]:
    """Every tensor file in ``directory``: ``{'epochs': ..., 'layer1.weights': ..., ...}``, all
    ending at the same epoch (the last one every file holds completely, or ``last_epoch``)."""
    directory = Path(directory)
    keep = _records_to_keep(directory, last_epoch)
    return {path.name[: -len(".npy")]: _read(path, keep) for path in sorted(directory.glob("*.npy"))}


def repair_tensors(directory: str | Path, last_epoch: int | None) -> int:
    """Cut every tensor file of ``directory`` to the records all of them hold completely, and to
    epoch ``last_epoch`` (the run's last logged epoch) if given, so that they load with plain
    ``np.load`` and end where the metrics end. For the files of a run whose process died
    (``bprun-doctor``). Returns the records kept."""
    directory = Path(directory)
    keep = _records_to_keep(directory, last_epoch)
    for path in sorted(directory.glob("*.npy")):
        dtype, record_shape, _, offset = _layout(path)
        with open(path, "r+b") as file:
            file.write(_npy_header(dtype, (keep, *record_shape), offset))
            file.truncate(offset + keep * dtype.itemsize * math.prod(record_shape))
    return keep


def load_tensors(run_id: str, tracking_uri: str | None = None) -> dict[str, np.ndarray]:
    """Download a run's ``tensors/`` artifacts and load them.

    Returns ``{'epochs': (n,), 'layer1.weights': (n, fan_in, fan_out), 'layer1.biases': (n, fan_out),
    'layer1.grad_weights': ..., 'layer1.grad_biases': ..., 'layer2.weights': ...}``.
    ``tracking_uri`` defaults to where ``bprun`` logs: ``MLFLOW_TRACKING_URI``, else
    ``mlflow.db`` in the current directory. A store that is not there is refused (MLflow would
    create an empty one).
    """
    uri = existing_store(tracking_uri)
    with _quiet_downloads():
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=names.TENSORS_ARTIFACT, tracking_uri=uri
        )
    return read_tensors(local)


@contextlib.contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No MLflow progress bar for each file downloaded (one per tensor file would flood a
    terminal or a notebook), unless the user set the variable themselves."""
    variable = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if variable in os.environ:
        yield
        return
    os.environ[variable] = "false"
    try:
        yield
    finally:
        os.environ.pop(variable, None)
