"""Credentials and TLS: who gets in, who is refused, and that a whole network runs with both on.

(tests/test_identity.py attacks the identities themselves: impersonation, takeover, capture.)"""
from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from werkzeug.serving import make_server

from conftest import ProcessGroup, TEST_PROJECTS, code_of, free_port, wait_for_port
from fedtier.launch.certs import ServerSpec, issue_server_cert
from fedtier.combiner.server import CombinerServer, CombinerSettings
from fedtier.config import ConfigError, Settings
from fedtier.helpers import get_helper
from fedtier.identity import SelfIssuer, generate_keypair, issue, load_signing_key
from fedtier.proto import fedtier_pb2 as pb
from fedtier.proto import fedtier_pb2_grpc as rpc
from fedtier.reducer.app import create_app
from fedtier.reducer.combiner_client import CombinerClient
from fedtier.transport.channel import make_channel
from fedtier.transport.streams import file_chunks
from fedtier.transport.wire import ModelTransferStub

ADMIN = "admin-secret-1"
helper = get_helper("numpy")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("keys"))


def credential(keys: tuple[Path, Path], role: str, name: str) -> str:
    return issue(load_signing_key(keys[0]), role, name, 3600)


def seed_bytes() -> bytes:
    return helper.to_bytes({"w": np.ones(3, np.float32)})


def seed_file() -> tuple[io.BytesIO, str]:
    """As Flask's test client takes a file: (stream, filename)."""
    return io.BytesIO(seed_bytes()), "seed"


# ---------------------------------------------------------------- REST
@pytest.fixture
def secured(tmp_path: Path, keys: tuple[Path, Path]):
    settings = Settings(data_dir=tmp_path, admin_auth_token=ADMIN, public_read=False,
                        token_signing_key=str(keys[0]), token_verify_key=str(keys[1]))
    app = create_app(settings, poll_interval_s=None)
    yield app.test_client()
    app.extensions["fedtier"].close()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Token {token}"}


def test_rest_writes_need_the_admin_token(secured, keys) -> None:
    for headers in ({}, auth(credential(keys, "client", "a")), auth(credential(keys, "combiner", "c0")),
                    auth("wrong"), {"Authorization": "Basic abc"}):
        reply = secured.post("/seed", data={"seed": seed_file()}, headers=headers, content_type="multipart/form-data")
        assert reply.status_code == 401 and "admin token" in reply.json["error"], headers
        assert secured.post("/start", json={"rounds": 1}, headers=headers).status_code == 401
        assert secured.post("/stop", headers=headers).status_code == 401
    assert secured.get("/api/v1/status", headers=auth(ADMIN)).json["state"] == "setup"  # nothing changed
    reply = secured.post("/seed", data={"seed": seed_file()}, headers={"Authorization": f"Bearer {ADMIN}"},
                         content_type="multipart/form-data")
    assert reply.status_code == 201


def test_add_and_assign_need_the_participants_own_credential(secured, keys) -> None:
    body = {"name": "c0", "address": "127.0.0.1", "port": 1}
    assert secured.post("/add", json=body).status_code == 401
    assert secured.post("/add", json=body, headers=auth("nope")).status_code == 401
    assert secured.post("/add", json=body, headers=auth(credential(keys, "client", "c0"))).status_code == 403
    # past the credential check, the reducer calls the address: nothing answers at port 1
    probed = secured.post("/add", json=body, headers=auth(credential(keys, "combiner", "c0")))
    assert probed.status_code == 422 and probed.json["field"] == "address"
    assert secured.get("/assign?name=x").status_code == 401
    assert secured.get("/assign?name=x", headers=auth(credential(keys, "combiner", "x"))).status_code == 403
    assert secured.get("/assign?name=x", headers=auth(credential(keys, "client", "x"))).status_code == 503


