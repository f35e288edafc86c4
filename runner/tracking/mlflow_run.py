"""One MLflow run's life: created with its params and tags, metrics buffered and written in
batches, artifacts written in place (or staged for a server), and an end that always completes.

Driven through ``MlflowClient`` (no global active run to leak from one job into the next). What
differs between stores is chosen once, when the run starts: where metric values go
(``runner.tracking.metric_sinks``), where artifact files go (``runner.tracking.artifacts``), and,
for a server, a sender thread that does the server's work while training goes on
(``runner.tracking.sender``) and a guard that stops waiting for a server once it is gone
(``runner.tracking.server_loss``).
"""

from __future__ import annotations

import logging
import shutil
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlalchemy.exc
from mlflow.data.numpy_dataset import from_numpy  # mlflow.data.from_numpy; mypy cannot see that name (set at run time)
from mlflow.entities import Dataset, DatasetInput, InputTag, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from runner import names
from runner.process.errors import RunCrashed, RunError
from runner.process.interruption import Interrupted, test_point
from runner.tracking.artifacts import RunArtifacts, open_artifacts
from runner.tracking.destination import TrackingLost, is_server
from runner.tracking.liveness import process_tags
from runner.tracking.metric_sinks import FallbackSink, MetricBuffer, open_sink
from runner.tracking.params import log_params
from runner.tracking.sender import Sender
from runner.tracking.server_loss import ServerCalls
from runner.tracking.unsent import ARTIFACTS, UnsentMetrics, UnsentRun, unsent_folder

log = logging.getLogger(__name__)

MAX_TAG_LENGTH = 5000


