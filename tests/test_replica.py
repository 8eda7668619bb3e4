"""``--name auto`` / ``--partition auto/N``: a scaled compose replica finds its number through DNS.

A fake DNS server on loopback plays Docker's embedded one (127.0.0.11): its answers
are written byte by byte here, independently of fedtier.replica's encoder, so a wrong
query or a misread answer fails these tests.
"""
from __future__ import annotations

import os
import signal
import socket
import struct
import threading
from pathlib import Path
from typing import Iterator

import pytest

from fedtier import replica
from fedtier.launch.cli import build_parser, main
from fedtier.replica import Replica, ReplicaError, compose_replica, decode_ptr_answer, resolve_client_identity


def _labels(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"


class FakeDockerDNS:
    """Answers PTR queries like Docker's resolver: ``<container>.<network>``, or NXDOMAIN."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers  # reverse name ("5.0.18.172.in-addr.arpa") -> PTR target
        self.questions: list[tuple[str, int, int]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(512)
            except OSError:
                return
            query_id, flags, qdcount = struct.unpack("!HHH", data[:6])
            labels, offset = [], 12
            while data[offset]:
                labels.append(data[offset + 1:offset + 1 + data[offset]].decode())
                offset += 1 + data[offset]
            qtype, qclass = struct.unpack("!HH", data[offset + 1:offset + 5])
            question = data[12:offset + 5]
            qname = ".".join(labels)
            self.questions.append((qname, qtype, qclass))
            target = self.answers.get(qname)
            if target is None:
                reply = struct.pack("!HHHHHH", query_id, 0x8183, 1, 0, 0, 0) + question  # NXDOMAIN
            else:
                rdata = _labels(target)
                answer = b"\xc0\x0c" + struct.pack("!HHIH", 12, 1, 600, len(rdata)) + rdata  # name: pointer
                reply = struct.pack("!HHHHHH", query_id, 0x8180, 1, 1, 0, 0) + question + answer
            self.sock.sendto(reply, peer)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def dns() -> Iterator[FakeDockerDNS]:
    server = FakeDockerDNS({"5.0.18.172.in-addr.arpa": "fedtier-client-3.fedtier_default",
                            "9.0.18.172.in-addr.arpa": "legacy_client_12.legacy_default",
                            "7.0.18.172.in-addr.arpa": "fedtier-client-7.fedtier_default"})
    yield server
    server.close()


# ---------------------------------------------------------------- the DNS lookup
def test_replica_number_comes_from_the_ptr_record_of_the_own_address(dns: FakeDockerDNS) -> None:
    found = compose_replica(server=dns.address, addresses=["172.18.0.5"], wait_s=0)
    assert found == Replica("fedtier-client-3", 3)
    assert dns.questions == [("5.0.18.172.in-addr.arpa", 12, 1)]  # a PTR query, class IN, for this address


def test_compose_v1_names_with_underscores(dns: FakeDockerDNS) -> None:
    assert compose_replica(server=dns.address, addresses=["172.18.0.9"], wait_s=0) == Replica("legacy_client_12", 12)


def test_first_address_with_a_record_wins(dns: FakeDockerDNS) -> None:
    found = compose_replica(server=dns.address, addresses=["10.9.9.9", "172.18.0.5"], wait_s=0)
    assert found.number == 3


def test_no_record_is_a_clear_error(dns: FakeDockerDNS) -> None:
    with pytest.raises(ReplicaError, match=r"no PTR record for 10\.1\.1\.1.*give the value explicitly"):
        compose_replica(server=dns.address, addresses=["10.1.1.1"], wait_s=0)


def test_no_dns_server_is_a_clear_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()
    with pytest.raises(ReplicaError, match="could not learn this container's name from Docker's DNS"):
        compose_replica(server=closed, addresses=["172.18.0.5"], wait_s=0)


def test_no_own_address_is_a_clear_error() -> None:
    with pytest.raises(ReplicaError, match="no IPv4 address"):
        compose_replica(server=("127.0.0.1", 9), addresses=[], wait_s=0)


@pytest.mark.parametrize("message", [
    b"",                                                                  # nothing
    struct.pack("!HHHHHH", 7, 0x8180, 1, 1, 0, 0) + b"\x03abc",           # truncated question
    struct.pack("!HHHHHH", 7, 0x8180, 1, 0, 0, 0) + b"\xc0\x0c\x00\x0c\x00\x01",  # pointer to itself
    struct.pack("!HHHHHH", 8, 0x8180, 0, 0, 0, 0),                        # another query's id
    struct.pack("!HHHHHH", 7, 0x0100, 0, 0, 0, 0),                        # a query, not a reply
])
def test_malformed_answers_are_rejected(message: bytes) -> None:
    with pytest.raises(ValueError):
        decode_ptr_answer(message, 7)


@pytest.mark.parametrize("name", ["reducer", "fedtier-client", "my-container-0", "client-x"])
def test_names_without_a_replica_number_are_refused(name: str) -> None:
    with pytest.raises(ReplicaError, match="does not end in a replica number"):
        replica.parse_replica(name)


# ---------------------------------------------------------------- from replica to name and partition
def test_replica_k_takes_partition_k_minus_1() -> None:
    assert [Replica(f"p-client-{k}", k).partition(5) for k in range(1, 6)] == [0, 1, 2, 3, 4]
    with pytest.raises(ReplicaError, match="replica 6.*auto/5.*at most 5"):
        Replica("p-client-6", 6).partition(5)


def test_explicit_values_need_no_lookup() -> None:
    def lookup() -> Replica:
        raise AssertionError("looked up the replica although nothing was auto")

    assert resolve_client_identity("alice", (1, 4), "client", lookup) == ("alice", 1, 4)
    assert resolve_client_identity("", None, "client", lookup) == ("", 0, 1)


def test_auto_name_and_partition() -> None:
    def lookup() -> Replica:
        return Replica("fedtier-client-4", 4)

    assert resolve_client_identity("auto", (None, 5), "site-a", lookup) == ("site-a-4", 3, 5)
    assert resolve_client_identity("bob", (None, 5), "client", lookup) == ("bob", 3, 5)
    assert resolve_client_identity("auto", (0, 2), "client", lookup) == ("client-4", 0, 2)


# ---------------------------------------------------------------- the command line
@pytest.mark.parametrize("text, expected", [("auto/5", (None, 5)), ("2/5", (2, 5)), ("0/1", (0, 1))])
def test_partition_option_accepts(text: str, expected: tuple) -> None:
    args = build_parser().parse_args(["client", "--project", "p", "--reducer", "http://r", "--partition", text])
    assert args.partition == expected


@pytest.mark.parametrize("text", ["auto", "auto/0", "auto/x", "5/5", "-1/5", "1/2/3", "automatic/3"])
def test_partition_option_rejects(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["client", "--project", "p", "--reducer", "http://r", "--partition", text])
    assert "--partition" in capsys.readouterr().err


class RecordingClient:
    made: list = []

    def __init__(self, settings) -> None:
        RecordingClient.made.append(settings)

    def run(self, stop) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def fake_container(dns: FakeDockerDNS, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """fedtier client as inside a compose container: Docker's DNS and own address faked, no real client."""
    import fedtier.client.client as client_module

    monkeypatch.setattr(replica, "DOCKER_DNS", dns.address)
    monkeypatch.setattr(client_module, "FedClient", RecordingClient)
    monkeypatch.delenv("CLIENT_NAME_BASE", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # as in a compose container
    RecordingClient.made = []
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in handlers.items():
        signal.signal(s, handler)


def _client_main(tmp_path: Path, *extra: str) -> int:
    return main(["--env-file", os.devnull, "client", "--reducer", "http://reducer:8090", "--project",
                 str(tmp_path), "--work-dir", str(tmp_path / "work"), *extra])


def test_cli_client_in_a_scaled_service(fake_container: None, monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    monkeypatch.setattr(replica, "own_addresses", lambda: ["172.18.0.5"])
    monkeypatch.setenv("CLIENT_NAME_BASE", "site-a")
    assert _client_main(tmp_path, "--name", "auto", "--partition", "auto/5", "--data-path", "/data") == 0
    [settings] = RecordingClient.made
    assert (settings.name, settings.partition_index, settings.num_partitions) == ("site-a-3", 2, 5)
    assert settings.data_path == "/data" and settings.reducer_url == "http://reducer:8090"


def test_cli_client_replica_beyond_the_partitions_fails(fake_container: None, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(replica, "own_addresses", lambda: ["172.18.0.7"])  # fedtier-client-7
    assert _client_main(tmp_path, "--name", "auto", "--partition", "auto/5") == 1
    assert RecordingClient.made == []
    assert "replica 7" in caplog.text and "auto/5" in caplog.text


# ---------------------------------------------------------------- Kubernetes: a StatefulSet pod's ordinal
@pytest.mark.parametrize("host, number", [("client-0", 0), ("client-12", 12), ("site-a-client-3", 3)])
def test_statefulset_ordinal_from_the_pod_host_name(host: str, number: int) -> None:
    found = replica.kubernetes_replica(host)
    assert (found.container, found.number, found.first) == (host, number, 0)
    assert found.partition(number + 1) == number  # pod client-k takes share k


@pytest.mark.parametrize("host", ["client-7d9f8b6c5-x2k4z", "client", "3", "Client-1"])
def test_pods_without_an_ordinal_are_refused(host: str) -> None:
    with pytest.raises(ReplicaError, match="StatefulSet"):
        replica.kubernetes_replica(host)


def test_statefulset_pod_beyond_the_partitions_fails() -> None:
    with pytest.raises(ReplicaError, match="client-5 is replica 5.*auto/5.*at most 5"):
        replica.kubernetes_replica("client-5").partition(5)


def test_cli_client_in_a_statefulset(fake_container: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """In a pod (KUBERNETES_SERVICE_HOST set) the host name decides, and Docker's DNS is not asked."""
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setattr(replica.socket, "gethostname", lambda: "client-2")
    monkeypatch.setattr(replica, "compose_replica", lambda: pytest.fail("asked Docker's DNS inside Kubernetes"))
    assert _client_main(tmp_path, "--name", "auto", "--partition", "auto/5") == 0
    [settings] = RecordingClient.made
    assert (settings.name, settings.partition_index, settings.num_partitions) == ("client-2", 2, 5)
