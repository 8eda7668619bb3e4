"""A combiner's Prometheus metrics, served on their own port (``--metrics-port``).

Counted where the combiner decides: the round runner (rounds, updates accepted or
rejected, capped weights), the transfer servicer (model bytes, uploads refused). Clients
connected and active are read from the client registry at scrape time, not counted.

A rejection's reason is one of a fixed set (``REJECT_REASONS``), never a client's name or
a message: label values an outside party could vary would grow the time series without
bound. Each combiner owns its registry, so several combiners in one process stay apart.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# why an update did not count. At the upload (stage "upload"): no_task (the sender holds no
# open training task), over_bound (larger than the round's model allows, or too many uploads
# held), not_uploader (another client's name in the header), transfer (a damaged or cut
# stream). At the report (stage "report"): no_round, not_its_task (another round's, an
# unknown task or someone else's), duplicate (the task was answered already), round_closed,
# stale (trained from another model), invalid (the update's contents or its example count),
# over_bound (the report is too large), internal (checked but not folded).
REJECT_REASONS = ("no_task", "over_bound", "not_uploader", "transfer", "no_round", "not_its_task", "duplicate",
                  "round_closed", "stale", "invalid", "internal")
ROUND_KINDS = ("training", "validation")
ROUND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class RegistryCollector(Collector):
    """Clients connected (task stream open) and active (and heard from lately), at scrape time."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (GaugeMetricFamily("fedtier_combiner_clients_connected", "Clients with an open task stream"),
                GaugeMetricFamily("fedtier_combiner_clients_active",
                                  "Clients with an open task stream and a recent heartbeat: those a round can use"))

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        connected, active = self._families()
        streams, live = self.registry.counts()
        connected.add_metric([], streams)
        active.add_metric([], live)
        yield connected
        yield active


class CombinerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.accepted = Counter("fedtier_combiner_updates_accepted", "Client updates accepted into a round",
                                registry=r)
        self.rejected = Counter("fedtier_combiner_updates_rejected",
                                "Client updates refused, by stage (upload, report) and reason", ["stage", "reason"],
                                registry=r)
        self.model_bytes = Counter("fedtier_combiner_model_bytes",
                                   "Model bytes received (updates, the reducer's pushes) and sent (downloads)",
                                   ["direction"], registry=r)
        self.rounds = Counter("fedtier_combiner_rounds", "Rounds run, by kind and outcome", ["kind", "outcome"],
                              registry=r)
        self.round_seconds = Histogram("fedtier_combiner_round_seconds", "Time of a round on this combiner",
                                       ["kind"], buckets=ROUND_BUCKETS, registry=r)
        self.capped = Counter("fedtier_combiner_capped_updates",
                              "Client updates counted with fewer examples than reported (the round's weight cap)",
                              registry=r)
        for direction in ("received", "sent"):
            self.model_bytes.labels(direction)
        for kind in ROUND_KINDS:
            for outcome in ("success", "failed"):
                self.rounds.labels(kind, outcome)
        self._server: Any = None

    def watch(self, clients: Any) -> None:
        """Export the client registry's counts (combiner/registry.py) at every scrape."""
        self.registry.register(RegistryCollector(clients))

    def reject(self, stage: str, reason: str) -> None:
        if reason not in REJECT_REASONS:  # a new reason must be added to the fixed set, not invented here
            log.warning("metrics: unknown rejection reason %r counted as internal", reason)
            reason = "internal"
        self.rejected.labels(stage, reason).inc()

    def round_finished(self, kind: str, success: bool, seconds: float) -> None:
        self.rounds.labels(kind, "success" if success else "failed").inc()
        self.round_seconds.labels(kind).observe(seconds)

    def serve(self, host: str, port: int) -> int:
        """Serve the metrics over HTTP on ``host:port`` in a daemon thread; returns the port."""
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise RuntimeError(f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}): choose another "
                               f"--metrics-port (FEDTIER_METRICS_PORT)") from None
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def counting(chunks: Iterator[Any], add: Callable[[int], None],
             seen: list[Any] | None = None) -> Iterator[Any]:
    """``chunks`` passed through; the bytes of their data go to ``add`` once the stream ends
    (whichever way), and the header, if one passes, is appended to ``seen``."""
    size = 0
    try:
        for chunk in chunks:
            part = chunk.WhichOneof("part")
            if part == "data":
                size += len(chunk.data)
            elif part == "header" and seen is not None:
                seen.append(chunk.header)
            yield chunk
    finally:
        add(size)

