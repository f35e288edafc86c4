"""One MLflow run's life: created with its params and tags, metrics buffered and written in
batches, artifacts written in place, and an end that always completes.

Driven through ``MlflowClient`` (no global active run to leak from one job into the next).
On SQLite every call costs milliseconds whatever its size, so metrics are buffered and written
in batches, at least every ``FLUSH_INTERVAL_SECONDS`` so that a dashboard follows a long run.
Metric values go straight into a SQLite file (``runner.tracking.compat``) or to bprun-server's
metrics endpoint (``runner.tracking.metrics_endpoint``), through ``log_batch`` elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow.data
import requests
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from runner.process.interruption import Interrupted, test_point
from runner.tracking import names
from runner.tracking.compat import SqliteMetricWriter
from runner.tracking.destination import TrackingLost, sqlite_path
from runner.tracking.liveness import process_tags
from runner.tracking.metrics_endpoint import MAX_VALUES_PER_REQUEST, MetricsEndpoint

log = logging.getLogger(__name__)

MAX_METRICS_PER_CALL = 1000  # MLflow's own per-call limit
MAX_PARAMS_PER_CALL = 100
FLUSH_INTERVAL_SECONDS = 5.0
DIRECT_FLUSH_SIZE = 5000  # values per flush with a direct writer (SQLite, or bprun-server's endpoint)
MAX_TAG_LENGTH = 5000


def lost_server(error: BaseException) -> str | None:
    """Why a call failed when it failed because the server could not be reached (in words:
    "Connection refused", "no answer within 5 s"), else None."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, requests.exceptions.Timeout) or (
            isinstance(seen, requests.exceptions.ConnectionError) and "timed out" in str(seen)
        ):
            return "no answer within the request timeout"
        if isinstance(seen, requests.exceptions.ConnectionError):
            cause = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(seen))
            return cause.group(1) if cause else "the connection failed"
        seen = seen.__cause__ or seen.__context__
    return None


def format_param(value: Any) -> str:
    """A config value as an MLflow param: lists, dicts and None as JSON, floats to 15 digits."""
    if isinstance(value, float):
        return format(value, ".15g")
    if isinstance(value, (list, dict)) or value is None:
        return json.dumps(value)
    return str(value)


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log ``params`` (formatted with ``format_param``) in as few calls as MLflow allows."""
    entries = [Param(key, format_param(value)) for key, value in params.items()]
    for start in range(0, len(entries), MAX_PARAMS_PER_CALL):
        client.log_batch(run_id, params=entries[start : start + MAX_PARAMS_PER_CALL])


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys for a nested dict: ``{'optimizer': {'lr': 1}}`` -> ``{'optimizer.lr': 1}``;
    lists stay values."""
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


