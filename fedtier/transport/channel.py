"""Channel and server options in one place, so keepalive settings always agree.

Clients keep one long-lived task stream open; keepalive pings detect a dead combiner
within seconds instead of TCP's minutes, and the server must accept those pings or it
answers with GOAWAY ("too_many_pings").
"""
from __future__ import annotations

import os
import socket
from concurrent import futures
from pathlib import Path
from typing import Any, Callable, Sequence

import grpc

from fedtier.transport.auth import METADATA_KEY, TokenClientInterceptor

MESSAGE_LIMIT = 16 << 20  # a chunk is at most 4 MiB; the rest is headroom for reports

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MESSAGE_LIMIT),
    ("grpc.max_receive_message_length", MESSAGE_LIMIT),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MESSAGE_LIMIT),
    ("grpc.max_receive_message_length", MESSAGE_LIMIT),
    ("grpc.keepalive_time_ms", 10_000),   # ping idle clients: a vanished machine ends its stream
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.so_reuseport", 0),  # a second combiner on a taken port must fail, not share it
]


def make_channel(address: str, token: str | Callable[[], str] = "",
                 ca_file: str | os.PathLike | None = None) -> grpc.Channel:
    """A channel with fedtier's options: TLS verified against ``ca_file`` when given (the
    server's certificate must name the host dialled: no target-name override is ever set),
    and ``token`` sent with every call when given (a callable: asked on each call)."""
    if ca_file:
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes())
        channel = grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
    else:
        channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    if token:
        channel = grpc.intercept_channel(channel, TokenClientInterceptor(token))
    return channel


def make_aio_channel(address: str, ca_file: str | os.PathLike | None = None) -> "grpc.aio.Channel":
    """An asyncio channel with the same options and TLS rule as :func:`make_channel` (call it on
    the loop that will use it). It carries no token: give each call ``token_metadata(token)``,
    since grpc.aio's interceptors are of another kind than the synchronous one."""
    if ca_file:
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes())
        return grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


def token_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that presents ``token`` (none without one), as the interceptor adds it."""
    return ((METADATA_KEY, f"Token {token}"),) if token else ()


def add_port(server: grpc.Server, address: str, cert_file: str | os.PathLike | None = None,
             key_file: str | os.PathLike | None = None) -> int:
    """Bind ``address``, with TLS when a certificate and key are given; returns the port."""
    if bool(cert_file) != bool(key_file):
        raise ValueError("TLS needs both a certificate and a key")
    if cert_file and key_file:
        credentials = grpc.ssl_server_credentials([(Path(key_file).read_bytes(), Path(cert_file).read_bytes())])
        return server.add_secure_port(address, credentials)
    return server.add_insecure_port(address)


def make_server(max_workers: int, interceptors: Sequence[grpc.ServerInterceptor] = ()) -> grpc.Server:
    """A thread-pool server, for services whose every call is short. A combiner serves with
    :func:`make_aio_server` instead: there a client's long-lived task stream holds no thread."""
    return grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers,
                                                  thread_name_prefix="grpc"),
                       options=SERVER_OPTIONS, interceptors=list(interceptors))


def make_aio_server(pool: futures.Executor, interceptors: Sequence[Any] = ()) -> "grpc.aio.Server":
    """An asyncio server (call on the loop it will serve from). Its coroutine handlers hold no
    thread while they wait, so a combiner holds a client's task stream without one; its plain
    handlers run on ``pool``."""
    return grpc.aio.server(migration_thread_pool=pool, options=SERVER_OPTIONS, interceptors=list(interceptors))


def resolves(host: str) -> bool:
    """Whether this machine can turn ``host`` into an address (a combiner's announced host must)."""
    try:
        socket.getaddrinfo(host.strip("[]"), None)
    except (OSError, UnicodeError):
        return False
    return True
