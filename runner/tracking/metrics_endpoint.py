"""bprun-server's metrics endpoint: a run's metric values, thousands per request, written into the
server's store in a few statements, where MLflow's ``log-batch`` builds one ORM object per value
(the benchmarks doc compares their cost per value).

The server side is an MLflow app plugin (the ``mlflow.app`` entry point ``bprun``; bprun-server
starts ``mlflow server --app-name bprun``): MLflow's own server, every route and setting of it
unchanged (``--allowed-hosts`` included), plus one route, ``/bprun/api/1/metrics``:

- ``GET``: ``{"available": true, "max_values": N}``, or ``{"available": false, "reason": ...}``
  when the store is not one the direct writer was checked against (``runner.tracking.compat``);
- ``POST`` ``{"run_id": ..., "keys": [...], "values": [...], "timestamps": [...], "steps": [...]}``
  (equal lengths, at most ``max_values``; finite values, integer steps and milliseconds) stores
  the values in one transaction, exactly the rows ``log-batch`` would store, and answers ``{}``.
  Errors answer as MLflow's REST API does: 400 ``INVALID_PARAMETER_VALUE``, 404
  ``RESOURCE_DOES_NOT_EXIST``, with a message.

The client side (``MetricsEndpoint``) asks once per process and server whether the endpoint is
there; against any other MLflow server runs log through ``log_batch`` as before. Requests go
through MLflow's own HTTP helper, so they carry the same credentials (``MLFLOW_TRACKING_TOKEN``,
``MLFLOW_TRACKING_USERNAME``/``PASSWORD``), TLS settings, timeout and retries as MLflow's.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from typing import Any, ClassVar

from runner.tracking import compat
from runner.tracking.compat import MetricRow

log = logging.getLogger(__name__)

PATH = "/bprun/api/1/metrics"
MAX_VALUES_PER_REQUEST = 10_000
APP_NAME = "bprun"  # the entry point in pyproject.toml: mlflow server --app-name bprun
INVALID = "INVALID_PARAMETER_VALUE"
LONG = 2**63
# A request's size limit, in MB, set by bprun-server for its web workers: 10,000 values of
# columnar JSON take about 1 MB.
ENV_MAX_REQUEST_MB = "BPRUN_SERVER_MAX_REQUEST_MB"
DEFAULT_MAX_REQUEST_MB = 4


# --- the client -----------------------------------------------------------------------------------
class MetricsEndpoint:
    """The metrics endpoint of the server at ``uri``, for a run's sender thread."""

    _known: ClassVar[dict[str, bool]] = {}  # server URI -> has the endpoint, asked once per process
    _lock = threading.Lock()

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._client = compat.RestClient(uri)

    @classmethod
    def of(cls, uri: str) -> MetricsEndpoint | None:
        """The endpoint of the server at ``uri``, None when it has none (not bprun-server, or a
        store the endpoint does not write to). A server that does not answer raises as any
        MLflow call to it does."""
        with cls._lock:
            if uri not in cls._known:
                endpoint = cls(uri)
                answer = endpoint._client.get_json(PATH)
                cls._known[uri] = answer is not None and bool(answer.get("available"))
                if answer is not None and not answer.get("available"):
                    log.debug("the server's metrics endpoint is off: %s", answer.get("reason"))
            return cls(uri) if cls._known[uri] else None

    def write(self, run_id: str, values: list[MetricRow]) -> None:
        """Store ``values`` (finite, at most ``MAX_VALUES_PER_REQUEST``) for ``run_id`` in one
        request; raises MLflow's ``MlflowException`` as ``log_batch`` does."""
        self._client.post_json(
            PATH,
            {
                "run_id": run_id,
                "keys": [row[0] for row in values],
                "values": [row[1] for row in values],
                "timestamps": [row[2] for row in values],
                "steps": [row[3] for row in values],
            },
        )


