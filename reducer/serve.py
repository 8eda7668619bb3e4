"""Run the reducer's Flask app on cheroot, a production WSGI server, until told to stop.

Why cheroot: the round control loop, the status poll and the data-directory lock live in
the reducer's process, so the server must run in that process, as threads; it must speak
TLS (FEDTIER_TLS_CERT/KEY); and it must bind its port before the stores are opened.
cheroot does all three (a bounded thread pool, the standard library's ssl, ``prepare()``
binds before the app is needed). waitress has no TLS; gunicorn forks its workers, which
would run the control loop in a child that its arbiter may kill and restart.

What the server bounds, so that no client can hold the reducer's threads (settings in
fedtier/config.py, documented in .env.example):

* a request's line and headers must all arrive within FEDTIER_HTTP_HEADER_TIMEOUT_SECONDS
  of its first byte, TLS handshake included, and its body at FEDTIER_HTTP_MIN_BODY_RATE
  bytes per second (``ReadDeadlines``): a per-read timeout alone lets a client that sends
  one byte at a time hold a thread forever;
* silence on a connection, in a request or between keep-alive requests, ends it after
  FEDTIER_HTTP_IDLE_TIMEOUT_SECONDS;
* FEDTIER_HTTP_THREADS requests run at once; FEDTIER_HTTP_BACKLOG connections wait, in
  the kernel's listen queue and again in the server's, beyond that a connection gets 503;
* headers are bounded by FEDTIER_MAX_HTTP_HEADER_BYTES, bodies by the largest route bound
  (the seed upload's): every route's own, smaller bound is the app's to enforce with an
  error naming it (reducer/app.py), the server's cap only stops what no route takes;
* on SIGTERM the server stops accepting, lets requests in flight finish for up to
  FEDTIER_HTTP_SHUTDOWN_SECONDS, then the stores are closed and the process exits.
"""
from __future__ import annotations

import itertools
import logging
import socket
import ssl
import threading
import time
from typing import Any

from cheroot import errors as cheroot_errors
from cheroot import server as cheroot_server
from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter
from cheroot.workers import threadpool

from fedtier.config import Settings
from fedtier.limits import Limits
from fedtier.reducer.app import MULTIPART_SLACK, UPLOAD_BOUNDS, build_reducer, create_app

log = logging.getLogger(__name__)


class ReadDeadlines:
    """One thread that cuts off connections whose request arrives too slowly.

    A per-read timeout never fires on a client that sends a byte at a time, and each such
    client holds one of the server's threads. So a request's line and headers must be in
    within ``header_s`` of the worker starting to read them, and its body must then keep
    arriving at ``min_rate`` bytes per second on average (after the same ``header_s`` of
    grace), as Apache's mod_reqtimeout does. The body is watched until it has all been
    read or the response has begun: a handler that works on a complete body is never cut.
    Past its deadline the socket is shut down, which ends the worker's blocked read at once."""

    def __init__(self, header_s: float, min_rate: int) -> None:
        self.header_s = header_s
        self.min_rate = min_rate
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[Any, Any, str, float, int]] = {}  # conn, request, phase, start, bytes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="http-read-deadlines", daemon=True)
        self._thread.start()

    def watch_headers(self, conn: Any, request: Any) -> None:
        with self._lock:
            self._watched[id(conn)] = (conn, request, "headers", time.monotonic(), 0)

    def watch_body(self, conn: Any, request: Any) -> None:
        with self._lock:
            self._watched[id(conn)] = (conn, request, "body", time.monotonic(), conn.rfile.bytes_read)

    def forget(self, conn: Any) -> None:
        with self._lock:
            self._watched.pop(id(conn), None)

    def close(self) -> None:
        self._stop.set()

    @staticmethod
    def _body_done(request: Any) -> bool:
        body = request.rfile
        return request.sent_headers or getattr(body, "remaining", None) == 0 or getattr(body, "closed", False)

    def _late(self, now: float) -> list[tuple[Any, str]]:
        late = []
        with self._lock:
            for key, (conn, request, phase, start, base) in list(self._watched.items()):
                if phase == "headers":
                    due = start + self.header_s
                elif self._body_done(request):
                    del self._watched[key]
                    continue
                else:
                    due = start + self.header_s + (conn.rfile.bytes_read - base) / self.min_rate
                if due <= now:
                    del self._watched[key]
                    late.append((conn, phase))
        return late

    def _run(self) -> None:
        while not self._stop.wait(min(0.25, self.header_s / 4)):
            for conn, phase in self._late(time.monotonic()):
                if phase == "headers":
                    log.warning("closed the connection from %s: its request headers did not arrive within %gs "
                                "(FEDTIER_HTTP_HEADER_TIMEOUT_SECONDS)", getattr(conn, "remote_addr", "?"),
                                self.header_s)
                else:
                    log.warning("closed the connection from %s: its request body arrived slower than %d bytes/s "
                                "(FEDTIER_HTTP_MIN_BODY_RATE)", getattr(conn, "remote_addr", "?"), self.min_rate)
                try:  # the plain socket's shutdown, also under TLS: it only wakes the reader
                    socket.socket.shutdown(conn.socket, socket.SHUT_RDWR)
                except OSError:
                    pass  # already gone


