"""The reducer's Prometheus metrics, served at ``GET /metrics`` (docs/metrics.md lists them).

Events (a round or a session ending, bytes pushed or fetched, a store error, a capped
weight) are counted where the reducer already computes them: ``Control._run_round`` hands
its finished round record to ``round_finished``, so the metrics and the stored record can
never disagree. The network view (combiners online, clients active on each) is not
counted at all: a collector reads it from the state store at scrape time, as the status
poll left it, so there is no second copy of it to keep in step.

Each reducer owns its registry (not prometheus_client's global one): several reducers in
one test process must not share, or refuse, each other's metrics.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator, Mapping

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fedtier.storage.model_store import (ModelCorruptError, ModelExistsError, ModelNotFoundError, ModelStoreError,
                                         StorageFullError, StorageIOError, StorageUnavailableError)
from fedtier.storage.state_store import (DocumentNotFoundError, DuplicateIdError, StateStoreError,
                                         StateStoreFullError)

log = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)

ROUND_OUTCOMES = ("success", "failed", "stopped")
SESSION_OUTCOMES = ("succeeded", "failed", "stopped")
# the phases Control._run_round times (round_doc["timings"]); "total" is the whole round
PHASES = ("wait_clients", "transfer", "training", "aggregation", "validation", "total")
# rounds last from a fraction of a second (a test project) to an hour (a large model)
ROUND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
DIRECTIONS = ("pushed", "fetched")
# each store error class the reducer can meet, most specific first: a fixed label set
MODEL_STORE_KINDS = ((ModelNotFoundError, "not_found"), (ModelExistsError, "exists"), (ModelCorruptError, "corrupt"),
                     (StorageFullError, "full"), (StorageIOError, "io"), (StorageUnavailableError, "unavailable"))
STATE_STORE_KINDS = ((StateStoreFullError, "full"), (DuplicateIdError, "duplicate"),
                     (DocumentNotFoundError, "not_found"))


def store_error_labels(exc: BaseException) -> tuple[str, str] | None:
    """(store, kind) of a store error, or None for anything else."""
    for base, store, kinds in ((ModelStoreError, "model", MODEL_STORE_KINDS),
                               (StateStoreError, "state", STATE_STORE_KINDS)):
        if isinstance(exc, base):
            return store, next((kind for cls, kind in kinds if isinstance(exc, cls)), "other")
    return None


class NetworkCollector(Collector):
    """Combiners online and clients active on each, read from the network view at scrape time."""

    def __init__(self, network: Any) -> None:
        self.network = network

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (GaugeMetricFamily("fedtier_reducer_combiners_online",
                                  "Combiners that answered the reducer's status poll recently"),
                GaugeMetricFamily("fedtier_reducer_clients_active",
                                  "Clients active on each registered combiner, as its last status answer said",
                                  labels=["combiner"]))

    def collect(self) -> Iterator[Metric]:
        online, active = self._families()
        try:
            combiners = self.network.combiners()
        except StateStoreError as exc:  # a scrape must still answer: these two are left out
            # not counted: the scrape interval would set the count, not the reducer's own work
            log.warning("metrics: the network view could not be read: %s", exc)
            return
        live = {doc["name"] for doc in combiners if self.network.live(doc)}
        online.add_metric([], len(live))
        for doc in combiners:  # names of registered combiners: only a combiner credential adds one
            active.add_metric([str(doc["name"])], int(doc.get("active_clients") or 0) if doc["name"] in live else 0)
        yield online
        yield active


class ReducerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rounds = Counter("fedtier_reducer_rounds", "Rounds ended, by outcome", ["outcome"], registry=r)
        self.round_seconds = Histogram("fedtier_reducer_round_phase_seconds",
                                       "Time of each phase of a round (total: the whole round)", ["phase"],
                                       buckets=ROUND_BUCKETS, registry=r)
        self.sessions = Counter("fedtier_reducer_sessions", "Sessions ended, by outcome", ["outcome"], registry=r)
        self.model_bytes = Counter("fedtier_reducer_model_bytes",
                                   "Model bytes the reducer pushed to combiners and fetched from them",
                                   ["direction"], registry=r)
        self.store_errors = Counter("fedtier_reducer_store_errors",
                                    "Store errors the reducer met, by store (model, state) and kind",
                                    ["store", "kind"], registry=r)
        self.capped = Counter("fedtier_reducer_capped_weights",
                              "Weights cut down to the round's cap: clients' updates and combiners' claims",
                              ["tier"], registry=r)
        # every label value known in advance is shown at 0, so a rate() has a series before the first event
        for outcome in ROUND_OUTCOMES:
            self.rounds.labels(outcome)
        for outcome in SESSION_OUTCOMES:
            self.sessions.labels(outcome)
        for direction in DIRECTIONS:
            self.model_bytes.labels(direction)
        for tier in ("client", "combiner"):
            self.capped.labels(tier)
        for store, kinds in (("model", MODEL_STORE_KINDS), ("state", STATE_STORE_KINDS)):
            for kind in [kind for _, kind in kinds] + ["other"]:
                self.store_errors.labels(store, kind)

    def watch(self, network: Any) -> None:
        """Export the network view of ``network`` (reducer/network.py) at every scrape."""
        self.registry.register(NetworkCollector(network))

    def round_finished(self, round_doc: Mapping[str, Any]) -> None:
        """Count a round from its final record (Control._run_round)."""
        self.rounds.labels(round_doc["status"]).inc()
        for phase, seconds in (round_doc.get("timings") or {}).items():
            if phase in PHASES:
                self.round_seconds.labels(phase).observe(seconds)
        self.capped.labels("client").inc(len(round_doc.get("capped") or ()))
        self.capped.labels("combiner").inc(len(round_doc.get("capped_combiners") or ()))

    def session_finished(self, status: str) -> None:
        self.sessions.labels(status).inc()

    def moved(self, direction: str, size: int) -> None:
        self.model_bytes.labels(direction).inc(size)

    def store_error(self, exc: BaseException) -> None:
        labels = store_error_labels(exc)
        if labels is not None:
            self.store_errors.labels(*labels).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus' text format; readable like every other GET route (reducer/auth.py)."""
    return Response(current_app.extensions["fedtier"].metrics.exposition(), content_type=CONTENT_TYPE_LATEST)
