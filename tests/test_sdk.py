"""The Python SDK (fedtier/sdk.py) and the control commands (launch/control_cli.py) against
live reducers over real sockets: one network of a reducer, a combiner and two clients for the
session flow, and one reducer that checks identities for credentials and damaged downloads."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from conftest import ROOT, ProcessGroup, free_port, wait_for_port
from fedtier.helpers import get_helper
from fedtier.identity import generate_keypair
from fedtier.package import pack, sha256_hex
from fedtier.round_config import LEGACY_STRATEGY_KEYS, RoundConfig
from fedtier.sdk import (APIError, BadRequest, Conflict, IntegrityError, Reducer, RoundSettings, ServerError,
                         Unauthorized, Unreachable)
from test_faults import SHIFT, Network, wait_until
from test_store_integrity import flip_byte

helper = get_helper("numpy")
ADMIN = "sdk-admin-token"


def seed_file(path: Path, values: int = 9) -> Path:
    path.write_bytes(helper.to_bytes({"w": np.zeros(values, np.float32)}))
    return path


def cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    """A control command as a script would run it; the environment holds no reducer settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FEDN_", "FEDTIER_"))}
    return subprocess.run([sys.executable, "-m", "fedtier.launch.cli", *args], capture_output=True, text=True,
                          env={**clean, **(env or {})}, input=stdin, timeout=90, cwd=cwd or ROOT)


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done


