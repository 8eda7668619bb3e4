"""Which replica of a scaled service is this process? (``--name auto``, ``--partition auto/N``)

Two platforms scale one definition into numbered replicas: docker compose
(``--scale client=N``, replicas numbered from 1) and a Kubernetes StatefulSet (pods
``client-0`` ... ``client-N-1``). In Kubernetes the pod's host name is its pod name, so
the ordinal is read from it (see ``kubernetes_replica``); everywhere else the compose
lookup below applies.

``docker compose up --scale client=5`` starts five containers from one service
definition: same command, same environment. Compose gives each a numbered name,
``<project>-client-1`` ... ``<project>-client-5``, but does not tell the container
its name, and its hostname is the random container id. The name is known to
Docker's embedded DNS server (``127.0.0.11`` in every container on a user-defined
network, which compose always creates): a reverse (PTR) lookup of the container's
own address answers ``<container name>.<network name>``. That is the only place the
replica number is available without mounting the Docker socket.

The lookup must go to that server directly: the C library would answer it from
``/etc/hosts``, where the address maps to the container id. So this module sends one
small DNS query itself (standard library only).

The number is stable for the life of the container (a restart keeps the name), so a
restarted client comes back under the same name with the same share of the data.
Compose numbers replicas from 1 and keeps numbers dense when scaling up and down
through compose; replica ``k`` gets partition ``k - 1``.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import random
import re
import socket
import struct
import time
from dataclasses import dataclass
from typing import Callable

from fedtier.config import ConfigError

log = logging.getLogger(__name__)

DOCKER_DNS: tuple[str, int] = ("127.0.0.11", 53)  # Docker's embedded DNS server, in every container
AUTO = "auto"
PTR, IN = 12, 1
REPLICA = re.compile(r"^(?P<base>.+?)[-_](?P<number>[0-9]+)$")  # compose v2: proj-svc-3, v1: proj_svc_3
ORDINAL = re.compile(r"^(?P<base>[a-z0-9]([-a-z0-9]*[a-z0-9])?)-(?P<number>[0-9]+)$")  # StatefulSet pod: client-3


class ReplicaError(ConfigError):
    """The replica number could not be found; the message says why and what to do instead."""


@dataclass(frozen=True)
class Replica:
    container: str  # e.g. "fedtier-client-3", or the pod "client-2"
    number: int     # e.g. 3 (compose counts from 1), or 2 (a StatefulSet's ordinal, from 0)
    first: int = 1  # the number of the first replica: 1 in compose, 0 in a StatefulSet

    def partition(self, count: int) -> int:
        """This replica's share of ``count``: the first replica takes partition 0, and so on."""
        index = self.number - self.first
        if index >= count:
            raise ReplicaError(f"{self.container} is replica {self.number}, but --partition auto/{count} "
                               f"splits the data into {count} shares: scale the service to at most {count} "
                               f"replicas, or raise the share count to match")
        return index


# ---------------------------------------------------------------- DNS wire format (RFC 1035)
def reverse_name(ip: str) -> str:
    """``172.18.0.5`` -> ``5.0.18.172.in-addr.arpa`` (IPv6 addresses get their ip6.arpa name)."""
    return ipaddress.ip_address(ip).reverse_pointer


def encode_query(qname: str, query_id: int, qtype: int = PTR) -> bytes:
    header = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0)  # recursion desired, one question
    labels = b"".join(len(part).to_bytes(1, "big") + part.encode("ascii") for part in qname.strip(".").split("."))
    return header + labels + b"\x00" + struct.pack("!HH", qtype, IN)


