"""Which clients are connected to this combiner, and which of them can take tasks.

A client is *active* while its task stream is open (liveness ``stream``, the default).
The stream is the one thing a task needs, and the transport watches it without any
Python code on either side: a client that exits or whose connection resets ends its
stream at once, and one whose machine vanishes is found by the server's HTTP/2
keepalive pings (fedtier/transport/channel.py), which the client's gRPC core answers
however busy its interpreter is. Heartbeat calls, whose gaps grow with the number of
clients sharing a process and a core (a thousand clients on two cores saw 15 s gaps
against a 10 s timeout), then no longer decide who is active: they are a fallback
that lets a client learn its combiner has forgotten it. Liveness ``heartbeat`` keeps
FEDn's rule, for a network where something between client and combiner (an HTTP/2
proxy) can hold a stream open after its client is gone: a client is then active
only while its stream is open *and* its last heartbeat is within the timeout.

Tasks reach a client through a queue that its TaskStream call drains; a reconnecting
client gets a fresh queue and the old stream is told to end.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from fedtier.proto import fedtier_pb2 as pb

log = logging.getLogger(__name__)

END_OF_STREAM = None  # put on a queue to end that client's TaskStream


LIVENESS = ("stream", "heartbeat")


class Mailbox(Protocol):
    """Where a client's tasks are put: a queue.Queue, or an asyncio server's LoopMailbox.
    ``put`` is called from any thread and must not block."""

    def put(self, item: "pb.Task | None") -> None: ...


class CombinerFullError(RuntimeError):
    """More task streams than the combiner holds (``--max-clients``)."""


@dataclass
class ClientEntry:
    name: str
    last_seen: float
    connected_at: float
    stream_generation: int = 0
    stream_open: bool = False
    tasks: Mailbox = field(default_factory=queue.Queue)
    rounds_joined: int = 0


class ClientRegistry:
    def __init__(self, heartbeat_timeout: float = 15.0, max_streams: int = 1000,
                 clock: Callable[[], float] = time.monotonic,
                 on_disconnect: Callable[[str], None] | None = None, liveness: str = "stream") -> None:
        if liveness not in LIVENESS:
            raise ValueError(f"liveness must be one of {', '.join(LIVENESS)}, got {liveness!r}")
        self.heartbeat_timeout = heartbeat_timeout
        self.liveness = liveness
        self.on_disconnect = on_disconnect  # so a round stops waiting for a client that left
        self.max_streams = max_streams
        self._clock = clock
        self._clients: dict[str, ClientEntry] = {}
        self._open = 0  # entries with stream_open: kept as they change, not counted over every client
        self._changed = threading.Condition()

    def connect(self, name: str) -> None:
        """Know ``name``. The names a combiner remembers are bounded, to twice ``max_streams``
        (the --max-clients setting): past that, a new name displaces the longest-silent one
        without a task stream (at most ``max_streams`` have one), so Connect calls with ever
        new names cannot grow its memory or its Status reply."""
        now = self._clock()
        with self._changed:
            entry = self._clients.get(name)
            if entry is None:
                if len(self._clients) >= 2 * self.max_streams:
                    forgotten = min((e for e in self._clients.values() if not e.stream_open),
                                    key=lambda e: e.last_seen)
                    del self._clients[forgotten.name]
                    log.info("client %s forgotten to make room for %s", forgotten.name, name)
                self._clients[name] = ClientEntry(name=name, last_seen=now, connected_at=now)
                log.info("client %s connected", name)
            else:
                entry.last_seen = now
                log.info("client %s reconnected", name)
            self._changed.notify_all()

    def heartbeat(self, name: str) -> bool:
        """Record a heartbeat; False tells an unknown client to connect again."""
        with self._changed:
            entry = self._clients.get(name)
            if entry is None:
                return False
            was_active = self._is_active(entry)
            entry.last_seen = self._clock()
            if not was_active:
                self._changed.notify_all()
            return True

    def open_stream(self, name: str, mailbox: Mailbox | None = None) -> tuple[int, Mailbox]:
        """Open ``name``'s task stream; tasks for it go to ``mailbox`` (a new queue.Queue when
        none is given), END_OF_STREAM when it is replaced or closed."""
        with self._changed:
            entry = self._clients.get(name)
            if entry is None:
                raise KeyError(name)
            if not entry.stream_open and self._open >= self.max_streams:
                raise CombinerFullError(f"combiner holds its maximum of {self.max_streams} clients")
            if entry.stream_open:
                # the old stream of a reconnecting client ends (with identities checked, the
                # servicer has let only the holder of this name's credential get here)
                log.warning("client %s opened a new task stream; its previous one ends", name)
                entry.tasks.put(END_OF_STREAM)
            entry.stream_generation += 1
            if not entry.stream_open:
                self._open += 1
            entry.stream_open = True
            entry.tasks = mailbox if mailbox is not None else queue.Queue()
            entry.last_seen = self._clock()
            self._changed.notify_all()
            return entry.stream_generation, entry.tasks

    def close_stream(self, name: str, generation: int) -> None:
        with self._changed:
            entry = self._clients.get(name)
            if entry is not None and entry.stream_generation == generation and entry.stream_open:
                entry.stream_open = False
                self._open -= 1
                entry.tasks.put(END_OF_STREAM)
                log.info("client %s task stream closed", name)
                self._changed.notify_all()
            else:
                return
        if self.on_disconnect is not None:
            self.on_disconnect(name)

    def send(self, name: str, task: pb.Task) -> bool:
        with self._changed:
            entry = self._clients.get(name)
            if entry is None or not self._is_active(entry):
                return False
            entry.tasks.put(task)
            if task.type == pb.TRAIN:
                entry.rounds_joined += 1
            return True

    def active_names(self) -> list[str]:
        with self._changed:
            return sorted(n for n, e in self._clients.items() if self._is_active(e))

    def wait_for_active(self, count: int, timeout: float) -> int:
        """Block until ``count`` clients are active or ``timeout`` passes; returns how many are."""
        deadline = self._clock() + timeout
        with self._changed:
            while True:
                active = self._active()
                remaining = deadline - self._clock()
                if active >= count or remaining <= 0:
                    return active
                # heartbeats going stale do not notify, so wake up now and then (with liveness
                # "stream" every change notifies: this wait is only a safety net)
                self._changed.wait(min(remaining, 0.5 if self.liveness == "heartbeat" else 5.0))

    def snapshot(self) -> list[pb.ClientInfo]:
        now = self._clock()
        with self._changed:
            return [pb.ClientInfo(name=e.name, active=self._is_active(e),
                                  seconds_since_heartbeat=now - e.last_seen,
                                  rounds_joined=e.rounds_joined)
                    for e in sorted(self._clients.values(), key=lambda e: e.name)]

    def counts(self) -> tuple[int, int]:
        """(clients with an open task stream, active clients): what the metrics show."""
        with self._changed:
            return self._open, self._active()

    def _is_active(self, entry: ClientEntry) -> bool:
        if self.liveness == "stream":
            return entry.stream_open
        return entry.stream_open and self._clock() - entry.last_seen <= self.heartbeat_timeout

    def open_streams(self) -> int:
        """Clients holding a task stream now (read without the lock: one int)."""
        return self._open

    def _active(self) -> int:
        """Active clients (hold the lock): with liveness "stream" the open streams, kept as a
        count, since a round waiting for thousands is woken by every one that connects."""
        if self.liveness == "stream":
            return self._open
        return sum(1 for e in self._clients.values() if self._is_active(e))