def test_closed_reads_and_browser_login(secured, keys) -> None:
    assert secured.get("/api/v1/status").status_code == 401
    assert secured.get("/api/v1/models").status_code == 401
    page = secured.get("/")
    assert page.status_code == 302 and page.headers["Location"].endswith("/login")
    client = credential(keys, "client", "a")
    assert secured.get("/api/v1/status", headers=auth(client)).status_code == 200
    reducers = SelfIssuer(load_signing_key(keys[0])).token_for("c0")
    assert secured.get("/api/v1/status", headers=auth(reducers)).status_code == 401  # not a REST credential
    assert secured.post("/login", data={"token": client}).status_code == 401  # a credential is not admin
    login = secured.post("/login", data={"token": ADMIN})
    assert login.status_code == 302
    cookie = login.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert secured.get("/").status_code == 200  # the session cookie now opens pages...
    reply = secured.post("/seed", data={"seed": seed_file()}, content_type="multipart/form-data")
    assert reply.status_code == 201  # ...and admin actions
    secured.post("/logout")
    assert secured.post("/start", json={"rounds": 1}).status_code == 401


def test_settings_refuse_unusable_security_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must differ"):
        Settings.from_env({"FEDN_ALLIANCE_ADMIN_AUTH_TOKEN": "x", "FEDN_ALLIANCE_AUTH_TOKEN": "x"})
    with pytest.raises(ConfigError, match="set together"):
        Settings.from_env({"FEDTIER_TLS_CERT": str(tmp_path)})
    with pytest.raises(ConfigError, match="not a file"):
        Settings.from_env({"FEDTIER_TLS_CA": str(tmp_path / "missing.pem")})


# ---------------------------------------------------------------- gRPC
@pytest.fixture
def secured_combiner(tmp_path: Path, keys: tuple[Path, Path]):
    server = CombinerServer(CombinerSettings(name="c", port=0, work_dir=tmp_path / "c", verify_key=str(keys[1])))
    port = server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def test_grpc_calls_need_credentials_on_every_kind_of_rpc(secured_combiner: str, tmp_path: Path, keys) -> None:
    model = tmp_path / "m"
    helper.save({"w": np.zeros(2, np.float32)}, model)

    def calls(token: str):
        channel = make_channel(secured_combiner, token=token)
        combiner, transfer = rpc.CombinerStub(channel), ModelTransferStub(channel)
        control = rpc.ControlStub(channel)
        return {
            "unary": lambda: combiner.Connect(pb.ConnectRequest(client_name="x"), timeout=5),
            "server-stream": lambda: next(iter(transfer.DownloadModel(pb.DownloadRequest(model_id="none", client_name="x"),
                                                                      timeout=5))),
            "client-stream": lambda: transfer.UploadModel(file_chunks(model, client_name="x"), timeout=5),
            "control": lambda: control.Status(pb.StatusRequest(), timeout=5),
        }

    for kind, call in calls("").items():
        assert code_of(call) == grpc.StatusCode.UNAUTHENTICATED, kind
    for token in ("forged", ADMIN):  # the admin token is no credential on a combiner
        for kind, call in calls(token).items():
            assert code_of(call) == grpc.StatusCode.UNAUTHENTICATED, kind
    client = calls(credential(keys, "client", "x"))
    assert code_of(client["unary"]) is None
    assert code_of(client["server-stream"]) == grpc.StatusCode.NOT_FOUND  # past auth, no such model
    assert code_of(client["client-stream"]) == grpc.StatusCode.FAILED_PRECONDITION  # past auth, no open task
    assert code_of(client["control"]) == grpc.StatusCode.PERMISSION_DENIED  # clients cannot run rounds
    reducer = SelfIssuer(load_signing_key(keys[0]))
    assert code_of(calls(reducer.token_for("c"))["control"]) is None
    assert code_of(calls(reducer.token_for("other"))["control"]) == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(calls(reducer.token_for("c"))["unary"]) == grpc.StatusCode.PERMISSION_DENIED  # not a client
    assert code_of(calls(credential(keys, "combiner", "c"))["control"]) is None  # its own healthcheck
    assert code_of(calls(credential(keys, "combiner", "c2"))["control"]) == grpc.StatusCode.PERMISSION_DENIED


