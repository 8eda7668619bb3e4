"""The round in progress as the combiners see it, and each round's timeline once it ended.

Each combiner's Status carries the states of its running round's tasks (combiner/round.py,
``TaskStates``); the reducer's status poll (reducer/network.py) keeps the latest of each, and
Control keeps the final states each combiner returned with its result, so a combiner that
finished before the others does not vanish from the view. ``current_round`` merges them into
one answer whose size does not grow with the clients: counts per state for each combiner, at
most ``WAITING_SHOWN`` of the clients the round waits for, and one page of the clients. The
counts and the page come from the same snapshot, so they never contradict each other.
"""
from __future__ import annotations

import math
import time
from typing import Any, Iterable, Mapping

from fedtier.combiner.round import DETAIL_CHARS, OPEN_STATES, STATES
from fedtier.proto import fedtier_pb2 as pb

WAITING_SHOWN = 20       # clients named in ``waiting_for``, the longest-waiting first
PAGE_DEFAULT, PAGE_MAX = 50, 200  # clients per page of ``clients``
TIMELINE_MAX = 10_000    # tasks of one combiner kept on a round's record (its --max-clients is 1,000 by default)
LIVE_FRESH_S = 1.0       # while a round runs, the live view asks a combiner again once its answer is this old
PHASE_NAMES = ("download", "train", "upload", "validate")
KIND_NAMES = {pb.TRAINING: "training", pb.VALIDATION: "validation"}


def _seconds(value: float) -> float:
    return round(float(value), 3) if math.isfinite(value) and value >= 0 else 0.0


def timeline_entry(progress: pb.ClientProgress) -> dict[str, Any]:
    """One task as a round's record keeps it: only known states and phases, bounded text."""
    return {"client": progress.client_name[:128],
            "state": progress.state if progress.state in STATES else "unknown",
            "started": {k: _seconds(v) for k, v in progress.started.items() if k in PHASE_NAMES},
            "ended": _seconds(progress.ended), "detail": progress.detail[:DETAIL_CHARS]}


def timeline(clients: Iterable[pb.ClientProgress]) -> list[dict[str, Any]]:
    entries = [timeline_entry(p) for p, _ in zip(clients, range(TIMELINE_MAX))]
    return sorted(entries, key=lambda e: e["client"])


def _live_entry(progress: pb.ClientProgress, combiner: str, aged: float) -> dict[str, Any]:
    entry = timeline_entry(progress)
    # an open state keeps going while the answer ages; an ended one stays as it ended
    state_for = progress.state_for_s + (aged if entry["state"] in OPEN_STATES else 0.0)
    return {**entry, "combiner": combiner, "state_for_s": _seconds(state_for)}


def current_round(round_doc: Mapping[str, Any] | None, phase: str,
                  live: Mapping[str, tuple[float, pb.RoundProgress]],
                  ended: Mapping[str, tuple[float, pb.RoundProgress]],
                  offset: int = 0, limit: int = PAGE_DEFAULT, state: str | None = None,
                  combiner: str | None = None, now: float | None = None) -> dict[str, Any]:
    """The answer of ``GET /api/v1/rounds/current``.

    ``live`` and ``ended`` map a combiner to (when it was read, its round's progress): the
    status poll's and the one each returned with its result. A combiner's view is the
    validation round's once that started, else the training round's; the record it ended
    with wins over a poll of the same round."""
    now = time.time() if now is None else now
    answer: dict[str, Any] = {"round": None, "as_of": now, "counts": {s: 0 for s in STATES}, "total": 0,
                              "combiners": [], "waiting_for": [], "waiting_total": 0, "clients": [],
                              "matching": 0, "offset": offset, "limit": limit}
    if round_doc is None:
        return answer
    answer["round"] = {k: round_doc.get(k) for k in ("id", "seq", "round", "session_id", "started_at")}
    answer["round"].update(phase=phase, elapsed_s=_seconds(now - (round_doc.get("started_at") or now)))
    ids = (round_doc["id"] + ".validate", round_doc["id"])  # the later round first
    rows: list[dict[str, Any]] = []
    for name in sorted(set(live) | set(ended)):
        chosen: tuple[float, pb.RoundProgress, bool] | None = None
        for round_id in ids:
            for source in (ended, live):
                got = source.get(name)
                if chosen is None and got is not None and got[1].round_id == round_id:
                    chosen = (*got, source is ended)
        if chosen is None:
            continue
        read_at, progress, finished = chosen
        aged = 0.0 if finished else max(0.0, now - read_at)
        entries = [_live_entry(p, name, aged) for p in progress.clients]
        counts = {s: 0 for s in STATES}
        for e in entries:
            counts[e["state"]] = counts.get(e["state"], 0) + 1
        answer["combiners"].append({
            "name": name, "kind": KIND_NAMES.get(progress.kind, "unknown"), "round_id": progress.round_id,
            "finished": finished, "elapsed_s": _seconds(progress.elapsed_s + aged),
            "as_of": read_at, "counts": counts, "total": len(entries)})
        rows.extend(entries)
    for e in rows:
        answer["counts"][e["state"]] = answer["counts"].get(e["state"], 0) + 1
    answer["total"] = len(rows)
    waiting = sorted((e for e in rows if e["state"] in OPEN_STATES), key=lambda e: -e["state_for_s"])
    answer["waiting_total"] = len(waiting)
    answer["waiting_for"] = waiting[:WAITING_SHOWN]
    matching = [e for e in rows if (state is None or e["state"] == state)
                and (combiner is None or e["combiner"] == combiner)]
    matching.sort(key=lambda e: (e["combiner"], e["client"]))
    answer["matching"] = len(matching)
    answer["clients"] = matching[offset:offset + limit]
    return answer