# --- the server -----------------------------------------------------------------------------------
class BadRequest(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class Writer:
    """The store's writer in this server process, opened at the first request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._opened = False
        self._writer: Any = None
        self.reason = ""

    def get(self) -> Any:
        with self._lock:
            if not self._opened:
                self._opened = True
                self._writer, self.reason = _open_writer()
            return self._writer


def _open_writer() -> tuple[Any, str]:
    store = compat.server_store_uri()
    if not store.startswith(("postgresql", "sqlite:")):
        return None, f"the store {store or '(unknown)'} is not a PostgreSQL or SQLite database"
    writer = compat.SqlMetricWriter.open(store)
    if writer is None:
        return None, "this MLflow version or its tables are not the ones the direct writer was checked against"
    return writer, ""


def parse(body: Any) -> tuple[str, list[MetricRow]]:
    """``(run id, values)`` of a POST body, or ``BadRequest`` saying what is wrong: names by
    MLflow's own rule (``compat.metric_name_problem``), values finite numbers (bprun never sends
    another), timestamps and steps integers as MLflow stores them."""
    if not isinstance(body, dict) or not isinstance(body.get("run_id"), str):
        raise BadRequest(400, INVALID, "the body must be a JSON object with a run_id string")
    given = [body.get(name) for name in ("keys", "values", "timestamps", "steps")]
    columns = [column for column in given if isinstance(column, list)]
    if len(columns) != len(given) or len({len(column) for column in columns}) != 1:
        raise BadRequest(400, INVALID, "keys, values, timestamps and steps must be lists of one length")
    if len(columns[0]) > MAX_VALUES_PER_REQUEST:
        raise BadRequest(
            400, INVALID, f"{len(columns[0])} values in one request; at most {MAX_VALUES_PER_REQUEST} are accepted"
        )
    rows = list(zip(*columns))
    checked: set[str] = set()  # each name checked once: a request holds thousands of values of a few metrics
    for key, value, timestamp, step in rows:
        if key not in checked:
            problem = compat.metric_name_problem(key) if isinstance(key, str) else f"invalid metric name {key!r}"
            if problem:
                raise BadRequest(400, INVALID, problem)
            checked.add(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadRequest(400, INVALID, f"metric {key}: value {value!r} is not a finite number")
        if type(timestamp) is not int or type(step) is not int or not (0 <= timestamp < LONG and -LONG <= step < LONG):
            raise BadRequest(
                400,
                INVALID,
                f"metric {key}: timestamp {timestamp!r} and step {step!r} must be 64-bit integers, the timestamp >= 0",
            )
    return body["run_id"], [(key, float(value), timestamp, step) for key, value, timestamp, step in rows]


class RequestSizeLimit:
    """ASGI middleware: a POST to the metrics route that declares no length, or more than
    ``limit`` bytes, is answered 411 or 413 before its body is read. MLflow's server reads a
    request's whole body into memory before its handlers see it, so the limit must act first."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST":
            headers = dict(scope["headers"])
            length = headers.get(b"content-length", b"").decode()
            refusal = None
            if not length.isdigit():
                refusal = (411, "the request must give its Content-Length")
            elif int(length) > self.limit:
                refusal = (413, f"a request of {length} bytes; at most {self.limit} are accepted (--max-request-mb)")
            if refusal is not None:
                status, message = refusal
                body = json.dumps({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": message}).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def request_limit_bytes() -> int:
    """The limit bprun-server set for this server process (``--max-request-mb``)."""
    return int(float(os.environ.get(ENV_MAX_REQUEST_MB, DEFAULT_MAX_REQUEST_MB)) * 1024 * 1024)


def create_app() -> Any:
    """MLflow's server app with the metrics route added (the ``mlflow.app`` entry point)."""
    from flask import jsonify, request  # (lazy: in bprun-server's process only)

    flask_app, app = compat.server_apps()

    writer = Writer()

    def metrics() -> Any:
        store = writer.get()
        if request.method == "GET":
            return jsonify(
                {"available": True, "max_values": MAX_VALUES_PER_REQUEST}
                if store is not None
                else {"available": False, "reason": writer.reason}
            )
        try:
            if store is None:
                raise BadRequest(404, "ENDPOINT_NOT_FOUND", f"this server does not take metrics here: {writer.reason}")
            run_id, values = parse(request.get_json(silent=True))
            stage = store.lifecycle_stage(run_id)
            if stage is None:
                raise BadRequest(404, "RESOURCE_DOES_NOT_EXIST", f"Run with id={run_id} not found")
            if stage != "active":
                raise BadRequest(
                    400, "INVALID_STATE", f"The run {run_id} must be in the 'active' state. Current state is {stage}."
                )
            store.write({run_id: values})
        except BadRequest as error:
            return jsonify({"error_code": error.code, "message": str(error)}), error.status
        return jsonify({})

    flask_app.add_url_rule(PATH, "bprun_metrics", metrics, methods=["GET", "POST"])
    app.add_middleware(RequestSizeLimit, limit=request_limit_bytes())
    return app
