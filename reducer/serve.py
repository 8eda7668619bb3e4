"""Run the reducer's Flask app on a threaded WSGI server until told to stop."""
from __future__ import annotations

import logging
import threading

from werkzeug.serving import make_server

from fedtier.config import Settings
from fedtier.reducer.app import build_reducer, create_app

log = logging.getLogger(__name__)


def serve(settings: Settings, host: str, port: int, helper: str, stop: threading.Event) -> None:
    reducer = build_reducer(settings, helper)
    app = create_app(settings, helper=helper, reducer=reducer)
    tls = (settings.tls_cert, settings.tls_key) if settings.tls_cert else None
    server = make_server(host, port, app, threaded=True, ssl_context=tls)
    log.info("reducer serving on %s://%s:%d (state: %s, helper: %s)", "https" if tls else "http", host,
             server.server_port, reducer.control.state.value, helper)
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    stop.wait()
    server.shutdown()
    reducer.close()
