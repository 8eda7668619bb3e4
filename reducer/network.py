"""The reducer's view of the network: which combiners exist, which clients they hold.

Combiners announce themselves (``/add``). A name held by a live combiner is never moved
to another address: that would send its clients, and the reducer's credential for it, to
whoever asked. When identities or TLS are on, the reducer first calls the announced
address, as that combiner, and keeps it only if the combiner answering there (its TLS
certificate valid for that address) gives the name. A background poll asks each for its status
so liveness is known without waiting for a round. Discovery (``/assign``) sends a
client to the least loaded online combiner, and keeps it where it is while that
combiner stays online, so clients are only moved when their combiner is gone.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable

import grpc

from fedtier.identity import SelfIssuer
from fedtier.proto import fedtier_pb2 as pb
from fedtier.reducer.combiner_client import CombinerClient
from fedtier.storage.collections import CLIENTS, COMBINERS
from fedtier.storage.state_store import StateStore
from fedtier.transport.channel import resolves

log = logging.getLogger(__name__)

# a search of the clients (/api/v1/clients, the network page)
MAX_PAGE = 1000        # clients in one page: the lab's whole federation
MAX_OFFSET = 10_000_000
MAX_QUERY_CHARS = 128  # a client name's length (routes/network.py NAME)
CLIENT_STATES = ("active", "inactive")  # as /api/v1/clients/summary counts them


def utc_text(epoch: float | None) -> str:
    """A time as the pages and the API's explanations write it."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch)) if epoch else "–"


def combiner_why(doc: dict[str, Any]) -> str | None:
    """Why a combiner is offline, or not answering yet: the address the reducer calls, what the
    call got and since when (``refresh`` records them); None while it answers."""
    if doc.get("unreachable_since"):
        return "".join([f"unreachable at {doc.get('address')}:{doc.get('port')} since "
                        f"{utc_text(doc['unreachable_since'])}",
                        f" ({doc['last_error']})" if doc.get("last_error") else "",
                        f"; {doc['last_error_hint']}" if doc.get("last_error_hint") else ""])
    return None if doc.get("online") else f"not seen since {utc_text(doc.get('last_seen'))}"


def client_why(doc: dict[str, Any], offline_combiners: set[str]) -> str | None:
    """Why a client is not active: its combiner is offline, or its heartbeat is silent since
    when, or it never sent one; None while it is active."""
    if doc.get("active") is True:
        return None
    if doc.get("combiner") in offline_combiners:
        return f"its combiner {doc['combiner']} is offline"
    if doc.get("last_heartbeat"):
        return f"heartbeat silent since {utc_text(doc['last_heartbeat'])}"
    return f"assigned to {doc['combiner']}, no heartbeat yet" if doc.get("combiner") else "no heartbeat yet"


#: seconds between recounts of the clients on each combiner for /assign (Network._combiner_load)
LOAD_RECOUNT_S = 5.0


class NoCombinerError(LookupError):
    """No combiner is online to take a client."""