def _read_name(message: bytes, offset: int) -> tuple[str, int]:
    """Decode a possibly compressed domain name; returns (name, offset after it in the record)."""
    labels: list[str] = []
    end = -1
    for _ in range(128):  # bounds pointer loops in a malformed answer
        if offset >= len(message):
            raise ValueError("truncated DNS name")
        length = message[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(message):
                raise ValueError("truncated DNS name pointer")
            if end < 0:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | message[offset + 1]
            continue
        if length == 0:
            return ".".join(labels), (end if end >= 0 else offset + 1)
        labels.append(message[offset + 1:offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    raise ValueError("DNS name pointer loop")


def decode_ptr_answer(message: bytes, query_id: int) -> str | None:
    """The first PTR name in a reply, or None when the server has no record (NXDOMAIN, empty answer)."""
    if len(message) < 12:
        raise ValueError("DNS reply shorter than its header")
    reply_id, flags, qdcount, ancount, _, _ = struct.unpack("!HHHHHH", message[:12])
    if reply_id != query_id or not flags & 0x8000:
        raise ValueError("not a reply to this query")
    rcode = flags & 0x000F
    if rcode == 3:
        return None
    if rcode != 0:
        raise ValueError(f"DNS server answered with error code {rcode}")
    offset = 12
    for _ in range(qdcount):
        _, offset = _read_name(message, offset)
        offset += 4
    for _ in range(ancount):
        _, offset = _read_name(message, offset)
        rtype, _, _, rdlength = struct.unpack("!HHIH", message[offset:offset + 10])
        offset += 10
        if rtype == PTR:
            return _read_name(message, offset)[0]
        offset += rdlength
    return None


def ptr_lookup(ip: str, server: tuple[str, int], timeout: float = 1.0) -> str | None:
    """Ask ``server`` (and only it) for the PTR record of ``ip``."""
    query_id = random.randrange(1 << 16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect(server)
        sock.send(encode_query(reverse_name(ip), query_id))
        deadline = time.monotonic() + timeout
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                return decode_ptr_answer(sock.recv(4096), query_id)
            except ValueError:
                if time.monotonic() >= deadline:  # a stray or garbled datagram: wait for the real one
                    raise


# ---------------------------------------------------------------- the container's name
def own_addresses() -> list[str]:
    """This container's IPv4 addresses (Docker writes ``<ip> <container id>`` to /etc/hosts)."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except socket.gaierror:
        return []
    addresses = []
    for info in infos:
        ip = info[4][0]
        if not ipaddress.ip_address(ip).is_loopback and ip not in addresses:
            addresses.append(ip)
    return addresses


def parse_replica(container: str) -> Replica:
    """``fedtier-client-3`` (or ``fedtier_client_3``) -> Replica("fedtier-client-3", 3)."""
    match = REPLICA.match(container)
    if not match or int(match["number"]) < 1:
        raise ReplicaError(f"container name {container!r} does not end in a replica number; "
                           f"'auto' works for services of docker compose without container_name")
    return Replica(container, int(match["number"]))


def compose_replica(server: tuple[str, int] | None = None, addresses: list[str] | None = None,
                    wait_s: float = 5.0) -> Replica:
    """Find this container's compose name and replica number through Docker's DNS."""
    server = server or DOCKER_DNS
    addresses = own_addresses() if addresses is None else addresses
    if not addresses:
        raise ReplicaError(f"this host name ({socket.gethostname()}) has no IPv4 address to look up; "
                           f"'auto' works inside docker compose containers only; give the value explicitly")
    deadline = time.monotonic() + wait_s
    problem = ""
    while True:
        for ip in addresses:
            try:
                answer = ptr_lookup(ip, server)
            except (OSError, ValueError) as exc:
                problem = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
                continue
            if answer:
                return parse_replica(answer.split(".", 1)[0])
            problem = f"no PTR record for {ip}"
        if time.monotonic() >= deadline:
            raise ReplicaError(f"could not learn this container's name from Docker's DNS at "
                               f"{server[0]}:{server[1]} ({problem}); 'auto' works inside docker compose "
                               f"containers only; give the value explicitly")
        time.sleep(0.2)


def kubernetes_replica(hostname: str | None = None) -> Replica:
    """This pod's StatefulSet ordinal: a StatefulSet pod's host name is its pod name,
    ``<statefulset>-<ordinal>``, stable across restarts and rescheduling, as the
    partition must be. A Deployment's pods have random suffixes, so they are refused."""
    host = socket.gethostname() if hostname is None else hostname
    match = ORDINAL.match(host)
    if not match:
        raise ReplicaError(f"pod host name {host!r} does not end in a StatefulSet ordinal (-0, -1, ...); 'auto' "
                           f"works for pods of a StatefulSet (deploy/kubernetes), not of a Deployment; "
                           f"give the value explicitly")
    return Replica(host, int(match["number"]), first=0)


def this_replica() -> Replica:
    """The replica this process is, in Kubernetes or docker compose.

    Kubernetes sets ``KUBERNETES_SERVICE_HOST`` in every container it starts (a platform
    variable, not a fedtier setting), which is how client libraries detect it too.
    """
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return kubernetes_replica()
    return compose_replica()


def resolve_client_identity(name: str, partition: tuple[int | None, int] | None, name_base: str,
                            lookup: Callable[[], Replica] = this_replica) -> tuple[str, int, int]:
    """Turn the client's ``--name``/``--partition`` into (name, index, count), resolving ``auto``.

    ``--name auto`` becomes ``<name_base>-<replica number>`` ($CLIENT_NAME_BASE), so the
    replicas of one service are ``client-1`` ... ``client-N`` (in a StatefulSet ``client-0``
    ... ``client-N-1``, its pod names) and keep their names across restarts.
    ``--partition auto/N`` makes the first replica share 0 of N, and so on.
    """
    index, count = partition or (0, 1)
    if name != AUTO and index is not None:
        return name, index, count
    replica = lookup()
    if name == AUTO:
        name = f"{name_base}-{replica.number}"
    if index is None:
        index = replica.partition(count)
    log.info("container %s is replica %d: name %s, partition %d/%d", replica.container, replica.number,
             name, index, count)
    return name, index, count