class _Request(cheroot_server.HTTPRequest):
    def parse_request(self) -> None:
        deadlines: ReadDeadlines = self.server.read_deadlines
        deadlines.watch_headers(self.conn, self)
        try:
            super().parse_request()
        except ssl.SSLError as exc:  # the handshake runs here (_LazyHandshakeAdapter); the connection ends
            if "http request" in str(exc).lower():
                self._plain_http_on_https()
            else:
                log.info("TLS with %s failed: %s", getattr(self.conn, "remote_addr", "?"), exc)
        finally:
            deadlines.forget(self.conn)

    def respond(self) -> None:
        deadlines: ReadDeadlines = self.server.read_deadlines
        deadlines.watch_body(self.conn, self)
        try:
            super().respond()
        finally:
            deadlines.forget(self.conn)

    def _plain_http_on_https(self) -> None:
        body = b"This port speaks HTTPS only: use an https:// URL.\n"
        reply = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        try:  # TLS failed before it began: answer in plain text on the socket beneath
            socket.socket.sendall(self.conn.socket, reply)
        except OSError:
            pass

    def simple_response(self, status: str, msg: str = "") -> None:
        # the server's own refusals are rare (the app answers everything it routes), but
        # should name their bound like the app's do
        if str(status).startswith("414") or str(msg).startswith("The headers"):
            msg = f"the request line and headers are over {self.server.limits.describe('http_header_bytes')}"
        elif str(status).startswith("413"):
            msg = f"the request body is over every route's bound, the largest being {self.server.body_bound}"
        super().simple_response(status, msg)


class _Connection(cheroot_server.HTTPConnection):
    RequestHandlerClass = _Request


class _LazyHandshakeAdapter(BuiltinSSLAdapter):
    """TLS whose handshake runs in the worker thread, under the header deadline.

    cheroot's own adapter shakes hands in the thread that accepts connections, where a
    client that connects and stays silent stops every other client from being accepted
    until the idle timeout."""

    def wrap(self, sock: socket.socket) -> tuple[ssl.SSLSocket, dict[str, str]]:
        try:
            wrapped = self.context.wrap_socket(sock, do_handshake_on_connect=False, server_side=True)
        except OSError as exc:
            raise cheroot_errors.FatalSSLAlert(*exc.args) from exc
        return wrapped, {"wsgi.url_scheme": "https", "HTTPS": "on"}


class _DaemonWorkers(threadpool.ThreadPool):
    """cheroot's pool with daemon workers: a worker still writing to a client that stopped
    reading must not keep the process alive past the shutdown bound."""

    _numbers = itertools.count()

    def _spawn_worker(self) -> threadpool.WorkerThread:
        worker = threadpool.WorkerThread(self.server)
        worker.name = f"http-worker-{next(self._numbers)}"
        worker.daemon = True
        worker.start()
        return worker