class CombinerRefused(ValueError):
    """An announcement the reducer will not record; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


class Network:
    def __init__(self, state: StateStore, offline_after_s: float = 6.0, issuer: SelfIssuer | None = None,
                 ca_file: str | None = None, probe_timeout_s: float = 5.0) -> None:
        self.state = state
        self.issuer = issuer  # mints the credential for each combiner (aud = its name); None: no identities
        self.ca_file = ca_file
        self.probe_timeout_s = probe_timeout_s
        self.offline_after_s = offline_after_s
        self._handles: dict[str, CombinerClient] = {}
        self._lock = threading.RLock()
        # client -> time of its last heartbeat: it changes on every poll, so it is kept here and
        # merged into clients(), not written to the store for every client every 2 s
        self._last_heartbeat: dict[str, float] = {}
        # combiner -> (when read, its running round's task states): the live view (reducer/live.py)
        self._live_rounds: dict[str, tuple[float, pb.RoundProgress]] = {}
        self._live_read_at: dict[str, float] = {}  # combiner -> when its Status was last read
        self._live_lock = threading.Lock()
        # combiner -> clients assigned to it, as /assign balances them (``_combiner_load``)
        self._load: dict[str, int] = {}
        self._load_counted_at = -math.inf

    # ---- combiners
    def _token_for(self, name: str) -> Any:
        """What the reducer presents to combiner ``name``: a credential valid there only."""
        issuer = self.issuer
        return (lambda: issuer.token_for(name)) if issuer is not None else ""

    def live(self, doc: dict[str, Any], now: float | None = None) -> bool:
        """Online and seen within the liveness timeout: its name may not move."""
        return bool(doc.get("online")) and (time.time() if now is None else now) - doc.get("last_seen", 0) \
            <= self.offline_after_s

    def _check_move(self, name: str, address: str, port: int) -> dict[str, Any] | None:
        held = self.state.get(COMBINERS, name)
        if held is not None and (held.get("address"), held.get("port")) != (address, port) and self.live(held):
            seen = time.time() - held.get("last_seen", 0)
            raise CombinerRefused(409, f"combiner {name} is live at {held['address']}:{held['port']} (last seen "
                                       f"{seen:.0f}s ago): the name moves to {address}:{port} only once it has "
                                       f"been offline for {self.offline_after_s:.0f}s", field="name")
        return held

    def _probe(self, name: str, address: str, port: int) -> None:
        """Ask the announced address who answers there, as the reducer will from now on: over
        TLS its certificate must be valid for ``address``, and it must call itself ``name``."""
        client = CombinerClient(f"{address}:{port}", token=self._token_for(name), ca_file=self.ca_file)
        try:
            answered = client.status(timeout=self.probe_timeout_s).name
        except grpc.RpcError as exc:
            tls = " (with TLS its certificate must be valid for that address)" \
                if self.ca_file and exc.code() == grpc.StatusCode.UNAVAILABLE else ""
            raise CombinerRefused(422, f"combiner {name} at {address}:{port} did not answer as a combiner"
                                       f"{tls}: {exc.code().name} {exc.details() or ''}".rstrip(),
                                  field="address") from None
        finally:
            client.close()
        if answered != name:
            raise CombinerRefused(422, f"the combiner at {address}:{port} calls itself {answered!r}, not {name!r}",
                                  field="name")

    def add_combiner(self, name: str, address: str, port: int) -> dict[str, Any]:
        with self._lock:
            self._check_move(name, address, port)
        if self.issuer is not None or self.ca_file:
            self._probe(name, address, port)  # outside the lock: it waits on the network
        with self._lock:
            held = self._check_move(name, address, port)  # again: another may have come meanwhile
            if held is not None and (held.get("address"), held.get("port")) != (address, port):
                log.warning("combiner %s moves from %s:%s to %s:%d (the old one was offline since %.0fs)", name,
                            held.get("address"), held.get("port"), address, port,
                            time.time() - held.get("last_seen", 0))
            doc = self.state.upsert(COMBINERS, name, {"name": name, "address": address, "port": port,
                                                      "added_at": time.time(), "online": True,
                                                      "last_seen": time.time(), "active_clients": 0})
            old = self._handles.pop(name, None)
            if old is not None:
                old.close()
        log.info("combiner %s added at %s:%d", name, address, port)
        return doc

    def combiners(self) -> list[dict[str, Any]]:
        """Every combiner, each with ``why`` it is offline (None while online)."""
        return [{**c, "why": combiner_why(c)} for c in self.state.find(COMBINERS)]

    def handle(self, name: str) -> CombinerClient:
        with self._lock:
            if name not in self._handles:
                doc = self.state.get(COMBINERS, name)
                if doc is None:
                    raise KeyError(name)
                self._handles[name] = CombinerClient(f"{doc['address']}:{doc['port']}",
                                                     token=self._token_for(name), ca_file=self.ca_file)
            return self._handles[name]

    def online_combiners(self) -> list[dict[str, Any]]:
        return [c for c in self.combiners() if c.get("online")]

    # ---- liveness
    def refresh(self) -> dict[str, int]:
        """Ask every combiner for its status; record who is online and which clients are active.

        Returns the active clients of each combiner that answered this poll. A client counts
        as active only from its combiner's current answer: a combiner that does not answer
        has no usable clients at once (its *online* flag waits ``offline_after_s``, so one
        missed poll does not send clients elsewhere), and a restarted combiner (a new
        ``instance_id``) or one that no longer lists a client has lost it. Stored flags from
        an earlier poll are never counted, so a round cannot start on a dead process's clients.

        The stored flags (the API's and the dashboard's view) follow what is known: a combiner
        that cannot be reached (UNAVAILABLE: its process is gone, so are its clients' streams)
        or that has gone offline has no active clients; one that was merely slow to answer
        (a busy combiner holding thousands of clients) still holds them, and its clients are
        not rewritten inactive, then active again, on every poll it misses.
        """
        answered: dict[str, int] = {}
        for doc in self.combiners():
            name = doc["name"]
            try:
                status = self.handle(name).status(timeout=2.0)
            except grpc.RpcError as exc:
                update: dict[str, Any] = {"active_clients": 0}
                # why it is (or will be) offline, kept for the network page: the address called,
                # what the call got, since when; written when it changes, not on every poll
                details = exc.details() if callable(getattr(exc, "details", None)) else ""
                error = f"{exc.code().name}: {details or 'no details'}"
                if doc.get("unreachable_since") is None or doc.get("last_error") != error:
                    update.update(last_error=error, unreachable_since=doc.get("unreachable_since") or time.time())
                # the common cause on first set-up: a combiner announced a name nobody resolves
                hint = (f"; {doc['address']} does not resolve here: start the combiner with --advertise-host "
                        f"set to a name or address the reducer and its clients resolve"
                        if not resolves(doc["address"]) else "")
                if hint and doc.get("last_error_hint") != hint.lstrip("; "):
                    update["last_error_hint"] = hint.lstrip("; ")
                if doc.get("online") and time.time() - doc.get("last_seen", 0) > self.offline_after_s:
                    log.warning("combiner %s registered at %s:%s is unreachable (%s)%s", name, doc["address"],
                                doc["port"], error, hint)
                    update["online"] = False
                self._live_rounds.pop(name, None)
                if doc.get("active_clients") or len(update) > 1:
                    self.state.update(COMBINERS, name, update)
                if exc.code() == grpc.StatusCode.UNAVAILABLE or not update.get("online", doc.get("online")):
                    self._clients_inactive(name)
                continue
            now = time.time()
            self._keep_live(name, status, now)
            if doc.get("instance_id") and status.instance_id != doc["instance_id"]:
                log.warning("combiner %s restarted: its clients count again once they reconnect", name)
            self.state.update(COMBINERS, name, {"online": True, "last_seen": now,
                                                "active_clients": status.active_clients,
                                                "round_in_progress": status.round_in_progress,
                                                "instance_id": status.instance_id,
                                                "unreachable_since": None, "last_error": None,
                                                "last_error_hint": None})
            answered[name] = status.active_clients
            stored = {c["name"]: c for c in self.state.find(CLIENTS, where={"combiner": name})}
            for client in status.clients:
                beat = now - client.seconds_since_heartbeat
                self._last_heartbeat[client.name] = beat
                known = stored.pop(client.name, None)
                # a write only when what the store records changed: with a thousand clients,
                # writing every client on every poll kept the reducer busy (bench/scale_out.py)
                if known is None or (known.get("active"), known.get("rounds_joined")) != \
                        (client.active, client.rounds_joined):
                    self.state.upsert(CLIENTS, client.name, {
                        "name": client.name, "combiner": name, "active": client.active,
                        "last_heartbeat": beat, "rounds_joined": client.rounds_joined})
            for gone in stored.values():  # assigned here, unknown to this combiner (process)
                if gone.get("active"):
                    self.state.update(CLIENTS, gone["id"], {"active": False})
        return answered

    def _keep_live(self, name: str, status: pb.CombinerStatus, now: float) -> None:
        self._live_read_at[name] = now
        if status.HasField("round"):
            self._live_rounds[name] = (now, status.round)
        else:
            self._live_rounds.pop(name, None)

    def live_rounds(self, fresh_within: float | None = None) -> dict[str, tuple[float, pb.RoundProgress]]:
        """Each combiner's running round as its last Status told it (a copy).

        With ``fresh_within``, a combiner read longer ago than that is asked again first, so
        the live view is not a whole poll interval behind; one caller asks at a time and the
        others take what it got, so however many browsers watch, each combiner is asked at
        most once per ``fresh_within`` seconds besides the poll."""
        if fresh_within is not None:
            with self._live_lock:
                for doc in self.online_combiners():
                    name = doc["name"]
                    if time.time() - self._live_read_at.get(name, 0.0) <= fresh_within:
                        continue
                    try:
                        status = self.handle(name).status(timeout=1.0)
                    except grpc.RpcError:
                        self._live_read_at[name] = time.time()  # the poll records why; not asked again at once
                        continue
                    self._keep_live(name, status, time.time())
        return dict(self._live_rounds)

    def _clients_inactive(self, combiner: str) -> None:
        for client in self.state.find(CLIENTS, where={"combiner": combiner, "active": True}):
            self.state.update(CLIENTS, client["id"], {"active": False})

    def poll_forever(self, stop: threading.Event, interval_s: float = 2.0,
                     on_error: Callable[[Exception], None] | None = None) -> None:
        """Refresh every ``interval_s`` until ``stop``; ``on_error`` sees each failure (the metrics)."""
        while not stop.wait(interval_s):
            try:
                self.refresh()
            except Exception as exc:  # the poll must outlive any one bad answer
                log.exception("status poll failed")
                if on_error is not None:
                    on_error(exc)

    # ---- clients
    def assign(self, client_name: str) -> dict[str, Any]:
        """Pick a combiner for a client: its current one while online, else the least loaded."""
        with self._lock:
            online = self.online_combiners()
            if not online:
                raise NoCombinerError("no combiner is online yet; retry shortly")
            current = self.state.get(CLIENTS, client_name)
            by_name = {c["name"]: c for c in online}
            if current and current.get("combiner") in by_name:
                chosen = by_name[current["combiner"]]
            else:
                # this client is on none of them (or it would have stayed put): count the others
                load = self._combiner_load(by_name)
                chosen = by_name[min(load, key=lambda n: (load[n], n))]
                self._load[chosen["name"]] = load[chosen["name"]] + 1
                if current and current.get("combiner") in self._load:
                    self._load[current["combiner"]] = max(0, self._load[current["combiner"]] - 1)
            self.state.upsert(CLIENTS, client_name, {"name": client_name, "combiner": chosen["name"],
                                                     "assigned_at": time.time()})
        return {"combiner": chosen["name"], "host": chosen["address"], "port": chosen["port"]}

    def _combiner_load(self, online: dict[str, Any]) -> dict[str, int]:
        """Clients recorded on each online combiner. Counted in the store at most every
        ``LOAD_RECOUNT_S`` and kept up by each assignment in between: counting on every request
        scans every client, under the lock, and with thousands of clients joining at once
        that made each /assign take seconds and most of them time out."""
        now = time.monotonic()
        if now - self._load_counted_at > LOAD_RECOUNT_S or set(online) - set(self._load):
            self._load = {name: self.state.count(CLIENTS, where={"combiner": name}) for name in online}
            self._load_counted_at = now
        return {name: self._load.get(name, 0) for name in online}

    def clients(self) -> list[dict[str, Any]]:
        """Every client with its latest heartbeat, each with ``why`` it is not active."""
        found = self.state.find(CLIENTS)
        offline = {c["name"] for c in self.state.find(COMBINERS) if not c.get("online")}
        for client in found:
            beat = self._last_heartbeat.get(client["name"])
            if beat is not None:
                client["last_heartbeat"] = beat
            client["why"] = client_why(client, offline)
        return found

    def client(self, name: str) -> dict[str, Any] | None:
        """One client as ``clients`` gives it, without reading the others."""
        doc = self.state.get(CLIENTS, name)
        if doc is None:
            return None
        beat = self._last_heartbeat.get(name)
        if beat is not None:
            doc["last_heartbeat"] = beat
        home = self.state.get(COMBINERS, doc["combiner"]) if doc.get("combiner") else None
        doc["why"] = client_why(doc, {home["name"]} if home is not None and not home.get("online") else set())
        return doc

    def close(self) -> None:
        with self._lock:
            for handle in self._handles.values():
                handle.close()
            self._handles.clear()
