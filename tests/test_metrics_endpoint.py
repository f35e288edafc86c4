"""bprun-server's metrics endpoint: what it accepts, and what it refuses with MLflow's error
codes and a message naming the bad value. (Against a live server: ``test_team_server.py``, and
MLflow's own server, which has no such endpoint: ``test_server_lost.py``.)"""

from __future__ import annotations

import pytest

from runner.tracking.metrics_endpoint import MAX_VALUES_PER_REQUEST, BadRequest, parse


def body(**changes):
    return {"run_id": "abc", "keys": ["train_mse", "layer1/weight_norm"], "values": [0.5, 2],
            "timestamps": [1000, 1000], "steps": [0, 0], **changes}


def test_a_good_body_gives_the_rows_to_store() -> None:
    assert parse(body()) == ("abc", [("train_mse", 0.5, 1000, 0), ("layer1/weight_norm", 2.0, 1000, 0)])


@pytest.mark.parametrize(("changes", "message"), [
    ({"run_id": None}, "run_id string"),
    ({"values": [0.5]}, "lists of one length"),
    ({"steps": "0,0"}, "lists of one length"),
    ({"keys": ["train_mse", "bad|name"]}, "invalid metric name 'bad|name'"),
    ({"keys": ["train_mse", ""]}, "invalid metric name ''"),
    ({"values": [0.5, float("nan")]}, "value nan is not a finite number"),
    ({"values": [0.5, "1"]}, "value '1' is not a finite number"),
    ({"values": [0.5, True]}, "value True is not a finite number"),
    ({"steps": [0, 1.5]}, "timestamp and step must be integers"),
    ({"timestamps": [1000, None]}, "timestamp and step must be integers"),
])
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
