"""Each client's part in each round: the per-client history (issue 18).

A round record says which clients reported in it, in order to aggregate; it does not let anyone
ask "what did client X do, round after round" without reading every round. So at the end of
each round the reducer writes one small record per client that took part (``client_rounds``):
chosen and reported, chosen and failed (with the combiner's reason), capped by the weight cap,
its own train metrics (what its ``train`` returned with the update) and its own validation of
the round's global model. Local against global, per client, is then one query by name.

What a client reports is its own text: only top-level finite numbers are kept, at most
``FEDTIER_MAX_REPORT_METRICS`` of them with names of at most ``FEDTIER_MAX_METRIC_NAME_CHARS``
characters (fedtier/limits.py); the rest are counted in ``metrics_dropped``, so a client that
sends a log in its metadata costs the store a counter, not the log.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Mapping

from fedtier import limits, strict_json
from fedtier.proto import fedtier_pb2 as pb
from fedtier.storage.collections import CLIENT_ROUNDS
from fedtier.storage.state_store import StateStore

log = logging.getLogger(__name__)

OUTCOMES = ("reported", "failed", "validated")  # validated: not chosen to train, validated the global model
MAX_ERROR_CHARS = 500  # a combiner's reason for a failed task: a sentence, not a traceback
HISTORY_PAGE = 50       # records a history page gives when no limit is asked
MAX_HISTORY_PAGE = 500  # the most it gives in one answer
MAX_SEQ = 2**53         # a round's seq, as a query bound: JSON's exact integers


def kept_metrics(raw: object, bounds: limits.Limits | None = None) -> tuple[dict[str, float], int]:
    """The metrics of a report the history keeps, and how many it dropped (see the module)."""
    bounds = bounds or limits.current()
    if not isinstance(raw, dict):
        return {}, 0
    kept: dict[str, float] = {}
    dropped = 0
    for key, value in raw.items():
        if key == "num_examples":
            continue  # recorded as the record's own field
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # text and objects are not metrics
        try:
            number = float(value)
        except OverflowError:  # an integer past a float's range
            number = math.inf
        if not math.isfinite(number) or not isinstance(key, str) or not key \
                or len(key) > bounds.metric_name_chars or len(kept) >= bounds.report_metrics:
            dropped += 1
            continue
        kept[key] = number
    return kept, dropped


def parse_report(text: str) -> object:
    """A client's metadata or metrics JSON within the process's depth bound; {} if unreadable
    (the combiner accepted the update for its model, not for its metadata)."""
    try:
        return strict_json.loads(text or "{}", limits.current().json_depth)
    except strict_json.JSONInputError:
        return {}


def _client_of(failure: str) -> tuple[str, str]:
    """'name: reason' as the combiner writes a failure (client names have no ':')."""
    name, _, reason = failure.partition(": ")
    return name, reason


def from_training(results: Mapping[str, pb.RoundResult]) -> dict[str, dict[str, Any]]:
    """Who each combiner chose and how each ended: one entry per client, by name.

    A chosen client either reported an update or is named in the combiner's failures (it
    failed, was rejected, or did not answer before the round closed), so the two lists are
    everyone chosen. ``capped`` here is the combiner's cap; the reducer adds its own."""
    entries: dict[str, dict[str, Any]] = {}
    for combiner, result in results.items():
        for failure in result.failures:
            name, reason = _client_of(failure)
            if name:
                entries[name] = {"client": name, "combiner": combiner, "combiner_ok": result.success,
                                 "outcome": "failed", "error": reason[:MAX_ERROR_CHARS] or "task failed",
                                 "capped": False, "num_examples": None, "weight_used": None,
                                 "train_metrics": {}, "metrics_dropped": 0, "timings": {}}
        for update in result.updates:
            metrics, dropped = kept_metrics(parse_report(update.metadata_json))
            entries[update.client_name] = {
                "client": update.client_name, "combiner": combiner, "combiner_ok": result.success,
                "outcome": "reported", "error": None,
                "capped": bool(update.capped),
                "num_examples": int(update.num_examples), "weight_used": int(update.weight_used),
                "train_metrics": metrics, "metrics_dropped": dropped,
                "timings": {k: float(v) for k, v in update.timings.items() if math.isfinite(v)}}
    return entries


def add_validation(entries: dict[str, dict[str, Any]], combiner: str, report: pb.ValidationReport,
                   metrics: object) -> None:
    """The client's validation of the round's global model, beside what it trained (if it did)."""
    kept, dropped = kept_metrics(metrics)
    entry = entries.get(report.client_name)
    if entry is None:
        entry = entries[report.client_name] = {
            "client": report.client_name, "combiner": combiner, "combiner_ok": True, "outcome": "validated",
            "error": None, "capped": False, "num_examples": None, "weight_used": None,
            "train_metrics": {}, "metrics_dropped": 0, "timings": {}}
    entry["validation"] = kept
    entry["validation_examples"] = int(report.num_examples)
    entry["metrics_dropped"] += dropped


def record(state: StateStore, round_doc: Mapping[str, Any], entries: Mapping[str, dict[str, Any]]) -> int:
    """Write the round's entries, one record per client (append-only: a record is never changed,
    so a retried write of the same round is skipped). Returns how many were written."""
    if not entries:
        return 0  # the round ended before any combiner answered
    now = time.time()
    return state.insert_new(CLIENT_ROUNDS, [
        {"validation": None, "validation_examples": None, **entry,
         "id": f"{round_doc['id']}.{name}", "round_id": round_doc["id"], "round": round_doc.get("round"),
         "seq": round_doc.get("seq"), "session_id": round_doc.get("session_id"),
         "round_status": round_doc.get("status"), "created_at": now}
        for name, entry in sorted(entries.items())])


def history(state: StateStore, client: str, limit: int = HISTORY_PAGE, before: int | None = None,
            after: int | None = None) -> tuple[list[dict[str, Any]], int | None]:
    """A client's records newest first, at most ``limit`` of those with ``after < seq < before``
    (a page polls with ``after``, its newest, for what is new), and the ``before`` that gives
    the next (older) page, None at the end. The store answers equality
    only, so the client's records are read and the page cut here: a client has one per round
    it took part in, and what is sent stays one page."""
    # the newest page, as most asks are: only one more record than it needs leaves the store
    window = limit + 1 if before is None and after is None else None
    records = state.find(CLIENT_ROUNDS, where={"client": client}, order_by="seq", descending=True, limit=window)
    if before is not None or after is not None:
        records = [r for r in records if isinstance(r.get("seq"), int)
                   and (before is None or r["seq"] < before) and (after is None or r["seq"] > after)]
    page = records[:limit]
    more = len(records) > limit and page and isinstance(page[-1].get("seq"), int)
    return page, (page[-1]["seq"] if more else None)
