"""bprun-server's metrics endpoint: what it accepts, and what it refuses with MLflow's error
codes and a message naming the bad value. (Against a live server: ``test_team_server.py``, and
MLflow's own server, which has no such endpoint: ``test_server_lost.py``.)"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from runner.tracking.metrics_endpoint import MAX_VALUES_PER_REQUEST, PATH, BadRequest, MetricsEndpoint, parse


def body(**changes):
    return {
        "run_id": "abc",
        "keys": ["train_mse", "layer1/weight_norm"],
        "values": [0.5, 2],
        "timestamps": [1000, 1000],
        "steps": [0, 0],
        **changes,
    }


def test_a_good_body_gives_the_rows_to_store() -> None:
    assert parse(body()) == ("abc", [("train_mse", 0.5, 1000, 0), ("layer1/weight_norm", 2.0, 1000, 0)])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"run_id": None}, "run_id string"),
        ({"values": [0.5]}, "lists of one length"),
        ({"steps": "0,0"}, "lists of one length"),
        ({"keys": ["train_mse", "bad|name"]}, 'Invalid value "bad|name" for parameter .* Names may only contain'),
        ({"keys": ["train_mse", ""]}, "must not resolve to other names"),
        ({"keys": ["train_mse", "../../etc"]}, "would resolve to '../../etc'"),
        ({"keys": ["train_mse", 7]}, "invalid metric name 7"),
        ({"values": [0.5, float("nan")]}, "value nan is not a finite number"),
        ({"values": [0.5, "1"]}, "value '1' is not a finite number"),
        ({"values": [0.5, True]}, "value True is not a finite number"),
        ({"steps": [0, 1.5]}, "must be 64-bit integers"),
        ({"timestamps": [1000, None]}, "must be 64-bit integers"),
        ({"timestamps": [1000, -1]}, "the timestamp >= 0"),
        ({"steps": [0, 2**63]}, "must be 64-bit integers"),
    ],
)
def test_a_bad_body_is_refused_with_the_bad_value(changes: dict, message: str) -> None:
    with pytest.raises(BadRequest, match=message) as refused:
        parse(body(**changes))
    assert (refused.value.status, refused.value.code) == (400, "INVALID_PARAMETER_VALUE")


def test_more_values_than_one_request_takes_are_refused() -> None:
    count = MAX_VALUES_PER_REQUEST + 1
    with pytest.raises(BadRequest, match=f"{count} values in one request; at most {MAX_VALUES_PER_REQUEST}"):
        parse(body(keys=["m"] * count, values=[1.0] * count, timestamps=[1] * count, steps=list(range(count))))


def test_a_body_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(BadRequest, match="JSON object"):
        parse(None)


class Recorder(BaseHTTPRequestHandler):
    """A stand-in server: answers the endpoint's GET as bprun-server does (or 404, as MLflow's own
    server does), and records every request."""

    has_endpoint = True
    seen: ClassVar[list[tuple[str, str, str | None, dict | None]]] = []  # (method, path, Authorization, body)

    def do_GET(self) -> None:
        self.seen.append(("GET", self.path, self.headers.get("Authorization"), None))
        if self.has_endpoint:
            self._answer(200, {"available": True, "max_values": MAX_VALUES_PER_REQUEST})
        else:
            self._answer(404, None)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(("POST", self.path, self.headers.get("Authorization"), body))
        self._answer(200, {})

    def _answer(self, status: int, body: dict | None) -> None:
        content = b"<html>not found</html>" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html" if body is None else "application/json")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, *arguments) -> None:
        pass


@pytest.fixture
def stand_in(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Recorder.seen = []
    monkeypatch.setattr(MetricsEndpoint, "_known", {})
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_run_sends_its_values_to_the_endpoint_with_mlflows_credentials(stand_in, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret")
    Recorder.has_endpoint = True
    endpoint = MetricsEndpoint.of(stand_in)
    assert endpoint is not None and MetricsEndpoint.of(stand_in) is not None  # asked once
    endpoint.write("abc", [("train_mse", 0.5, 1000, 0), ("train_mse", 0.25, 1001, 1)])
    basic = "Basic " + base64.b64encode(b"alice:secret").decode()
    assert Recorder.seen == [
        ("GET", PATH, basic, None),
        (
            "POST",
            PATH,
            basic,
            {
                "run_id": "abc",
                "keys": ["train_mse", "train_mse"],
                "values": [0.5, 0.25],
                "timestamps": [1000, 1001],
                "steps": [0, 1],
            },
        ),
    ]


def test_a_server_without_the_endpoint_means_log_batch(stand_in) -> None:
    Recorder.has_endpoint = False
    assert MetricsEndpoint.of(stand_in) is None
    assert MetricsEndpoint.of(stand_in) is None
    assert [method for method, *_ in Recorder.seen] == ["GET"]


# Names as MLflow's own tests of its validation list them (tests/utils/test_validation.py):
# accepted ones, and ones it refuses for their characters, their length or their path.
GOOD_NAMES = ["a", "Ab-5_", "a/b/c", "a.b.c", ".a", "b.", "a..a/._./o_O/.e.", "a b/c d", "a:b", "x" * 250]
BAD_NAMES = [
    "\\",
    "/",
    "//",
    "a//b",
    "a/./b",
    "/a",
    "a/",
    ":\\",
    "./a",
    "../a",
    "a/..",
    "../../etc",
    "",
    "bad|name",
    "tab\tname",
    "x" * 251,
]


@pytest.fixture(scope="module")
def names_run(make_store) -> tuple[Any, str]:
    """A client and a run that every name is logged to (one store: creating one takes seconds)."""
    client = make_store("names").client()
    return client, client.create_run(client.create_experiment("names")).info.run_id


@pytest.mark.parametrize("name", GOOD_NAMES + BAD_NAMES)
def test_the_endpoint_accepts_exactly_the_names_mlflows_log_batch_accepts(name: str, names_run) -> None:
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    client, run_id = names_run
    try:
        client.log_batch(run_id, metrics=[Metric(name, 1.0, 1000, 0)])
        mlflow_accepts = True
    except MlflowException as error:
        assert error.error_code == "INVALID_PARAMETER_VALUE", error
        mlflow_accepts = False
    try:
        parse(body(keys=[name], values=[1.0], timestamps=[1000], steps=[0]))
        endpoint_accepts = True
    except BadRequest:
        endpoint_accepts = False
    assert endpoint_accepts == mlflow_accepts == (name in GOOD_NAMES), (name, endpoint_accepts, mlflow_accepts)
