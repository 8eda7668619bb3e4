"""Identities (issue 14): each participant is who its signed credential says, and only that.

Unit tests pin fedtier/identity.py's refusals; the rest run a real reducer and combiner
(``fedtier`` processes, keys made in tmp) and attack them over their sockets: a client
credential registering a combiner, a combiner credential registering another name, a
valid credential moving a live combiner's name, a client acting under another client's
name, and the reducer's credential captured by one combiner used elsewhere.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator

import grpc
import jwt
import numpy as np
import pytest
import requests

from conftest import ProcessGroup, code_of, free_port, wait_for_port
from fedtier.launch.certs import ServerSpec, issue_server_cert
from fedtier.launch.cli import main
from fedtier.combiner.server import CombinerServer, CombinerSettings
from fedtier.config import ConfigError, Settings
from fedtier.helpers import get_helper
from fedtier.identity import (MAX_TOKEN_BYTES, CredentialError, NotPermitted, SelfIssuer, Verifier, generate_keypair,
                              issue, load_signing_key, load_verify_key, verify)
from fedtier.proto import fedtier_pb2 as pb
from fedtier.proto import fedtier_pb2_grpc as rpc
from fedtier.reducer.app import create_app
from fedtier.reducer.auth import local_path
from fedtier.reducer.network import CombinerRefused, Network
from fedtier.storage.sqlite import SQLiteStateStore
from fedtier.transport.channel import add_port, make_channel, make_server
from fedtier.transport.streams import file_chunks
from fedtier.transport.wire import ModelTransferStub

ADMIN = "admin-secret-1"
DAY = 86400.0


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory):
    signing, verify_path = generate_keypair(tmp_path_factory.mktemp("keys"))
    return signing, verify_path, load_signing_key(signing), load_verify_key(verify_path)


# ---------------------------------------------------------------- unit: issue and verify
def test_round_trip_names_the_holder(keys) -> None:
    _, _, sk, vk = keys
    who = verify(vk, issue(sk, "client", "site-a", DAY), roles=("client",))
    assert (who.name, who.role, who.audience) == ("site-a", "client", None)
    assert time.time() + DAY - 60 < who.expires_at <= time.time() + DAY + 1 and len(who.token_id) == 32


def test_every_kind_of_bad_credential_is_refused_saying_why(keys, tmp_path: Path) -> None:
    _, _, sk, vk = keys
    good = issue(sk, "client", "site-a", DAY)
    with pytest.raises(CredentialError, match="expired at"):
        verify(vk, issue(sk, "client", "site-a", 60, now=time.time() - 3600))
    with pytest.raises(NotPermitted, match="wrong role client for site-a"):
        verify(vk, good, roles=("combiner",))
    header, body, signature = good.split(".")
    forged_body = jwt.utils.base64url_encode(b'{"iss":"fedtier","sub":"site-b","role":"client","iat":1,'
                                             b'"exp":9999999999,"jti":"x"}').decode()
    for tampered in (f"{header}.{forged_body}.{signature}", f"{header}.{body}.{signature[:-4]}AAAA"):
        with pytest.raises(CredentialError, match="bad signature"):
            verify(vk, tampered)
    _, other_verify = generate_keypair(tmp_path / "other")
    other_sk = load_signing_key(tmp_path / "other" / "signing-key.pem")
    with pytest.raises(CredentialError, match="bad signature"):
        verify(vk, issue(other_sk, "client", "site-a", DAY))
    with pytest.raises(CredentialError, match="longer than"):
        verify(vk, "x" * (MAX_TOKEN_BYTES + 1))
    for junk in ("", "not-a-jwt", jwt.encode({"sub": "a"}, "k" * 32, algorithm="HS256")):
        with pytest.raises(CredentialError):
            verify(vk, junk)
    # an HS256 token "signed" with the public key's bytes (the algorithm-confusion attack)
    with pytest.raises(CredentialError):
        verify(vk, jwt.encode({"iss": "fedtier", "sub": "x", "role": "client", "iat": 1, "exp": 9999999999,
                               "jti": "x"}, "s" * 32, algorithm="HS256"))


def test_a_reducer_credential_is_bound_to_one_combiner(keys) -> None:
    _, _, sk, vk = keys
    token = SelfIssuer(sk).token_for("c0")
    assert verify(vk, token, roles=("reducer",), audience="c0").audience == "c0"
    for audience in ("c1", None):
        with pytest.raises(NotPermitted, match="not valid for"):
            verify(vk, token, roles=("reducer",), audience=audience)
    with pytest.raises(NotPermitted, match="wrong role reducer"):
        verify(vk, token, roles=("client", "combiner"), audience="c0")  # the REST API's roles
    with pytest.raises(CredentialError):
        issue(sk, "client", "site-a", DAY, audience="c0")  # only the reducer's credentials have an audience
    with pytest.raises(CredentialError, match="the reducer's own name"):
        issue(sk, "client", "reducer", DAY)  # its transfers carry that name: no client may take it


def test_the_verifier_cache_still_checks_expiry_and_role(keys) -> None:
    _, _, sk, vk = keys
    verifier = Verifier(vk, cache_size=2)
    token = issue(sk, "client", "a", DAY)
    verifier.verify(token, roles=("client",))
    with pytest.raises(NotPermitted):
        verifier.verify(token, roles=("combiner",))  # a cached signature is not a cached permission
    for name in ("b", "c", "d"):
        verifier.verify(issue(sk, "client", name, DAY))
    assert len(verifier._cache) == 2  # bounded


def test_token_cli_keygen_issue_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--env-file", "/nonexistent", "token", "keygen", "--out", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k" / "signing-key.pem").stat().st_mode & 0o777 == 0o600
    assert main(["--env-file", "/nonexistent", "token", "keygen", "--out", str(tmp_path / "k")]) == 1  # no overwrite
    assert main(["--env-file", "/nonexistent", "token", "issue", "--role", "client", "--name", "site-a", "--name",
                 "site-b", "--expires", "2h", "--signing-key", str(tmp_path / "k" / "signing-key.pem"),
                 "--out", str(tmp_path / "creds")]) == 0
    token = (tmp_path / "creds" / "site-b.token").read_text().strip()
    capsys.readouterr()
    assert main(["--env-file", "/nonexistent", "token", "show", token,
                 "--verify-key", str(tmp_path / "k" / "verify-key.pem")]) == 0
    assert capsys.readouterr().out.startswith("client site-b  expires")
    assert main(["--env-file", "/nonexistent", "token", "issue", "--role", "client", "--name", "x",
                 "--expires", "soon", "--signing-key", str(tmp_path / "k" / "signing-key.pem")]) == 1


def test_settings_refuse_an_admin_token_without_keys(keys) -> None:
    signing, verify_path, _, _ = keys
    with pytest.raises(ConfigError, match="missing: FEDTIER_TOKEN_VERIFY_KEY, FEDTIER_TOKEN_SIGNING_KEY.*keygen"):
        Settings.from_env({"FEDN_ALLIANCE_ADMIN_AUTH_TOKEN": "x"}).check_reducer()
    with pytest.raises(ConfigError, match="FEDTIER_TOKEN_SIGNING_KEY is set but FEDTIER_TOKEN_VERIFY_KEY is not"):
        Settings.from_env({"FEDTIER_TOKEN_SIGNING_KEY": str(signing)})
    with pytest.raises(ConfigError, match="missing: FEDTIER_TOKEN_SIGNING_KEY"):
        Settings.from_env({"FEDN_ALLIANCE_ADMIN_AUTH_TOKEN": "x",
                           "FEDTIER_TOKEN_VERIFY_KEY": str(verify_path)}).check_reducer()
    with pytest.raises(ConfigError, match="missing: FEDN_ALLIANCE_ADMIN_AUTH_TOKEN"):
        Settings.from_env({"FEDTIER_TOKEN_VERIFY_KEY": str(verify_path),
                           "FEDTIER_TOKEN_SIGNING_KEY": str(signing)}).check_reducer()
    Settings.from_env({"FEDTIER_TOKEN_VERIFY_KEY": str(verify_path)})  # a combiner: verify key only


# ---------------------------------------------------------------- /login?next=
def test_login_follows_only_local_paths(keys, tmp_path: Path) -> None:
    for bad in ("https://evil.example/", "//evil.example", "/\\evil.example", "\\\\evil", "javascript:alert(1)",
                "http:/evil", "/\r\nX: y", "/\tevil", "evil.example", " //evil", ""):
        assert local_path(bad) == "/", bad
    for good in ("/", "/sessions", "/models?page=2#top"):
        assert local_path(good) == good
    signing, verify_path, _, _ = keys
    app = create_app(Settings(data_dir=tmp_path, admin_auth_token=ADMIN, token_verify_key=str(verify_path),
                              token_signing_key=str(signing)), poll_interval_s=None)
    try:
        web = app.test_client()
        for target, expected in (("//evil.example/x", "/"), ("https://evil.example", "/"), ("/sessions", "/sessions")):
            reply = web.post(f"/login?next={requests.utils.quote(target, safe='')}", data={"token": ADMIN})
            assert reply.status_code == 302 and reply.headers["Location"] == expected, target
    finally:
        app.extensions["fedtier"].close()


# ---------------------------------------------------------------- a name moves only when its combiner is gone
def test_a_name_moves_only_once_its_combiner_is_offline(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    network = Network(SQLiteStateStore(tmp_path / "s.sqlite"), offline_after_s=6.0)
    network.add_combiner("c0", "10.0.0.1", 12080)
    network.add_combiner("c0", "10.0.0.1", 12080)  # the same address again: a restart
    with pytest.raises(CombinerRefused) as refused:
        network.add_combiner("c0", "10.0.0.9", 12080)
    assert refused.value.status == 409 and "c0 is live at 10.0.0.1:12080" in str(refused.value)
    assert network.state.get("combiners", "c0")["address"] == "10.0.0.1"
    network.state.update("combiners", "c0", {"last_seen": time.time() - 7})  # silent past the timeout
    with caplog.at_level(logging.WARNING, logger="fedtier.reducer.network"):
        network.add_combiner("c0", "10.0.0.9", 12080)
    assert "combiner c0 moves from 10.0.0.1:12080 to 10.0.0.9:12080" in caplog.text
    network.close()


def test_with_tls_the_certificate_must_be_valid_for_the_registered_address(keys, tmp_path: Path) -> None:
    signing, verify_path, sk, _ = keys
    certs = tmp_path / "certs"
    for spec in ("c0=localhost,127.0.0.1", "c1=elsewhere.example"):
        issue_server_cert(certs, ServerSpec.parse(spec))
    servers = {name: CombinerServer(CombinerSettings(name=name, host="127.0.0.1", port=0, work_dir=tmp_path / name,
                                                     verify_key=str(verify_path), tls_cert=str(certs / f"{name}.pem"),
                                                     tls_key=str(certs / f"{name}-key.pem")))
               for name in ("c0", "c1")}
    ports = {name: server.start() for name, server in servers.items()}
    network = Network(SQLiteStateStore(tmp_path / "s.sqlite"), issuer=SelfIssuer(sk), ca_file=str(certs / "ca.pem"))
    try:
        with pytest.raises(CombinerRefused) as refused:  # c1's certificate names another host
            network.add_combiner("c1", "127.0.0.1", ports["c1"])
        assert refused.value.status == 422 and "certificate must be valid for that address" in str(refused.value)
        with pytest.raises(CombinerRefused, match="PERMISSION_DENIED.*reducer credential for 'c1' is not valid for c0"):
            network.add_combiner("c1", "127.0.0.1", ports["c0"])  # another combiner's address
        assert network.combiners() == []
        network.add_combiner("c0", "127.0.0.1", ports["c0"])
        assert network.handle("c0").status(timeout=5).name == "c0"
    finally:
        network.close()
        for server in servers.values():
            server.stop(0)


# ---------------------------------------------------------------- a live network, attacked
class Net:
    def __init__(self, url: str, cport: int, sk, vk, verify_path: Path, procs: ProcessGroup) -> None:
        self.url, self.cport, self.sk, self.vk, self.verify_path, self.procs = url, cport, sk, vk, verify_path, procs

    def cred(self, role: str, name: str) -> str:
        return issue(self.sk, role, name, 3600)

    def combiner_doc(self, name: str) -> dict:
        reply = requests.get(f"{self.url}/api/v1/combiners", timeout=5)
        return {c["name"]: c for c in reply.json()}[name]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Token {token}"}


@pytest.fixture(scope="module")
def net(keys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    signing, verify_path, sk, vk = keys
    work = tmp_path_factory.mktemp("net")
    procs = ProcessGroup(work)
    port, cport = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    reducer = procs.start("reducer", "reducer", "--host", "127.0.0.1", "--port", str(port), env={
        "FEDN_ALLIANCE_ADMIN_AUTH_TOKEN": ADMIN, "FEDTIER_TOKEN_VERIFY_KEY": str(verify_path),
        "FEDTIER_TOKEN_SIGNING_KEY": str(signing), "FEDTIER_DATA_DIR": str(work / "r")})
    procs.start("c0", "combiner", "--name", "c0", "--host", "127.0.0.1", "--port", str(cport), "--reducer", url,
                env={"FEDTIER_TOKEN_VERIFY_KEY": str(verify_path), "FEDTIER_DATA_DIR": str(work / "c0"),
                     "FEDN_ALLIANCE_AUTH_TOKEN": issue(sk, "combiner", "c0", 3600)})
    try:
        wait_for_port(port, proc=reducer)
        deadline = time.monotonic() + 30
        while requests.get(f"{url}/api/v1/status", timeout=5).json()["combiners_online"] != 1:
            assert time.monotonic() < deadline, procs.dump_logs()
            time.sleep(0.2)
        yield Net(url, cport, sk, vk, verify_path, procs)
    finally:
        procs.stop_all()


def test_open_mode_is_announced_loudly(net: Net, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert "IDENTITIES ARE NOT CHECKED" not in net.procs.log("reducer") + net.procs.log("c0")
    with caplog.at_level(logging.WARNING):
        CombinerServer(CombinerSettings(name="open", port=0, work_dir=tmp_path / "c"))
        app = create_app(Settings(data_dir=tmp_path / "r"), poll_interval_s=None)
        app.extensions["fedtier"].close()
    assert caplog.text.count("IDENTITIES ARE NOT CHECKED") == 2


def test_only_a_combiners_own_credential_registers_it(net: Net) -> None:
    body = {"name": "c0", "address": "127.0.0.1", "port": net.cport}
    assert requests.post(f"{net.url}/add", json=body, timeout=5).status_code == 401
    refused = requests.post(f"{net.url}/add", json=body, headers=auth(net.cred("client", "c0")), timeout=5)
    assert refused.status_code == 403 and "wrong role client" in refused.json()["error"]
    refused = requests.post(f"{net.url}/add", json=body, headers=auth(net.cred("combiner", "c9")), timeout=5)
    assert refused.status_code == 403 and "'c9', not 'c0'" in refused.json()["error"]
    reducer_cred = SelfIssuer(net.sk).token_for("c0")
    assert requests.post(f"{net.url}/add", json=body, headers=auth(reducer_cred), timeout=5).status_code == 403
    again = requests.post(f"{net.url}/add", json=body, headers=auth(net.cred("combiner", "c0")), timeout=5)
    assert again.status_code == 201  # its own credential, its own address: a restart re-announcing


def test_a_live_combiners_name_cannot_be_taken_to_another_address(net: Net) -> None:
    """The takeover of issue 14: a valid combiner credential for c0, held by someone else,
    announcing c0 at its own address (where a server answers as c0) while the real c0 runs."""
    thief_control = CapturingControl("c0")
    thief_server, thief = fake_combiner(thief_control)
    try:
        reply = requests.post(f"{net.url}/add", json={"name": "c0", "address": "127.0.0.1", "port": thief},
                              headers=auth(net.cred("combiner", "c0")), timeout=5)
    finally:
        thief_server.stop(0)
    assert reply.status_code == 409, reply.text
    assert thief_control.captured == []  # refused before the reducer called it
    assert f"combiner c0 is live at 127.0.0.1:{net.cport}" in reply.json()["error"]
    assert net.combiner_doc("c0")["port"] == net.cport
    assigned = requests.get(f"{net.url}/assign", params={"name": "site-a"},
                            headers=auth(net.cred("client", "site-a")), timeout=5)
    assert assigned.status_code == 200 and assigned.json()["port"] == net.cport  # clients still go to the real c0
    assert net.procs.procs["c0"].poll() is None


def test_assign_and_the_package_take_the_clients_own_credential(net: Net) -> None:
    reply = requests.get(f"{net.url}/assign", params={"name": "site-b"}, headers=auth(net.cred("client", "site-a")),
                         timeout=5)
    assert reply.status_code == 403 and "'site-a', not 'site-b'" in reply.json()["error"]
    assert requests.get(f"{net.url}/assign", params={"name": "site-a"},
                        headers=auth(net.cred("combiner", "site-a")), timeout=5).status_code == 403
    assert requests.get(f"{net.url}/api/v1/package", headers=auth(net.cred("combiner", "c0")),
                        timeout=5).status_code == 403
    assert requests.get(f"{net.url}/api/v1/package", headers=auth(net.cred("client", "site-a")),
                        timeout=5).status_code == 404  # past the check: no package uploaded


def test_a_client_cannot_act_as_another(net: Net, tmp_path: Path) -> None:
    """The impersonation of issue 14: site-a's credential, site-b's name, on every RPC that names a client."""
    address = f"127.0.0.1:{net.cport}"
    channel = make_channel(address, token=net.cred("client", "site-a"))
    combiner, transfer = rpc.CombinerStub(channel), ModelTransferStub(channel)
    model = tmp_path / "m"
    get_helper("numpy").save({"w": np.zeros(2, np.float32)}, model)
    as_b = {
        "Connect": lambda: combiner.Connect(pb.ConnectRequest(client_name="site-b"), timeout=5),
        "Heartbeat": lambda: combiner.Heartbeat(pb.HeartbeatRequest(client_name="site-b"), timeout=5),
        "TaskStream": lambda: next(iter(combiner.TaskStream(pb.TaskStreamRequest(client_name="site-b"), timeout=5))),
        "ReportUpdate": lambda: combiner.ReportUpdate(pb.ModelUpdate(client_name="site-b", model_id="x"), timeout=5),
        "ReportValidation": lambda: combiner.ReportValidation(pb.ValidationReport(client_name="site-b"), timeout=5),
        "ReportFailure": lambda: combiner.ReportFailure(pb.TaskFailure(client_name="site-b"), timeout=5),
        "ReportProgress": lambda: combiner.ReportProgress(pb.TaskProgress(client_name="site-b", task_id="t",
                                                                          phase=pb.PHASE_TRAINING), timeout=5),
        "UploadModel": lambda: transfer.UploadModel(file_chunks(model, client_name="site-b"), timeout=5),
        "DownloadModel": lambda: next(iter(transfer.DownloadModel(pb.DownloadRequest(model_id="x",
                                                                                     client_name="site-b"), timeout=5))),
    }
    for rpc_name, call in as_b.items():
        assert code_of(call) == grpc.StatusCode.PERMISSION_DENIED, rpc_name
    assert code_of(lambda: combiner.Connect(pb.ConnectRequest(client_name="site-a"), timeout=5)) is None
    # under its own name, progress passes the identity check and meets the next rule: no task held
    try:
        combiner.ReportProgress(pb.TaskProgress(client_name="site-a", task_id="t", phase=pb.PHASE_TRAINING), timeout=5)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "no round is running" in exc.details()
    else:
        raise AssertionError("progress without a task was taken")
    # under its own name the upload passes the identity check and meets the next rule: no open task
    assert code_of(lambda: transfer.UploadModel(file_chunks(model, client_name="site-a"), timeout=5)) == \
        grpc.StatusCode.FAILED_PRECONDITION
    # a client credential does not open Control, nor does the admin token open anything on a combiner
    assert code_of(lambda: rpc.ControlStub(channel).Status(pb.StatusRequest(), timeout=5)) == \
        grpc.StatusCode.PERMISSION_DENIED
    admin = make_channel(address, token=ADMIN)
    assert code_of(lambda: rpc.CombinerStub(admin).Connect(pb.ConnectRequest(client_name="x"), timeout=5)) == \
        grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: rpc.ControlStub(admin).Status(pb.StatusRequest(), timeout=5)) == \
        grpc.StatusCode.UNAUTHENTICATED
    assert "client site-a sent a request as 'site-b'" in net.procs.log("c0")


class CapturingControl(rpc.ControlServicer):
    """A combiner (an attacker's) that keeps the credential the reducer presents to it."""

    def __init__(self, name: str = "c1") -> None:
        self.name = name
        self.captured: list[str] = []

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.CombinerStatus:
        self.captured.append(dict(context.invocation_metadata())["authorization"].split(" ", 1)[1])
        return pb.CombinerStatus(name=self.name)


def fake_combiner(control: CapturingControl) -> tuple[grpc.Server, int]:
    server = make_server(4)
    rpc.add_ControlServicer_to_server(control, server)
    port = add_port(server, "127.0.0.1:0")
    server.start()
    return server, port


def test_the_reducers_credential_captured_by_one_combiner_opens_nothing_else(net: Net) -> None:
    control = CapturingControl()
    server, port = fake_combiner(control)
    try:
        reply = requests.post(f"{net.url}/add", json={"name": "c1", "address": "127.0.0.1", "port": port},
                              headers=auth(net.cred("combiner", "c1")), timeout=10)
        assert reply.status_code == 201 and control.captured, reply.text
    finally:
        server.stop(0)
    captured = control.captured[0]
    assert verify(net.vk, captured, roles=("reducer",), audience="c1").name == "reducer"
    stolen = make_channel(f"127.0.0.1:{net.cport}", token=captured)
    assert code_of(lambda: rpc.ControlStub(stolen).Status(pb.StatusRequest(), timeout=5)) == \
        grpc.StatusCode.PERMISSION_DENIED
    assert code_of(lambda: rpc.ControlStub(stolen).StartRound(pb.RoundRequest(round_id="r"), timeout=5)) == \
        grpc.StatusCode.PERMISSION_DENIED
    for method, path in (("post", "/seed"), ("post", "/package"), ("post", "/start"), ("get", "/api/v1/package"),
                         ("get", "/assign?name=reducer")):
        answer = getattr(requests, method)(f"{net.url}{path}", headers=auth(captured), timeout=5)
        assert answer.status_code in (401, 403), (path, answer.status_code)
    answer = requests.post(f"{net.url}/add", json={"name": "c1", "address": "127.0.0.1", "port": port},
                           headers=auth(captured), timeout=5)
    assert answer.status_code == 403


def test_an_address_is_kept_only_if_the_combiner_there_gives_the_name(net: Net) -> None:
    server, port = fake_combiner(CapturingControl("c1"))
    try:
        reply = requests.post(f"{net.url}/add", json={"name": "c2", "address": "127.0.0.1", "port": port},
                              headers=auth(net.cred("combiner", "c2")), timeout=10)
    finally:
        server.stop(0)
    assert reply.status_code == 422 and "calls itself 'c1', not 'c2'" in reply.json()["error"]
    assert "c2" not in {c["name"] for c in requests.get(f"{net.url}/api/v1/combiners", timeout=5).json()}


def test_a_participant_with_the_wrong_credential_stops_at_start_up(keys, monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Not at its first call, minutes later: a combiner handed a client's credential, another
    combiner's, or a credential but no verify key to check its own clients with."""
    _, verify_path, sk, _ = keys
    argv = ["--env-file", "/nonexistent", "combiner", "--name", "c0", "--port", "0", "--reducer", "http://127.0.0.1:9"]
    for var in ("FEDN_ALLIANCE_ADMIN_AUTH_TOKEN", "FEDTIER_TOKEN_SIGNING_KEY", "FEDTIER_CREDENTIALS_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FEDTIER_TOKEN_VERIFY_KEY", str(verify_path))
    for token, reason in ((issue(sk, "client", "c0", DAY), "wrong role client"),
                          (issue(sk, "combiner", "c1", DAY), "for combiner 'c1', not 'c0'"), ("", "needs its combiner")):
        monkeypatch.setenv("FEDN_ALLIANCE_AUTH_TOKEN", token)
        caplog.clear()
        assert main(argv) == 1
        assert reason in caplog.text
    monkeypatch.delenv("FEDTIER_TOKEN_VERIFY_KEY")
    monkeypatch.setenv("FEDN_ALLIANCE_AUTH_TOKEN", issue(sk, "combiner", "c0", DAY))
    caplog.clear()
    assert main(argv) == 1 and "no FEDTIER_TOKEN_VERIFY_KEY" in caplog.text
