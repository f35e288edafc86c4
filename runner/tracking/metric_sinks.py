"""Where runs' metric values are written: one sink per kind of store, chosen once from the store's
URI when a run starts (``open_sink``), and the buffer in front of it (``MetricBuffer``).

- ``SqliteSink``: straight into a SQLite file (``runner.tracking.compat``), one transaction per
  write, where MLflow's own store builds an ORM object per value.
- ``EndpointSink``: bprun-server's metrics endpoint (``runner.tracking.metrics_endpoint``),
  thousands of values per request.
- ``LogBatchSink``: MLflow's ``log_batch``, for any other store.

A sink writes the values of many runs at once (``{run id: [values]}``); when a write raises, the
lists it was given hold the values it did not store. A server's sink writes on the run's sender
thread (``InBackground``), so that training goes on while the server ingests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from runner.tracking.compat import MetricRow, SqliteMetricWriter
from runner.tracking.destination import TrackingLost, sqlite_path
from runner.tracking.metrics_endpoint import MAX_VALUES_PER_REQUEST, MetricsEndpoint
from runner.tracking.sender import Sender

RunValues = dict[str, list[MetricRow]]  # run id -> (key, value, timestamp ms, step) values

MAX_METRICS_PER_CALL = 1000  # MLflow's own limit per log_batch call
DIRECT_FLUSH_SIZE = 5000  # values per flush where a write costs little per call (SQLite, the endpoint)
STACK_FLUSH_SIZE = 50_000  # at most, values per flush of a buffer shared by the runs of a stack
FLUSH_INTERVAL_SECONDS = 5.0  # at least this often, so that a dashboard follows a long run


class MetricSink(Protocol):
    """A destination of metric values."""

    flush_size: int  # values worth gathering before a write

    def write(self, values: RunValues) -> None:
        """Store ``values`` (or start storing them); when it raises, the lists and
        ``take_unsent`` hold the values not stored."""

    def finish(self) -> None:
        """Return once every write has ended; raise the first error of a write still under way."""

    def take_unsent(self) -> RunValues:
        """The values of writes that failed after ``write`` had returned."""

    def close(self) -> None: ...


class SqliteSink:
    flush_size = DIRECT_FLUSH_SIZE

    def __init__(self, writer: SqliteMetricWriter) -> None:
        self._writer = writer

    def write(self, values: RunValues) -> None:
        self._writer.write(values)  # one transaction: all or nothing
        for rows in values.values():
            rows.clear()

    def finish(self) -> None:
        pass

    def take_unsent(self) -> RunValues:
        return {}

    def close(self) -> None:
        self._writer.close()


class _ChunkedSink:
    """Writes each run's values in calls of at most ``chunk`` values through ``call``, which
    turns a lost server into ``TrackingLost`` (``runner.tracking.server_loss.ServerCalls``)."""

    flush_size = DIRECT_FLUSH_SIZE
    chunk = MAX_VALUES_PER_REQUEST

    def __init__(self, call: Callable[..., Any]) -> None:
        self._call = call

    def write(self, values: RunValues) -> None:
        for run_id, rows in values.items():
            while rows:
                chunk = rows[: self.chunk]
                self._write_chunk(run_id, chunk)
                del rows[: len(chunk)]  # what is left is what the store does not hold

    def _write_chunk(self, run_id: str, chunk: list[MetricRow]) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        pass

    def take_unsent(self) -> RunValues:
        return {}

    def close(self) -> None:
        pass


class EndpointSink(_ChunkedSink):
    def __init__(self, endpoint: MetricsEndpoint, call: Callable[..., Any]) -> None:
        super().__init__(call)
        self._endpoint = endpoint

    def _write_chunk(self, run_id: str, chunk: list[MetricRow]) -> None:
        self._call(self._endpoint.write, run_id, chunk)


class LogBatchSink(_ChunkedSink):
    flush_size = chunk = MAX_METRICS_PER_CALL

    def __init__(self, client: MlflowClient, call: Callable[..., Any]) -> None:
        super().__init__(call)
        self._client = client

    def _write_chunk(self, run_id: str, chunk: list[MetricRow]) -> None:
        self._call(self._client.log_batch, run_id, metrics=[Metric(*row) for row in chunk])


class InBackground:
    """``sink``'s writes on the ``sender``'s thread: ``write`` returns once the previous write has
    ended (its error raised here, its values not stored put back ahead of these), so that a run
    holds at most two batches not yet stored."""

    def __init__(self, sink: MetricSink, sender: Sender) -> None:
        self._sink = sink
        self._sender = sender
        self.flush_size = sink.flush_size

    def write(self, values: RunValues) -> None:
        self._sender.wait()
        self._sender.submit(self._sink.write, values, unsent=values)

    def finish(self) -> None:
        self._sender.wait()

    def take_unsent(self) -> RunValues:
        return self._sender.take_unsent()

    def close(self) -> None:
        self._sink.close()


class FallbackSink:
    """``primary`` until it finds the server lost (``TrackingLost``), then, for good, the sink
    ``fallback()`` opens: the values the primary did not store go there first, so that the run
    loses none and training goes on (``runner.tracking.unsent``)."""

    def __init__(self, primary: MetricSink, fallback: Callable[[], MetricSink]) -> None:
        self.primary = primary
        self._open_fallback = fallback
        self._fallback: MetricSink | None = None
        self.flush_size = primary.flush_size

    def write(self, values: RunValues) -> None:
        if self._fallback is None:
            try:
                self.primary.write(values)
                return
            except TrackingLost:
                self._switch()
        assert self._fallback is not None
        self._fallback.write(values)

    def finish(self) -> None:
        if self._fallback is None:
            try:
                self.primary.finish()
            except TrackingLost:
                self._switch()

    def take_unsent(self) -> RunValues:
        return {}  # nothing is left unsent: the fallback takes it

    def close(self) -> None:
        self.primary.close()
        if self._fallback is not None:
            self._fallback.close()

    def _switch(self) -> None:
        self._fallback = self._open_fallback()
        self._fallback.write(self.primary.take_unsent())


def open_sink(uri: str, client: MlflowClient, call: Callable[..., Any], sender: Sender | None) -> MetricSink:
    """The sink for the store at ``uri``: a SQLite file directly; a server through its metrics
    endpoint where it has one, else ``log_batch``, in the background when ``sender`` is given."""
    database = sqlite_path(uri)
    writer = SqliteMetricWriter.open(database) if database is not None else None
    if writer is not None:
        return SqliteSink(writer)
    endpoint = call(MetricsEndpoint.of, uri) if sender is not None else None
    sink: MetricSink = EndpointSink(endpoint, call) if endpoint is not None else LogBatchSink(client, call)
    return InBackground(sink, sender) if sender is not None else sink


class MetricBuffer:
    """Runs' metric values until they are written: a write of every ``flush_size`` values (by
    default the sink's), and at least every ``FLUSH_INTERVAL_SECONDS``. Non-finite values are
    never written: MLflow stores inf as 1.8e308, and NaN breaks its run page. ``before_flush``
    hooks run before each write (files that must never end before the metrics do, the tensors,
    make themselves durable first)."""

    def __init__(self, sink: MetricSink, flush_size: int | None = None) -> None:
        self.sink = sink
        self.flush_size = flush_size or sink.flush_size
        self.pending: RunValues = {}
        self._count = 0
        self._last_flush = time.monotonic()
        self.before_flush: list[Callable[[], None]] = []

    def add(self, run_id: str, values: dict[str, float], step: int) -> None:
        timestamp = int(time.time() * 1000)
        rows = self.pending.setdefault(run_id, [])
        size = len(rows)
        rows.extend((key, value, timestamp, step) for key, value in values.items() if math.isfinite(value))
        self._count += len(rows) - size
        if self._count >= self.flush_size or time.monotonic() - self._last_flush > FLUSH_INTERVAL_SECONDS:
            self.flush()

    def flush(self) -> None:
        for hook in self.before_flush:
            hook()
        self._last_flush = time.monotonic()
        if not self._count:
            return
        batch, self.pending, self._count = self.pending, {}, 0
        try:
            self.sink.write(batch)
        except BaseException:
            self._put_back(batch)
            self._put_back(self.sink.take_unsent())  # older: ahead of the batch
            raise

    def finish(self) -> None:
        """Write what is buffered and wait until the store holds everything."""
        self.flush()
        try:
            self.sink.finish()
        except BaseException:
            self._put_back(self.sink.take_unsent())
            raise

    def _put_back(self, batch: RunValues) -> None:
        for run_id, rows in batch.items():
            if rows:
                self.pending[run_id] = [*rows, *self.pending.get(run_id, [])]
                self._count += len(rows)