def test_only_the_reducer_names_an_uploaded_model(secured_combiner: str, tmp_path: Path, keys) -> None:
    """Trail ids are public once committed; a client that uploaded under the next global
    model's id before the reducer's push would have its bytes served as that model."""
    model = tmp_path / "m"
    helper.save({"w": np.zeros(2, np.float32)}, model)
    client = ModelTransferStub(make_channel(secured_combiner, token=credential(keys, "client", "x")))
    with pytest.raises(grpc.RpcError) as refused:
        client.UploadModel(file_chunks(model, model_id="next-global-model", client_name="x"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "only the reducer names models" in (refused.value.details() or "")
    with pytest.raises(grpc.RpcError) as refused:  # an update, but this client holds no open task
        client.UploadModel(file_chunks(model, client_name="x"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    reducer = ModelTransferStub(make_channel(secured_combiner, token=SelfIssuer(load_signing_key(keys[0])).token_for("c")))
    assert reducer.UploadModel(file_chunks(model, model_id="next-global-model"), timeout=5).model_id == \
        "next-global-model"


# ---------------------------------------------------------------- TLS
def test_tls_combiner_and_reducer_are_verified_against_the_ca(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    cert, key = issue_server_cert(certs, ServerSpec.parse("combiner=localhost,127.0.0.1"))
    other = tmp_path / "other"
    issue_server_cert(other, ServerSpec.parse("x=localhost"))  # a different CA
    server = CombinerServer(CombinerSettings(name="c", port=0, work_dir=tmp_path / "c",
                                             tls_cert=str(cert), tls_key=str(key)))
    port = server.start()
    try:
        good = CombinerClient(f"localhost:{port}", ca_file=str(certs / "ca.pem"))
        assert good.status(timeout=5).name == "c"
        wrong_ca = CombinerClient(f"localhost:{port}", ca_file=str(other / "ca.pem"))
        assert code_of(lambda: wrong_ca.status(timeout=5)) == grpc.StatusCode.UNAVAILABLE
        plaintext = CombinerClient(f"localhost:{port}")
        assert code_of(lambda: plaintext.status(timeout=5)) == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)

    rcert, rkey = issue_server_cert(certs, ServerSpec.parse("reducer=localhost,127.0.0.1"))
    app = create_app(Settings(data_dir=tmp_path / "r", tls_cert=str(rcert), tls_key=str(rkey)), poll_interval_s=None)
    http = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=(str(rcert), str(rkey)))
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        url = f"https://127.0.0.1:{http.server_port}/api/v1/status"
        assert requests.get(url, verify=str(certs / "ca.pem"), timeout=5).json()["state"] == "setup"
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url, verify=str(other / "ca.pem"), timeout=5)
    finally:
        http.shutdown()
        app.extensions["fedtier"].close()


# ---------------------------------------------------------------- a whole network, secured
def test_network_with_credentials_and_tls_trains_and_refuses_intruders(procs: ProcessGroup, tmp_path: Path,
                                                                       keys: tuple[Path, Path]) -> None:
    certs = tmp_path / "certs"
    issue_server_cert(certs, ServerSpec.parse("reducer=localhost,127.0.0.1"))
    issue_server_cert(certs, ServerSpec.parse("c0=localhost,127.0.0.1"))
    creds = tmp_path / "credentials"  # what `fedtier token issue --out` writes: NAME.token
    creds.mkdir()
    for name in ("client-0", "client-1"):
        (creds / f"{name}.token").write_text(credential(keys, "client", name))
    _, stranger_verify = generate_keypair(tmp_path / "stranger")
    base = {"FEDTIER_TLS_CA": str(certs / "ca.pem"), "FEDTIER_DATA_DIR": str(tmp_path / "data")}
    port, cport = free_port(), free_port()
    url = f"https://localhost:{port}"
    reducer = procs.start("reducer", "reducer", "--host", "127.0.0.1", "--port", str(port), env={
        **base, "FEDTIER_TLS_CERT": str(certs / "reducer.pem"), "FEDTIER_TLS_KEY": str(certs / "reducer-key.pem"),
        "FEDN_ALLIANCE_ADMIN_AUTH_TOKEN": ADMIN, "FEDTIER_TOKEN_SIGNING_KEY": str(keys[0]),
        "FEDTIER_TOKEN_VERIFY_KEY": str(keys[1])})
    wait_for_port(port, proc=reducer)
    procs.start("combiner", "combiner", "--name", "c0", "--host", "127.0.0.1", "--advertise-host", "localhost",
                "--port", str(cport), "--reducer", url, "--heartbeat-interval", "0.3", env={
                    **base, "FEDTIER_TLS_CERT": str(certs / "c0.pem"), "FEDTIER_TLS_KEY": str(certs / "c0-key.pem"),
                    "FEDTIER_TOKEN_VERIFY_KEY": str(keys[1]),
                    "FEDN_ALLIANCE_AUTH_TOKEN": credential(keys, "combiner", "c0")})
    verify = str(certs / "ca.pem")
    for i in range(2):
        procs.start(f"client-{i}", "client", "--reducer", url, "--project", str(TEST_PROJECTS / "numpy_shift"),
                    "--name", f"client-{i}", "--partition", f"{i}/2", env={**base, "FEDTIER_CREDENTIALS_DIR": str(creds)})
    # a credential from another federation's key, and a valid credential used under another client's name
    stranger = issue(load_signing_key(tmp_path / "stranger" / "signing-key.pem"), "client", "intruder", 3600)
    procs.start("intruder", "client", "--reducer", url, "--project", str(TEST_PROJECTS / "numpy_shift"),
                "--name", "intruder", env={**base, "FEDN_ALLIANCE_AUTH_TOKEN": stranger})
    procs.start("impostor", "client", "--combiner", f"localhost:{cport}", "--project",
                str(TEST_PROJECTS / "numpy_shift"), "--name", "client-0",
                env={**base, "FEDN_ALLIANCE_AUTH_TOKEN": credential(keys, "client", "impostor")})
    headers = {"Authorization": f"Token {ADMIN}"}

    def status() -> dict:
        return requests.get(f"{url}/api/v1/status", verify=verify, timeout=5).json()

    deadline = time.monotonic() + 90
    while not (status()["combiners_online"] == 1 and status()["clients_active"] == 2):
        assert time.monotonic() < deadline, procs.dump_logs()
        time.sleep(0.3)
    seed = requests.post(f"{url}/seed", files={"seed": ("seed", seed_bytes())}, headers=headers, verify=verify, timeout=10)
    assert seed.status_code == 201, seed.text
    start = requests.post(f"{url}/start", json={"rounds": 1, "clients_required": 2, "validate": False},
                          headers=headers, verify=verify, timeout=10)
    assert start.status_code == 201, start.text
    session_url = f"{url}/api/v1/sessions/{start.json()['session_id']}"
    while (session := requests.get(session_url, verify=verify, timeout=5).json())["status"] == "running":
        assert time.monotonic() < deadline + 60, procs.dump_logs()
        time.sleep(0.3)
    assert session["rounds_succeeded"] == 1, procs.dump_logs()
    clients = {c["name"] for c in requests.get(f"{url}/api/v1/clients", verify=verify, timeout=5).json()}
    assert clients == {"client-0", "client-1"}  # the intruder never got in
    assert "401" in procs.log("intruder") and "bad signature" in procs.log("intruder")
    assert "PERMISSION_DENIED" in procs.log("impostor") and "'client-0' is not the name in your credential" \
        in procs.log("impostor")
