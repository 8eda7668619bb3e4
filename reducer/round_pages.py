"""Rounds by the page, and as CSV safe to open in a spreadsheet.

A reducer that ran for months holds tens of thousands of rounds; a chart asks for the range
it shows (``offset``/``last`` on ``/api/v1/rounds``), at most ROUNDS_PAGE at a time.

Session ids, metric names and error texts come from outside parties (a client names its
metrics, a project raises the error); a spreadsheet reads a cell that begins with ``=``,
``+``, ``-`` or ``@`` as a formula (CSV injection), so such text cells are prefixed with
``'`` here. Numbers are written as numbers (a loss of -0.5 stays -0.5): only text can carry
a formula. ``static/charts.js`` applies the same rule to the CSV a chart exports.
"""
from __future__ import annotations

import csv
import io
import math
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

ROUNDS_PAGE = 1_000  # rounds one paged request returns at most: a chart's widest range
MAX_OFFSET = 10**9   # past any real history; keeps the number parsed small
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """A cell as a spreadsheet will read it as data: text that could start a formula gets a
    leading ``'``; numbers, booleans and empty cells pass unchanged."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        text = str(value)
        return "'" + text if text.startswith(FORMULA_STARTS) else text
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value


def _utc(epoch: Any) -> str:
    if not isinstance(epoch, (int, float)) or isinstance(epoch, bool):
        return ""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _metric_names(rounds: Iterable[Mapping[str, Any]], field: str) -> list[str]:
    names = {k for r in rounds for k, v in (r.get(field) or {}).items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return sorted(names)


def rounds_csv(rounds: list[dict[str, Any]], sessions: Mapping[str, Mapping[str, Any] | None]) -> str:
    """One row per round: where it sits (session, its number in the session, its own number,
    the model's), how it ended and when, then each metric the rounds report as a column
    (the reducer's own evaluation prefixed ``reducer:``)."""
    metrics = _metric_names(rounds, "metrics")
    reducer_metrics = _metric_names(rounds, "reducer_metrics")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([safe_cell(c) for c in (
        "session_id", "session_round", "seq", "model_round", "status", "started_at", "finished_at", "seconds",
        *metrics, *(f"reducer:{m}" for m in reducer_metrics), "error")])
    places = {sid: {rid: i + 1 for i, rid in enumerate(s.get("round_ids") or [])}
              for sid, s in sessions.items() if s}
    for r in rounds:
        index = places.get(str(r.get("session_id")))
        # a running round joins its session's list when it ends: it is the next one
        place = None if index is None else index.get(r.get("id"), len(index) + 1)
        timings = r.get("timings") or {}
        row = [r.get("session_id"), place, r.get("seq"), r.get("round") if r.get("status") == "success" else None,
               r.get("status"), _utc(r.get("started_at")), _utc(r.get("finished_at")), timings.get("total"),
               *((r.get("metrics") or {}).get(m) for m in metrics),
               *((r.get("reducer_metrics") or {}).get(m) for m in reducer_metrics), r.get("error")]
        writer.writerow([safe_cell(c) for c in row])
    return out.getvalue()
