"""Channel and server options in one place, so keepalive settings always agree.

Clients keep one long-lived task stream open; keepalive pings detect a dead combiner
within seconds instead of TCP's minutes, and the server must accept those pings or it
answers with GOAWAY ("too_many_pings").
"""
from __future__ import annotations

from concurrent import futures

import grpc

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
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.so_reuseport", 0),  # a second combiner on a taken port must fail, not share it
]


def make_channel(address: str) -> grpc.Channel:
    """An insecure channel with fedtier's options (TLS is added by the security work)."""
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)


def make_server(max_workers: int) -> grpc.Server:
    """A thread-pool server. Each connected client holds one worker for its task
    stream, so the combiner caps streams below ``max_workers`` (see ClientRegistry)
    to leave workers for heartbeats and uploads."""
    return grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers,
                                                  thread_name_prefix="grpc"),
                       options=SERVER_OPTIONS)
