"""Continuous training: sessions started on a timetable or when a new compute package arrives.

A schedule is a record in the ``schedules`` collection: a name, its triggers (``every_seconds``,
a ``cron`` expression read in UTC, ``on_package``, any of them together), the settings of the
sessions it starts (exactly a ``/start`` body, checked by the same ``SessionRequest.from_dict``
when it is made and again each time it fires) and what happened when it last came due. A
firing starts its session through ``Control.start_session``, the path ``/start`` takes.

Decisions, and why:

* A schedule that comes due while a session runs (or before the network is seeded) is
  **skipped**, and the skip recorded on it (``last_outcome``, ``last_error``, ``skipped``),
  not queued: a queue grows without bound when sessions take longer than the period, and a
  later session starts from a newer model anyway. The next firing is one period later.
* A firing **missed while the reducer was down** happens once, as soon as it is up again:
  however many periods passed, they coalesce into one session (``next_at`` is then
  recomputed from now). Retraining that was due is still due; a burst of catch-up sessions
  is not wanted.
* Stored, not held in memory: a schedule, paused or not, survives a reducer restart.
* Bounded: at most ``FEDTIER_MAX_SCHEDULES`` schedules, names of 100 characters, a period of
  at least ``FEDTIER_SCHEDULE_MIN_SECONDS`` (a cron expression too: its next firings may not
  come closer together than that), and at most a year.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Mapping

from croniter import CroniterBadDateError, croniter

from fedtier.config import Settings
from fedtier.ids import new_id
from fedtier.reducer.control import Control, SessionRequest, StateConflict
from fedtier.round_config import RoundConfigError, integer_setting
from fedtier.storage.collections import SCHEDULES
from fedtier.storage.state_store import DocumentNotFoundError, StateStore, StateStoreError

log = logging.getLogger(__name__)

ACTIVE, PAUSED = "active", "paused"
SCHEDULE_STATES = (ACTIVE, PAUSED)
OUTCOMES = ("started", "skipped", "failed")
MAX_NAME_CHARS = 100
MAX_CRON_CHARS = 100
MAX_PERIOD_S = 365 * 24 * 3600
CRON_GAPS_CHECKED = 50  # consecutive firings of a cron expression whose spacing is checked
FIELDS = ("name", "every_seconds", "cron", "on_package", "settings")


class ScheduleInvalid(RoundConfigError):
    """A schedule's field is invalid: a 400 naming it (the same handler as /start's settings)."""


class TooManySchedules(RuntimeError):
    """FEDTIER_MAX_SCHEDULES are kept already."""


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ScheduleInvalid("name", "give the schedule a name (a non-empty string)")
    if len(value) > MAX_NAME_CHARS:
        raise ScheduleInvalid("name", f"at most {MAX_NAME_CHARS} characters, got {len(value)}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ScheduleInvalid("name", "control characters are not allowed")
    return value.strip()


def _cron(value: Any, min_gap_s: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_CRON_CHARS:
        raise ScheduleInvalid("cron", f"a cron expression of at most {MAX_CRON_CHARS} characters")
    # five fields, minute resolution: croniter reads a sixth as seconds, which this bound forbids
    if len(value.split()) != 5 or not croniter.is_valid(value):
        raise ScheduleInvalid("cron", f"not a five-field cron expression (minute hour day month weekday), "
                                      f"got {value!r}")
    try:
        times = croniter(value, time.time()).all_next(float)
        firings = [next(times) for _ in range(CRON_GAPS_CHECKED)]
    except CroniterBadDateError:
        raise ScheduleInvalid("cron", f"{value!r} never fires") from None
    gap = min(b - a for a, b in zip(firings, firings[1:]))
    if gap < min_gap_s:
        raise ScheduleInvalid("cron", f"fires every {gap:.0f} s, more often than the bound of {min_gap_s} s "
                                      f"(FEDTIER_SCHEDULE_MIN_SECONDS)")
    return value


def next_time(schedule: Mapping[str, Any], now: float) -> float | None:
    """When the schedule's timer next fires after ``now``, or None without a timer: the
    earlier of its period from now and its cron expression's next time."""
    times = []
    if schedule.get("every_seconds"):
        times.append(now + schedule["every_seconds"])
    if schedule.get("cron"):
        try:
            times.append(croniter(schedule["cron"], now).get_next(float))
        except (CroniterBadDateError, ValueError, KeyError):
            log.warning("schedule %s: cron %r has no next firing", schedule.get("id"), schedule["cron"])
    return min(times) if times else None