def refused(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr


# ---------------------------------------------------------------- unit level
def test_round_settings_mirror_the_reducers_fields_and_defaults() -> None:
    """A setting added to RoundConfig, or a default changed, without the SDK following fails here."""
    server = RoundConfig().to_dict()
    assert [n for n in RoundSettings.names() if n not in LEGACY_STRATEGY_KEYS] == [f.name for f in fields(RoundConfig)]
    assert set(LEGACY_STRATEGY_KEYS) <= set(RoundSettings.names())  # the older form still reaches /start
    for f in fields(RoundSettings):
        if f.name == "helper":  # the reducer's own --helper
            assert f.metadata["default"] is None
        elif f.name not in LEGACY_STRATEGY_KEYS:
            assert f.metadata["default"] == server[f.name], f.name
    assert RoundSettings().to_dict() == {}  # nothing set: the reducer's defaults apply
    assert RoundSettings(validate=False, task={"a": 1}).to_dict() == {"validate": False, "task": {"a": 1}}


def test_the_sdk_imports_no_component_of_the_network() -> None:
    code = ("import sys, fedtier.sdk; print(' '.join(m for m in sys.modules if m.startswith(('fedtier.', 'grpc', "
            "'flask', 'google.protobuf', 'numpy'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == ["fedtier.sdk"], loaded


def test_an_unreachable_reducer_is_one_typed_error_and_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(Unreachable, match=f"cannot reach the reducer at {url}") as caught:
        Reducer(url, timeout=5).status()
    assert caught.value.status is None and isinstance(caught.value, APIError)
    err = refused(cli("status", "--reducer", url))
    assert err.startswith(f"fedtier status: cannot reach the reducer at {url}"), err
    assert err.count("\n") == 1, err


class FakeReducer:
    """A stand-in for what sits between the SDK and a reducer (a proxy, a broken cache): it
    answers one model record and sends ``body`` for its download with the given headers."""

    def __init__(self, record: dict, body: bytes, headers: dict[str, str], status: int = 200) -> None:
        import http.server
        import threading

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.endswith("/download"):
                    self.send_response(outer.status)
                    for name, value in {"Content-Length": str(len(outer.body)), **outer.headers}.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(outer.body)
                    return
                data = json.dumps(outer.record).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.record, self.body, self.headers, self.status = record, body, headers, status
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_download_with_other_bytes_or_headers_is_refused_and_leaves_no_file(tmp_path: Path) -> None:
    from fedtier.reducer.downloads import repr_digest

    good = b"model bytes " * 1000
    digest = hashlib.sha256(good).hexdigest()
    record = {"id": "m1", "sha256": digest, "size": len(good)}
    altered = bytearray(good)
    altered[5000] ^= 1
    cases = [  # (body, headers, the error's words)
        (bytes(altered), {"X-Model-SHA256": digest, "Repr-Digest": repr_digest(digest)}, "received 12000 bytes with sha256"),
        (good + b"more", {}, "more than the recorded 12000 bytes arrived"),
        (good, {"X-Model-SHA256": "0" * 64}, "sends X-Model-SHA256 " + "0" * 64),
        (good, {"Repr-Digest": repr_digest("1" * 64)}, "sends Repr-Digest " + "1" * 64),
    ]
    for body, headers, words in cases:
        fake = FakeReducer(record, body, headers)
        try:
            with pytest.raises(IntegrityError, match=words):
                Reducer(fake.url).download_model("m1", tmp_path / "m.bin")
            assert list(tmp_path.iterdir()) == []
        finally:
            fake.close()
    fake = FakeReducer(record, good, {"X-Model-SHA256": digest, "Repr-Digest": repr_digest(digest)})
    try:
        assert Reducer(fake.url).download_model("m1", tmp_path / "m.bin").read_bytes() == good
    finally:
        fake.close()
    # a proxy's HTML error page is still a typed error, with the start of its text
    fake = FakeReducer(record, b"<html>Bad Gateway</html>", {"Content-Type": "text/html"}, status=502)
    try:
        with pytest.raises(ServerError, match="HTTP 502 .*Bad Gateway") as caught:
            Reducer(fake.url).download_model("m1", tmp_path / "other.bin")
        assert caught.value.status == 502 and not (tmp_path / "other.bin").exists()
    finally:
        fake.close()


# ---------------------------------------------------------------- a live network
@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    tmp = tmp_path_factory.mktemp("net")
    group = ProcessGroup(tmp)
    network = Network(group, tmp)
    network.tmp = tmp  # type: ignore[attr-defined]
    try:
        network.reducer()
        network.combiner("c0")
        for i in range(2):
            network.client(i, 2)
        yield network
    finally:
        group.stop_all()


def test_sdk_session_flow(net: Network, tmp_path: Path) -> None:
    reducer = Reducer(net.url)
    assert reducer.status()["state"] == "setup"
    seeded = reducer.seed(seed_file(tmp_path / "seed.bin"))
    assert seeded["sha256"] == hashlib.sha256((tmp_path / "seed.bin").read_bytes()).hexdigest()
    with pytest.raises(Conflict) as second:
        reducer.seed(tmp_path / "seed.bin")
    assert second.value.status == 409 and second.value.state == "idle" and "seed" in second.value.message

    # a refused setting names its field, and starts nothing
    with pytest.raises(BadRequest) as bad:
        reducer.start(rounds=1, settings=RoundSettings(clients_required=0))
    assert bad.value.field == "clients_required" and "must be an integer from 1" in bad.value.message
    with pytest.raises(BadRequest) as bad:
        reducer.start(rounds=1, settings={"aggregator": "no-such"})
    assert bad.value.field == "aggregator"
    with pytest.raises(BadRequest) as bad:
        reducer.start(rounds=1, settings={"epochs": 3})
    assert bad.value.field == "epochs" and "unknown setting" in bad.value.message
    assert reducer.sessions() == []

    wait_until(lambda: reducer.status()["clients_active"] == 2, what="two clients", procs=net.procs)
    settings = RoundSettings(clients_required=2, round_timeout=60, validate=True, task={"note": "sdk"})
    session = reducer.start(rounds=2, settings=settings)
    assert session["config"]["task"] == {"note": "sdk"} and session["rounds_requested"] == 2
    seen: list[dict] = []
    done = reducer.wait(session["id"], progress=seen.append, timeout=60, poll=0.2)
    assert done["status"] == "succeeded" and done["rounds_succeeded"] == 2, done
    assert seen and seen[-1]["status"] == "succeeded"
    assert [s["id"] for s in reducer.sessions()] == [session["id"]]
    assert reducer.session(session["id"])["round_ids"] == done["round_ids"]

    rounds = reducer.rounds(session_id=session["id"])
    assert [r["round"] for r in rounds] == [1, 2] and all(r["status"] == "success" for r in rounds)
    # client i adds i + 1 to each of 9 weights; the mean is weighted 10:20, so +5/3 a round
    assert rounds[-1]["metrics"]["weight_sum"] == pytest.approx(9 * 2 * 5 / 3, rel=1e-5)
    assert reducer.round(rounds[-1]["id"])["model_out"] == rounds[-1]["model_out"]

    models = reducer.models()
    assert [m["id"] for m in models][1:] == [r["model_out"] for r in rounds]
    (tmp_path / "out").mkdir()
    path = reducer.download_model("latest", tmp_path / "out")  # a folder: the file is named after the model
    assert path == tmp_path / "out" / f"{rounds[-1]['model_out']}.safetensors"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == models[-1]["sha256"]
    assert helper.load(str(path))["w"] == pytest.approx(np.full(9, 2 * 5 / 3, np.float32))

    package = reducer.upload_package(SHIFT)  # a folder: packed as `fedtier package` packs it
    assert package["sha256"] == sha256_hex(pack(SHIFT)) and reducer.package()["sha256"] == package["sha256"]
    (tmp_path / "junk.tgz").write_bytes(b"not a package")
    with pytest.raises(BadRequest) as bad:
        reducer.upload_package(tmp_path / "junk.tgz")
    assert bad.value.field == "package"

    # stop: nothing to stop is a conflict; a running session stops after its round
    with pytest.raises(Conflict):
        reducer.stop()
    slow = reducer.start(rounds=20, settings=RoundSettings(clients_required=2, validate=False, task={"sleep": 0.5}))
    wait_until(lambda: reducer.session(slow["id"])["round_ids"], what="a round to start")
    assert reducer.stop("after_round")["stopping"] is True
    stopped = reducer.wait(slow["id"], progress=False, timeout=30, poll=0.2)
    assert stopped["status"] == "stopped" and stopped["rounds_succeeded"] < 20, stopped


def test_control_commands_as_subprocesses(net: Network, tmp_path: Path) -> None:
    if Reducer(net.url).status()["state"] == "setup":  # this test alone: seed first
        Reducer(net.url).seed(seed_file(tmp_path / "seed.bin"))
    url = ["--reducer", net.url]

    # seed again: 409, the message and the state on stderr, as text and as JSON
    seed = seed_file(tmp_path / "again.bin")
    assert "(state idle)" in refused(cli("seed", str(seed), *url))
    error = json.loads(refused(cli("seed", str(seed), *url, "--json")))
    assert error["status"] == 409 and error["state"] == "idle" and error["error"]
    # a bad setting: the field named, exit 1
    assert "(field round_timeout)" in refused(cli("start", "--set", "round_timeout=-1", *url))

    # start and wait, human output; settings from JSON on stdin, overridden by --set
    settings = json.dumps({"clients_required": 1, "round_timeout": 60, "validate": True, "task": {"a": 1}})
    human = ok(cli("start", "--rounds", "1", "--settings-json", "-", "--set", "clients_required=2",
                   "--set", "task.b=2", "--wait", *url, stdin=settings))
    assert "started session" in human.stdout and " succeeded " in human.stdout and "weight_sum=" in human.stdout
    # the URL from the environment, JSON output
    env = {"FEDTIER_REDUCER_URL": net.url}
    started = json.loads(ok(cli("start", "--set", "clients_required=2", "--set", "validate=false", "--json",
                                env=env)).stdout)
    assert started["config"]["clients_required"] == 2 and started["config"]["validate"] is False
    done = json.loads(ok(cli("wait", started["id"], "--json", env=env)).stdout)
    assert done["id"] == started["id"] and done["status"] == "succeeded"
    assert "1/1 rounds" in ok(cli("wait", *url)).stderr  # the latest session; progress lines on stderr
    human_first = [s for s in json.loads(ok(cli("sessions", "--json", *url)).stdout)
                   if s["config"]["task"] == {"a": 1, "b": 2}]
    assert len(human_first) == 1 and human_first[0]["config"]["clients_required"] == 2

    status = json.loads(ok(cli("status", "--json", *url)).stdout)
    assert status["state"] == "idle" and status["clients_active"] == 2
    text = ok(cli("status", *url)).stdout
    assert "state idle" in text and "2/2 clients active" in text and status["latest_model"]["id"] in text
    table = ok(cli("sessions", *url)).stdout.splitlines()
    assert table[0].split()[:2] == ["SESSION", "STATUS"] and started["id"] in table[-1]

    models = json.loads(ok(cli("models", "list", "--json", *url)).stdout)
    assert models[-1]["id"] == status["latest_model"]["id"]
    assert models[-1]["id"] in ok(cli("models", "list", *url)).stdout
    got = json.loads(ok(cli("models", "get", "latest", "--out", str(tmp_path / "m.bin"), "--json", *url)).stdout)
    assert hashlib.sha256((tmp_path / "m.bin").read_bytes()).hexdigest() == got["sha256"] == models[-1]["sha256"]
    assert "(verified)" in ok(cli("models", "get", models[0]["id"], "--out", str(tmp_path), *url)).stdout
    assert (tmp_path / f"{models[0]['id']}.safetensors").is_file()
    assert "no model with id" in refused(cli("models", "get", "nope", *url))

    # package: PATH uploads (a folder packed first); --project alone still only packs
    uploaded = json.loads(ok(cli("package", SHIFT, "--json", *url)).stdout)
    assert uploaded["sha256"] == sha256_hex(pack(SHIFT))
    assert f"uploaded package {uploaded['sha256']}" in ok(cli("package", SHIFT, *url)).stdout
    ok(cli("package", "--project", SHIFT, "--out", str(tmp_path / "p.tgz")))
    assert (tmp_path / "p.tgz").read_bytes() == pack(SHIFT)
    assert "uploaded package" in ok(cli("package", str(tmp_path / "p.tgz"), *url)).stdout

    # stop: nothing running is 409; a running session stops after its round (JSON), or aborts (text)
    assert "(state idle)" in refused(cli("stop", *url))
    for flags in (["--json"], ["--abort"]):
        slow = json.loads(ok(cli("start", "--rounds", "20", "--set", "clients_required=2", "--set", "validate=false",
                                 "--set", "task.sleep=0.5", "--json", *url)).stdout)
        wait_until(lambda: Reducer(net.url).session(slow["id"])["round_ids"], what="a round to start")
        reply = ok(cli("stop", *flags, *url)).stdout
        if flags == ["--json"]:
            assert json.loads(reply)["mode"] == "after_round"
        else:
            assert f"stopping session {slow['id']}: aborting" in reply
        waited = cli("wait", slow["id"], *url)
        assert waited.returncode == 3 and "stopped" in waited.stdout, waited.stdout + waited.stderr


def test_the_runnable_example(net: Network, tmp_path: Path) -> None:
    seed = seed_file(tmp_path / "seed.bin")
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "sdk_quickstart.py"), "--reducer", net.url,
                           "--seed", str(seed), "--rounds", "1", "--clients", "2", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "session succeeded; final model" in done.stdout and "weight_sum" in done.stdout
    assert len(list(tmp_path.glob("*.safetensors"))) == 1


# ---------------------------------------------------------------- a reducer that checks identities
@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("guarded")
    signing, verify = generate_keypair(tmp / "keys")
    group = ProcessGroup(tmp)
    port = free_port()
    env = {"FEDTIER_DATA_DIR": str(tmp / "data"), "FEDN_ALLIANCE_ADMIN_AUTH_TOKEN": ADMIN,
           "FEDTIER_TOKEN_VERIFY_KEY": str(verify), "FEDTIER_TOKEN_SIGNING_KEY": str(signing)}
    try:
        wait_for_port(port, proc=group.start("reducer", "reducer", "--host", "127.0.0.1", "--port", str(port),
                                             env=env))
        yield f"http://127.0.0.1:{port}", tmp / "data"
    finally:
        group.stop_all()


def test_a_wrong_token_is_unauthorized_and_a_damaged_download_leaves_no_file(
        guarded: tuple[str, Path], tmp_path: Path) -> None:
    url, data_dir = guarded
    seed = seed_file(tmp_path / "big.bin", values=3 * 2**20 // 4)  # 3 MiB: more than two of the store's chunks
    with pytest.raises(Unauthorized) as caught:
        Reducer(url, token="wrong").seed(seed)
    assert caught.value.status == 401 and "admin token required" in caught.value.message
    assert "admin token required" in refused(cli("seed", str(seed), "--reducer", url, "--token", "wrong"))
    assert Reducer(url).status()["state"] == "setup"  # reads are public; nothing was seeded

    # the token from a .env file (fedtier reads .env in its working directory)
    (tmp_path / ".env").write_text(f"FEDTIER_REDUCER_URL={url}\nFEDN_ALLIANCE_ADMIN_AUTH_TOKEN={ADMIN}\n")
    model = json.loads(ok(cli("seed", str(seed), "--json", cwd=tmp_path)).stdout)
    reducer = Reducer(url, token=ADMIN)
    good = reducer.download_model(model["id"], tmp_path / "good.bin")
    assert good.read_bytes() == seed.read_bytes()

    flip_byte(data_dir / "model_store" / "models" / model["id"] / "data", seed.stat().st_size // 2)
    target = tmp_path / "model.bin"
    target.write_bytes(b"what was there before")
    with pytest.raises(IntegrityError, match="broke off after"):
        reducer.download_model(model["id"], target)
    assert target.read_bytes() == b"what was there before"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env", "big.bin", "good.bin", "model.bin"]  # no .part
    err = refused(cli("models", "get", model["id"], "--out", str(tmp_path / "cli.bin"), cwd=tmp_path))
    assert "broke off after" in err and not (tmp_path / "cli.bin").exists()


def test_damage_found_before_the_first_byte_is_a_server_error(guarded: tuple[str, Path], tmp_path: Path) -> None:
    url, data_dir = guarded
    reducer = Reducer(url, token=ADMIN)
    if reducer.status()["state"] == "setup":
        reducer.seed(seed_file(tmp_path / "big.bin", values=3 * 2**20 // 4))
    model = reducer.models()[0]
    data_file = data_dir / "model_store" / "models" / model["id"] / "data"
    os.chmod(data_file, 0o644)
    with open(data_file, "r+b") as fh:  # truncated at rest: the store's size check refuses it up front
        fh.truncate(1000)
    with pytest.raises(ServerError) as caught:
        reducer.download_model(model["id"], tmp_path / "m.bin")
    assert caught.value.status == 500 and "is corrupt: 1000 bytes at rest" in caught.value.message
    assert not [p for p in tmp_path.iterdir() if p.name != "big.bin"]  # neither the file nor a .part


def test_schedules_and_promotion_through_the_sdk(tmp_path: Path) -> None:
    """Issue 17: schedules are listed, paused and removed, and models promoted, through the SDK too
    (firing is tested over real processes in tests/test_lifecycle.py)."""
    from threading import Thread

    from werkzeug.serving import make_server

    from fedtier.config import Settings
    from fedtier.reducer.app import create_app
    from fedtier.sdk import NotFound

    app = create_app(Settings(data_dir=tmp_path / "r"), poll_interval_s=None)  # no scheduler thread: nothing fires
    server = make_server("127.0.0.1", 0, app, threaded=True)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Reducer(f"http://127.0.0.1:{server.server_port}") as api:
            seeded = api.seed(seed_file(tmp_path / "seed"))
            with pytest.raises(BadRequest) as bad:
                api.create_schedule("nightly", rounds=0, every_seconds=3600)
            assert bad.value.field == "settings.rounds" and api.schedules() == []
            made = api.create_schedule("nightly", RoundSettings(clients_required=2), rounds=3, every_seconds=3600,
                                       on_package=True)
            assert api.schedule(made["id"])["name"] == "nightly" and [s["id"] for s in api.schedules()] == [made["id"]]
            assert api.pause_schedule(made["id"])["state"] == "paused"
            assert api.resume_schedule(made["id"])["state"] == "active"
            api.delete_schedule(made["id"])
            assert api.schedules() == []
            with pytest.raises(NotFound):
                api.schedule(made["id"])

            with pytest.raises(NotFound):
                api.production()
            promotion = api.promote(seeded["id"], note="baseline")
            assert promotion["model_id"] == seeded["id"] and promotion["note"] == "baseline"
            assert api.production()["id"] == seeded["id"]
            assert [p["model_id"] for p in api.promotions()] == [seeded["id"]]
    finally:
        server.shutdown()
        app.extensions["fedtier"].close()