class TrackedRun:
    """One MLflow run in ``experiment_id`` of the store at ``uri``.

    As a context manager: leaving normally ends the run FINISHED (or as ``fail`` or ``kill``
    said), an interruption KILLED (re-raised), a ``TrackingLost`` as it is, any other error
    FAILED, raised again as ``RunCrashed``.

    A run on a server that stops answering goes on: what the server does not get is kept under
    ``unsent_root`` (``runner.tracking.unsent``), and the run's end raises ``TrackingLost`` naming
    the folder and the command that uploads it.

    ``metrics``, when given, is a buffer the run shares with other runs of the same local store
    (a stack's), which its owner closes: their values of a flush are written together.
    """

    def __init__(
        self,
        uri: str,
        experiment_id: str,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str],
        unsent_root: Path = Path(),
        metrics: MetricBuffer | None = None,
    ) -> None:
        self.uri, self.experiment_id, self.run_name = uri, experiment_id, run_name
        self.client = MlflowClient(uri)
        self._params, self._tags = params, tags
        self._unsent_root = unsent_root
        self._shared_metrics = metrics
        self._outcome: tuple[str, str] | None = None  # (status, failure reason) set by fail or kill
        self._ended = False
        self._kept: UnsentRun | None = None  # once the server is lost: what is kept for bprun-sync
        self.run_id = ""

    def __enter__(self) -> TrackedRun:
        run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags={**self._tags, **process_tags()})
        self.run_id = run.info.run_id
        test_point("run-created")  # from here on, a signal ends the run KILLED (with 0 epochs, this early)
        self.calls = ServerCalls(self._lost_message, lambda: self.run_id)
        self._sender = Sender() if is_server(self.uri) else None
        self.unsent_folder = unsent_folder(self._unsent_root, self.run_id)
        self.artifacts: RunArtifacts = open_artifacts(
            run.info.artifact_uri, self.unsent_folder / ARTIFACTS, self.run_id, self.client, self.calls, self._sender
        )
        if self._shared_metrics is not None:
            self.metrics = self._shared_metrics
        else:
            sink = open_sink(self.uri, self.client, self.calls, self._sender)
            self.metrics = MetricBuffer(FallbackSink(sink, self._keep_metrics) if self._sender else sink)
        self.calls(log_params, self.client, self.run_id, self._params)
        return self

    # --- during the run ------------------------------------------------------------------------
    def log_metrics(self, values: dict[str, float], step: int) -> None:
        """Buffer one step's metrics (non-finite values are left out)."""
        self.metrics.add(self.run_id, values, step)

    def in_background(self, call: Callable[..., Any], *arguments: Any) -> None:
        """``call(*arguments)`` to a server on the sender thread, after what is on its way (an
        error is raised by the next flush or logged by the run's end); to a local store now."""
        if self._sender is None:
            self.calls(call, *arguments)
        else:
            self._sender.submit(self.calls, call, *arguments)

    def set_tags(self, tags: dict[str, str]) -> None:
        try:
            self.calls(
                self.client.log_batch, self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()]
            )
        except TrackingLost:
            kept = self._keep()
            kept.tags.update({key: str(value) for key, value in tags.items()})
            kept.save(self.unsent_folder)

    def set_tags_of(self, run_id: str, tags: dict[str, str]) -> None:
        """Tag another run of the same store (an earlier run of the same job)."""
        self.calls(self.client.log_batch, run_id, tags=[RunTag(key, value) for key, value in tags.items()])

    def write_text_artifacts(self, files: dict[str, str], upload_now: bool = False) -> None:
        """Write small text artifacts given as ``{relative path: content}``; with ``upload_now``
        a server gets them at once (a run whose process dies still has them), not at the end."""
        for name, content in files.items():
            path = self.artifacts.directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            if upload_now:
                self.artifacts.upload_soon(name)

    def log_dataset(self, name: str, features: Any, targets: Any, digest: str) -> None:
        """Record the training data as the run's MLflow input (name, digest, schema)."""
        # No source argument: MLflow cannot tell a path string from other kinds of source and
        # warns; where the data came from is the run's data_source tag.
        data = from_numpy(features, targets=targets, name=name, digest=digest[:32])
        entity = Dataset(**data.to_dict())
        inputs = [DatasetInput(entity, tags=[InputTag(key="mlflow.data.context", value="training")])]
        self.in_background(self._log_inputs, inputs)

    def _log_inputs(self, inputs: list[DatasetInput]) -> None:
        try:
            self.client.log_inputs(self.run_id, datasets=inputs)
        except MlflowException as error:
            if not _duplicate_row(error):
                raise
            # MLflow looks for the data set's row and then inserts it without a lock: another
            # job logging the same data set in between makes the insert fail. The row exists
            # now (the failing insert waited for the other's commit), so once more links it.
            self.client.log_inputs(self.run_id, datasets=inputs)

    def fail(self, reason: str) -> None:
        """End the run FAILED with ``reason`` as its ``failure_reason`` when the block ends."""
        self._outcome = ("FAILED", reason)

    def kill(self, reason: str) -> None:
        """End the run KILLED (stopped on request) with ``reason`` when the block ends."""
        self._outcome = ("KILLED", reason)

    # --- the end -------------------------------------------------------------------------------
    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if error is None:
            self.end(*(self._outcome or ("FINISHED", None)))
        elif isinstance(error, (Interrupted, KeyboardInterrupt)):
            self.end("KILLED", "interrupted")
        elif isinstance(error, RunError):
            self.end("FAILED", str(error))
        else:
            reason = f"{type(error).__name__}: {error}"
            self.end("FAILED", reason, "".join(traceback.format_exception(kind, error, tb)))
            where = f"run {self.run_id} ended FAILED, its traceback in the run's {names.TRACEBACK_ARTIFACT}"
            raise RunCrashed(f"the run crashed: {reason} ({where})", self.run_id) from error

    def end(self, status: str, failure_reason: str | None = None, traceback_text: str | None = None) -> None:
        """Write the failure reason (and traceback), the last metrics and the artifacts, then
        ``status``. Every step is tried even if one before it failed (a full disk, a server
        gone): the status is written last, and always tried. With a server, the metrics on their
        way, the uploads and the folders still being written proceed side by side."""
        if self._ended:
            return
        self._ended = True
        test_point("run-end")
        steps: list[Callable[[], None]] = []
        if failure_reason:
            steps.append(lambda: self.set_tags({names.FAILURE_REASON: failure_reason[:MAX_TAG_LENGTH]}))
        if traceback_text:
            steps.append(lambda: self.write_text_artifacts({names.TRACEBACK_ARTIFACT: traceback_text}))
        steps += [self.artifacts.upload_ready, self.metrics.flush, self.artifacts.upload_written_later]
        steps.append(self.metrics.finish)
        try:
            _each_tried(steps, self.run_id)
            self.calls(self.client.set_terminated, self.run_id, status)
        except TrackingLost:
            kept = self._keep()
            kept.status = status
            kept.save(self.unsent_folder)
            raise TrackingLost(self._kept_message(kept), self.run_id) from None
        finally:
            if self._shared_metrics is None:
                self.metrics.sink.close()
            if self._sender is not None:
                self._sender.close()
        shutil.rmtree(self.unsent_folder, ignore_errors=True)  # everything in it is uploaded

    def _keep(self) -> UnsentRun:
        """What the run keeps for bprun-sync, from the moment its server is lost."""
        if self._kept is None:
            self._kept = UnsentRun(self.uri, self.run_id, self.run_name, self.calls.lost or "")
            self.unsent_folder.mkdir(parents=True, exist_ok=True)
            self._kept.save(self.unsent_folder)
        return self._kept

    def _keep_metrics(self) -> UnsentMetrics:
        self._keep()
        return UnsentMetrics(self.unsent_folder)

    def _lost_message(self, reason: str) -> str:
        return f"lost the MLflow tracking server at {self.uri} ({reason}): run {self.run_id} ({self.run_name})"

    def _kept_message(self, kept: UnsentRun) -> str:
        return (
            f"{self._lost_message(kept.lost_reason)} ended {kept.status} here and stays RUNNING there; what the "
            f"server did not get is kept in {self.unsent_folder}; once the server is back: "
            f"bprun-sync {self.unsent_folder}"
        )


def _duplicate_row(error: MlflowException) -> bool:
    """Whether the store refused an insert for a row that exists: a unique constraint in a local
    store's error chain, or a server's internal error (which is how it answers one)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.IntegrityError):
            return True
        seen = seen.__cause__ or seen.__context__
    return error.error_code == "INTERNAL_ERROR"


def _each_tried(steps: list[Callable[[], None]], run_id: str) -> None:
    """Run every step, logging a failure and going on: the status matters most. Once the server
    is lost, its calls fail at once, and the steps that keep things on disk still run."""
    for step in steps:
        try:
            step()
        except TrackingLost:
            continue
        except Exception as error:
            log.warning("while ending run %s: %s: %s", run_id, type(error).__name__, error)
