"""Run the reducer's Flask app on a threaded WSGI server until told to stop."""
from __future__ import annotations

import logging
import threading

from werkzeug.serving import make_server

from fedtier.config import Settings
from fedtier.reducer.app import build_reducer, create_app

log = logging.getLogger(__name__)


def serve(settings: Settings, host: str, port: int, helper: str, stop: threading.Event,
          instance_id: str = "") -> None:
    """Serve until ``stop`` is set; ``instance_id`` (random if empty) is reported in /api/v1/status.

    The port is bound before the stores are opened: a reducer that cannot serve must
    change nothing, and opening the stores is not harmless (``Control._recover`` closes
    the sessions it finds running, which on a shared data dir are those of the reducer
    that already holds the port).
    """
    tls = (settings.tls_cert, settings.tls_key) if settings.tls_cert else None
    try:
        server = make_server(host, port, None, threaded=True, ssl_context=tls)  # the app is set below
    except SystemExit:  # werkzeug has printed why, e.g. "Port 8090 is in use by another program"
        raise RuntimeError(f"the reducer cannot listen on {host}:{port}; it started nothing "
                           f"(choose another port with --port or FEDN_REDUCER_PORT)") from None
    try:
        reducer = build_reducer(settings, helper)
        if instance_id:
            reducer.instance_id = instance_id
        server.app = create_app(settings, helper=helper, reducer=reducer)
    except BaseException:
        server.server_close()
        raise
    log.info("reducer serving on %s://%s:%d (state: %s, helper: %s)", "https" if tls else "http", host,
             server.server_port, reducer.control.state.value, helper)
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    stop.wait()
    server.shutdown()
    reducer.close()
