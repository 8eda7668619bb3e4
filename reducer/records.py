"""The round and session records, typed.

A round's record is built up while the round runs and written to the state store at its
start and its end; the fields and their types are stated here once, so the code that
fills them, the API that serves them (reducer/openapi.py) and the UI read the same thing.
Records are stored as plain documents (``to_doc``) so every state-store backend keeps them.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

ROUND_OUTCOMES = ("running", "success", "failed", "stopped")


@dataclass
class RoundRecord:
    id: str
    session_id: str
    round: int                   # the trail's round number: a failed round builds no model, the next shares it
    seq: int                     # the round's own number, distinct across the reducer's life
    model_in: str                # the model it started from
    status: str = "running"      # ROUND_OUTCOMES
    model_out: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    timings: dict[str, float] = field(default_factory=dict)     # seconds per phase, and "total"
    pushed: dict[str, str] = field(default_factory=dict)        # combiner -> "adopted" | "uploaded"
    combiners: list[dict[str, Any]] = field(default_factory=list)  # each combiner's result and quorum
    metrics: dict[str, float] = field(default_factory=dict)     # the clients' validation, weighted
    participants: list[str] = field(default_factory=list)       # clients whose update counted
    error: str | None = None
    capped: list[dict[str, Any]] = field(default_factory=list)  # clients counted with fewer examples
    capped_combiners: list[dict[str, Any]] = field(default_factory=list)
    reducer_metrics: dict[str, float] = field(default_factory=dict)  # the reducer's own held-out score
    reducer_metrics_error: str | None = None
    validation_quorums: dict[str, dict[str, Any]] = field(default_factory=dict)

    def ended(self, status: str, error: str | None = None) -> None:
        if status not in ROUND_OUTCOMES:
            raise ValueError(f"unknown round status {status!r}")
        self.status, self.error = status, error

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)


#: what a round record holds per client: a thousand clients make these lists most of its size
PER_CLIENT_FIELDS = ("participants", "capped")
PER_CLIENT_COMBINER_FIELDS = ("updates", "clients", "failures")


def round_summary(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A round record without its per-client lists, each replaced by its length
    (``participants`` -> ``participants_count``): what a page that polls needs (outcome,
    metrics, timings), the same size at ten clients or ten thousand. The clients' part is
    served a page at a time (the live view, the timeline, each client's history)."""
    summary = {k: v for k, v in doc.items() if k not in PER_CLIENT_FIELDS}
    for name in PER_CLIENT_FIELDS:
        summary[f"{name}_count"] = len(doc.get(name) or ())
    summary["combiners"] = [{**{k: v for k, v in c.items() if k not in PER_CLIENT_COMBINER_FIELDS},
                             **{f"{k}_count": len(c.get(k) or ()) for k in PER_CLIENT_COMBINER_FIELDS}}
                            for c in doc.get("combiners") or ()]
    return summary


@dataclass
class SessionRecord:
    id: str
    rounds_requested: int
    config: dict[str, Any]        # RoundConfig.to_dict(): the settings every round ran with
    status: str = "running"       # running, succeeded, failed, stopped, interrupted
    rounds_succeeded: int = 0
    rounds_failed: int = 0
    rounds_stopped: int = 0
    stop_requested: str | None = None  # after_round | abort
    round_ids: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    schedule_id: str | None = None     # the schedule that started it (reducer/schedules.py)

    def count(self, round_status: str) -> str:
        """Count a finished round; returns the counter's field name (for the store update)."""
        name = {"success": "rounds_succeeded", "stopped": "rounds_stopped"}.get(round_status, "rounds_failed")
        setattr(self, name, getattr(self, name) + 1)
        return name

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        if self.schedule_id is None:
            del doc["schedule_id"]
        return doc
