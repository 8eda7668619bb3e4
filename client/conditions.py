"""Client conditions: the system heterogeneity a lab gives a client, enforced by the client itself.

A heterogeneity lab (issue 16) needs clients that are slower, on thinner links, or away
part of the time, over the real protocol: the combiner must see what it would see from
such a device (a task that takes longer, an upload that trickles in, a stream that ends
mid-round). So the conditions live in the client (client/client.py) and in its transport
path (this module's :class:`Throttle`), never in the project's code and never in the
combiner, which treats these clients exactly as any other.

A condition only makes its own client slower or absent, so it harms nobody else: a client
accepts conditions without any flag, and logs a warning naming them when it starts.

Every value comes from a scenario file or a command line, so ``Conditions.from_dict``
checks each one against a bound and names the offending key (``clients[7].speed``).
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

# bounds on what a scenario may ask for (docs/lab.md, "Client conditions")
MIN_SPEED = 0.001               # 1,000 times slower: beyond that a task outlasts any round timeout
MIN_BPS = 1024.0                # a nonzero bandwidth below 1 KiB/s is a typo, not a link
MAX_BPS = 1e11                  # 100 GB/s: above any link a client has
MAX_LATENCY_S = 60.0
MAX_REJOIN_S = 3600.0
MAX_OFFLINE_WINDOWS = 1000
MAX_TRACE_S = 30 * 86400.0      # an on/off trace spans at most 30 days
MAX_GROUP_CHARS = 128
MAX_SEED = 2**63 - 1


class ConditionsError(ValueError):
    """A condition out of range or of the wrong type; ``field`` names it (``clients[7].speed``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Conditions:
    """What makes one client unlike a well-connected, always-on, full-speed one.

    The defaults are such a client: ``Conditions()`` changes nothing.
    """

    group: str = ""              # the lab group this client belongs to (for reports)
    speed: float = 1.0           # compute speed factor: a task's training takes (measured time) / speed
    upload_bps: float = 0.0      # bytes per second uploads may use; 0 = unlimited
    download_bps: float = 0.0    # same for downloads
    latency_s: float = 0.0       # one-way latency added before each transfer and report
    dropout: float = 0.0         # probability, per task received, of abandoning it and disconnecting
    crash: float = 0.0           # probability, per training task, of crashing mid-training
    rejoin_s: float = 5.0        # how long a client that dropped out or crashed stays away
    offline: tuple[tuple[float, float], ...] = ()  # [start, end) seconds after ``epoch``: disconnected
    epoch: float = 0.0           # time.time() the trace counts from; 0: when the client starts
    seed: int = 0                # the client's draws (dropout, crash) are reproducible from it

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "conditions") -> "Conditions":
        """Checked: unknown keys and out-of-range values raise ConditionsError naming f"{where}.{key}"."""
        if not isinstance(data, Mapping):
            raise ConditionsError(where, f"must be an object of conditions, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise ConditionsError(f"{where}.{key}", f"unknown condition (known: {', '.join(sorted(known))})")
        d = cls()
        at = lambda key: f"{where}.{key}"  # noqa: E731
        group = data.get("group", d.group)
        if not isinstance(group, str) or len(group) > MAX_GROUP_CHARS or not group.isprintable():
            raise ConditionsError(at("group"), f"must be printable text of at most {MAX_GROUP_CHARS} characters")
        speed = _number(data, "speed", d.speed, at)
        if not MIN_SPEED <= speed <= 1.0:
            # above 1 cannot be enforced: a client cannot make the project's training faster
            raise ConditionsError(at("speed"), f"must be in [{MIN_SPEED:g}, 1] (1 = full speed), got {speed:g}")
        bandwidth = {}
        for key in ("upload_bps", "download_bps"):
            value = _number(data, key, 0.0, at)
            if value != 0 and not MIN_BPS <= value <= MAX_BPS:
                raise ConditionsError(at(key), f"must be 0 (unlimited) or in [{MIN_BPS:g}, {MAX_BPS:g}] bytes per "
                                               f"second, got {value:g}")
            bandwidth[key] = value
        latency = _in_range(data, "latency_s", d.latency_s, 0.0, MAX_LATENCY_S, at)
        dropout = _in_range(data, "dropout", d.dropout, 0.0, 1.0, at)
        crash = _in_range(data, "crash", d.crash, 0.0, 1.0, at)
        rejoin = _in_range(data, "rejoin_s", d.rejoin_s, 0.0, MAX_REJOIN_S, at)
        epoch = _in_range(data, "epoch", d.epoch, 0.0, 1e11, at)
        seed = data.get("seed", d.seed)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ConditionsError(at("seed"), f"must be an integer in [0, 2**63-1], got {seed!r}")
        offline = _windows(data.get("offline", ()), at("offline"))
        return cls(group=group, speed=speed, upload_bps=bandwidth["upload_bps"],
                   download_bps=bandwidth["download_bps"], latency_s=latency, dropout=dropout, crash=crash,
                   rejoin_s=rejoin, offline=offline, epoch=epoch, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``offline`` as lists); ``from_dict`` of it gives these conditions back."""
        out = asdict(self)
        out["offline"] = [list(w) for w in self.offline]
        return out

    def changes(self) -> dict[str, Any]:
        """The conditions that differ from a default client's, for a log line (group, epoch
        and seed say nothing about how the client behaves)."""
        default = Conditions()
        return {k: v for k, v in self.to_dict().items()
                if k not in ("group", "epoch", "seed") and v != getattr(default, k) and v != []
                and not (k == "rejoin_s" and not (self.dropout or self.crash))}

    def describe(self) -> str:
        text = " ".join(f"{k}={_short(v)}" for k, v in self.changes().items())
        return f"{self.group + ': ' if self.group else ''}{text or 'none'}"


def _short(value: Any) -> str:
    if isinstance(value, list):
        return f"{len(value)} windows" if len(value) != 1 else f"[{value[0][0]:g},{value[0][1]:g})"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _number(data: Mapping[str, Any], key: str, default: float, at: Callable[[str], str]) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConditionsError(at(key), f"must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ConditionsError(at(key), "must be a finite number")
    return value


def _in_range(data: Mapping[str, Any], key: str, default: float, lo: float, hi: float,
              at: Callable[[str], str]) -> float:
    value = _number(data, key, default, at)
    if not lo <= value <= hi:
        raise ConditionsError(at(key), f"must be in [{lo:g}, {hi:g}], got {value:g}")
    return value


def _windows(value: Any, where: str) -> tuple[tuple[float, float], ...]:
    """Sorted; overlapping or touching windows merged into one (being offline twice at
    once is being offline once)."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ConditionsError(where, "must be a list of [start, end] pairs (seconds after epoch)")
    items = list(value) if not isinstance(value, (list, tuple)) else value
    if len(items) > MAX_OFFLINE_WINDOWS:
        raise ConditionsError(where, f"at most {MAX_OFFLINE_WINDOWS} windows, got {len(items)}")
    windows = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise ConditionsError(at, "must be a [start, end] pair")
        pair = []
        for bound in item:
            if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
                raise ConditionsError(at, f"start and end must be finite numbers, got {bound!r}")
            pair.append(float(bound))
        start, end = pair
        if not 0 <= start < end <= MAX_TRACE_S:
            raise ConditionsError(at, f"must have 0 <= start < end <= {MAX_TRACE_S:g}, got [{start:g}, {end:g}]")
        windows.append((start, end))
    merged: list[tuple[float, float]] = []
    for start, end in sorted(windows):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return tuple(merged)


