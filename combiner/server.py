"""A combiner process: the gRPC server plus its announcement to the reducer.

The server is grpc's asyncio server, on an event loop in a thread of its own, so a
combiner is started, stopped and tested from ordinary synchronous code. Each client's
task stream waits there as a coroutine; the handlers that block run on a thread pool
of ``max_workers`` (combiner/servicer.py), a round on the loop's default executor so
that it never waits behind clients' transfers.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Coroutine, TypeVar
from dataclasses import dataclass
from pathlib import Path

import requests

from fedtier.combiner.metrics import CombinerMetrics
from fedtier.combiner.model_cache import ModelCache
from fedtier.combiner.registry import ClientRegistry
from fedtier.combiner.runner import RoundRunner
from fedtier.combiner.servicer import CombinerServicer, ControlServicer, ModelTransferServicer
from fedtier.proto import fedtier_pb2_grpc as rpc
from fedtier.identity import Verifier, load_verify_key
from fedtier.transport.auth import AioIdentityInterceptor, IdentityInterceptor
from fedtier.transport.channel import add_port, make_aio_server, resolves
from fedtier.transport.wire import add_model_transfer_servicer

log = logging.getLogger(__name__)

T = TypeVar("T")
# seconds between a client's heartbeats unless set: FEDn's 2 s where heartbeats decide who is
# active; where the open stream does, a heartbeat is only a fallback and need not come often
HEARTBEAT_INTERVAL = {"stream": 10.0, "heartbeat": 2.0}


def heartbeat_interval(settings: "CombinerSettings") -> float:
    """The interval this combiner tells its clients (``--heartbeat-interval``, else its liveness' default)."""
    return settings.heartbeat_interval if settings.heartbeat_interval is not None \
        else HEARTBEAT_INTERVAL[settings.liveness]


@dataclass(frozen=True)
class CombinerSettings:
    name: str
    host: str = "127.0.0.1"
    port: int = 12080
    work_dir: Path = Path("var/combiner")
    heartbeat_interval: float | None = None  # None: HEARTBEAT_INTERVAL[liveness]
    heartbeat_timeout: float = 10.0
    liveness: str = "stream"  # combiner/registry.py: "stream" or FEDn's "heartbeat"
    max_clients: int = 1000  # task streams held at once (--max-clients)
    max_workers: int = 128    # threads for the blocking handlers: uploads, downloads, reports (--max-workers)
    max_model_bytes: int | None = None
    verify_key: str = ""      # FEDTIER_TOKEN_VERIFY_KEY: checks every caller's credential; unset: trust all
    tls_cert: str = ""        # serve over TLS when both are set
    tls_key: str = ""
    metrics_port: int | None = None  # serve Prometheus metrics on host:metrics_port; None: not served (0: any port)


class CombinerServer:
    def __init__(self, settings: CombinerSettings) -> None:
        self.settings = settings
        self.cache = ModelCache(Path(settings.work_dir) / "models", settings.max_model_bytes)
        self.registry = ClientRegistry(settings.heartbeat_timeout, max_streams=max(1, settings.max_clients),
                                       liveness=settings.liveness)
        self.metrics = CombinerMetrics()
        self.metrics.watch(self.registry)
        self.runner = RoundRunner(settings.name, self.registry, self.cache, metrics=self.metrics)
        self.registry.on_disconnect = self.runner.client_gone
        verifier = Verifier(load_verify_key(settings.verify_key, "FEDTIER_TOKEN_VERIFY_KEY")) \
            if settings.verify_key else None
        self.auth = IdentityInterceptor(verifier, settings.name)
        if verifier is None:
            log.warning("IDENTITIES ARE NOT CHECKED on combiner %s: any caller may connect under any client "
                        "name and run rounds. Set FEDTIER_TOKEN_VERIFY_KEY (fedtier token keygen) for any "
                        "network reachable by others", settings.name)
        self.pool = ThreadPoolExecutor(max_workers=max(1, settings.max_workers), thread_name_prefix="grpc")
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name=f"{settings.name}-grpc-loop",
                                             daemon=True)
        self._loop_thread.start()
        self.server = self._on_loop(self._make_server())
        self.port = 0
        self.metrics_port = 0

    async def _make_server(self) -> Any:  # on the loop: grpc.aio binds a server to the loop it is made on
        server = make_aio_server(self.pool, interceptors=[AioIdentityInterceptor(self.auth)])
        rpc.add_CombinerServicer_to_server(
            CombinerServicer(self.settings.name, self.registry, self.runner, heartbeat_interval(self.settings),
                             self.auth), server)
        add_model_transfer_servicer(ModelTransferServicer(self.cache, self.runner.arrival_check, auth=self.auth,
                                                          metrics=self.metrics, executor=self.pool),
                                    server)  # wire.py: fast chunks
        rpc.add_ControlServicer_to_server(ControlServicer(self.settings.name, self.registry, self.runner),
                                       server)  # a round runs on the loop's own executor, never queued behind uploads
        return server

    def _on_loop(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def start(self) -> int:
        """Bind and serve; returns the port (useful with port 0 in tests)."""
        address = f"{self.settings.host}:{self.settings.port}"
        async def bind() -> int:
            return add_port(self.server, address, self.settings.tls_cert or None, self.settings.tls_key or None)

        try:  # grpc raises, or returns 0 in older versions, when the address is taken
            self.port = self._on_loop(bind())
        except RuntimeError:
            self.port = 0
        if not self.port:
            raise RuntimeError(f"combiner {self.settings.name} cannot listen on {address} (is the port in use?); "
                               f"it announced nothing: choose another with --port")
        if self.settings.metrics_port is not None:  # before serving: a taken port starts nothing
            self.metrics_port = self.metrics.serve(self.settings.host, self.settings.metrics_port)
            log.info("combiner %s: Prometheus metrics on http://%s:%d/metrics", self.settings.name,
                     self.settings.host, self.metrics_port)
        self._on_loop(self.server.start())
        log.info("combiner %s serving on %s:%d (%s, tokens %s)", self.settings.name, self.settings.host, self.port,
                 "TLS" if self.settings.tls_cert else "plaintext",
                 "identities checked" if self.auth.enabled else "IDENTITIES NOT CHECKED")
        return self.port

    def stop(self, grace: float = 2.0) -> None:
        if self._loop.is_running():
            self._on_loop(self.server.stop(grace))
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(10)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.metrics.close()

    def wait(self) -> None:
        self._on_loop(self.server.wait_for_termination())


ALL_INTERFACES = ("", "0.0.0.0", "::", "[::]")


def advertised_host(bind_host: str, advertise_host: str, name: str) -> str:
    """The host this combiner announces, which the reducer and its clients will connect to.

    ``--advertise-host`` wins. A concrete ``--host`` is the address it serves on. Bound to
    every interface, any name of this machine reaches it: its ``--name`` when that
    resolves (a compose service name does), else the machine's host name, else, on a
    machine that cannot resolve even that, 127.0.0.1, which only this machine can reach.
    Announcing a name that does not resolve left every client unable to connect while
    the combiner looked healthy, so such a name is logged here, at start-up.
    """
    if advertise_host:
        if not resolves(advertise_host):
            log.warning("--advertise-host %s does not resolve on this machine: the reducer and the clients can "
                        "reach this combiner only if it resolves for them", advertise_host)
        return advertise_host
    if bind_host not in ALL_INTERFACES:
        return bind_host
    if resolves(name):
        return name
    hostname = socket.gethostname()
    if hostname and resolves(hostname):
        log.info("--name %s is not a host name here: announcing this machine's name %s (clients must resolve it; "
                 "--advertise-host chooses another)", name, hostname)
        return hostname
    log.warning("neither --name %s nor this machine's name %r resolves: announcing 127.0.0.1, which only clients "
                "on this machine can reach; pass --advertise-host for others", name, hostname)
    return "127.0.0.1"


def announce(reducer_url: str, name: str, address: str, port: int, token: str = "",
             stop: threading.Event | None = None, retry_s: float = 1.0, verify: str | bool = True) -> None:
    """Tell the reducer this combiner exists (POST /add), retrying until it answers.

    ``token`` is this combiner's own ``combiner`` credential, for its name. Combiners often
    start before the reducer in a deployment, so a refused connection is expected and
    retried; a 409 (the name is held by a live combiner elsewhere) is retried too, since
    it clears once that one is offline; any other 4xx is a configuration error.
    """
    stop = stop or threading.Event()
    url = reducer_url.rstrip("/") + "/add"
    headers = {"Authorization": f"Token {token}"} if token else {}
    delay = retry_s
    while not stop.is_set():
        try:
            reply = requests.post(url, json={"name": name, "address": address, "port": port},
                                  headers=headers, timeout=10, verify=verify)
            if reply.status_code < 300:
                log.info("announced to reducer at %s as %s (%s:%d)", reducer_url, name, address, port)
                return
            if reply.status_code == 409:
                log.warning("reducer refused combiner %s for now: %s", name, reply.text.strip()[:300])
            elif 400 <= reply.status_code < 500:
                raise RuntimeError(f"reducer refused combiner {name}: {reply.status_code} {reply.text.strip()}")
            else:
                log.warning("reducer answered %s; retrying", reply.status_code)
        except requests.RequestException as exc:
            log.info("reducer at %s not reachable yet (%s); retrying in %.0fs",
                     reducer_url, exc.__class__.__name__, delay)
        stop.wait(delay)
        delay = min(delay * 2, 30.0)
