"""The reducer's Flask application factory.

``create_app`` wires the stores, the trail, the network view and the round control
into one ``Reducer`` object kept on ``app.extensions["fedtier"]``; blueprints reach
it through ``reducer()``. Configuration comes from the environment (``Settings``).
"""
from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from fedtier.config import Settings
from fedtier.limits import Limits
from fedtier.reducer import auth, openapi
from fedtier.reducer.control import Control
from fedtier.reducer.evaluation import ReducerEvaluation
from fedtier.identity import SelfIssuer, load_signing_key
from fedtier.reducer.errors import error_reply, register_error_handlers
from fedtier.reducer.metrics import ReducerMetrics, bp as metrics_bp
from fedtier.reducer.network import Network
from fedtier.reducer.schedules import Scheduler
from fedtier.reducer.trail import ModelTrail
from fedtier.storage.dirlock import DataDirLock
from fedtier.storage.factory import model_store_from_settings, state_store_from_settings
from fedtier.storage.model_store import ModelStore
from fedtier.storage.state_store import StateStore

log = logging.getLogger(__name__)


@dataclass
class Reducer:
    settings: Settings
    models: ModelStore
    state: StateStore
    trail: ModelTrail
    network: Network
    control: Control
    work_dir: Path
    stop: threading.Event = field(default_factory=threading.Event)
    # reported in /api/v1/status: tells a launcher whether the reducer answering on a port is the
    # process it started (fedtier sandbox passes its own with --instance-id) or another one
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    lock: DataDirLock | None = None  # this reducer's hold on settings.data_dir
    scheduler: Scheduler | None = None  # continuous training (reducer/schedules.py)
    metrics: ReducerMetrics = field(default_factory=ReducerMetrics)  # GET /metrics (reducer/metrics.py)

    def close(self) -> None:
        self.stop.set()
        if self.control.evaluation is not None:
            self.control.evaluation.close()  # its worker process
        self.network.close()
        self.state.close()
        if self.lock is not None:
            self.lock.release()


def build_reducer(settings: Settings, helper: str = "numpy", models: ModelStore | None = None,
                  state: StateStore | None = None) -> Reducer:
    settings.check_reducer()
    # before any store is opened: a second reducer on this directory must not touch it (dirlock.py)
    lock = DataDirLock(settings.data_dir).acquire()
    try:
        models = models or model_store_from_settings(settings)
        state = state or state_store_from_settings(settings)
        work_dir = settings.data_dir / "reducer"
        work_dir.mkdir(parents=True, exist_ok=True)
        trail = ModelTrail(models, state)
        issuer = SelfIssuer(load_signing_key(settings.token_signing_key, "FEDTIER_TOKEN_SIGNING_KEY")) \
            if settings.token_signing_key else None
        network = Network(state, issuer=issuer, ca_file=settings.tls_ca or None)
        metrics = ReducerMetrics()
        metrics.watch(network)
        evaluation = ReducerEvaluation(settings.reducer_eval_project, settings.reducer_eval_data) \
            if settings.reducer_eval_project else None
        control = Control(state, trail, network, work_dir, helper=helper, metrics=metrics, evaluation=evaluation)
    except BaseException:
        lock.release()
        raise
    return Reducer(settings, models, state, trail, network, control, work_dir, lock=lock, metrics=metrics,
                   scheduler=Scheduler(state, control, settings))


SCHEDULER_TICK_S = 0.5  # how late a schedule may fire: far below its shortest period


def create_app(settings: Settings | None = None, helper: str = "numpy", reducer: Reducer | None = None,
               poll_interval_s: float | None = 2.0, max_upload_mb: int | None = None) -> Flask:
    """``max_upload_mb``, when given, caps every request body below the settings' bounds."""
    settings = settings or Settings.from_env()
    reducer = reducer or build_reducer(settings, helper)
    app = Flask(__name__)
    app.extensions["fedtier"] = reducer
    register_error_handlers(app)
    bound_request_bodies(app, settings.limits, None if max_upload_mb is None else max_upload_mb << 20)
    auth.install(app)

    from fedtier.reducer.routes import api, dashboard, lifecycle, network, pages, seed, start

    for module in (seed, start, network, api, dashboard, pages, lifecycle):
        app.register_blueprint(module.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(metrics_bp)
    from fedtier.reducer.routes import package  # routes import this module: load them last

    app.register_blueprint(package.bp)
    if poll_interval_s:
        threading.Thread(target=reducer.network.poll_forever, args=(reducer.stop, poll_interval_s),
                         kwargs={"on_error": reducer.metrics.store_error}, name="status-poll", daemon=True).start()
        threading.Thread(target=reducer.scheduler.run_forever, args=(reducer.stop, SCHEDULER_TICK_S),
                         name="scheduler", daemon=True).start()
    return app


# Routes whose body is an upload, and the bound of each; every other body is JSON or a form.
UPLOAD_BOUNDS = {"seed.seed_upload": ("model_bytes", "seed"), "package.upload_package": ("package_bytes", "package")}
MULTIPART_SLACK = 64 << 10  # the multipart envelope around an uploaded file


def bound_request_bodies(app: Flask, bounds: Limits, cap: int | None = None) -> None:
    """Give each request a body bound by what its route takes, and refuse a larger one with a
    413 naming the bound, before any of it is read (Content-Length) or as soon as it passes
    the bound (a chunked body). Nesting depth and number forms are the parser's to refuse
    (reducer/body.py, fedtier/strict_json.py): every route reads its body through it."""

    app.config["MAX_FORM_MEMORY_SIZE"] = bounds.json_body_bytes  # a form's text fields: the same bound

    @app.before_request
    def bound_body() -> None:
        bound, form_field = UPLOAD_BOUNDS.get(request.endpoint or "", ("json_body_bytes", None))
        g.body_bound, g.body_field = bound, form_field
        limit = getattr(bounds, bound) + (MULTIPART_SLACK if form_field else 0)
        request.max_content_length = min(limit, cap) if cap else limit

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> tuple[Response, int]:
        bound = g.get("body_bound", "json_body_bytes")
        return error_reply(413, f"the request body is over {bounds.describe(bound)}", limit=Limits.variable(bound),
                           field=g.get("body_field") or None)


def reducer() -> Reducer:
    return current_app.extensions["fedtier"]