TIMELINE_ROWS = 1000  # clients one timeline page draws (the round's record keeps them all)
_TIMELINE_PHASES = ("download", "train", "validate", "upload")


def _segments(started: Mapping[str, float], ended: float) -> list[tuple[str, float, float]]:
    """A task's bars: waiting for the client (from the tasks' sending to its first phase), then
    each phase until the next one began, the last until it ended."""
    phases = sorted(((p, float(t)) for p, t in started.items() if p in _TIMELINE_PHASES), key=lambda pt: pt[1])
    edges = [t for _, t in phases[1:]] + [max(ended, phases[-1][1]) if phases else ended]
    bars = [("wait", 0.0, phases[0][1] if phases else ended)]
    bars += [(phase, start, end) for (phase, start), end in zip(phases, edges)]
    return [bar for bar in bars if bar[2] > bar[1]]


def round_timeline(round_doc: Mapping[str, Any], live: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What the round page draws: a row per client with its bars, positioned in percent of
    the round's span so the slowest client's bar reaches the right edge.

    The bars come from the combiners' clocks (``combiners[].clients`` of the record, or the
    live view's states for a running round); a record from before those has only the
    durations each client reported, drawn end to end from the start."""
    rows: list[dict[str, Any]] = []
    if live is not None:  # a running round: the live view's states, as far as they go
        for e in live.get("clients", []):
            end = e["ended"] or max([*e["started"].values(), 0.0]) + e["state_for_s"]
            rows.append({**e, "end": end, "bars": _segments(e["started"], end)})
    for c in round_doc.get("combiners") or [] if live is None else []:
        reported = {u.get("client"): u for u in c.get("updates") or []}
        if c.get("clients"):
            for e in c["clients"]:
                timings = (reported.get(e["client"]) or {}).get("timings") or {}
                rows.append({**e, "combiner": c.get("name"), "end": e["ended"], "timings": timings,
                             "bars": _segments(e["started"], e["ended"])})
            continue
        for client, u in reported.items():  # an older record: the clients' own durations
            at, bars = 0.0, []
            for phase in ("download", "train", "upload"):
                took = float((u.get("timings") or {}).get(phase) or 0.0)
                if took > 0:
                    bars.append((phase, at, at + took))
                    at += took
            rows.append({"client": client, "combiner": c.get("name"), "state": "capped" if u.get("capped")
                         else "reported", "detail": "", "end": at, "bars": bars,
                         "timings": u.get("timings") or {}})
    rows.sort(key=lambda r: (r["end"], r["client"]))
    span = max([r["end"] for r in rows] + [1e-9])
    for r in rows:
        r["segments"] = [{"phase": phase, "start": start, "took": end - start,
                          "left": 100 * start / span, "width": max(0.3, 100 * (end - start) / span)}
                         for phase, start, end in r.pop("bars")]
    slowest = rows[-1] if rows else None
    return {"rows": rows[:TIMELINE_ROWS], "total": len(rows), "span": span if rows else 0.0, "slowest": slowest}
