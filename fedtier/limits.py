"""Every bound on what an outside party controls, with its default, in one place.

A client, an operator's upload or a request body decides how many bytes, tensors,
files or levels of nesting fedtier is asked to handle. Each such quantity has a bound
here, a default that real federations stay far below, and an environment variable
(``FEDTIER_MAX_...``, read in fedtier/config.py and documented in .env.example) to
change it. Code that enforces a bound reads it from ``current()`` and names it in its
error with ``describe``, so the person refused learns which setting to raise.

The defaults, and why:

* a model (seed, the reducer's push to a combiner) up to 4 GiB: what the reducer accepted
  for a seed before; an update must have the global model's layout, so it is bounded by
  the global model's size plus a little header slack, not by this;
* 10,000 tensors and a 16 MiB header: the largest models anyone federates have about a
  thousand tensors (Llama-2-70B 723, Mixtral-8x7B 995) and headers of a few hundred KiB,
  while every tensor costs each reader of a header (the seed's validation, each update's
  check on the combiner) parsing time;
* a compute package of 64 MiB compressed, 256 MiB and 1,000 files unpacked: it is code
  and a little configuration, data stays on the clients;
* a JSON request body of 1 MiB nested at most 32 levels, the ``task`` settings 64 KiB
  and a whole round config 1 MiB: they travel in every task message, under gRPC's
  message limit (fedtier/transport/channel.py) with a wide margin;
* a report's metadata or metrics 64 KiB: a few numbers per client and round; of them the
  reducer keeps, in each client's history, 32 numeric metrics with names of at most 64
  characters (a loss, an accuracy, their per-class variants; more would be a log, not metrics);
* a task's progress message 1 KiB: two ids, a name and a phase take a few hundred bytes
  (and each task takes at most three: its phases only move forward);
* an upload that sends nothing for 60 s is cancelled: a live sender sends a chunk of a
  MiB far more often, even on a slow link;
* 100 schedules: each is read by the scheduler every tick, and a federation retrains on
  a handful of timetables, not hundreds.
* a request line and headers of 64 KiB to the reducer: a credential and a session cookie
  take a few hundred bytes.
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field, fields

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
MAX_ROUND_CONFIG_BYTES = 8 * MiB  # half of fedtier/transport/channel.py's MESSAGE_LIMIT


def _bound(default: int, variable: str, unit: str) -> int:
    return field(default=default, metadata={"variable": variable, "unit": unit})


@dataclass(frozen=True)
class Limits:
    """The bounds of one process. ``current()`` is the process's; tests make their own."""

    model_bytes: int = _bound(4 * GiB, "FEDTIER_MAX_MODEL_BYTES", "bytes")
    model_tensors: int = _bound(10_000, "FEDTIER_MAX_MODEL_TENSORS", "tensors")
    model_header_bytes: int = _bound(16 * MiB, "FEDTIER_MAX_MODEL_HEADER_BYTES", "bytes")
    update_slack_bytes: int = _bound(1 * MiB, "FEDTIER_MAX_UPDATE_SLACK_BYTES", "bytes")
    uploads_per_task: int = _bound(2, "FEDTIER_MAX_UPLOADS_PER_TASK", "uploads")
    package_bytes: int = _bound(64 * MiB, "FEDTIER_MAX_PACKAGE_BYTES", "bytes")
    package_unpacked_bytes: int = _bound(256 * MiB, "FEDTIER_MAX_PACKAGE_UNPACKED_BYTES", "bytes")
    package_files: int = _bound(1_000, "FEDTIER_MAX_PACKAGE_FILES", "files")
    json_body_bytes: int = _bound(1 * MiB, "FEDTIER_MAX_JSON_BODY_BYTES", "bytes")
    json_depth: int = _bound(32, "FEDTIER_MAX_JSON_DEPTH", "levels")
    task_bytes: int = _bound(64 * KiB, "FEDTIER_MAX_TASK_BYTES", "bytes")
    round_config_bytes: int = _bound(1 * MiB, "FEDTIER_MAX_ROUND_CONFIG_BYTES", "bytes")
    report_bytes: int = _bound(64 * KiB, "FEDTIER_MAX_REPORT_BYTES", "bytes")
    progress_bytes: int = _bound(1 * KiB, "FEDTIER_MAX_PROGRESS_BYTES", "bytes")
    report_metrics: int = _bound(32, "FEDTIER_MAX_REPORT_METRICS", "metrics")
    metric_name_chars: int = _bound(64, "FEDTIER_MAX_METRIC_NAME_CHARS", "characters")
    upload_idle_seconds: int = _bound(60, "FEDTIER_MAX_UPLOAD_IDLE_SECONDS", "seconds")
    schedules: int = _bound(100, "FEDTIER_MAX_SCHEDULES", "schedules")
    http_header_bytes: int = _bound(64 * KiB, "FEDTIER_MAX_HTTP_HEADER_BYTES", "bytes")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{f.metadata['variable']} must be a positive integer, got {value!r}")
        # a round config travels whole in every task message: past gRPC's message limit
        # every round would fail, which is the failure these bounds exist to prevent
        if self.round_config_bytes > MAX_ROUND_CONFIG_BYTES:
            raise ValueError(f"FEDTIER_MAX_ROUND_CONFIG_BYTES must be at most {MAX_ROUND_CONFIG_BYTES} (gRPC's "
                             f"message limit with room for the rest of a task), got {self.round_config_bytes}")
        if self.task_bytes > self.round_config_bytes:
            raise ValueError(f"FEDTIER_MAX_TASK_BYTES ({self.task_bytes}) must not exceed "
                             f"FEDTIER_MAX_ROUND_CONFIG_BYTES ({self.round_config_bytes}): the task is part of it")

    @staticmethod
    def variable(name: str) -> str:
        """The environment variable that sets the bound ``name`` (a field of Limits)."""
        return _FIELDS[name].metadata["variable"]

    def describe(self, name: str) -> str:
        """'the limit of 100000 tensors (FEDTIER_MAX_MODEL_TENSORS)': for error messages."""
        return f"the limit of {getattr(self, name)} {_FIELDS[name].metadata['unit']} ({self.variable(name)})"


_FIELDS = {f.name: f for f in fields(Limits)}


class LimitExceeded(ValueError):
    """Something an outside party sent is over a bound; the message names it and its setting."""

    def __init__(self, what: str, bound: str, limits: "Limits | None" = None) -> None:
        limits = limits or current()
        super().__init__(f"{what} is over {limits.describe(bound)}")
        self.bound = bound
        self.variable = Limits.variable(bound)


_lock = threading.Lock()
_configured: Limits | None = None


@functools.lru_cache(maxsize=1)
def _from_environment() -> Limits:
    from fedtier.config import limits_from_env  # config imports this module: read lazily

    return limits_from_env()


def current() -> Limits:
    """The process's bounds: what ``configure`` set (the CLI, from its settings), else
    the environment's as the process started (``FEDTIER_MAX_...``), else the defaults."""
    return _configured or _from_environment()


def configure(limits: Limits | None) -> None:
    """Make ``limits`` the process's bounds (None: back to the environment's)."""
    global _configured
    with _lock:
        _configured = limits