# ---------------------------------------------------------------- bandwidth
class Throttle:
    """Paces a byte stream at ``rate`` bytes per second: a token bucket that starts empty.

    ``take(n)`` is called as each ``n`` bytes go (or have come); it sleeps as long as the
    bucket needs to earn them, so a transfer of S bytes takes S / rate however it is cut
    into chunks (the bucket holds at most ``burst`` bytes of unused credit, so an idle
    moment does not buy a later burst above the rate). Starting empty rather than full
    makes a single-chunk model take its full time too.

    Hand-written: the libraries found (token-bucket, pyrate-limiter, limits) count
    requests per window for servers, or are asyncio-only; none paces a blocking stream with
    a sleep we choose. The sleep is injected: the client's sleeps free its task slot and end
    early when the client stops or goes offline; tests give a fake clock.
    """

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Any] = time.sleep) -> None:
        if not rate > 0:
            raise ValueError(f"a throttle's rate must be positive, got {rate}")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else self.rate / 10  # a tenth of a second's worth
        self.clock = clock
        self.sleep = sleep
        self._tokens = 0.0
        self._last = clock()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate) - n
            self._last = now
            owed = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if owed > 0:
            self.sleep(owed)

    def chunk_size(self, most: int) -> int:
        """A chunk size at which one chunk takes about a tenth of a second, so an upload's bytes
        leave evenly rather than a 1 MiB burst then a long pause (at least 16 KiB)."""
        return int(max(16 << 10, min(most, self.rate / 10)))


T = TypeVar("T")


def throttled(items: Iterable[T], throttle: Throttle | None, size: Callable[[T], int]) -> Iterator[T]:
    """``items`` as they are, each after ``throttle`` has paced its ``size`` bytes (none: unpaced).

    Used both ways: an upload's chunk iterator handed to gRPC (the wait comes before a chunk
    is given to the sender) and a download's stream (the wait comes as each chunk arrives;
    the sender's HTTP/2 flow control then holds the rest back)."""
    for item in items:
        if throttle is not None:
            throttle.take(size(item))
        yield item


def data_bytes(chunk: Any) -> int:
    """A model chunk's data bytes (header and trailer count as nothing)."""
    return len(chunk.data) if chunk.WhichOneof("part") == "data" else 0