class ReducerHTTPServer(wsgi.Server):
    """cheroot's WSGI server with the reducer's bounds, logging through ``logging``."""

    ConnectionClass = _Connection

    def __init__(self, settings: Settings, host: str, port: int) -> None:
        limits = settings.limits
        super().__init__((host, port), None, request_queue_size=settings.http_backlog,
                         timeout=settings.http_idle_timeout_s, shutdown_timeout=settings.http_shutdown_s)
        self.requests = _DaemonWorkers(self, min=settings.http_threads, max=settings.http_threads,
                                       accepted_queue_size=settings.http_backlog, accepted_queue_timeout=1)
        self.limits: Limits = limits
        self.max_request_header_size = limits.http_header_bytes
        bound = max(UPLOAD_BOUNDS.values(), key=lambda b: getattr(limits, b[0]))[0]
        self.body_bound = limits.describe(bound)
        self.max_request_body_size = max(getattr(limits, bound) + MULTIPART_SLACK, limits.json_body_bytes)
        self.keep_alive_conn_limit = settings.http_backlog  # parked idle, they hold no thread
        self.read_deadlines = ReadDeadlines(settings.http_header_timeout_s, settings.http_min_body_rate)
        self.shutdown_s = settings.http_shutdown_s
        if settings.tls_cert:
            self.ssl_adapter = _LazyHandshakeAdapter(settings.tls_cert, settings.tls_key)

    @property
    def port(self) -> int:
        return self.bind_addr[1]

    def error_log(self, msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
        log.log(level, "%s", msg, exc_info=traceback)

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve, name="http", daemon=True)
        thread.start()
        return thread

    def stop_gracefully(self) -> None:
        """Stop accepting, let requests in flight finish, within the shutdown bound.

        cheroot waits ``shutdown_timeout`` for its workers, then cuts their reads but waits
        on for a response still being written: the stop runs aside and is waited for only
        as long as the bound (the workers are daemons: they do not hold the process)."""
        stopper = threading.Thread(target=self.stop, name="http-stop", daemon=True)
        stopper.start()
        stopper.join(self.shutdown_s + 0.5)
        if stopper.is_alive():
            log.warning("requests still running after %ds (FEDTIER_HTTP_SHUTDOWN_SECONDS) are cut off",
                        self.shutdown_s)
        self.read_deadlines.close()


def listen(settings: Settings, host: str, port: int) -> ReducerHTTPServer:
    """The reducer's server, bound to ``host:port`` and listening, with no app yet."""
    server = ReducerHTTPServer(settings, host, port)
    try:
        server.prepare()
    except OSError as exc:
        server.read_deadlines.close()
        raise RuntimeError(f"the reducer cannot listen on {host}:{port} ({exc}); it started nothing "
                           f"(the port is in use? choose another with --port or FEDN_REDUCER_PORT)") from None
    return server


def serve(settings: Settings, host: str, port: int, helper: str, stop: threading.Event,
          instance_id: str = "") -> None:
    """Serve until ``stop`` is set; ``instance_id`` (random if empty) is reported in /api/v1/status.

    The port is bound before the stores are opened: a reducer that cannot serve must
    change nothing, and opening the stores is not harmless (``Control._recover`` closes
    the sessions it finds running, which on a shared data dir are those of the reducer
    that already holds the port).
    """
    server = listen(settings, host, port)
    try:
        reducer = build_reducer(settings, helper)
        if instance_id:
            reducer.instance_id = instance_id
        server.wsgi_app = create_app(settings, helper=helper, reducer=reducer)
    except BaseException:
        server.stop()
        server.read_deadlines.close()
        raise
    log.info("reducer serving on %s://%s:%d (state: %s, helper: %s; %d threads, cheroot)",
             "https" if settings.tls_cert else "http", host, server.port, reducer.control.state.value, helper,
             settings.http_threads)
    server.serve_in_thread()
    stop.wait()
    log.info("stopping: no new connections, requests in flight get up to %ds", settings.http_shutdown_s)
    server.stop_gracefully()
    reducer.close()
