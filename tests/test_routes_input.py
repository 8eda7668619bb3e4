"""Every route refuses bad input with a 400 or 415 naming the field, and changes nothing.

The quoted cases of the issue (rounds that overflow, a body nested 50,000 deep, an
unknown aggregator, helper or aggregator parameter, JSON sent without its Content-Type,
the unknown-setting list without ``rounds``) each against a seeded reducer, where a
body that got through would start a session; and the same settings refused by a
combiner, which parses its round config with the same class.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient

from fedtier import strict_json
from fedtier.aggregators import AGGREGATORS, FedAvg
from fedtier.aggregators.params import Param
from fedtier.combiner.model_cache import ModelCache
from fedtier.combiner.registry import ClientRegistry
from fedtier.combiner.runner import RoundRunner
from fedtier.config import Settings
from fedtier.helpers import get_helper, known_helpers
from fedtier.proto import fedtier_pb2 as pb
from fedtier.identity import generate_keypair
from fedtier.reducer.app import create_app
from fedtier.reducer.control import MAX_ROUNDS, SessionRequest
from fedtier.round_config import RoundConfig, RoundConfigError, setting_names

DEEP = 50_000


@pytest.fixture
def app(tmp_path: Path):
    app = create_app(Settings(data_dir=tmp_path), helper="numpy", poll_interval_s=None)
    yield app
    reducer = app.extensions["fedtier"]
    if reducer.control.state.value in ("instructing", "monitoring"):
        reducer.control.stop_session()
    reducer.control.wait(10)
    reducer.close()


@pytest.fixture
def api(app) -> FlaskClient:
    """A seeded reducer: idle, so any /start body that got through would start a session."""
    client = app.test_client()
    seed = get_helper("numpy").to_bytes({"w": np.ones((2, 3), dtype=np.float32)})
    reply = client.post("/seed", data={"seed": (io.BytesIO(seed), "seed.safetensors")},
                        content_type="multipart/form-data")
    assert reply.status_code == 201
    return client


def refused(api: FlaskClient, reply, status: int, field: str | None) -> dict:
    """The reply is a JSON error naming ``field``, and no session was started."""
    assert reply.status_code == status, (reply.status_code, reply.get_data(as_text=True)[:300])
    body = reply.get_json()
    assert body["status"] == status and body["error"]
    assert body.get("field") == field, body
    assert api.get("/api/v1/sessions").get_json() == []
    assert api.get("/api/v1/status").get_json()["state"] == "idle"
    return body


def post_json_text(api: FlaskClient, path: str, text: str):
    return api.post(path, data=text, content_type="application/json")


@pytest.mark.parametrize("raw", ["1" + "0" * 400, "1e400", '"Infinity"', "NaN", "Infinity", "-Infinity", "true",
                                 "[]", "{}", '"1' + "0" * 400 + '"', '"1e400"', '"NaN"', "0", "-1", "1.5",
                                 str(MAX_ROUNDS + 1), '"٣"', '"1_0"', "null"])
def test_rounds_that_are_not_an_integer_in_range_are_a_400_naming_rounds(api: FlaskClient, raw: str) -> None:
    body = refused(api, post_json_text(api, "/start", '{"rounds": %s}' % raw), 400, "rounds")
    assert "Traceback" not in body["error"] and len(body["error"]) < 300


def test_rounds_forms_that_are_an_integer_are_taken() -> None:
    for raw in (3, 3.0, "3", " 3 ", "+3"):
        assert SessionRequest.from_dict({"rounds": raw}, defaults={}).rounds == 3
    assert SessionRequest.from_dict({}, defaults={}).rounds == 1


def test_a_form_with_rounds_that_overflow_is_a_400_too(api: FlaskClient) -> None:
    for raw in ("1" + "0" * 400, "1e400", "Infinity", "NaN", "1" + "0" * 5000):
        refused(api, api.post("/start", data={"rounds": raw}), 400, "rounds")


@pytest.mark.parametrize("text", [
    "[" * DEEP + "]" * DEEP,
    '{"task": ' + '{"a": ' * DEEP + "1" + "}" * DEEP + "}",
    '{"task": {"x": ' + "[" * DEEP + "]" * DEEP + "}}",
    "[" * DEEP,
])
def test_a_body_nested_50000_deep_is_a_400_naming_the_bound(api: FlaskClient, text: str) -> None:
    body = refused(api, post_json_text(api, "/start", text), 400, None)
    assert "nested deeper than 32" in body["error"] or "brackets do not match" in body["error"]
    if text.endswith("]" * 10) or text.endswith("}" * 10):
        assert "nested deeper than 32" in body["error"]


def test_deep_json_in_a_form_field_is_a_400_naming_the_field(api: FlaskClient) -> None:
    for name in ("task", "aggregator_kwargs"):
        body = refused(api, api.post("/start", data={name: "[" * DEEP + "]" * DEEP}), 400, name)
        assert "nested deeper than 32" in body["error"]
    refused(api, api.post("/start", data={"task": '{"lr": 1e400}'}), 400, "task.lr")


def test_every_json_route_bounds_depth_and_numbers(api: FlaskClient) -> None:
    for path in ("/add", "/login"):
        deep = post_json_text(api, path, "[" * DEEP + "]" * DEEP)
        assert deep.status_code == 400 and "nested deeper" in deep.get_json()["error"], path
    port = post_json_text(api, "/add", '{"name": "c", "address": "h", "port": 1e400}')
    assert port.status_code == 400 and port.get_json()["field"] == "port"
    port = api.post("/add", json={"name": "c", "address": "h", "port": 10.5})
    assert port.status_code == 400 and port.get_json()["field"] == "port"
    assert api.post("/add", json={"name": "c", "address": "h h", "port": 1}).get_json()["field"] == "address"
    assert api.post("/add", json={"name": "c\n", "address": "h", "port": 1}).get_json()["field"] == "name"
    assert api.get("/api/v1/combiners").get_json() == []


@pytest.mark.parametrize("settings, field, listed", [
    ({"aggregator": "no-such"}, "aggregator", ["fedavg"]),
    ({"aggregation": {"combiner": {"name": "no-such"}}}, "aggregation.combiner.name", ["fedavg"]),
    ({"aggregation": {"edge": "fedavg"}}, "aggregation.edge", ["combiner", "reducer"]),
    ({"aggregation": {"reducer": {"name": "fedavg", "mu": 1}}}, "aggregation.reducer.mu", ["none"]),
    ({"aggregation": {"reducer": 3}}, "aggregation.reducer", ["strategy name"]),
    ({"aggregator": "fedavg", "aggregation": {}}, "aggregator", ["not both"]),
    ({"aggregator": 7}, "aggregator", ["fedavg"]),
    ({"helper": "tensorflow"}, "helper", known_helpers()),
    ({"aggregator_kwargs": {"mu": 0.1}}, "aggregator_kwargs.mu", ["none"]),
    ({"aggregator": "fedavg", "aggregator_kwargs": '{"server_lr": 1}'}, "aggregator_kwargs.server_lr", ["none"]),
    # what every client's data code would refuse in its first task (datatools)
    ({"task": {"partition": {"scheme": "dirichlet", "alpha": -1}}}, "task.partition", ["alpha"]),
    ({"task": {"heterogeneity": {"tasks": [{"classes": [0], "rounds": 0}]}}}, "task.heterogeneity.tasks[0].rounds",
     ["1..100000"]),
    ({"task": {"heterogeneity": {"labeled": [0, 1]}}}, "task.heterogeneity.labeled", ["labeled"]),
])
def test_what_a_combiner_would_refuse_is_refused_at_start(api: FlaskClient, settings: dict, field: str,
                                                          listed: list[str]) -> None:
    body = refused(api, api.post("/start", json={"rounds": 2, **settings}), 400, field)
    for name in listed:
        assert name in body["error"], body


def test_the_combiner_refuses_the_same_settings_with_the_same_field(tmp_path: Path) -> None:
    """One rule at both tiers: the combiner's RoundConfig.from_json raises on what /start
    refuses, naming the same field, and its round runner answers a failed round at once."""
    runner = RoundRunner("c", ClientRegistry(), ModelCache(tmp_path / "cache"))
    for text, field in (('{"aggregator": "no-such"}', "aggregator"), ('{"helper": "tensorflow"}', "helper"),
                        ('{"aggregator_kwargs": {"mu": 0.1}}', "aggregator_kwargs.mu"),
                        ('{"round_timeout": 1e400}', "round_timeout"),
                        ('{"task": ' + "[" * DEEP + "]" * DEEP + "}", "config")):
        with pytest.raises(RoundConfigError) as caught:
            RoundConfig.from_json(text)
        assert caught.value.field == field
        result = runner.run(pb.RoundRequest(round_id="r1", kind=pb.TRAINING, model_id="m", config_json=text))
        assert not result.success and result.error.startswith("bad round config: ") and field in result.error


def test_declared_aggregator_parameters_are_checked_by_type_and_bounds(monkeypatch: pytest.MonkeyPatch,
                                                                       api: FlaskClient) -> None:
    class Damped(FedAvg):
        name = "damped"
        params = {"beta": Param(float, 0.9, minimum=0.0, maximum=1.0), "warmup": Param(int, 0, minimum=0)}

    monkeypatch.setitem(AGGREGATORS, "damped", Damped)
    config = RoundConfig.from_dict({"aggregator": "damped", "aggregator_kwargs": {"beta": 0.5, "warmup": 2.0}})
    assert config.strategy("combiner").params == config.strategy("reducer").params == {"beta": 0.5, "warmup": 2}
    assert Damped(get_helper("numpy"), **config.strategy("reducer").params).settings == {"beta": 0.5, "warmup": 2}
    per_tier = RoundConfig.from_dict({"aggregation": {"reducer": {"name": "damped", "beta": 0.25}}})
    assert per_tier.strategy("reducer").params == {"beta": 0.25} and per_tier.strategy("combiner").name == "fedavg"
    assert RoundConfig.from_json(per_tier.to_json()) == per_tier  # the combiner reads what the reducer sends
    for kwargs, field, words in (({"beta": 2}, "beta", "at most 1"), ({"beta": "x"}, "beta", "number"),
                                 ({"beta": True}, "beta", "number"), ({"warmup": 1.5}, "warmup", "integer"),
                                 ({"gamma": 1}, "gamma", "accepted: beta, warmup")):
        body = refused(api, api.post("/start", json={"aggregator": "damped", "aggregator_kwargs": kwargs}),
                       400, f"aggregator_kwargs.{field}")
        assert words in body["error"], body


def test_a_body_without_its_content_type_never_starts_a_session(api: FlaskClient) -> None:
    no_type = api.post("/start", data=b'{"rounds": 3}')  # no Content-Type header at all
    assert "Content-Type" not in no_type.request.headers
    body = refused(api, no_type, 415, "Content-Type")
    assert "application/json" in body["error"]
    curl_d = api.post("/start", data='{"rounds": 3}', content_type="application/x-www-form-urlencoded")
    assert "application/json" in refused(api, curl_d, 415, "Content-Type")["error"]
    refused(api, api.post("/start", data="rounds=3", content_type="text/plain"), 415, "Content-Type")
    refused(api, api.post("/start"), 415, "Content-Type")  # no body at all: no silent defaults either
    assert "{} takes every default" in refused(api, post_json_text(api, "/start", ""), 400, None)["error"]
    refused(api, api.post("/start", data="", content_type="application/x-www-form-urlencoded"), 400, None)
    for path in ("/add", "/login"):
        assert api.post(path, data=b'{"token": "x"}').status_code == 415, path
    for path, field in (("/seed", "seed"), ("/package", "package")):
        reply = api.post(path, data=b"bytes", content_type="application/octet-stream")
        assert reply.status_code == 415 and "multipart/form-data" in reply.get_json()["error"], path


def test_the_unknown_setting_error_lists_every_known_key_including_rounds(api: FlaskClient) -> None:
    for send in (lambda: api.post("/start", json={"rounds": 2, "epochs": 3}),
                 lambda: api.post("/start", data={"rounds": "2", "epochs": ""})):  # empty, yet not dropped
        body = refused(api, send(), 400, "epochs")
        known = body["error"].split("known: ")[1].rstrip(")").split(", ")
        assert sorted(known) == sorted(["rounds", *setting_names()])


def test_json_and_form_bodies_that_are_valid_still_start_a_session(app, api: FlaskClient) -> None:
    reply = api.post("/start", json={"rounds": 1.0, "wait_for_clients": 0.2, "helper": "NumPy", "validate": False})
    assert reply.status_code == 201, reply.get_json()
    assert reply.get_json()["session"]["config"]["helper"] == "numpy"
    assert app.extensions["fedtier"].control.wait(10)
    form = api.post("/start", data={"rounds": "1", "wait_for_clients": "0.2", "task": '{"epochs": 2}',
                                    "aggregator_kwargs": "", "validate": "false"})
    assert form.status_code == 201, form.get_json()
    assert form.get_json()["session"]["config"]["task"] == {"epochs": 2}
    assert app.extensions["fedtier"].control.wait(10)


def test_login_with_a_token_that_is_not_a_string_is_a_401(tmp_path: Path) -> None:
    signing, verify = generate_keypair(tmp_path / "keys")
    app = create_app(Settings(data_dir=tmp_path, admin_auth_token="admin-t", token_verify_key=str(verify),
                              token_signing_key=str(signing)), poll_interval_s=None)
    try:
        client = app.test_client()
        for token in (5, None, ["admin-t"], {"a": 1}):
            assert client.post("/login", json={"token": token}).status_code == 401
        assert post_json_text(client, "/login", '{"token": "\\ud800"}').status_code == 400
        assert client.post("/login", json={"token": "admin-t"}).get_json() == {"logged_in": True}
        for target, landing in (("https://elsewhere.example/", "/"), ("//elsewhere.example", "/"),
                                ("/\\elsewhere.example", "/"), ("/trail", "/trail")):
            form = client.post("/login", query_string={"next": target}, data={"token": "admin-t"})
            assert form.status_code == 302 and form.headers["Location"] == landing, target
    finally:
        app.extensions["fedtier"].close()


def test_query_limits_take_ascii_digits_only(api: FlaskClient) -> None:
    for raw in ("²", "٣", "1e400", "1" + "0" * 400, "0", "-1"):
        reply = api.get("/api/v1/sessions", query_string={"limit": raw})
        assert reply.status_code == 400 and reply.get_json()["field"] == "limit", raw
    assert api.get("/api/v1/rounds", query_string={"limit": "3"}).status_code == 200


def test_input_errors_that_escape_the_checks_are_a_logged_400(app, caplog: pytest.LogCaptureFixture) -> None:
    def overflow():
        raise OverflowError("int too large to convert to float")

    def recursion():
        raise RecursionError("maximum recursion depth exceeded")

    app.add_url_rule("/test-overflow", view_func=overflow)
    app.add_url_rule("/test-recursion", view_func=recursion)
    client = app.test_client()
    for path in ("/test-overflow", "/test-recursion"):
        reply = client.get(path)
        assert reply.status_code == 400 and reply.get_json()["status"] == 400
    assert "escaped the route's checks" in caplog.text


def test_strict_json_is_linear_on_hostile_strings() -> None:
    """An unterminated string full of escaped quotes once made the depth scan quadratic."""
    started = time.perf_counter()
    for text in ('"' + '\\"' * 200_000, "[" * 400_000 + "]" * 400_000, '["' + "[" * 400_000 + '"'):
        with pytest.raises(strict_json.JSONInputError):
            strict_json.loads(text)
    assert strict_json.loads('["' + "[" * 400_000 + '\\""]') == ["[" * 400_000 + '"']  # brackets in a string
    assert time.perf_counter() - started < 5