class TrackedRun:
    """One MLflow run in ``experiment_id`` of the store at ``uri``.

    As a context manager: leaving normally ends the run FINISHED (or as ``fail`` or ``kill``
    said), an interruption KILLED, any other exception FAILED with the error as its ``failure_reason`` and
    the traceback as ``traceback.txt``.
    """

    def __init__(
        self, uri: str, experiment_id: str, run_name: str, params: dict[str, Any], tags: dict[str, str]
    ) -> None:
        self.uri = uri
        self.experiment_id = experiment_id
        self.client = MlflowClient(uri)
        self.run_name = run_name
        self._params = params
        self._tags = tags
        self._pending: list[tuple[str, float, int, int]] = []  # (key, value, timestamp ms, step)
        self._last_flush = time.monotonic()
        self._outcome: tuple[str, str] | None = None  # (status, failure reason) set by fail/kill
        self._ended = False
        self._staging: Path | None = None  # artifacts of a remote store, until they are uploaded
        self._lost: str | None = None  # why the server stopped answering, once it has
        self._sqlite_writer: SqliteMetricWriter | None = None
        self._endpoint: MetricsEndpoint | None = None  # bprun-server's, where the server has it
        # What goes to a server while training goes on, sent in order by a thread of its own:
        # [(the work, the metric values it carries, of which it deletes those stored)].
        self._sender: ThreadPoolExecutor | None = None
        self._in_flight: list[tuple[Future, list[tuple[str, float, int, int]]]] = []
        self._uploaded: set[str] = set()  # staged files uploaded already
        # Called before every metric flush: files that must never end before the metrics do
        # (the tensors) make what they hold durable first.
        self.before_flush: list[Callable[[], None]] = []
        # Staged folders still being written (plots drawn by another process): {name: wait until written}.
        self._written_later: dict[str, Callable[[], None]] = {}
        self.run_id = ""

    def __enter__(self) -> TrackedRun:
        run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags={**self._tags, **process_tags()})
        self.run_id = run.info.run_id
        local = urlparse(run.info.artifact_uri)
        if local.scheme == "file":
            self._artifact_dir = Path(unquote(local.path))
        else:  # a remote artifact store: staged here, uploaded when the run ends
            self._staging = Path(tempfile.mkdtemp(prefix=f"bprun-artifacts-{self.run_id}-"))
            self._artifact_dir = self._staging
        self._artifact_dir.mkdir(parents=True, exist_ok=True)
        database = sqlite_path(self.uri)
        self._sqlite_writer = SqliteMetricWriter.open(database) if database is not None else None
        if self._sqlite_writer is None:
            self._endpoint = self._to_server(MetricsEndpoint.of, self.uri)
            self._sender = ThreadPoolExecutor(1, thread_name_prefix="bprun-metrics")
        # The direct writers cost little per call: flush more at once.
        self._flush_size = DIRECT_FLUSH_SIZE if self._sqlite_writer or self._endpoint else MAX_METRICS_PER_CALL
        self._to_server(log_params, self.client, self.run_id, self._params)
        return self

    # --- during the run ------------------------------------------------------------------------
    def log_metrics(self, values: dict[str, float], step: int) -> None:
        """Buffer one step's metrics. Non-finite values are never sent: MLflow stores inf as
        1.8e308, and NaN breaks its run page."""
        timestamp = int(time.time() * 1000)
        self._pending.extend((key, value, timestamp, step) for key, value in values.items() if math.isfinite(value))
        if len(self._pending) >= self._flush_size or time.monotonic() - self._last_flush > FLUSH_INTERVAL_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write every buffered metric: to a SQLite store at once; to a server on the sender
        thread, once the previous batch is stored (whose error, if any, is raised here), so
        that training goes on while the server ingests (through bprun-server's metrics
        endpoint where it has one, else ``log_batch``, about 0.1 ms of the server's CPU per
        value). A server run thus holds at most two batches not yet stored."""
        for hook in self.before_flush:
            hook()
        pending = self._pending
        if pending:
            if self._sqlite_writer is not None:
                self._sqlite_writer.write(self.run_id, pending)
                self._pending = []
            else:
                self.wait_for_sender()
                self._pending = []
                self._in_flight.append((self._sender.submit(self._send, pending), pending))
        self._last_flush = time.monotonic()

    def _send(self, pending: list[tuple[str, float, int, int]]) -> None:
        size = MAX_VALUES_PER_REQUEST if self._endpoint is not None else MAX_METRICS_PER_CALL
        while pending:
            batch = pending[:size]
            if self._endpoint is not None:
                self._to_server(self._endpoint.write, self.run_id, batch)
            else:
                self._to_server(self.client.log_batch, self.run_id, metrics=[Metric(*values) for values in batch])
            del pending[: len(batch)]  # what is left is what the store does not hold

    def wait_for_sender(self) -> None:
        """Return once everything on its way to the server is stored; else raise the first
        error, the metric values not stored put back at the head of the buffer."""
        in_flight, self._in_flight = self._in_flight, []
        first_error: BaseException | None = None
        unsent: list[tuple[str, float, int, int]] = []
        for work, values in in_flight:
            try:
                work.result()
            except BaseException as error:
                unsent += values
                first_error = first_error or error
        self._pending[:0] = unsent
        if first_error is not None:
            raise first_error

    def in_background(self, call: Callable[..., Any], *arguments: Any) -> None:
        """``call(*arguments)`` to a server on the sender thread, after what is on its way, so
        that training need not wait for it (an error is raised by the next flush or logged by
        the run's end); to a local store at once."""
        if self._sender is None:
            self._to_server(call, *arguments)
        else:
            self._in_flight.append((self._sender.submit(self._to_server, call, *arguments), []))

    def _to_server(self, call: Callable[..., Any], *arguments: Any, **keywords: Any) -> Any:
        """``call`` to the store; once the server has stopped answering, ``TrackingLost`` at
        once instead of waiting for its timeout again."""
        if self._lost is None:
            try:
                return call(*arguments, **keywords)
            except Exception as error:
                reason = lost_server(error)
                if reason is None:
                    raise
                self._lost = reason
        raise TrackingLost(self._lost_message(), self.run_id)

    def _lost_message(self) -> str:
        kept = f"; what it wrote locally is kept in {self._staging}" if self._staging is not None else ""
        return (
            f"lost the MLflow tracking server at {self.uri} ({self._lost}): run {self.run_id} ({self.run_name}) "
            f"stays RUNNING there until bprun-doctor marks it KILLED{kept}"
        )

    def set_tags(self, tags: dict[str, str]) -> None:
        self._to_server(
            self.client.log_batch, self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()]
        )

    @property
    def artifact_dir(self) -> Path:
        """A local folder whose files become the run's artifacts: the run's own artifact folder
        for a local store (large files are written once, in place), else a staging folder
        uploaded when the run ends."""
        return self._artifact_dir

    @property
    def writes_artifacts_in_place(self) -> bool:
        return self._staging is None

    def upload_when_written(self, name: str, written: Callable[[], None]) -> None:
        """Upload the staged folder ``name`` (of ``artifact_dir``) once ``written()`` returns,
        after the rest: the rest goes up meanwhile."""
        self._written_later[name] = written

    def _upload_staged(self, only: list[str] | None = None) -> None:
        """Upload the staged files and folders named ``only``, else all but those written later
        (those uploaded already stay as they are)."""
        for entry in sorted(self._staging.iterdir()):
            chosen = entry.name in only if only is not None else entry.name not in self._written_later
            if not chosen or entry.name in self._uploaded:
                continue
            if entry.is_dir():
                self._to_server(self.client.log_artifacts, self.run_id, str(entry), entry.name)
            else:
                self._to_server(self.client.log_artifact, self.run_id, str(entry))

    def write_text_artifacts(self, files: dict[str, str], upload_now: bool = False) -> None:
        """Write small text artifacts given as ``{relative path: content}``; with ``upload_now``
        a remote store gets them at once, not only when the run ends."""
        for name, content in files.items():
            path = self._artifact_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            if upload_now and self._staging is not None:
                self.in_background(self._upload_file, name)

    def _upload_file(self, name: str) -> None:
        folder = str(Path(name).parent)
        self.client.log_artifact(self.run_id, str(self._staging / name), None if folder == "." else folder)
        self._uploaded.add(name)

    def log_dataset(self, name: str, features: Any, targets: Any, digest: str) -> None:
        """Record the training data as the run's MLflow input (name, digest, schema)."""
        # No source argument: MLflow cannot tell a path string from other kinds of source and
        # warns; where the data came from is the run's data_source tag.
        data = mlflow.data.from_numpy(features, targets=targets, name=name, digest=digest[:32])
        context = InputTag(key="mlflow.data.context", value="training")
        self.in_background(self._log_inputs, [DatasetInput(data._to_mlflow_entity(), tags=[context])])

    def _log_inputs(self, inputs: list[DatasetInput]) -> None:
        try:
            self.client.log_inputs(self.run_id, datasets=inputs)
        except Exception as error:
            if lost_server(error):
                raise
            # MLflow checks for the data set's row and then inserts it without a lock: parallel
            # jobs logging the same data set at once can collide (UNIQUE constraint). The row
            # exists by then, so once more links this run to it.
            time.sleep(0.2)
            self.client.log_inputs(self.run_id, datasets=inputs)

    def fail(self, reason: str) -> None:
        """End the run FAILED with ``reason`` as its ``failure_reason`` when the block ends."""
        self._outcome = ("FAILED", reason)

    def kill(self, reason: str) -> None:
        """End the run KILLED (stopped on request) with ``reason`` when the block ends."""
        self._outcome = ("KILLED", reason)

    # --- the end -------------------------------------------------------------------------------
    def __exit__(self, exc_type: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        if error is None:
            self.end(*(self._outcome or ("FINISHED", None)))
        elif isinstance(error, (Interrupted, KeyboardInterrupt)):
            self.end("KILLED", "interrupted")
        else:
            # Whoever handles the error can tell that a run holds it already.
            error.tracked_run_id = self.run_id  # type: ignore[attr-defined]
            self.end(
                "FAILED", f"{exc_type.__name__}: {error}", "".join(traceback.format_exception(exc_type, error, tb))
            )

    def end(self, status: str, failure_reason: str | None = None, traceback_text: str | None = None) -> None:
        """Write the last metrics, the failure reason (and traceback), upload staged artifacts,
        and set ``status``. Every step is tried even if one before it failed (a full disk, a
        server gone): the status is written last, and always tried. With a server, the metrics
        on their way, the uploads and the folders still being written proceed side by side."""
        if self._ended:
            return
        self._ended = True
        test_point("run-end")
        steps: list[Callable[[], None]] = []
        if failure_reason:
            steps.append(lambda: self.set_tags({names.FAILURE_REASON: failure_reason[:MAX_TAG_LENGTH]}))
        if traceback_text:
            steps.append(lambda: self.write_text_artifacts({names.TRACEBACK_ARTIFACT: traceback_text}))
        if self._staging is not None:
            steps.append(self._upload_staged)
        steps.append(self.flush)
        if self._staging is not None:
            for name, written in self._written_later.items():
                steps += [written, lambda name=name: self._upload_staged([name])]
        steps.append(self.wait_for_sender)
        try:
            for step in steps:
                try:
                    step()
                except TrackingLost:
                    break  # nothing more reaches the store
                except Exception as error:  # keep going: the status matters most
                    log.warning("while ending run %s: %s: %s", self.run_id, type(error).__name__, error)
            self._to_server(self.client.set_terminated, self.run_id, status)
        except TrackingLost:
            with contextlib.suppress(Exception):  # the values of a batch still on its way, if it failed
                self.wait_for_sender()
            self._keep_unsent_metrics()
            raise
        finally:
            if self._sqlite_writer is not None:
                self._sqlite_writer.close()
            if self._sender is not None:
                self._sender.shutdown(wait=True)
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)

    def _keep_unsent_metrics(self) -> None:
        """The metrics the server never got, beside the staged artifacts, as CSV."""
        if self._staging is not None and self._pending:
            lines = [
                "key,value,timestamp,step",
                *(f"{key},{value!r},{timestamp},{step}" for key, value, timestamp, step in self._pending),
            ]
            (self._staging / "metrics-not-sent.csv").write_text("\n".join(lines) + "\n")