class Scheduler:
    """Keeps the schedules and fires them; one per reducer. ``tick`` is called by the
    scheduler thread (``run_forever``), ``package_uploaded`` by ``POST /package``."""

    def __init__(self, store: StateStore, control: Control, settings: Settings) -> None:
        self.store = store
        self.control = control
        self.settings = settings
        # held while a schedule fires or changes: a pause that returned means no more firings
        self._lock = threading.Lock()

    # ---- the API's side
    def check_settings(self, settings: Any) -> SessionRequest:
        """The /start check, one rule: a field at fault is named under ``settings.``."""
        if not isinstance(settings, dict):
            raise ScheduleInvalid("settings", "an object of /start's settings ({} takes every default)")
        try:
            return SessionRequest.from_dict(settings, defaults={"helper": self.control.helper_name})
        except RoundConfigError as exc:
            raise ScheduleInvalid(f"settings.{exc.field}", str(exc).split(": ", 1)[-1]) from None

    def create(self, data: Mapping[str, Any], created_by: str) -> dict[str, Any]:
        """Check every field, then store the schedule; nothing is stored when a field is wrong."""
        unknown = sorted(str(k) for k in data if k not in FIELDS)
        if unknown:
            raise ScheduleInvalid(unknown[0][:100], f"unknown field (known: {', '.join(FIELDS)})")
        name = _name(data.get("name"))
        every = data.get("every_seconds")
        if every is not None:
            try:
                every = integer_setting("every_seconds", every, self.settings.schedule_min_seconds, MAX_PERIOD_S)
            except RoundConfigError as exc:
                raise ScheduleInvalid("every_seconds", f"{str(exc).split(': ', 1)[-1]} seconds (the shortest period "
                                                       f"is FEDTIER_SCHEDULE_MIN_SECONDS)") from None
        cron = _cron(data.get("cron"), self.settings.schedule_min_seconds)
        on_package = data.get("on_package", False)
        if not isinstance(on_package, bool):
            raise ScheduleInvalid("on_package", "true or false")
        if every is None and cron is None and not on_package:
            raise ScheduleInvalid("every_seconds", "a schedule needs a trigger: every_seconds, cron, on_package "
                                                   "or several")
        settings = data.get("settings", {})
        self.check_settings(settings)
        now = time.time()
        schedule = {"id": new_id(), "name": name, "every_seconds": every, "cron": cron, "on_package": on_package,
                    "settings": settings, "state": ACTIVE, "created_by": created_by, "created_at": now,
                    "next_at": None, "last_fired_at": None, "last_outcome": None, "last_session_id": None,
                    "last_error": None, "fired": 0, "skipped": 0}
        schedule["next_at"] = next_time(schedule, now)
        with self._lock:
            limit = self.settings.limits.schedules
            if self.store.count(SCHEDULES) >= limit:
                raise TooManySchedules(f"the reducer keeps at most {limit} schedules (FEDTIER_MAX_SCHEDULES): "
                                       f"delete one first")
            self.store.insert(SCHEDULES, schedule)
        log.info("schedule %s (%s) created by %s", schedule["id"], name, created_by)
        return schedule

    def all(self) -> list[dict[str, Any]]:
        return self.store.find(SCHEDULES, order_by="created_at")

    def get(self, schedule_id: str) -> dict[str, Any] | None:
        return self.store.get(SCHEDULES, schedule_id)

    def set_state(self, schedule_id: str, state: str) -> dict[str, Any] | None:
        """Pause or resume; a resumed timer counts its period from now. None if there is no such schedule."""
        with self._lock:
            schedule = self.store.get(SCHEDULES, schedule_id)
            if schedule is None:
                return None
            changes: dict[str, Any] = {"state": state}
            if state == ACTIVE and schedule["state"] != ACTIVE:
                changes["next_at"] = next_time(schedule, time.time())
            return self.store.update(SCHEDULES, schedule_id, changes)

    def delete(self, schedule_id: str) -> bool:
        with self._lock:
            return self.store.delete(SCHEDULES, schedule_id)

    # ---- firing
    def tick(self, now: float | None = None) -> None:
        """Fire every active schedule whose timer is due (once, however late it is)."""
        now = time.time() if now is None else now
        with self._lock:
            for schedule in self.store.find(SCHEDULES, where={"state": ACTIVE}):
                if schedule.get("next_at") is not None and schedule["next_at"] <= now:
                    self._fire(schedule, "timer", now)

    def package_uploaded(self, package: Mapping[str, Any]) -> None:
        """A new compute package: fire every active ``on_package`` schedule. Never raises: the
        upload succeeded whatever the schedules do, and each records its own outcome."""
        try:
            with self._lock:
                for schedule in self.store.find(SCHEDULES, where={"state": ACTIVE, "on_package": True}):
                    self._fire(schedule, f"package {package.get('sha256', '')[:12]}", time.time())
        except StateStoreError as exc:
            log.error("schedules not fired for the new package: state store: %s", exc)

    def _fire(self, schedule: dict[str, Any], why: str, now: float) -> None:
        changes: dict[str, Any] = {"last_fired_at": now, "next_at": next_time(schedule, now)}
        try:
            request = self.check_settings(schedule["settings"])
            session = self.control.start_session(request, schedule_id=schedule["id"])
        except StateConflict as exc:
            changes.update(last_outcome="skipped", last_error=f"skipped: {exc}", skipped=schedule.get("skipped", 0) + 1)
            log.info("schedule %s (%s, %s): skipped: %s", schedule["id"], schedule["name"], why, exc)
        except Exception as exc:  # settings no longer valid (another helper), a store failure...
            changes.update(last_outcome="failed", last_error=f"could not start a session: {exc}")
            log.error("schedule %s (%s, %s): could not start a session: %s", schedule["id"], schedule["name"],
                      why, exc)
        else:
            changes.update(last_outcome="started", last_error=None, last_session_id=session["id"],
                           fired=schedule.get("fired", 0) + 1)
            log.info("schedule %s (%s, %s): started session %s", schedule["id"], schedule["name"], why,
                     session["id"])
        try:
            self.store.update(SCHEDULES, schedule["id"], changes)
        except DocumentNotFoundError:
            pass  # deleted meanwhile

    def run_forever(self, stop: threading.Event, interval_s: float) -> None:
        """The scheduler thread: a failing tick (the state store out of reach) is logged and
        retried at the next one, never the end of the thread."""
        while not stop.wait(interval_s):
            try:
                self.tick()
            except Exception:
                log.exception("scheduler tick failed")
